"""`vsim array serve` (the storage array in the foreground) and the array's LUNs and
NFS exports (`vsim array lun create|list|map|unmap`, `vsim array export create|list`),
which vCenter carries out on the array for an administrator.

Like every command, these are a thin layer over the SDK client and keep no state of
their own; `serve` imports the array's server only inside its handler.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from pathlib import Path

from vsim import validate
from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, positive_int
from vsim.faults import InvalidArgument


async def cmd_array_serve(args: argparse.Namespace, ctx: Context) -> None:
    """Serves the storage array in the foreground until SIGINT/SIGTERM."""
    from vsim.cluster.array_setup import prepare_array
    from vsim.spec import ClusterSpec
    from vsim.storage.server import start_array
    from vsim.tls import write_private

    validate.port(args.port)
    data_dir = Path(args.data_dir).expanduser().resolve()
    running = await start_array(data_dir, args.port, args.bind)
    if args.prepare_hosts:
        # The storage admin's part of a cluster of that many hosts (docker-compose):
        # LUNs and exports by name, and what vCenter needs to know of them.
        spec = prepare_array(running.array, ClusterSpec.default(args.prepare_hosts))
        luns = {d.name: d.lun for d in spec.datastores if d.type == "vmfs"}
        if args.info_file:
            info_file = Path(args.info_file)
            info_file.parent.mkdir(parents=True, exist_ok=True)
            # vCenter's management key is in it: only vCenter's container mounts it,
            # and the file is the owner's alone.
            info = {
                "thumbprint": running.identity.thumbprint,
                "luns": luns,
                "management_key": running.array.management_key,
            }
            write_private(info_file, json.dumps(info).encode())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        info = {
            "endpoint": running.endpoint,
            "thumbprint": running.identity.thumbprint,
            "luns": len(running.array.luns),
            "exports": sorted(running.array.exports),
            "data_dir": str(data_dir),
        }
        ctx.show(info, output.fields(info) + "\nServing; press Ctrl-C to stop.")
        await stop.wait()
    finally:
        await running.stop()


LUN_COLUMNS = ("id", "size_gb", "hosts", "datastore", "name", "serial")


EXPORT_COLUMNS = ("name", "options", "clients", "datastore")


GIB = 1024**3


MIB = 1024**2


def lun_size(args: argparse.Namespace) -> int:
    """--size-gb or --size-mb in bytes (0: the array's default, 4 GiB)."""
    if args.size_gb is not None and args.size_mb is not None:
        raise InvalidArgument("give --size-gb or --size-mb, not both")
    if args.size_mb is not None:
        return args.size_mb * MIB
    if args.size_gb is not None:
        return round(args.size_gb * GIB)
    return 0


def lun_row(lun) -> dict:
    others = [i for i in lun.initiators if not any(i.endswith(":" + h) for h in lun.hosts)]
    return {
        "id": lun.id,
        "size_gb": f"{lun.size_bytes / GIB:.2f}",
        "hosts": ", ".join([*lun.hosts, *others]) or "(none)",
        "datastore": lun.datastore or "-",
        "name": lun.name or "-",
        "serial": lun.serial,
    }


def export_options(export) -> str:
    """The export's options as /etc/exports writes them."""
    return ",".join(
        [
            "ro" if export.read_only else "rw",
            "async" if export.async_writes else "sync",
            "root_squash" if export.root_squash else "no_root_squash",
        ]
    )


def export_row(export) -> dict:
    return {
        "name": export.name,
        "options": export_options(export),
        "clients": ", ".join(export.clients),
        "datastore": export.datastore or "-",
    }


async def cmd_lun_create(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        lun = await client.create_array_lun(lun_size(args), args.id, args.host or ())
    ctx.show(lun, output.table([lun_row(lun)], LUN_COLUMNS))


async def cmd_lun_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        luns = await client.array_luns()
    ctx.show(luns, output.table([lun_row(lun) for lun in luns], LUN_COLUMNS))


async def cmd_lun_map(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        lun = await client.map_array_lun(args.lun, args.hosts)
    ctx.show(lun, output.table([lun_row(lun)], LUN_COLUMNS))


async def cmd_lun_unmap(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        lun = await client.unmap_array_lun(args.lun, args.hosts)
    ctx.show(lun, output.table([lun_row(lun)], LUN_COLUMNS))


async def cmd_export_create(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        export = await client.create_array_export(
            args.name,
            read_only=args.ro,
            async_writes=args.async_writes,
            root_squash=args.root_squash,
            clients=args.client or (),
        )
    ctx.show(export, output.table([export_row(export)], EXPORT_COLUMNS))


async def cmd_export_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        exports = await client.array_exports()
    ctx.show(exports, output.table([export_row(e) for e in exports], EXPORT_COLUMNS))


def add_commands(commands: Subcommands, command: Command) -> None:
    array = command(commands, "array", None, "the storage array").add_subparsers(
        dest="sub", required=True
    )
    p = command(array, "serve", cmd_array_serve, "serve a storage array (LUNs, NFS exports)")
    p.add_argument("--data-dir", required=True, help="where its LUNs, exports and config live")
    p.add_argument("--port", type=positive_int, default=50052)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument(
        "--prepare-hosts", type=positive_int, help="make the default cluster's LUNs and exports"
    )
    p.add_argument("--info-file", help="with --prepare-hosts: write thumbprint and LUNs here")
    luns = command(array, "lun", None, "the array's LUNs (administrators)").add_subparsers(
        dest="sub2", required=True
    )
    p = command(luns, "create", cmd_lun_create, "create a LUN, masked to hosts")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size-gb", type=float, help="size in GiB (default 4)")
    size.add_argument("--size-mb", type=positive_int, help="size in MiB")
    p.add_argument("--id", type=positive_int, help="LUN id 0-255 (default: the next free)")
    p.add_argument(
        "--host", action="append", help="mask it to this host (repeatable; default: every host)"
    )
    command(luns, "list", cmd_lun_list, "LUNs, their hosts and datastores")
    for name, handler, help_ in (
        ("map", cmd_lun_map, "make a LUN visible to hosts"),
        ("unmap", cmd_lun_unmap, "hide a LUN from hosts (not under a datastore)"),
    ):
        p = command(luns, name, handler, help_)
        p.add_argument("lun", type=positive_int)
        p.add_argument("hosts", nargs="+", metavar="HOST")

    exports = command(array, "export", None, "the array's NFS exports (administrators)")
    exports = exports.add_subparsers(dest="sub2", required=True)
    p = command(exports, "create", cmd_export_create, "create an NFS export")
    p.add_argument("name")
    p.add_argument("--ro", action="store_true", help="read-only (default rw)")
    p.add_argument("--async", dest="async_writes", action="store_true", help="default sync")
    p.add_argument(
        "--root-squash", action="store_true", help="default no_root_squash, which ESXi needs"
    )
    p.add_argument("--client", action="append", help="allowed client (repeatable; default *)")
    command(exports, "list", cmd_export_list, "NFS exports, their options and datastores")
