"""`vsim host list|add|remove` (the inventory's ESXi hosts, with AddHost's certificate
check), `vsim host maintenance enter|exit`, and a host's kernel as vCenter shows it:
`vsim host stats`, `memory` (page sharing and salting) and `pci` (DirectPath I/O);
`vsim host pool` is in `pool`.

Like every command, these are a thin layer over the SDK client: they validate what
the user typed before sending anything, and keep no state of their own.
"""

from __future__ import annotations

import argparse
import sys

from vsim import cpu_features, validate
from vsim.cluster import output
from vsim.cluster.cli import pool
from vsim.cluster.cli.common import (
    Command,
    Context,
    Subcommands,
    positive_int,
    show_task,
    show_task_fault,
)
from vsim.faults import InvalidArgument, SSLVerifyFault, VimFault, fault_from_proto
from vsim.v1 import vcenter_pb2 as pb

ON = pb.POWER_STATE_POWERED_ON

HOST_COLUMNS = ["name", "connection_state", "in_maintenance_mode", "cpu_model", "cpu_cores",
                "cpu_mhz", "memory_mb", "memory_used_mb", "vms", "vms_powered_on",
                "endpoint"]  # fmt: skip


PASS_THUMBPRINT = "verify it and pass it as ssl_thumbprint to add the host"
"""vsim.vcenter.host_system.PASS_THUMBPRINT: how AddHost's SSLVerifyFault ends when the
caller has not verified the certificate (checked as ADMINISTRATOR is)."""


async def cmd_host_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        hosts = await client.hosts()
    ctx.show(hosts, output.table([output.to_dict(h) for h in hosts], HOST_COLUMNS))


async def cmd_host_add(args: argparse.Namespace, ctx: Context) -> None:
    given = (
        ("cpu_cores", args.cpu_cores),
        ("cpu_mhz", args.cpu_mhz),
        ("memory_mb", args.memory_mb),
        ("kernel_period_s", args.kernel_period),
        ("cpu_model", args.cpu_model),
        ("vmotion_encryption", args.vmotion_encryption),
    )
    sizes = {k: v for k, v in given if v is not None}
    async with await ctx.client() as client:
        thumbprint = normalize(args.thumbprint) if args.thumbprint else ""
        task = await client.wait(await client.add_host(args.name, thumbprint, **sizes))
        if not thumbprint and task.error.name == SSLVerifyFault.name:
            # The vSphere Client's security alert: the user accepts the thumbprint, with
            # --accept-thumbprint or at the prompt, or the add fails showing it.
            presented = task.error.properties["thumbprint"]
            if args.accept_thumbprint or confirm(
                f"{args.name} presents a certificate with SHA-256 thumbprint\n  {presented}\n"
                "Trust it and add the host? [y/N] "
            ):
                thumbprint = presented
                task = await client.wait(await client.add_host(args.name, thumbprint, **sizes))
    if task.error.name == SSLVerifyFault.name:
        raise thumbprint_fault(args.name, fault_from_proto(task.error))
    show_task(ctx, task, f"Added host {args.name} (thumbprint {thumbprint})")


def thumbprint_fault(name: str, fault: VimFault) -> VimFault:
    """AddHost's SSLVerifyFault telling what to type here, not the API field to set."""
    presented = fault.properties.get("thumbprint", "")
    if not (presented and fault.message.endswith(PASS_THUMBPRINT)):
        return fault  # not a certificate to verify (something else answers): as it is
    told = fault.message.removesuffix(PASS_THUMBPRINT)
    return SSLVerifyFault(
        f"{told}verify it, then run `vsim host add {name} --thumbprint {presented}` "
        "(or add --accept-thumbprint) to add the host",
        **fault.properties,
    )


def confirm(question: str) -> bool:
    """Asks a yes/no question on the terminal; False when there is none to ask on."""
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


def normalize(thumbprint: str) -> str:
    try:
        from vsim.tls import normalize_thumbprint

        return normalize_thumbprint(thumbprint)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


async def cmd_host_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.remove_host(args.name))
    show_task(ctx, task, f"Removed host {args.name}")


async def cmd_host_maintenance_enter(args: argparse.Namespace, ctx: Context) -> None:
    """EnterMaintenanceMode_Task; with --evacuate, then where each VM went."""
    validate.host_name(args.name, "host")
    async with await ctx.client() as client:
        running = [v.name for v in await client.vms(args.name) if v.power_state == ON]
        task = await client.wait(await client.enter_maintenance_mode(args.name, args.evacuate))
        show_task_fault(task)
        now = {v.name: v.host for v in await client.vms()}
    moved = [{"vm": name, "now_on": now.get(name, "")} for name in running]
    text = f"{args.name} is in maintenance mode"
    if moved:
        text += f"; {len(moved)} VM(s) moved off it by vMotion:\n" + output.table(
            moved, ["vm", "now_on"]
        )
    ctx.show(task, text)


