"""`vsim lock show|break`: who holds a file's on-disk lock (VMFS or NFS), how fresh
its holder's heartbeat is, and breaking a stale one (refused while it is live).

Like every command, these are a thin layer over the SDK client and keep no state of
their own.
"""

from __future__ import annotations

import argparse

from vsim.cluster.cli.common import Command, Context, Subcommands
from vsim.faults import InvalidArgument


def datastore_path(text: str) -> tuple[str, str]:
    """'[datastore] dir/file' (vSphere's datastore path) -> (datastore, dir/file)."""
    if not text.startswith("[") or "]" not in text:
        raise InvalidArgument(f"{text[:80]!r} is not a datastore path like '[vmfs-01] vm/vm.vmdk'")
    datastore, _, path = text[1:].partition("]")
    return datastore.strip(), path.strip()


def lock_text(info) -> str:
    lines = [f"[{info.datastore}] {info.path}: {info.mode.lower()} (seen from {info.observed_by})"]
    for h in info.holders:
        freshness = (
            "holder gone (heartbeat slot cleared)"
            if h.seconds_since_heartbeat_change < 0
            else f"heartbeat unchanged for {h.seconds_since_heartbeat_change:.0f} s"
        )
        who = h.host or h.host_uuid
        slot = f", slot {h.heartbeat_slot}" if h.heartbeat_slot >= 0 else ""
        lines.append(f"  {who}{slot}: {'live' if h.live else 'stale'}, {freshness}")
    return "\n".join(lines)


async def cmd_lock_show(args: argparse.Namespace, ctx: Context) -> None:
    datastore, path = datastore_path(args.path)
    async with await ctx.client() as client:
        info = await client.lock_owner(datastore, path)
    ctx.show(info, lock_text(info))


async def cmd_lock_break(args: argparse.Namespace, ctx: Context) -> None:
    datastore, path = datastore_path(args.path)
    async with await ctx.client() as client:
        info = await client.break_stale_lock(datastore, path)
    if info.broken:
        text = "Broke " + lock_text(info)
    elif info.mode == "FREE":
        text = f"{args.path} is not locked"
    else:
        text = "Already broken or released: " + lock_text(info)
    ctx.show(info, text)


def add_commands(commands: Subcommands, command: Command) -> None:
    locks = command(commands, "lock", None, "on-disk file locks").add_subparsers(
        dest="sub", required=True
    )
    p = command(locks, "show", cmd_lock_show, "who holds a file's lock, and how fresh it is")
    p.add_argument("path", help="a datastore path: '[vmfs-01] vm-001/vm-001-flat.vmdk'")
    p = command(locks, "break", cmd_lock_break, "break a stale lock (refused while it is live)")
    p.add_argument("path", help="a datastore path: '[vmfs-01] vm-001/vm-001-flat.vmdk'")
