"""Tasks and events of the vCenter core: interrupted tasks, the live event stream."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from vclab import ERROR, SUCCESS, T0, Lab

from vsim.clock import SimClock
from vsim.faults import InvalidArgument
from vsim.runtime import Runtime
from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.tasks import TaskManager


def test_task_left_running_by_a_previous_vcenter_is_closed_with_an_error(tmp_path: Path):
    inventory = Inventory(tmp_path / "inventory.sqlite")
    running = common_pb2.Task(
        name="PowerOnVM_Task", entity="vm-001", state=common_pb2.TASK_STATE_RUNNING
    )
    inventory.add_task(running)
    done = common_pb2.Task(name="CreateVM_Task", entity="vm-001", state=SUCCESS, result="vm-001")
    inventory.add_task(done)
    inventory.close()

    inventory = Inventory(tmp_path / "inventory.sqlite")
    tasks = TaskManager(inventory, Runtime.simulated(SimClock(T0 + 5), 0))
    assert tasks.close_interrupted() == 1
    closed = tasks.get(running.id)
    assert (closed.state, closed.error.name, closed.complete_time) == (
        ERROR,
        "SystemError",
        T0 + 5,
    )
    assert "restarted" in closed.error.message
    assert tasks.get(done.id) == done
    assert tasks.close_interrupted() == 0
    inventory.close()


async def test_task_that_raises_an_unexpected_exception_is_recorded_as_system_error(
    tmp_path: Path,
):
    inventory = Inventory(tmp_path / "inventory.sqlite")
    tasks = TaskManager(inventory, Runtime.simulated(SimClock(T0), 0))

    async def broken(task: common_pb2.Task) -> str:
        raise KeyError("internal detail")

    started = tasks.start("Broken_Task", "vm-001", "someone", broken, kind="vm")
    done = await tasks.wait(started.id, 5)
    assert (done.state, done.error.name) == (ERROR, "SystemError")
    assert "internal detail" not in done.error.message
    # The entity is free again.
    again = tasks.start("Broken_Task", "vm-001", "someone", broken, kind="vm")
    await tasks.wait(again.id, 5)
    inventory.close()


async def test_wait_returns_the_unfinished_task_after_its_timeout(tmp_path: Path):
    inventory = Inventory(tmp_path / "inventory.sqlite")
    clock = SimClock(T0)
    tasks = TaskManager(inventory, Runtime.simulated(clock, 0))
    release = asyncio.Event()

    async def slow(task: common_pb2.Task) -> str:
        await release.wait()
        return "done"

    started = tasks.start("Slow_Task", "vm-001", "someone", slow, kind="vm")
    waiting = asyncio.get_running_loop().create_task(tasks.wait(started.id, 0.01))
    await clock.advance(0.01)  # the timeout is on vCenter's clock
    waited = await waiting
    assert waited.state == common_pb2.TASK_STATE_RUNNING
    assert [t.state for t in tasks.recent(10)] == [common_pb2.TASK_STATE_RUNNING]
    release.set()
    finished = await tasks.wait(started.id, 5)
    assert (finished.state, finished.result) == (SUCCESS, "done")
    await tasks.drain()
    inventory.close()


async def test_event_keys_increase_and_page(tmp_path: Path):
    inventory = Inventory(tmp_path / "inventory.sqlite")
    events = EventLog(inventory, SimClock(T0))
    posted = [events.post("TestEvent", f"event {i}", vm=f"vm-{i}") for i in range(5)]
    assert [e.key for e in posted] == sorted({e.key for e in posted})
    assert [e.message for e in events.after(posted[1].key, limit=2)] == ["event 2", "event 3"]
    assert all(e.created_time == T0 for e in events.after(0))
    inventory.close()


async def list_events(lab: Lab, **request) -> pb.ListEventsResponse:
    return await lab.client.event_page(**request)


async def test_list_events_newest_page_counts_the_older_ones(lab: Lab):
    start = await lab.last_event_key()
    before = len(await lab.events())
    posted = [lab.vc.events.post("TestEvent", f"event {i}") for i in range(30)]
    page = await list_events(lab, limit=10, newest=True)
    assert [e.message for e in page.events] == [f"event {i}" for i in range(20, 30)]
    assert (page.older, page.newer) == (before + 20, 0)
    # After a key: the newest that are still after it, counting only those left out.
    page = await list_events(lab, after_key=posted[24].key, limit=10, newest=True)
    assert [e.message for e in page.events] == [f"event {i}" for i in range(25, 30)]
    assert (page.older, page.newer) == (0, 0)
    page = await list_events(lab, after_key=start, limit=50, newest=True)
    assert (len(page.events), page.older, page.newer) == (30, 0, 0)


async def test_list_events_pages_forward_from_a_key(lab: Lab):
    posted = [lab.vc.events.post("TestEvent", f"event {i}") for i in range(25)]
    page = await list_events(lab, after_key=posted[4].key, limit=10)
    assert [e.message for e in page.events] == [f"event {i}" for i in range(5, 15)]
    assert (page.older, page.newer) == (0, 10)
    page = await list_events(lab, after_key=page.events[-1].key, limit=10)
    assert [e.message for e in page.events] == [f"event {i}" for i in range(15, 25)]
    assert (page.older, page.newer) == (0, 0)
    page = await list_events(lab, after_key=posted[-1].key, limit=10)
    assert (list(page.events), page.older, page.newer) == ([], 0, 0)


async def test_watch_events_replays_then_follows_live(lab: Lab):
    start = await lab.last_event_key()
    await lab.create("vm-001")
    stream = lab.client.watch_events(start)
    first = await asyncio.wait_for(anext(stream), 5)
    assert (first.type, first.vm) == ("VmCreatedEvent", "vm-001")
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    assert not pending.done()
    await lab.power_on("vm-001")
    live = await asyncio.wait_for(pending, 5)
    assert (live.type, live.vm) == ("VmPoweredOnEvent", "vm-001")
    await stream.aclose()


async def test_watch_events_rejects_a_negative_key(lab: Lab):
    stream = lab.client.watch_events(-1)
    with pytest.raises(InvalidArgument):
        await anext(stream)
