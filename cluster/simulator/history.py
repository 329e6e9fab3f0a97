"""A run's history: every fault, task, lock grant and release and VM start and stop,
in the order it happened, with its simulated time.

Lines are text made only from simulated times and seeded values, so two runs of one
seed give byte-identical timelines on any machine; the digest is their SHA-256.
Violations are kept beside the events, each with the event that revealed it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from vsim.clock import Clock


@dataclass(frozen=True)
class Event:
    at: float
    """Simulated seconds since the run began."""
    kind: str
    detail: str

    def line(self) -> str:
        return f"{self.at:10.3f}  {self.kind:<16} {self.detail}"


@dataclass(frozen=True)
class Violation:
    checker: str
    """The invariant broken (a checker's name)."""
    event: Event
    """The first event that broke it."""


class History:
    def __init__(self, clock: Clock, start: float) -> None:
        self._clock = clock
        self._start = start
        self.events: list[Event] = []
        self.violations: list[Violation] = []
        self._digest = hashlib.sha256()

    def now(self) -> float:
        return self._clock.now() - self._start

    def record(self, kind: str, detail: str) -> Event:
        event = Event(round(self.now(), 6), kind, detail)
        self.events.append(event)
        self._digest.update(event.line().encode() + b"\n")
        return event

    def violate(self, checker: str, detail: str) -> Violation:
        """Records a broken invariant as an event of its own, and keeps it."""
        violation = Violation(checker, self.record("VIOLATION", f"{checker}: {detail}"))
        self.violations.append(violation)
        return violation

    def digest(self) -> str:
        return self._digest.hexdigest()

    def timeline(self) -> str:
        return "".join(event.line() + "\n" for event in self.events)
