"""The one clock every part of vsim reads time from.

`WallClock(speed)` runs simulated time `speed` times faster than real time, so the
vSphere intervals (3 s VMFS heartbeats, 16 s lock timeouts, ...) stay written in
simulated seconds. `SimClock` is the virtual time of `vsim.virtual_time`'s event loop,
which jumps to the next timer whenever nothing is ready to run. Nothing else in vsim
calls `time.time()` or `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Protocol

from vsim.virtual_time import VirtualEventLoop


class Clock(Protocol):
    """Simulated time, in seconds since the Unix epoch."""

    speed: float

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...

    def call_later(self, seconds: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        """Runs callback once `seconds` of this clock have passed (a timer on the
        running loop; cancel the handle to call it off)."""
        ...


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
        if isinstance(asyncio.get_running_loop(), VirtualEventLoop):
            # Its sleeps would take no real time while now() follows real time.
            raise TypeError("WallClock sleeps in real time; on the virtual loop use SimClock")
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, seconds) / self.speed, callback)


class SimClock:
    """Virtual time: the clock of vsim's `VirtualEventLoop` (vsim/virtual_time.py).

    `now()` is the loop's time and `sleep()` a timer on it, so sleepers, `wait_for`
    timeouts and every other timer share one timeline: whenever nothing is ready, the
    loop jumps to the next of them. `advance(seconds)` moves the loop's time forward,
    waking each sleeper at its deadline and letting all it sets off run before the
    next; sleepers whose deadlines are equal wake in the order they started sleeping,
    so a run is deterministic.

    The clock binds to the loop it is first used on. On a loop whose clock nothing has
    used yet, it sets the loop's time to `start` (then `now()` is exactly
    `loop.time()`); on a loop already under way, such as a second host booted later
    in one test, it reads the loop's time shifted to begin at `start`. Once its loop
    is closed it may move on to another (time stands still in between, as it did for
    whatever ran on the old loop); using it on two open loops, or on a real one, is an
    error: virtual time cannot be kept on a real loop.
    """

    speed = float("inf")

    def __init__(self, start: float = 0.0) -> None:
        self._start = float(start)
        self._loop: VirtualEventLoop | None = None
        self._offset = 0.0
        """This clock's time minus the loop's."""

    def _bound(self) -> VirtualEventLoop | None:
        """The loop this clock runs on (bound at first use); None before any loop."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return self._loop  # outside a loop, time stands where the loop left it
        if running is not self._loop:
            self._bind(running)
        return running

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError("this SimClock runs on another event loop, still open")
        if not isinstance(loop, VirtualEventLoop):
            raise TypeError(
                "SimClock needs vsim's VirtualEventLoop (vsim.virtual_time.run, or the "
                f"unit tests' loop), not {type(loop).__name__}"
            )
        now = self._start if self._loop is None else self._loop.time() + self._offset
        if loop.pristine:
            loop.set_start(now)
        self._loop, self._offset = loop, now - loop.time()

    def now(self) -> float:
        loop = self._bound()
        return self._start if loop is None else loop.time() + self._offset

    async def sleep(self, seconds: float) -> None:
        """Wakes at now() + seconds (at once for seconds <= 0, after what is due now)."""
        loop = self._bound()
        future = loop.create_future()
        timer = loop.call_at(loop.time() + max(0.0, seconds), _wake, future)
        try:
            await future
        finally:
            timer.cancel()

    def call_later(self, seconds: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        loop = self._bound()
        return loop.call_at(loop.time() + max(0.0, seconds), callback)

    @property
    def next_deadline(self) -> float | None:
        """When the loop's next timer is due, on this clock (None if none is set)."""
        loop = self._bound()
        when = loop.next_timer() if loop is not None else None
        return None if when is None else when + self._offset

    async def advance(self, seconds: float) -> None:
        """Moves time forward, waking each sleeper at its deadline in order."""
        if seconds < 0:
            raise ValueError("a SimClock cannot go backwards")
        if not math.isfinite(seconds):
            raise ValueError(f"a SimClock advances by a finite time, got {seconds!r}")
        loop = self._bound()
        await loop.settle()  # tasks started just now get to their first sleep first
        await self.sleep(seconds)  # the loop runs every timer before this one, in order
        await loop.settle()  # and what is due at the target, before the caller goes on


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
