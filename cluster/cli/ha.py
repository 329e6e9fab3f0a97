"""`vsim cluster ha enable|disable|status` and `vsim vm ha`: vSphere HA's cluster
settings, what each host's FDM agent says it is, the protected VMs and the failover
capacity admission control keeps; a VM's restart priority.

A thin layer over the SDK client (`configure_ha`, `ha_status`, `set_vm_ha`): vCenter
checks the settings and configures the agents, which then act on their own. The
choices the parser offers are vCenter's (vsim.vcenter.ha), kept here so that parsing
imports no server module; a unit test holds them equal.
"""

from __future__ import annotations

import argparse

from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, positive_int
from vsim.ha_settings import ISOLATION_RESPONSES, RESTART_PRIORITIES
from vsim.v1 import vcenter_pb2 as pb

DEFAULT_HOST_FAILURES = 1
"""Admission control's "host failures cluster tolerates" when HA is turned on."""


async def cmd_cluster_ha_enable(args: argparse.Namespace, ctx: Context) -> None:
    """Turns HA on; on a cluster where it is on already, changes only the settings
    given and keeps the others."""
    async with await ctx.client() as client:
        now = (await client.ha_status()).config
        base = now if now.enabled else pb.HaConfig(host_failures=DEFAULT_HOST_FAILURES)
        status = await client.configure_ha(
            host_failures=given(args.host_failures, base.host_failures),
            isolation_response=given(args.isolation_response, base.isolation_response),
            heartbeat_datastores=tuple(given(args.heartbeat_datastores, base.heartbeat_datastores)),
            isolation_address=given(args.isolation_address, base.isolation_address),
        )
    ctx.show(status, output.ha_status_text(status))


def given(value, default):
    return default if value is None else value


def datastore_names(text: str) -> list[str]:
    """'vmfs-01,nfs-01' -> ['vmfs-01', 'nfs-01']; '' -> [] (none chosen)."""
    return [name.strip() for name in text.split(",") if name.strip()]


async def cmd_cluster_ha_disable(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        status = await client.configure_ha(enabled=False)
    ctx.show(status, output.ha_status_text(status))


async def cmd_cluster_ha_status(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        status = await client.ha_status()
    ctx.show(status, output.ha_status_text(status))


async def cmd_vm_ha(args: argparse.Namespace, ctx: Context) -> None:
    """With --restart-priority, sets it; either way shows the VM's HA settings."""
    async with await ctx.client() as client:
        if args.restart_priority is None:
            vm = await client.vm(args.name)
        else:
            vm = await client.set_vm_ha(args.name, args.restart_priority)
        status = await client.ha_status()
    shown = next((v for v in status.vms if v.name == vm.name), None)
    if shown is None:  # destroyed between the two calls
        shown = pb.HaVmStatus(name=vm.name, host=vm.host, restart_priority=vm.ha_restart_priority)
    ctx.show(shown, output.ha_vm_text(shown, status.config.enabled))


def add_cluster_commands(clusters: Subcommands, command: Command) -> None:
    ha = command(clusters, "ha", None, "vSphere HA").add_subparsers(dest="sub2", required=True)
    p = command(ha, "enable", cmd_cluster_ha_enable, "turn vSphere HA on, or change its settings")
    p.add_argument(
        "--host-failures",
        type=positive_int,
        metavar="N",
        help=f"host failures the cluster tolerates: admission control keeps their share "
        f"of CPU and memory free (0: off; default {DEFAULT_HOST_FAILURES})",
    )
    p.add_argument(
        "--isolation-response",
        choices=ISOLATION_RESPONSES,
        help="what an isolated host does with its VMs (default none: they keep running)",
    )
    p.add_argument(
        "--heartbeat-datastores",
        type=datastore_names,
        metavar="DS,DS",
        help="the datastores the agents heartbeat on, each a datastore vCenter knows "
        "(default: vCenter picks 2, VMFS first)",
    )
    p.add_argument(
        "--isolation-address",
        metavar="ADDR",
        help="das.isolationaddress, pinged before a host declares itself isolated "
        "(default: the management network's gateway)",
    )
    command(ha, "disable", cmd_cluster_ha_disable, "turn vSphere HA off (the agents stop)")
    command(ha, "status", cmd_cluster_ha_status, "each host's agent, protected VMs, capacity")


def add_vm_commands(vms: Subcommands, command: Command) -> None:
    p = command(vms, "ha", cmd_vm_ha, "show or set a VM's vSphere HA restart priority")
    p.add_argument("name")
    p.add_argument(
        "--restart-priority",
        choices=RESTART_PRIORITIES,
        help="restarted before VMs of lower priority after a host failure; "
        "disabled: left off (default medium)",
    )
