"""`vsim vm ...`: creating, cloning, listing, showing, powering and destroying VMs, a
guest's disk writes checked (`verify-disk`), and what reaches a VM's kernel side:
`resources` (shares, reservations, limits, page sharing, its pool), `stats`, `luns`
and `pci` (DirectPath I/O). The VM's network adapters and firewall are in `nic`, its
vSphere HA restart priority (`vm ha`) in `ha`.

Like every command, these are a thin layer over the SDK client: they validate what
the user typed before sending anything, and keep no state of their own.
"""

from __future__ import annotations

import argparse

from vsim import validate
from vsim.cluster import output
from vsim.cluster.cli import ha, nic
from vsim.cluster.cli.common import (
    SUCCESS,
    Command,
    Context,
    Handler,
    Subcommands,
    show_task,
    show_task_fault,
    whole,
)
from vsim.faults import InvalidArgument
from vsim.resource_allocation import (
    ROOT_POOL,
    VM_CPU_SHARES_PER_VCPU,
    VM_MEMORY_SHARES_PER_MB,
    pool_name,
)
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb

VM_COLUMNS = ["name", "host", "power_state", "cpus", "memory_mb", "guest_os", "datastore"]


MAX_DISK_MB = 2 * 1024 * 1024
"""vsim.vcenter.virtual_machine.MAX_DISK_MB (checked as ADMINISTRATOR is)."""


