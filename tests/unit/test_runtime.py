"""The Runtime: seeds split per component independently of order, secrets seeded only
when simulated, timeouts on the component's clock, spawned tasks tracked and stopped."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from vsim.clock import SimClock, WallClock
from vsim.passwords import TOKEN_LENGTH, token_problem
from vsim.runtime import Runtime


def draws(runtime: Runtime) -> tuple:
    return (runtime.random.random(), runtime.uuid(), runtime.hex_id(8), runtime.token())


def test_a_child_depends_on_the_seed_and_its_name_not_on_the_order_children_are_made():
    first = Runtime.simulated(SimClock(), 42)
    a_then_b = (draws(first.child("esxi-01")), draws(first.child("esxi-02")))
    second = Runtime.simulated(SimClock(), 42)
    b = draws(second.child("esxi-02"))
    second.child("vcenter")
    a = draws(second.child("esxi-01"))
    assert a_then_b == (a, b)
    assert a != b
    assert draws(Runtime.simulated(SimClock(), 43).child("esxi-01")) != a
    assert first.child("esxi-01").child("boot-1").name == "esxi-01/boot-1"


def test_a_simulated_runtime_draws_its_secrets_from_the_seed_and_keeps_ids_apart():
    one, two = Runtime.simulated(SimClock(), 7), Runtime.simulated(SimClock(), 7)
    assert [one.token() for _ in range(3)] == [two.token() for _ in range(3)]
    # Secrets are a stream of their own: drawing them does not shift the ids.
    assert one.uuid() == Runtime.simulated(SimClock(), 7).uuid()
    assert isinstance(one.secure_random, random.Random)
    assert not isinstance(one.secure_random, random.SystemRandom)


def test_a_live_runtime_takes_its_secrets_from_the_os():
    live = Runtime.live(WallClock(), "vcenter")
    assert not live.simulated
    assert isinstance(live.secure_random, random.SystemRandom)
    # The same seed does not give the same secrets when live.
    again = Runtime(live.clock, live.seed, "vcenter", simulated=False)
    assert again.uuid() == Runtime(live.clock, live.seed, "x", simulated=False).uuid()
    assert live.token() != again.token()
    assert live.child("esxi-01").simulated is False
    assert Runtime.live(WallClock()).seed != Runtime.live(WallClock()).seed


def test_ids_and_tokens_have_their_shapes():
    runtime = Runtime.simulated(SimClock(), 1)
    assert runtime.uuid().version == 4
    assert len(runtime.hex_id(8)) == 8 and int(runtime.hex_id(8), 16) >= 0
    serial = runtime.hex_id(16)
    assert len(serial) == 16 and serial == serial.lower()
    for token in (runtime.token(), Runtime.live(WallClock()).token()):
        assert len(token) == TOKEN_LENGTH and token_problem(token) is None
    assert len(runtime.secret_bytes(16)) == 16


async def test_a_timeout_runs_on_the_runtimes_clock():
    clock = SimClock()
    runtime = Runtime.simulated(clock, 1)
    never = asyncio.Event()
    waiting = asyncio.get_running_loop().create_task(runtime.wait_for(never.wait(), 16))
    await clock.advance(15.9)
    assert not waiting.done()  # real time passes, the simulated 16 s have not
    await clock.advance(0.2)
    with pytest.raises(TimeoutError):
        await waiting
    assert clock.now() == pytest.approx(16.1)


class AskedClock:
    """A fast clock that records what it is asked to sleep (in its own seconds)."""

    speed = 1000.0

    def __init__(self) -> None:
        self.asked: list[float] = []

    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)

    def call_later(self, seconds: float, callback) -> asyncio.TimerHandle:
        self.asked.append(seconds)
        return asyncio.get_running_loop().call_soon(callback)


async def test_a_timeout_is_that_many_seconds_of_the_runtimes_clock():
    """The timeout is asked of the runtime's own clock in its seconds (a WallClock
    turns them into seconds / speed of real time: test_clock.py), not of real time."""
    clock = AskedClock()
    runtime = Runtime.live(clock)
    with pytest.raises(TimeoutError):
        await runtime.wait_for(asyncio.Event().wait(), 16)
    assert clock.asked == [16]


async def test_a_result_in_time_and_an_outside_cancel_are_not_timeouts():
    clock = SimClock()
    runtime = Runtime.simulated(clock, 1)

    async def answer() -> str:
        await clock.sleep(1)
        return "done"

    waiting = asyncio.get_running_loop().create_task(runtime.wait_for(answer(), 5))
    await clock.advance(10)
    assert await waiting == "done"
    blocked = asyncio.get_running_loop().create_task(runtime.wait_for(asyncio.Event().wait(), 5))
    await asyncio.sleep(0)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked


async def test_spawned_tasks_are_named_tracked_and_stopped(caplog: pytest.LogCaptureFixture):
    clock = SimClock()
    runtime = Runtime.simulated(clock, 1, "esxi-01")
    forever = runtime.spawn(asyncio.Event().wait(), "heartbeat")
    assert forever.get_name() == "esxi-01/heartbeat"
    assert runtime.tasks == [forever]

    async def broken() -> None:
        raise ValueError("bad")

    with caplog.at_level(logging.ERROR, logger="vsim.runtime"):
        failed = runtime.spawn(broken(), "broken")
        await asyncio.gather(failed, return_exceptions=True)
        await asyncio.sleep(0)
    assert "esxi-01/broken failed" in caplog.text
    assert runtime.tasks == [forever]
    await runtime.stop()
    assert forever.cancelled() and runtime.tasks == []
    crashed = runtime.spawn(asyncio.Event().wait(), "guest")
    runtime.halt()
    await asyncio.gather(crashed, return_exceptions=True)
    assert crashed.cancelled()
