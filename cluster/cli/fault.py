"""`vsim fault ...`: break and mend the physical layer of a running cluster through
vCenter's fault service (an administrator's; each change is an event in `vsim
events`): crash, hang and power on hosts, cut one network of a host, slow a
datastore's disk, restart the array program, list what is in place, clear it all.

Like every command, these are a thin layer over the SDK client and keep no state of
their own: what is injected lives in vCenter's fault service.
"""

from __future__ import annotations

import argparse

from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands


def faults_text(state) -> str:
    """The call's message, then what is in place now."""
    if not state.faults:
        return f"{state.message}\nNo faults in place."
    rows = [
        {"kind": f.kind, "target": f.target, "detail": f.detail, "since": output.when(f.since)}
        for f in state.faults
    ]
    return f"{state.message}\n" + output.table(rows, ["kind", "target", "detail", "since"])


async def _run(ctx: Context, call) -> None:
    async with await ctx.client() as client:
        state = await call(client)
    ctx.show(state, faults_text(state))


async def cmd_host_crash(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.crash_host(args.host))


async def cmd_host_hang(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.hang_host(args.host, args.seconds))


async def cmd_host_power_on(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.power_on_host(args.host))


async def cmd_link(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.set_link(args.host, args.network, args.state))


async def cmd_disk_latency(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.set_disk_latency(args.datastore, args.ms))


async def cmd_array_restart(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.restart_array())


async def cmd_list(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.faults())


async def cmd_clear(args: argparse.Namespace, ctx: Context) -> None:
    await _run(ctx, lambda c: c.clear_faults())


def add_commands(commands: Subcommands, command: Command) -> None:
    faults = command(
        commands, "fault", None, "break and mend hosts, links, disks and the array"
    ).add_subparsers(dest="sub", required=True)
    p = command(faults, "host-crash", cmd_host_crash, "pull a host's plug (nothing is flushed)")
    p.add_argument("host")
    p = command(faults, "host-hang", cmd_host_hang, "hostd and the host's I/O stall for a while")
    p.add_argument("host")
    p.add_argument("--seconds", type=float, default=30.0, help="how long, up to 3600 (default 30)")
    p = command(faults, "host-power-on", cmd_host_power_on, "boot a crashed host again")
    p.add_argument("host")
    p = command(faults, "link", cmd_link, "cut (down) or mend (up) one network of a host")
    p.add_argument("host")
    p.add_argument("--network", required=True, help="management, storage or vmotion")
    p.add_argument("state", help="down or up")
    p = command(faults, "disk-latency", cmd_disk_latency, "make every command on a datastore late")
    p.add_argument("datastore")
    p.add_argument("--ms", type=float, required=True, help="milliseconds, 0-60000 (0 mends it)")
    command(
        faults,
        "array-restart",
        cmd_array_restart,
        "restart the array program (reservations and connections dropped, data kept)",
    )
    command(faults, "list", cmd_list, "the faults in place now")
    command(faults, "clear", cmd_clear, "mend everything")
