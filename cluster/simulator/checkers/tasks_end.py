"""Invariant: every task ends, in success or a fault; none stays queued or running
once faults are mended and the run has settled (liveness)."""

from __future__ import annotations

from vsim.cluster.simulator.checkers import Checker
from vsim.v1 import common_pb2

ENDED = (common_pb2.TASK_STATE_SUCCESS, common_pb2.TASK_STATE_ERROR)


class TasksEndChecker(Checker):
    name = "every task ends"

    async def final(self) -> None:
        for task in await self.dc.client().tasks(limit=10_000):
            if task.state not in ENDED:
                self.violate(
                    f"task {task.id} ({task.name} {task.entity}) is still "
                    f"{common_pb2.TaskState.Name(task.state)}"
                )
