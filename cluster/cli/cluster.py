"""`vsim cluster evc`: the cluster's Enhanced vMotion Compatibility mode, shown or set;
`vsim cluster ha ...` (vSphere HA) is in `ha`."""

from __future__ import annotations

import argparse

from vsim import cpu_features
from vsim.cluster.cli import ha
from vsim.cluster.cli.common import Command, Context, Subcommands

OFF = "off"


async def cmd_cluster_evc(args: argparse.Namespace, ctx: Context) -> None:
    """With a mode, sets it (`off` turns EVC off); without, shows it."""
    async with await ctx.client() as client:
        if args.mode is None:
            status = await client.status()
        else:
            status = await client.configure_evc("" if args.mode == OFF else args.mode)
    mode = status.evc_mode
    text = f"EVC mode: {mode}" if mode else "EVC is off: each VM sees its own host's CPU"
    ctx.show(status, text)


def add_commands(commands: Subcommands, command: Command) -> None:
    clusters = command(commands, "cluster", None, "the cluster's settings").add_subparsers(
        dest="sub", required=True
    )
    p = command(clusters, "evc", cmd_cluster_evc, "show or set the EVC mode")
    p.add_argument(
        "mode",
        nargs="?",
        help=f"a CPU generation every host has ({', '.join(cpu_features.GENERATIONS)}), or off",
    )
    ha.add_cluster_commands(clusters, command)
