"""`vsim tasks` and `vsim events`: recent tasks, and the event log (the newest,
paged with `--after`, all of it, or followed as it happens).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, positive_int
from vsim.faults import HostConnectFault
from vsim.v1 import common_pb2

if TYPE_CHECKING:
    from vsim.cluster.client import VCenterClient


TASK_COLUMNS = ["id", "name", "entity", "state", "result", "error", "user", "queued", "completed"]


async def cmd_tasks(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        tasks = await client.tasks(args.limit)
    rows = [task_row(t) for t in tasks]
    ctx.show(tasks, output.table(rows, TASK_COLUMNS))


EVENT_PAGE_MAX = 10_000
"""The most events one ListEvents call returns (`vsim events --all` pages through)."""


async def cmd_events(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        if args.follow:
            await follow_events(args, ctx, client)
            return
        page = await event_listing(args, client)
    if not page.events:
        text = "No events" + (f" after key {args.after}" if args.after else "")
    else:
        text = "\n".join([*older_note(page), output.events_table(page.events), *newer_note(page)])
    ctx.show(page, text)


async def event_listing(args: argparse.Namespace, client: VCenterClient) -> Any:
    """The events asked for: the newest --limit (default), --limit from --after on,
    or --all (from --after on) in pages."""
    if not args.all:
        if args.after is None:
            return await client.event_page(0, args.limit, newest=True)
        return await client.event_page(args.after, args.limit)
    page = await client.event_page(args.after or 0, EVENT_PAGE_MAX)
    events = list(page.events)
    while page.newer:
        page = await client.event_page(events[-1].key, EVENT_PAGE_MAX)
        events.extend(page.events)
    page.ClearField("events")
    page.events.extend(events)
    page.older = page.newer = 0
    return page


def older_note(page: Any) -> list[str]:
    if not page.older:
        return []
    return [f"({page.older} older events not shown: --limit N shows more, --all every one)"]


def newer_note(page: Any) -> list[str]:
    if not page.newer:
        return []
    last = page.events[-1].key
    return [f"({page.newer} newer events: `vsim events --after {last}` shows the next ones)"]


async def follow_events(args: argparse.Namespace, ctx: Context, client: VCenterClient) -> None:
    """The newest --limit events (or those after --after, or --all), then each new
    one as it happens: a line each, or with -o json one JSON document per line."""
    start = 0 if args.all else args.after
    if not ctx.json:
        print(output.event_header(), flush=True)
    if start is None:
        page = await client.event_page(0, args.limit, newest=True)
        if page.older and not ctx.json:
            print(*older_note(page), flush=True)
        for event in page.events:
            print(output.json_line(event) if ctx.json else output.event_line(event), flush=True)
        start = page.events[-1].key if page.events else 0
    last = start
    try:
        async for event in client.watch_events(start):
            print(output.json_line(event) if ctx.json else output.event_line(event), flush=True)
            last = event.key
    except HostConnectFault:
        pass
    # The stream only ends when the server does.
    raise HostConnectFault(
        f"vCenter went away: {ctx.server} ended the event stream (stopped or unreachable); "
        f"once it is back, `vsim events --follow --after {last}` carries on"
    )


def task_row(task: common_pb2.Task) -> dict[str, Any]:
    row = output.to_dict(task)
    row["error"] = f"{task.error.name}: {task.error.message}" if task.error.name else ""
    row["queued"] = output.when(task.queue_time)
    row["completed"] = output.when(task.complete_time)
    return row


def add_commands(commands: Subcommands, command: Command) -> None:
    p = command(commands, "tasks", cmd_tasks, "list recent tasks")
    p.add_argument("--limit", type=positive_int, default=20)
    p = command(commands, "events", cmd_events, "list the newest events (or follow them)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument(
        "--after", type=positive_int, help="the events after this key, oldest first (paging on)"
    )
    p.add_argument("--limit", type=positive_int, default=100, help="how many to show (default 100)")
    p.add_argument("--all", action="store_true", help="every event (after --after, if given)")
