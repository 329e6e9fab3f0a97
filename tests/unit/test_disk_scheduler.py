"""The host's disk scheduler: per-VM queues per target, served round-robin, at most
the queue depth outstanding per target; Storage I/O Control's shares, queue-depth
throttling and IOPS limits on a virtual clock."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim import virtual_time
from vsim.clock import SimClock
from vsim.faults import InvalidArgument
from vsim.host.storage.disk_scheduler import (
    DiskAllocation,
    DiskScheduler,
    SiocSettings,
    disk_allocation,
)
from vsim.runtime import Runtime


async def test_a_busy_vm_cannot_starve_the_others():
    scheduler = DiskScheduler(queue_depth=1)
    gate = asyncio.Event()
    done: list[str] = []

    async def io(vm: str) -> str:
        await gate.wait()
        done.append(vm)
        return vm

    noisy = [scheduler.submit("ds", "noisy", lambda: io("noisy")) for _ in range(20)]
    quiet = [scheduler.submit("ds", f"vm-{i}", lambda i=i: io(f"vm-{i}")) for i in range(3)]
    tasks = [asyncio.ensure_future(c) for c in noisy + quiet]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert results == ["noisy"] * 20 + ["vm-0", "vm-1", "vm-2"]
    # The three quiet VMs are served within the first round, not after 20 noisy I/Os.
    assert done.index("vm-2") <= 4
    assert scheduler.completed("ds") == {"noisy": 20, "vm-0": 1, "vm-1": 1, "vm-2": 1}


@settings(max_examples=40, deadline=None)
@given(
    depth=st.integers(1, 6),
    load=st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 12), min_size=1),
)
def test_round_robin_order_and_queue_depth(depth: int, load: dict[str, int]):
    async def scenario() -> None:
        scheduler = DiskScheduler(queue_depth=depth)
        outstanding = 0
        most = 0

        async def io() -> None:
            nonlocal outstanding, most
            outstanding += 1
            most = max(most, outstanding)
            await asyncio.sleep(0)
            outstanding -= 1

        tasks = [
            asyncio.ensure_future(scheduler.submit("ds", vm, io))
            for vm, count in load.items()
            for _ in range(count)
        ]
        await asyncio.gather(*tasks)
        assert most <= depth
        served = scheduler.served("ds")
        assert sorted(served) == sorted(vm for vm, n in load.items() for _ in range(n))
        # Round-robin once everything is queued (the first `depth` commands went out
        # as they came): between two turns of one VM, every other VM that still has
        # I/O waiting gets exactly one turn.
        rest = served[depth:]
        for vm in set(rest):
            turns = [i for i, v in enumerate(rest) if v == vm]
            for a, b in zip(turns, turns[1:], strict=False):
                between = rest[a + 1 : b]
                waiting = {v for v in rest[b + 1 :] if v != vm}
                assert waiting <= set(between), (vm, rest)
                assert len(between) == len(set(between)), (vm, rest)

    virtual_time.run(scenario())


async def test_targets_are_independent_and_errors_reach_the_submitter():
    scheduler = DiskScheduler(queue_depth=1)

    async def fail() -> None:
        raise OSError("path down")

    with pytest.raises(OSError):
        await scheduler.submit("ds-a", "vm", fail)
    assert await scheduler.submit("ds-b", "vm", lambda: asyncio.sleep(0, "ok")) == "ok"
    assert scheduler.completed("ds-a") == {"vm": 1}


def test_queue_depth_must_be_positive():
    with pytest.raises(InvalidArgument):
        DiskScheduler(queue_depth=0)


# -- Storage I/O Control -----------------------------------------------------------------


async def _settle() -> None:
    """Lets every ready coroutine run up to its next wait (a command's clock.sleep)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def _advance(clock: SimClock, seconds: float) -> None:
    await _settle()
    await clock.advance(seconds)


async def _run_until_done(clock: SimClock, tasks: list[asyncio.Future], step: float) -> None:
    """Advances virtual time until every task is done (bounded, so a stall fails)."""
    for _ in range(100_000):
        if all(t.done() for t in tasks):
            return
        await _advance(clock, step)
    raise AssertionError("the I/O never finished")


def _backlogged(served: list[str], a: str, b: str) -> list[str]:
    """The dispatches while both a and b still had I/O waiting: up to the last of
    whichever finished first."""
    end = min(max(i for i, v in enumerate(served) if v == vm) for vm in (a, b))
    return served[: end + 1]


async def test_congested_target_serves_by_shares():
    clock = SimClock()
    scheduler = DiskScheduler(queue_depth=4, runtime=Runtime.simulated(clock, 0))
    scheduler.set_disk_allocation("ds", "gold", disk_allocation("high"))
    scheduler.set_disk_allocation("ds", "silver", disk_allocation("normal"))

    async def io() -> None:
        await clock.sleep(0.050)  # 50 ms: above the 30 ms threshold

    tasks = [
        asyncio.ensure_future(scheduler.submit("ds", vm, io))
        for vm in ("gold", "silver")
        for _ in range(200)
    ]
    await asyncio.sleep(0)
    await _advance(clock, 0.050)  # the first completions measure the latency
    assert scheduler.latency_ms("ds") == pytest.approx(50)
    assert scheduler.congested("ds")
    await _run_until_done(clock, tasks, 0.050)
    both = _backlogged(scheduler.served("ds"), "gold", "silver")[8:]  # after the first two rounds
    ratio = both.count("gold") / both.count("silver")
    assert 1.9 <= ratio <= 2.1, ratio
    assert scheduler.completed("ds") == {"gold": 200, "silver": 200}


async def test_below_the_threshold_the_order_stays_round_robin():
    clock = SimClock()
    scheduler = DiskScheduler(queue_depth=4, runtime=Runtime.simulated(clock, 0))
    scheduler.set_disk_allocation("ds", "gold", disk_allocation("high"))  # shares unused

    async def io() -> None:
        await clock.sleep(0.010)  # 10 ms: a healthy datastore

    tasks = [
        asyncio.ensure_future(scheduler.submit("ds", vm, io))
        for vm in ("gold", "silver", "bronze")
        for _ in range(40)
    ]
    await asyncio.sleep(0)
    await _run_until_done(clock, tasks, 0.010)
    assert not scheduler.congested("ds")
    assert scheduler.latency_ms("ds") == pytest.approx(10)
    assert scheduler.device_queue_depth("ds") == 4
    # The first 4 went out as they came (all gold); then strict turns, gold first as
    # it was first in the ring.
    rounds = ["gold", "silver", "bronze"] * 36 + ["silver", "bronze"] * 4
    assert scheduler.served("ds")[4:] == rounds


async def test_iops_limit_holds_over_every_window():
    clock = SimClock()
    scheduler = DiskScheduler(runtime=Runtime.simulated(clock, 0))
    scheduler.set_disk_allocation("ds", "capped", DiskAllocation(iops_limit=20))
    started: dict[str, list[float]] = {"capped": [], "free": []}

    async def io(vm: str) -> None:
        started[vm].append(clock.now())
        await clock.sleep(0.001)

    tasks = [
        asyncio.ensure_future(scheduler.submit("ds", vm, lambda vm=vm: io(vm)))
        for vm in ("capped", "free")
        for _ in range(60 if vm == "capped" else 200)
    ]
    await asyncio.sleep(0)
    await _run_until_done(clock, tasks, 0.010)
    capped = started["capped"]
    # At most 20 dispatches in any one second: the 21st after any is >= 1 s later.
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(capped, capped[20:], strict=False))
    # ... and the limit is a pace, not a stall: 60 commands in ~3 s.
    assert capped[-1] == pytest.approx(59 / 20, abs=0.01)
    # The unlimited VM is not held back by the capped one's waiting.
    assert max(started["free"]) < 0.05


