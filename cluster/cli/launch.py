"""`vsim up`, `vsim down` and `vsim vcenter serve`: starting and stopping clusters.

The servers (Ray, numpy, the hosts' kernels, vCenter) are imported only inside these
handlers, so that building the parser for any other command loads none of them.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from vsim import validate
from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, positive_int
from vsim.faults import InvalidArgument

if TYPE_CHECKING:
    from vsim.cluster import up


STOP_TIMEOUT = 120.0
"""vsim.cluster.up.STOP_TIMEOUT: how long `vsim down` waits (checked as ADMINISTRATOR is)."""


def up_options(args: argparse.Namespace, ctx: Context) -> up.UpOptions:
    from vsim.cluster import up

    data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else ctx.config.data_dir
    bind = "127.0.0.1" if args.bind == "localhost" else args.bind
    return up.UpOptions(args.hosts, args.port, data_dir, bind, args.clock_speed)


def up_text(info: dict) -> str:
    return output.fields(
        {
            "vCenter": info["endpoint"],
            "thumbprint": info["thumbprint"],
            "user": info["user"],
            "password": info["password"],
            "hosts": ", ".join(info["hosts"]),
            "datastores": ", ".join(info["datastores"]),
            "array": info["array"],
            "data dir": info["data_dir"],
        }
    )


def cmd_up(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.cluster import up

    validate.positive_number(args.clock_speed, "--clock-speed")
    validate.port(args.port)
    options = up_options(args, ctx)
    if args.ready_file is None:
        pid = up.running_pid(ctx.config)
        if pid is not None:
            raise InvalidArgument(
                f"a cluster is already running (pid {pid}); run `vsim down` first"
            )
    if args.detach:
        argv = ["up", "--hosts", str(args.hosts), "--port", str(args.port), "--bind",
                args.bind, "--clock-speed", str(args.clock_speed),
                "--data-dir", str(options.data_dir)]  # fmt: skip
        info = up.detach(argv, options, ctx.config)
        ctx.show(info, up_text(info) + f"\nlog:        {info['log']}\nStop it with `vsim down`.")
        return

    def ready(info: dict) -> None:
        if args.ready_file:
            up.write_ready(Path(args.ready_file), info)
        else:
            ctx.show(info, up_text(info) + "\nServing; press Ctrl-C to stop.")

    asyncio.run(up.serve(options, ctx.config, ready))


async def cmd_vcenter_serve(args: argparse.Namespace, ctx: Context) -> None:
    """vCenter alone, joining a running Ray cluster and an array (docker-compose)."""
    from vsim.cluster.services import serve_vcenter

    validate.port(args.port)
    await serve_vcenter(
        Path(args.data_dir),
        args.port,
        args.bind,
        args.hosts,
        args.ray_address,
        args.array,
        Path(args.array_info),
        args.clock_speed,
        args.array_management,
    )


def cmd_down(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.cluster import up

    result = up.down(ctx.config, args.timeout)
    if not result["stopped"]:
        text = result["reason"]
    elif result["graceful"]:
        powered_off = len(result["vms_powered_off"])
        text = (
            f"Stopped the cluster (pid {result['pid']}): {powered_off} running VMs powered "
            "off, to be powered on again by the next `vsim up`"
        )
    else:
        text = f"Stopped the cluster (pid {result['pid']}), not cleanly: {result['reason']}"
    ctx.show(result, text)


def add_up_down_commands(commands: Subcommands, command: Command) -> None:
    p = command(commands, "up", cmd_up, "start a local cluster (Ray, vCenter, ESXi hosts)")
    p.add_argument("--hosts", type=positive_int, default=3, help="ESXi hosts (default 3)")
    p.add_argument("--port", type=positive_int, default=50051, help="vCenter port (default 50051)")
    p.add_argument("--bind", default="127.0.0.1", help="vCenter listen address")
    p.add_argument("--data-dir", help="where the cluster keeps its state (default ~/.vsim/data)")
    p.add_argument("--clock-speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--detach", action="store_true", help="return once the cluster is ready")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p = command(commands, "down", cmd_down, "stop the cluster `vsim up` started")
    p.add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT, help=f"seconds (default {STOP_TIMEOUT:g})"
    )


def add_vcenter_commands(commands: Subcommands, command: Command) -> None:
    vcenter = command(commands, "vcenter", None, "vCenter as a service of its own").add_subparsers(
        dest="vcenter_command", required=True
    )
    p = command(vcenter, "serve", cmd_vcenter_serve, "join a Ray cluster and an array (compose)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--port", type=positive_int, default=50051)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--hosts", type=positive_int, default=4)
    p.add_argument("--ray-address", default="auto")
    p.add_argument("--array", required=True, help="the array's HOST:PORT as the hosts reach it")
    p.add_argument(
        "--array-management",
        default="",
        help="the array's HOST:PORT as vCenter reaches it, when not the hosts' (default: --array)",
    )
    p.add_argument("--array-info", required=True, help="the file the array's --info-file wrote")
    p.add_argument("--clock-speed", type=float, default=1.0)
