"""The one clock every part of vsim reads time from.

`WallClock(speed)` runs simulated time `speed` times faster than real time, so the
vSphere intervals (3 s VMFS heartbeats, 16 s lock timeouts, ...) stay written in
simulated seconds. `SimClock` is virtual time that only moves when the deterministic
scheduler advances it. Nothing else in vsim calls `time.time()` or `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from typing import Protocol


class Clock(Protocol):
    """Simulated time, in seconds since the Unix epoch."""

    speed: float

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """Real time scaled by `speed` (simulated seconds per real second)."""

    def __init__(self, speed: float = 1.0, start: float | None = None) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"clock speed must be a finite number > 0, got {speed!r}")
        self.speed = float(speed)
        self._start = time.time() if start is None else float(start)
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._start + (time.monotonic() - self._mono0) * self.speed

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.speed)


class SimClock:
    """Virtual time: `sleep` waits until `advance` moves the clock past its deadline.

    Sleepers whose deadlines are equal wake in the order they started sleeping, so a
    run is deterministic.
    """

    speed = float("inf")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._now + max(0.0, seconds), next(self._seq), future))
        await future

    @property
    def next_deadline(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    async def advance(self, seconds: float) -> None:
        """Moves time forward, waking each sleeper at its deadline in order."""
        if seconds < 0:
            raise ValueError("a SimClock cannot go backwards")
        await _settle()  # tasks started just now get to their first sleep first
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._timers)
            self._now = deadline
            if not future.done():
                future.set_result(None)
            await _settle()
        self._now = target


async def _settle(limit: int = 10_000) -> None:
    """Yields until the event loop has nothing ready to run: the woken coroutines and
    all they set off have run (or wait on a timer, I/O or a thread)."""
    loop = asyncio.get_running_loop()
    for _ in range(limit):
        await asyncio.sleep(0)
        ready = getattr(loop, "_ready", None)  # CPython's run queue
        if ready is not None and not ready:
            return
