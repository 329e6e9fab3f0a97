"""`vsim events`: the newest events (how many older ones there are), paging on with
--after, --all, the table's columns, and --follow ending with a clear message when
vCenter goes away. Against a vCenter core in this process, as test_cli_json does."""

from __future__ import annotations

import asyncio
import re

import grpc
import pytest
from test_cli_json import Vsim, cluster, vsim  # noqa: F401 - the fixtures

from vsim.cluster import output
from vsim.dispatch import LocalTransport
from vsim.faults import HostConnectFault, from_rpc_error

LONG_TYPE = "AVeryLongEventTypeNameThatIsLongerThanAnyColumn"


def post(vc, count: int, type_: str = "TestEvent") -> list[int]:
    return [vc.events.post(type_, f"event {i}").key for i in range(count)]


def rows(text: str) -> list[list[str]]:
    """The table's lines split on its column gaps (two spaces or more)."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]


async def test_events_shows_the_newest_last_and_counts_the_older_ones(vsim: Vsim, cluster):  # noqa: F811
    vc = cluster[0]
    before = vc.events.count(0)
    post(vc, 120)
    page = await vsim("events")
    assert [e["message"] for e in page["events"]] == [f"event {i}" for i in range(20, 120)]
    assert (page["older"], page["newer"]) == (before + 20, 0)
    text = (await vsim("events", "--limit", "5", table=True)).splitlines()
    assert (
        text[0] == f"({before + 115} older events not shown: --limit N shows more, --all every one)"
    )
    assert rows(text[1]) == [["KEY", "TIME", "TYPE", "MESSAGE"]]
    assert [r[2:] for r in rows("\n".join(text[2:]))] == [
        ["TestEvent", f"event {i}"] for i in range(115, 120)
    ]


async def test_events_after_a_key_pages_forward_and_all_shows_every_one(vsim: Vsim, cluster):  # noqa: F811
    vc = cluster[0]
    keys = post(vc, 30)
    page = await vsim("events", "--after", str(keys[9]), "--limit", "5")
    assert [e["key"] for e in page["events"]] == keys[10:15]
    assert (page["older"], page["newer"]) == (0, 15)
    text = (await vsim("events", "--after", str(keys[9]), "--limit", "5", table=True)).splitlines()
    assert text[-1] == f"(15 newer events: `vsim events --after {keys[14]}` shows the next ones)"
    everything = await vsim("events", "--all")
    assert [e["key"] for e in everything["events"]] == list(range(1, keys[-1] + 1))
    assert (everything["older"], everything["newer"]) == (0, 0)
    after = await vsim("events", "--all", "--after", str(keys[-3]))
    assert [e["key"] for e in after["events"]] == keys[-2:]
    assert await vsim("events", "--after", str(keys[-1]), table=True) == (
        f"No events after key {keys[-1]}\n"
    )


async def test_a_long_event_type_keeps_its_distance_from_the_message(vsim: Vsim, cluster):  # noqa: F811
    vc = cluster[0]
    post(vc, 1, LONG_TYPE)
    text = await vsim("events", "--limit", "1", table=True)
    assert rows(text)[-1][2:] == [LONG_TYPE, "event 0"]
    (event,) = vc.events.newest(0, 1)
    assert rows(output.event_line(event))[0][2:] == [LONG_TYPE, "event 0"]  # --follow's lines


class Cancelled(grpc.RpcError):
    """What a streaming call gets when the server stops: CANCELLED, no fault."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "CANCELLED"


async def test_follow_prints_newest_then_live_and_says_when_vcenter_went_away(
    vsim: Vsim,  # noqa: F811
    cluster,  # noqa: F811
    monkeypatch,
    capsys,
):
    vc = cluster[0]
    keys = post(vc, 5)
    following = asyncio.Event()
    stream = LocalTransport.stream

    async def until_the_server_stops(self, method, request, session):
        following.set()
        async for item in stream(self, method, request, session):
            yield item
            if item.message == "live":
                raise from_rpc_error(Cancelled())

    monkeypatch.setattr(LocalTransport, "stream", until_the_server_stops)
    follow = asyncio.ensure_future(vsim("events", "--follow", "--limit", "2", table=True))
    await asyncio.wait_for(following.wait(), 10)
    live = vc.events.post("TestEvent", "live").key
    with pytest.raises(HostConnectFault, match="vCenter went away") as stopped:
        await asyncio.wait_for(follow, 10)
    assert f"`vsim events --follow --after {live}`" in stopped.value.message
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "TIME", "TYPE", "MESSAGE"]
    assert lines[1].startswith("(") and "older events not shown" in lines[1]
    shown = [(int(r[0]), r[-1]) for r in rows("\n".join(lines[2:]))]
    assert shown == [(keys[3], "event 3"), (keys[4], "event 4"), (live, "live")]


def test_a_stream_the_server_cancels_is_a_connection_fault():
    fault = from_rpc_error(Cancelled())
    assert isinstance(fault, HostConnectFault) and "went away" in fault.message
