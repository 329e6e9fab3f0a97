"""The clocks: SimClock's exact timelines on the virtual loop, and WallClock's speed
scaling."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace

import pytest

import vsim.clock
from vsim import virtual_time
from vsim.clock import SimClock, WallClock
from vsim.virtual_time import VirtualEventLoop


async def _started(*coroutines) -> list[asyncio.Task]:
    """Starts each coroutine as a task, in order, and lets each reach its first sleep."""
    tasks = []
    for coroutine in coroutines:
        tasks.append(asyncio.get_running_loop().create_task(coroutine))
        await asyncio.sleep(0)
    return tasks


async def test_simclock_wakes_sleepers_in_deadline_order():
    clock = SimClock()
    log: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        log.append((name, clock.now()))

    await _started(sleeper("c", 16), sleeper("a", 3), sleeper("b", 6), sleeper("z", 0))
    await clock.advance(20)
    assert log == [("z", 0), ("a", 3), ("b", 6), ("c", 16)]
    assert clock.now() == 20


async def test_simclock_equal_deadlines_wake_in_start_order():
    clock = SimClock()
    log: list[str] = []

    async def sleeper(name: str) -> None:
        await clock.sleep(5)
        log.append(name)

    await _started(*(sleeper(name) for name in ["d", "b", "a", "c", "e"]))
    await clock.advance(5)
    assert log == ["d", "b", "a", "c", "e"]


async def test_simclock_periodic_loop_has_an_exact_timeline():
    clock = SimClock(start=100.0)
    log: list[float] = []

    async def every_three_seconds() -> None:
        while True:
            log.append(clock.now() - 100.0)
            await clock.sleep(3)

    (task,) = await _started(every_three_seconds())
    await clock.advance(10)
    assert log == [0, 3, 6, 9]
    await clock.advance(2)
    assert log == [0, 3, 6, 9, 12]
    assert clock.now() == 112.0
    task.cancel()


async def test_simclock_interleaves_two_loops_deterministically():
    clock = SimClock()
    log: list[tuple[str, float]] = []

    async def loop(name: str, period: float) -> None:
        while True:
            await clock.sleep(period)
            log.append((name, clock.now()))

    tasks = await _started(loop("fast", 2), loop("slow", 3))
    await clock.advance(6)
    # At 6 both are due; slow started that sleep (at 3) before fast did (at 4).
    assert log == [("fast", 2), ("slow", 3), ("fast", 4), ("slow", 6), ("fast", 6)]
    for task in tasks:
        task.cancel()


async def test_simclock_does_not_wake_before_the_deadline():
    clock = SimClock()
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(10)
        woke.append(clock.now())

    (task,) = await _started(sleeper())
    await clock.advance(9.999)
    assert woke == []
    assert clock.next_deadline == 10
    await clock.advance(0.001)
    assert woke == [pytest.approx(10)]
    assert clock.next_deadline is None
    assert task.done()


async def test_simclock_negative_sleep_wakes_at_now():
    clock = SimClock(start=50)
    woke: list[float] = []

    async def sleeper() -> None:
        await clock.sleep(-5)
        woke.append(clock.now())

    await _started(sleeper())
    await clock.advance(0)
    assert woke == [50]


async def test_simclock_cannot_go_backwards():
    clock = SimClock(start=5)
    with pytest.raises(ValueError):
        await clock.advance(-1)
    assert clock.now() == 5


async def test_simclock_skips_a_cancelled_sleeper():
    clock = SimClock()
    log: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        log.append(name)

    first, _ = await _started(sleeper("cancelled", 1), sleeper("kept", 2))
    first.cancel()
    await asyncio.sleep(0)
    await clock.advance(5)
    assert log == ["kept"]


async def test_simclock_is_the_virtual_loops_time_and_shares_its_timers():
    loop = asyncio.get_running_loop()
    clock = SimClock(start=1_000.0)
    assert clock.now() == loop.time() == 1_000.0  # a fresh loop takes the clock's start
    log: list[tuple[str, float]] = []

    async def sleeper() -> None:
        await clock.sleep(4)
        log.append(("slept", clock.now()))

    async def waiter() -> None:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 2)
        except TimeoutError:
            log.append(("timed out", clock.now()))

    await _started(sleeper(), waiter())
    await clock.advance(10)
    assert log == [("timed out", 1_002.0), ("slept", 1_004.0)]
    assert clock.now() == loop.time() == 1_010.0


async def test_a_second_simclock_reads_the_same_timeline_from_its_own_start():
    first = SimClock(start=500.0)
    await first.advance(30)
    rebooted = SimClock()  # a host booted again later in the test: its clock from 0
    assert (first.now(), rebooted.now()) == (530.0, 0.0)
    await rebooted.advance(5)
    assert (first.now(), rebooted.now()) == (535.0, 5.0)
    assert rebooted.next_deadline is None


def test_simclock_moves_to_a_new_loop_once_its_loop_is_closed():
    clock = SimClock(start=7.0)
    virtual_time.run(clock.advance(5))
    assert clock.now() == 12.0  # outside any loop, time stands where it was left
    virtual_time.run(clock.advance(5))
    assert clock.now() == 17.0


def test_simclock_refuses_two_open_loops_and_real_ones():
    clock = SimClock()
    loop = VirtualEventLoop()
    try:
        loop.run_until_complete(clock.advance(1))
        with pytest.raises(RuntimeError, match="another event loop"):
            virtual_time.run(clock.advance(1))
    finally:
        loop.close()
    with pytest.raises(TypeError, match="VirtualEventLoop"):
        asyncio.run(SimClock().sleep(1))


@pytest.mark.parametrize("seconds", [float("inf"), float("nan")])
async def test_simclock_advances_only_by_a_finite_time(seconds: float):
    clock = SimClock()
    with pytest.raises(ValueError, match="finite"):
        await clock.advance(seconds)
    assert clock.now() == 0.0


async def test_wallclock_refuses_to_sleep_on_the_virtual_loop():
    with pytest.raises(TypeError, match="use SimClock"):
        await WallClock().sleep(1)


def _fake_time(monkeypatch: pytest.MonkeyPatch, wall: float = 5_000.0) -> list[float]:
    """Makes vsim.clock see a monotonic clock the test moves by hand."""
    mono = [1_000.0]
    fake = SimpleNamespace(time=lambda: wall, monotonic=lambda: mono[0])
    monkeypatch.setattr(vsim.clock, "time", fake)
    return mono


def test_wallclock_scales_real_time_by_speed(monkeypatch: pytest.MonkeyPatch):
    mono = _fake_time(monkeypatch)
    clock = WallClock(speed=60, start=1_000_000.0)
    assert clock.now() == 1_000_000.0
    mono[0] += 0.5
    assert clock.now() == 1_000_030.0
    mono[0] += 10
    assert clock.now() == 1_000_630.0


def test_wallclock_starts_at_wall_time_by_default(monkeypatch: pytest.MonkeyPatch):
    mono = _fake_time(monkeypatch, wall=1_234.0)
    clock = WallClock(speed=2)
    assert clock.now() == 1_234.0
    mono[0] += 3
    assert clock.now() == 1_240.0


def test_wallclock_is_monotonic():
    clock = WallClock(speed=1000)
    readings = [clock.now() for _ in range(2000)]
    assert readings == sorted(readings)
    assert readings[-1] >= readings[0]


@pytest.mark.real_loop  # real time must pass: it measures it
async def test_wallclock_sleep_is_scaled_by_speed():
    clock = WallClock(speed=1000)
    before_real, before_sim = time.monotonic(), clock.now()
    await clock.sleep(50)  # 50 simulated seconds = 50 ms real
    real, simulated = time.monotonic() - before_real, clock.now() - before_sim
    assert 0.04 <= real < 1.0
    assert simulated >= 49.9


@pytest.mark.parametrize("speed", [0, -1, -0.001, float("nan"), float("-inf")])
def test_wallclock_rejects_speed_not_above_zero(speed: float):
    with pytest.raises(ValueError, match="speed"):
        WallClock(speed=speed)


def test_wallclock_rejects_infinite_speed():
    try:
        clock = WallClock(speed=float("inf"))
    except ValueError:
        return
    assert math.isfinite(clock.now())
