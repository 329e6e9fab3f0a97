"""Tasks: every long vCenter operation, as vSphere's TaskInfo.

A task is queued → running → success or error; its id is returned at once and the
work runs in the background. A finished task never changes. One task at a time per
entity: a second operation on a busy VM or host fails with TaskInProgress. Tasks are
stored when queued and when finished; one left unfinished by a vCenter restart is
closed with an error on the next start, so no task stays "running" forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from vsim.faults import NotFound, SystemError_, TaskInProgress, VimFault
from vsim.runtime import Runtime
from vsim.v1 import common_pb2
from vsim.vcenter.inventory import Inventory

log = logging.getLogger("vsim.vcenter.tasks")

Work = Callable[[common_pb2.Task], Awaitable[str]]
"""A task's work: given the live task (to report progress), returns the result."""


class TaskManager:
    def __init__(self, inventory: Inventory, runtime: Runtime) -> None:
        """runtime: vCenter's; each task's work runs as one of its tasks, and waits
        for a task are measured on its clock."""
        self._inventory = inventory
        self._runtime = runtime
        self._clock = runtime.clock
        self._live: dict[str, tuple[common_pb2.Task, asyncio.Event]] = {}
        self._busy: dict[tuple[str, str], str] = {}  # (kind, entity) -> task id
        self._busy_key: dict[str, tuple[tuple[str, str], ...]] = {}  # task id -> (kind, entity)s
        self._within: dict[str, tuple[str, str]] = {}  # task id -> the entity holding it
        self._inner: Counter[tuple[str, str]] = Counter()  # entity -> tasks on its parts
        self._runners: set[asyncio.Task] = set()

    def close_interrupted(self) -> int:
        """Closes the tasks a previous vCenter left unfinished; returns how many."""
        interrupted = self._inventory.unfinished_tasks()
        for task in interrupted:
            self._finish(
                task,
                fault=SystemError_("vCenter restarted while this task was running; run it again"),
            )
        return len(interrupted)

    def busy(self, kind: str, entity: str) -> bool:
        return (kind, entity) in self._busy

    def start(
        self,
        name: str,
        entity: str,
        user: str,
        work: Work,
        *,
        kind: str,
        within: tuple[str, str] | None = None,
        also: tuple[tuple[str, str], ...] = (),
        parent: str = "",
    ) -> common_pb2.Task:
        """Queues work on entity (of `kind`, "vm" or "host") and returns the task.
        `within` names the entity that holds it (a VM's host): a task on the holder
        and tasks on what it holds exclude each other. `also` names more entities the
        task keeps busy (a linked clone's source VM). A subtask names its `parent`
        (a host entering maintenance mode moving its VMs): what the parent keeps busy
        does not block it."""
        key = (kind, entity)
        for blocker in (key, within, *also):
            if blocker in self._busy and self._busy[blocker] != parent:
                raise TaskInProgress(
                    f"{blocker[1]} is busy with {self._busy[blocker]}; wait for it to finish",
                    task=self._busy[blocker],
                )
        if self._inner[key]:
            raise TaskInProgress(
                f"{entity} has {self._inner[key]} task(s) running on its VMs; wait for them"
            )
        task = common_pb2.Task(
            name=name,
            entity=entity,
            user=user,
            state=common_pb2.TASK_STATE_QUEUED,
            queue_time=self._clock.now(),
        )
        self._inventory.add_task(task)
        owned = tuple(k for k in (key, *also) if k not in self._busy)  # not the parent's
        for busy in owned:
            self._busy[busy] = task.id
        self._busy_key[task.id] = owned
        if within is not None:
            self._within[task.id] = within
            self._inner[within] += 1
        self._live[task.id] = (task, asyncio.Event())
        runner = self._runtime.spawn(self._run(task, work), f"task:{task.id}:{name}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        return common_pb2.Task.FromString(task.SerializeToString())

    async def _run(self, task: common_pb2.Task, work: Work) -> None:
        task.state = common_pb2.TASK_STATE_RUNNING
        task.start_time = self._clock.now()
        try:
            result = await work(task)
        except VimFault as fault:
            self._finish(task, fault=fault)
        except Exception as exc:  # noqa: BLE001 - a task records every failure
            log.exception("task %s (%s) failed", task.id, task.name)
            self._finish(task, fault=SystemError_(f"{task.name} failed: {type(exc).__name__}"))
        else:
            self._finish(task, result=result)

    def _finish(
        self, task: common_pb2.Task, result: str = "", fault: VimFault | None = None
    ) -> None:
        if fault is not None:
            task.state = common_pb2.TASK_STATE_ERROR
            task.error.CopyFrom(fault.to_proto())
        else:
            task.state = common_pb2.TASK_STATE_SUCCESS
            task.result = result
            task.progress = 100
        task.complete_time = self._clock.now()
        self._inventory.save_task(task)
        for key in self._busy_key.pop(task.id, ()):
            if self._busy.get(key) == task.id:
                del self._busy[key]
        within = self._within.pop(task.id, None)
        if within is not None:
            self._inner[within] -= 1
        live = self._live.pop(task.id, None)
        if live is not None:
            live[1].set()

    def get(self, task_id: str) -> common_pb2.Task:
        live = self._live.get(task_id)
        if live is not None:
            return common_pb2.Task.FromString(live[0].SerializeToString())
        task = self._inventory.task(task_id)
        if task is None:
            raise NotFound(f"no task with id {task_id[:60]!r}")
        return task

    async def wait(self, task_id: str, timeout: float) -> common_pb2.Task:
        """The task once finished, or as it is after timeout seconds (simulated: of
        vCenter's clock)."""
        live = self._live.get(task_id)
        if live is not None:
            try:
                await self._runtime.wait_for(live[1].wait(), timeout)
            except TimeoutError:
                pass
        return self.get(task_id)

    async def finished(self, task_id: str) -> common_pb2.Task:
        """The task once it has finished, however long that takes."""
        live = self._live.get(task_id)
        if live is not None:
            await live[1].wait()
        return self.get(task_id)

    def recent(self, limit: int) -> list[common_pb2.Task]:
        return [self.get(t.id) if t.id in self._live else t for t in self._inventory.tasks(limit)]

    async def drain(self) -> None:
        """Waits for every running task to finish (vCenter shutting down)."""
        if self._runners:
            await asyncio.gather(*self._runners, return_exceptions=True)