async def cmd_host_maintenance_exit(args: argparse.Namespace, ctx: Context) -> None:
    validate.host_name(args.name, "host")
    async with await ctx.client() as client:
        task = await client.wait(await client.exit_maintenance_mode(args.name))
    show_task(ctx, task, f"{args.name} has exited maintenance mode")


async def cmd_host_stats(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        stats = await client.host_stats(args.name)
    ctx.show(stats, output.host_stats_text(stats))


async def cmd_host_memory(args: argparse.Namespace, ctx: Context) -> None:
    """Changes the settings given; with none, shows them."""
    sharing = None if args.page_sharing is None else args.page_sharing == "off"
    if args.scan_period is not None:
        validate.positive_number(args.scan_period, "--scan-period")
    async with await ctx.client() as client:
        if args.salting is None and sharing is None and args.scan_period is None:
            settings = (await client.host_stats(args.name)).memory_settings
        else:
            settings = await client.update_host_memory_settings(
                args.name, args.salting, sharing, args.scan_period
            )
    ctx.show(settings, f"{args.name}: {output.memory_settings_text(settings)}")


async def cmd_host_pci_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        devices = await client.pci_devices(args.name)
    ctx.show(devices, output.pci_table(devices))


async def cmd_host_pci_passthru(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        device = await client.update_passthru_config(args.name, args.id, args.state == "on")
    ctx.show(device, output.pci_table([device]))


def add_commands(commands: Subcommands, command: Command) -> None:
    hosts = command(commands, "host", None, "ESXi hosts").add_subparsers(dest="sub", required=True)
    command(hosts, "list", cmd_host_list, "list hosts")
    p = command(hosts, "add", cmd_host_add, "add (and provision) a host")
    p.add_argument("name")
    p.add_argument("--thumbprint", help="the SHA-256 thumbprint you expect the host to present")
    p.add_argument(
        "--accept-thumbprint",
        action="store_true",
        help="trust whatever certificate the host presents (asked on a terminal otherwise)",
    )
    p.add_argument("--cpu-cores", type=positive_int)
    p.add_argument("--cpu-mhz", type=positive_int)
    p.add_argument("--memory-mb", type=positive_int)
    p.add_argument(
        "--kernel-period",
        type=float,
        help="seconds between VMkernel periods, 0.1-10 (default 1; coarser is cheaper)",
    )
    p.add_argument(
        "--cpu-model",
        choices=list(cpu_features.GENERATIONS),
        help=f"the CPU's generation (default {cpu_features.DEFAULT_MODEL})",
    )
    p.add_argument(
        "--no-vmotion-encryption",
        dest="vmotion_encryption",
        action="store_false",
        default=None,
        help="a host that cannot encrypt vMotion (as ESXi before 6.5)",
    )
    p = command(hosts, "remove", cmd_host_remove, "remove a host and its VMs from the inventory")
    p.add_argument("name")
    maintenance = command(hosts, "maintenance", None, "maintenance mode").add_subparsers(
        dest="sub2", required=True
    )
    p = command(maintenance, "enter", cmd_host_maintenance_enter, "enter maintenance mode")
    p.add_argument("name")
    p.add_argument(
        "--evacuate",
        action="store_true",
        help="move the host's powered-on VMs to other hosts by vMotion first",
    )
    p = command(maintenance, "exit", cmd_host_maintenance_exit, "exit maintenance mode")
    p.add_argument("name")
    p = command(hosts, "stats", cmd_host_stats, "the host's CPU and memory, and its VMs'")
    p.add_argument("name")
    p = command(hosts, "memory", cmd_host_memory, "show or change the host's memory settings")
    p.add_argument("name")
    p.add_argument("--salting", type=int, choices=[0, 1, 2], help="Mem.ShareForceSalting")
    p.add_argument("--page-sharing", choices=["on", "off"], help="TPS scans on the host")
    p.add_argument("--scan-period", type=float, help="seconds between TPS scans")
    pci = command(hosts, "pci", None, "PCI devices and DirectPath I/O").add_subparsers(
        dest="sub2", required=True
    )
    command(pci, "list", cmd_host_pci_list, "the host's PCI devices").add_argument("name")
    p = command(pci, "passthru", cmd_host_pci_passthru, "enable or disable passthrough")
    p.add_argument("name")
    p.add_argument("id", help="PCI address, e.g. 0000:3b:00.0")
    p.add_argument("state", choices=["on", "off"])
    pool.add_commands(hosts, command)
