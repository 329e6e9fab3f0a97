"""`vsim datastore list|create|sioc|remove`: VMFS and NFS datastores, their mounts,
and Storage I/O Control's congestion threshold.

Like every command, these are a thin layer over the SDK client and keep no state of
their own.
"""

from __future__ import annotations

import argparse

from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, positive_int, show_task
from vsim.faults import InvalidArgument, fault_from_proto
from vsim.v1 import common_pb2

DATASTORE_COLUMNS = [
    "name", "type", "capacity_gb", "free_gb", "lock_mode", "backing", "sioc_threshold_ms", "mounts"
]  # fmt: skip


async def cmd_datastore_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        datastores = await client.datastores()
    rows = []
    for d in datastores:
        row = output.to_dict(d)
        row["capacity_gb"] = f"{d.capacity_bytes / 1024**3:.1f}"
        row["free_gb"] = f"{d.free_bytes / 1024**3:.1f}"
        row["backing"] = f"lun {d.lun}" if d.type == "vmfs" else f"export {d.export}"
        row["mounts"] = ", ".join(
            m.host + ("" if m.accessible else " (inaccessible)") for m in d.mounts
        )
        rows.append(row)
    ctx.show(datastores, output.table(rows, DATASTORE_COLUMNS))


async def cmd_datastore_sioc(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        datastore = await client.configure_storage_io_control(args.name, args.threshold_ms)
    ctx.show(
        datastore, f"{datastore.name}: congestion threshold {datastore.sioc_threshold_ms:g} ms"
    )


async def cmd_datastore_create(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        if args.type == "vmfs":
            if args.lun is None:
                raise InvalidArgument("a VMFS datastore needs --lun")
            task = await client.create_vmfs_datastore(args.name, args.lun, args.lock_mode)
        else:
            if not args.export:
                raise InvalidArgument("an NFS datastore needs --export")
            task = await client.create_nas_datastore(args.name, args.export)
        task = await client.wait(task)
    show_task(ctx, task, f"Created datastore {args.name}")


async def cmd_datastore_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.remove_datastore(args.name))
    if task.state == common_pb2.TASK_STATE_ERROR:
        raise fault_from_proto(task.error)
    ctx.show(task, f"Removed datastore {args.name} (its files stay on the array)")


def add_commands(commands: Subcommands, command: Command) -> None:
    datastores = command(commands, "datastore", None, "datastores").add_subparsers(
        dest="sub", required=True
    )
    command(datastores, "list", cmd_datastore_list, "list datastores and their mounts")
    p = command(datastores, "create", cmd_datastore_create, "create a VMFS or NFS datastore")
    p.add_argument("name")
    p.add_argument("--type", choices=["vmfs", "nfs"], required=True)
    p.add_argument("--lun", type=positive_int, help="VMFS: the array LUN to format")
    p.add_argument("--lock-mode", choices=["ats+scsi", "ats-only"], default="ats+scsi")
    p.add_argument("--export", help="NFS: the array export to mount")
    p = command(datastores, "sioc", cmd_datastore_sioc, "Storage I/O Control's threshold")
    p.add_argument("name")
    p.add_argument(
        "--threshold-ms", type=float, required=True, help="congestion threshold, 5-100 ms"
    )
    p = command(
        datastores, "remove", cmd_datastore_remove, "unmount a datastore everywhere and forget it"
    )
    p.add_argument("name")
