"""The host's disk scheduler: per-VM queues per target, served round-robin, at most
the queue depth outstanding per target."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.faults import InvalidArgument
from vsim.host.disk_scheduler import DiskScheduler


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

    asyncio.run(scenario())


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
