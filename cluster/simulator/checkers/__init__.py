"""The invariants of DESIGN.md section 7, each checked over a whole run by a module of
its own, with the invariant in its docstring.

A checker is told what happens as it happens (`Checker`'s hooks) and records what it
sees in the run's history; a broken invariant is a violation there, with the event
that broke it. Safety is checked all through the run, under any faults; liveness
(`final`) only once every fault is mended and the datacenter has had time to settle.
"""

from __future__ import annotations

from typing import Any

from vsim.cluster.simulator.datacenter import SimulatedDatacenter
from vsim.cluster.simulator.history import History


class Checker:
    """What every checker may hook into (each hook does nothing unless overridden)."""

    name = "checker"

    def __init__(self, dc: SimulatedDatacenter, history: History) -> None:
        self.dc = dc
        self.history = history

    def violate(self, detail: str) -> None:
        self.history.violate(self.name, detail)

    def storage(self, host: str, device: Any, command: str, args: tuple) -> None:
        """A storage command the array has just run for `host`."""

    def vmotion(self, source: str, destination: str, method: str, moment: str) -> None:
        """A vMotion call from source to destination "arriving" there or "landed"
        (the engine's vMotion tap)."""

    def crashing(self, host: str) -> None:
        """The host is about to crash (after a last `sample`)."""

    def sample(self) -> None:
        """A look at the hosts, once a simulated second and before every crash."""

    async def final(self) -> None:
        """The liveness checks, after every fault is mended and the run has settled."""