async def cmd_vm_create(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.create_vm(
            args.name,
            args.cpus,
            args.memory_mb,
            args.host or "",
            args.guest_os or "",
            args.datastore or "",
            disk_mb(args.disk_gb),
            args.guest_iops,
            nics=[kpb.VmNic(port_group=pg) for pg in args.nic or ()],
        )
        task = await client.wait(task)
        host = (await client.vm(args.name)).host if task.state == SUCCESS else ""
    show_task(ctx, task, f"Created {args.name} on {host}")


def disk_mb(gb: float | None) -> int:
    """--disk-gb (decimals allowed) in whole MB."""
    if gb is None:
        return 0
    most = MAX_DISK_MB // 1024
    if not 0 < gb <= most:  # NaN too
        raise InvalidArgument(f"--disk-gb must be more than 0 and at most {most} GB, got {gb:g}")
    return max(1, round(gb * 1024))


async def cmd_vm_clone(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.linked_clone(args.source, args.name, args.host or ""))
        host = (await client.vm(args.name)).host if task.state == SUCCESS else ""
    show_task(ctx, task, f"Created {args.name} on {host}, a linked clone of {args.source}")


async def cmd_vm_migrate(args: argparse.Namespace, ctx: Context) -> None:
    """MigrateVM_Task, with a progress bar (stderr) fed by the task's progress, then
    what the migration did."""
    validate.host_name(args.host, "--host")
    async with await ctx.client() as client:
        task = await client.migrate_vm(args.name, args.host, args.encryption, args.priority)
        while task.state not in (SUCCESS, common_pb2.TASK_STATE_ERROR):
            _migration_progress(task.progress)
            task = await client.wait(task, timeout=1.0)
    _migration_progress(100 if task.state == SUCCESS else task.progress, end=True)
    show_task_fault(task)
    m = task.migration
    shown = {
        "vm": args.name,
        "source": m.source,
        "destination": m.destination,
        "kind": "vMotion (live)" if m.hot else "cold (powered off)",
        "precopy_rounds": m.precopy_rounds,
        "memory_sent_mb": round(m.memory_sent_bytes / 2**20, 1),
        "pages_resent": m.pages_resent,
        "sdps": "engaged" if m.sdps else "no",
        "downtime_ms": round(m.downtime_ms, 1),
        "encrypted": "yes (AES-256-GCM)" if m.encrypted else "no",
        "total_s": round(m.total_s, 3),
    }
    ctx.show(m, output.fields(shown))


def _migration_progress(percent: int, end: bool = False) -> None:
    output.progress(percent, 100, f"{percent:3d}%", end)


async def cmd_vm_verify_disk(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        report = await client.verify_disk(args.name, args.acked)
    text = (
        f"{report.disk} (read on {report.host}): {report.written} of {report.blocks} blocks "
        f"written, newest write {report.highest_seq}; {report.corrupt} corrupt, "
        f"{report.missing} missing of the writes up to {report.acked_seq}"
    )
    ctx.show(report, text)
    if report.corrupt or report.missing:
        raise SystemExit(1)


async def cmd_vm_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        vms = await client.vms(args.host or "")
    ctx.show(vms, output.table([output.to_dict(v) for v in vms], VM_COLUMNS))


async def cmd_vm_show(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        vm = await client.vm(args.name)
    ctx.show(vm, output.vm_text(vm))


def vm_action(method: str, done: str) -> Handler:
    async def run(args: argparse.Namespace, ctx: Context) -> None:
        async with await ctx.client() as client:
            task = await client.wait(await getattr(client, method)(args.name))
        show_task(ctx, task, f"{args.name} {done}")

    return run


async def cmd_vm_resources(args: argparse.Namespace, ctx: Context) -> None:
    """Reads the VM, changes only the settings given, sends all of them back."""
    async with await ctx.client() as client:
        vm = await client.vm(args.name)
        resources = changed_resources(args, vm)
        if resources != vm.resources:
            task = await client.wait(await client.reconfigure_vm_resources(args.name, resources))
            show_task_fault(task)
            vm = await client.vm(args.name)
    ctx.show(vm.resources, output.resources_text(vm))


def changed_resources(args: argparse.Namespace, vm) -> kpb.VmResources:
    r = kpb.VmResources()
    r.CopyFrom(vm.resources)
    if args.cpu_shares is not None:
        r.cpu.shares = shares(args.cpu_shares, "--cpu-shares", VM_CPU_SHARES_PER_VCPU, vm.cpus)
    if args.mem_shares is not None:
        per_mb = VM_MEMORY_SHARES_PER_MB
        r.memory.shares = shares(args.mem_shares, "--mem-shares", per_mb, vm.memory_mb)
    for value, allocation, flag in (
        (args.cpu_reservation, r.cpu, "--cpu-reservation"),
        (args.mem_reservation, r.memory, "--mem-reservation"),
    ):
        if value is not None:
            allocation.reservation = validate.int_range(value, 0, 2**40, flag)
    for value, allocation, flag in (
        (args.cpu_limit, r.cpu, "--cpu-limit"),
        (args.mem_limit, r.memory, "--mem-limit"),
    ):
        if value == "unlimited":
            allocation.ClearField("limit")
        elif value is not None:
            allocation.limit = whole(value, flag, "a number or unlimited")
    if args.salt is not None:
        r.page_sharing_salt = validate.text(args.salt, "--salt", 256)
    if args.page_sharing is not None:
        r.page_sharing_disabled = args.page_sharing == "off"
    if args.cpu_load is not None:
        r.cpu_load_pct = validate.int_range(args.cpu_load, 0, 100, "--cpu-load", "%")
    if args.pool is not None:
        r.resource_pool = "" if args.pool == ROOT_POOL else pool_name(args.pool, "--pool")
    return r


def shares(text: str, flag: str, per_unit: dict[str, int], units: int) -> int:
    """low/normal/high (vSphere's levels: per vCPU or per MB) or a number of shares."""
    if text == "normal":
        return 0  # the default: normal, whatever the VM's size becomes
    if text in per_unit:
        return per_unit[text] * units
    value = whole(text, flag, "low, normal, high or a number")
    return validate.int_range(value, 1, 2**31 - 1, flag)


async def cmd_vm_pci_add(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.assign_pci_device(args.name, args.id))
    show_task_fault(task)
    ctx.show(task, f"PCI device {args.id} added to {args.name}")


async def cmd_vm_pci_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.remove_pci_device(args.name, args.id))
    show_task_fault(task)
    ctx.show(task, f"PCI device {args.id} removed from {args.name}")


async def cmd_vm_stats(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        stats = await client.vm_stats(args.name)
    ctx.show(stats, output.vm_stats_text(stats))


async def cmd_vm_luns(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        luns = await client.guest_report_luns(args.name)
    ctx.show(luns, output.luns_table(luns))


def add_commands(commands: Subcommands, command: Command) -> None:
    vms = command(commands, "vm", None, "virtual machines").add_subparsers(
        dest="sub", required=True
    )
    p = command(vms, "create", cmd_vm_create, "create a VM")
    p.add_argument("name")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--memory-mb", type=int, default=1024)
    p.add_argument("--host", help="default: the connected host with most free memory")
    p.add_argument("--guest-os", help="default: otherGuest64")
    p.add_argument("--datastore", help="where the VM's folder, .vmx and disk go")
    p.add_argument("--disk-gb", type=float, help="a thin disk of this size (needs --datastore)")
    p.add_argument(
        "--guest-iops", type=int, default=0, help="simulated guest disk writes per second"
    )
    p.add_argument(
        "--nic", action="append", metavar="PORTGROUP", help="a network adapter (repeatable)"
    )
    p = command(vms, "clone", cmd_vm_clone, "make a linked clone of a powered-off VM")
    p.add_argument("source")
    p.add_argument("name")
    p.add_argument("--host", help="default: the connected host with most free memory")
    p = command(vms, "verify-disk", cmd_vm_verify_disk, "check the guest's writes on the VM's disk")
    p.add_argument("name")
    p.add_argument(
        "--acked", type=int, default=0, help="every write up to this sequence number must be there"
    )
    p = command(vms, "migrate", cmd_vm_migrate, "move a VM to another host (vMotion if it runs)")
    p.add_argument("name")
    p.add_argument("--host", required=True, help="the destination host")
    p.add_argument(
        "--encryption",
        choices=["disabled", "opportunistic", "required"],
        default="opportunistic",
        help="encrypted vMotion (default opportunistic: encrypted, as both hosts can)",
    )
    p.add_argument(
        "--priority",
        choices=["high", "default", "low"],
        default="default",
        help="where the migration goes in vCenter's queue when the limits are full",
    )
    p = command(vms, "list", cmd_vm_list, "list VMs")
    p.add_argument("--host")
    for name, method, done, help_ in (
        ("power-on", "power_on", "powered on", "power a VM on"),
        ("power-off", "power_off", "powered off", "power a VM off"),
        ("destroy", "destroy_vm", "destroyed", "delete a powered-off VM"),
    ):
        command(vms, name, vm_action(method, done), help_).add_argument("name")
    p = command(vms, "resources", cmd_vm_resources, "show or change shares, reservations, limits")
    p.add_argument("name")
    p.add_argument("--cpu-shares", help="low, normal, high or a number")
    p.add_argument("--cpu-reservation", type=int, metavar="MHZ")
    p.add_argument("--cpu-limit", metavar="MHZ|unlimited")
    p.add_argument("--mem-shares", help="low, normal, high or a number")
    p.add_argument("--mem-reservation", type=int, metavar="MB")
    p.add_argument("--mem-limit", metavar="MB|unlimited")
    p.add_argument("--salt", help="sched.mem.pshare.salt (from the next power-on)")
    p.add_argument("--page-sharing", choices=["on", "off"], help="(from the next power-on)")
    p.add_argument("--cpu-load", type=int, metavar="PCT", help="how busy the guest keeps its vCPUs")
    p.add_argument("--pool", help=f"the host resource pool it runs in ({ROOT_POOL}: the root)")
    command(vms, "stats", cmd_vm_stats, "a running VM's CPU, memory and NICs").add_argument("name")
    command(vms, "luns", cmd_vm_luns, "the disks a running guest sees").add_argument("name")
    nic.add_commands(vms, command)
    ha.add_vm_commands(vms, command)
    pci = command(vms, "pci", None, "DirectPath I/O").add_subparsers(dest="sub2", required=True)
    p = command(pci, "add", cmd_vm_pci_add, "give a powered-off VM a passthrough device")
    p.add_argument("name")
    p.add_argument("id", help="PCI address, e.g. 0000:3b:00.0")
    p = command(pci, "remove", cmd_vm_pci_remove, "take a passthrough device from a powered-off VM")
    p.add_argument("name")
    p.add_argument("id", help="PCI address, e.g. 0000:3b:00.0")
    p = command(vms, "show", cmd_vm_show, "one VM, with its guest's acknowledged disk writes")
    p.add_argument("name")