async def test_sioc_throttles_the_device_queue_and_gives_it_back():
    clock = SimClock()
    sioc = SiocSettings(window_s=1.0)
    scheduler = DiskScheduler(queue_depth=32, runtime=Runtime.simulated(clock, 0), sioc=sioc)
    device = {"ms_per_command": 2.0, "fixed_ms": 0.0}
    seen: list[tuple[int, int]] = []
    stop = False

    async def io() -> None:
        outstanding = scheduler.outstanding("ds")
        seen.append((outstanding, scheduler.device_queue_depth("ds")))
        ms = device["fixed_ms"] or device["ms_per_command"] * outstanding
        await clock.sleep(ms / 1000)

    async def guest(vm: str) -> None:
        while not stop:
            await scheduler.submit("ds", vm, io)

    async def run_for(seconds: float) -> None:
        for _ in range(int(seconds / 0.25)):
            await _advance(clock, 0.25)

    def start() -> list[asyncio.Future]:
        return [asyncio.ensure_future(guest(f"vm-{i % 2}")) for i in range(80)]

    # A queue-bound device: latency grows 2 ms per outstanding command, 64 ms at the
    # full 32. PARDA settles where 2 ms x w ~ 30 ms: w ~ 16.
    workers = start()
    await run_for(12)
    assert scheduler.congested("ds")
    assert 4 <= scheduler.device_queue_depth("ds") <= 20
    assert all(outstanding <= limit for outstanding, limit in seen), "queue depth exceeded"
    assert max(o for o, _ in seen[-500:]) <= 20
    # The device recovers (1 ms per command): the depth climbs back to 32.
    device["fixed_ms"] = 1.0
    await run_for(4)
    assert not scheduler.congested("ds")
    assert scheduler.device_queue_depth("ds") == 32
    # Congested again, then the guests stop: after a window with no I/O the next
    # command finds the full depth at once.
    device["fixed_ms"] = 0.0
    await run_for(12)
    assert scheduler.device_queue_depth("ds") <= 20
    stop = True
    await _run_until_done(clock, workers, 0.25)
    await run_for(2)
    await scheduler.submit("ds", "vm-0", lambda: asyncio.sleep(0))
    assert scheduler.device_queue_depth("ds") == 32
    assert not scheduler.congested("ds")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set_disk_allocation("ds", "vm", DiskAllocation(shares=0)),
        lambda s: s.set_disk_allocation("ds", "vm", DiskAllocation(shares=-1000)),
        lambda s: s.set_disk_allocation("ds", "vm", DiskAllocation(iops_limit=0)),
        lambda s: s.set_disk_allocation("ds", "vm", DiskAllocation(iops_limit=-2)),
        lambda s: s.set_disk_allocation("ds", "vm", DiskAllocation(shares=1.5)),
        lambda s: s.set_disk_allocation("ds", "vm", disk_allocation("urgent")),
        lambda s: s.set_disk_allocation("ds", "vm", "high"),
        lambda s: s.set_disk_allocation("", "vm", DiskAllocation()),
        lambda s: s.set_congestion_threshold("ds", 4),
        lambda s: s.set_congestion_threshold("ds", 101),
        lambda s: s.set_congestion_threshold("ds", math.nan),
        lambda s: s.set_congestion_threshold("ds", "30ms"),
        lambda s: DiskScheduler(sioc=SiocSettings(window_s=0)),
        lambda s: DiskScheduler(sioc=SiocSettings(gamma=0)),
        lambda s: DiskScheduler(sioc=SiocSettings(congestion_threshold_ms=500)),
    ],
)
def test_bad_sioc_settings_are_refused_and_change_nothing(call):
    scheduler = DiskScheduler()
    scheduler.set_disk_allocation("ds", "vm", disk_allocation("low", iops_limit=100))
    scheduler.set_congestion_threshold("ds", 20)
    with pytest.raises(InvalidArgument):
        call(scheduler)
    assert scheduler.disk_allocation("ds", "vm") == DiskAllocation(500, 100)
    assert scheduler.congestion_threshold_ms("ds") == 20


def test_settings_defaults_and_forgetting():
    scheduler = DiskScheduler()
    assert scheduler.disk_allocation("ds", "vm") == DiskAllocation(1000, -1)
    assert scheduler.congestion_threshold_ms("ds") == 30
    assert scheduler.device_queue_depth("ds") == 32
    assert [disk_allocation(level).shares for level in ("low", "normal", "high")] == [
        500,
        1000,
        2000,
    ]
    scheduler.set_disk_allocation("ds", "vm", disk_allocation("high", 50))
    scheduler.forget_vm("vm")
    assert scheduler.disk_allocation("ds", "vm") == DiskAllocation()
