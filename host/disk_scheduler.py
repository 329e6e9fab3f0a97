"""The host's disk I/O scheduler: one queue per VM per target (a datastore), served
round-robin across the VMs that have I/O waiting, with at most `queue_depth`
commands outstanding per target (ESXi's Disk.SchedNumReqOutstanding, 32).

Round-robin means a VM that queues a thousand commands gets one turn for each turn
of a VM that queues one: no VM can starve another on a shared datastore.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from vsim.faults import InvalidArgument

SCHED_NUM_REQ_OUTSTANDING = 32
SERVED_LOG = 10_000
"""How many of the latest dispatches each target remembers (for statistics and tests)."""


@dataclass
class _Target:
    queues: dict[str, deque[tuple[Callable[[], Awaitable[Any]], asyncio.Future]]] = field(
        default_factory=dict
    )
    ring: deque[str] = field(default_factory=deque)
    """VMs with I/O waiting, in the order of their next turn."""
    outstanding: int = 0
    served: deque[str] = field(default_factory=lambda: deque(maxlen=SERVED_LOG))
    completed: Counter[str] = field(default_factory=Counter)


class DiskScheduler:
    def __init__(self, queue_depth: int = SCHED_NUM_REQ_OUTSTANDING) -> None:
        if queue_depth < 1:
            raise InvalidArgument(f"queue depth must be >= 1, got {queue_depth}")
        self.queue_depth = queue_depth
        self._targets: dict[str, _Target] = {}

    async def submit(self, target: str, vm: str, command: Callable[[], Awaitable[Any]]) -> Any:
        """Queues one command of vm's for target; returns its result once served."""
        t = self._targets.setdefault(target, _Target())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        queue = t.queues.setdefault(vm, deque())
        if not queue:
            t.ring.append(vm)
        queue.append((command, future))
        self._dispatch(target, t)
        return await future

    def _dispatch(self, name: str, t: _Target) -> None:
        while t.ring and t.outstanding < self.queue_depth:
            vm = t.ring.popleft()
            queue = t.queues[vm]
            command, future = queue.popleft()
            if queue:
                t.ring.append(vm)  # its next command waits for everyone else's turn
            else:
                del t.queues[vm]
            if future.cancelled():
                continue
            t.outstanding += 1
            t.served.append(vm)
            asyncio.get_running_loop().create_task(self._run(name, t, vm, command, future))

    async def _run(
        self,
        name: str,
        t: _Target,
        vm: str,
        command: Callable[[], Awaitable[Any]],
        future: asyncio.Future,
    ) -> None:
        try:
            result = await command()
        except BaseException as e:  # noqa: BLE001 - the submitter gets it
            if not future.done():
                future.set_exception(e)
        else:
            if not future.done():
                future.set_result(result)
        finally:
            t.outstanding -= 1
            t.completed[vm] += 1
            self._dispatch(name, t)

    def served(self, target: str) -> list[str]:
        """The VMs in the order their commands were dispatched (the latest ones)."""
        t = self._targets.get(target)
        return list(t.served) if t else []

    def completed(self, target: str) -> dict[str, int]:
        t = self._targets.get(target)
        return dict(t.completed) if t else {}
