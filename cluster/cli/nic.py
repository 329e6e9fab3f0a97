"""`vsim vm nic add|list|guest-mac|remove` and `vsim vm firewall set|list`: a VM's
network adapters (added and removed live on a running VM; the guest's own MAC) and
the vNIC firewall rules that move with the VM.

Like every command, these are a thin layer over the SDK client: they validate what
the user typed before sending anything, and keep no state of their own.
"""

from __future__ import annotations

import argparse

from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, show_task_fault
from vsim.faults import InvalidArgument
from vsim.v1 import kernel_pb2 as kpb


async def cmd_vm_nic_add(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.add_vm_nic(args.name, args.portgroup, args.mac or "", args.nic or "")
        task = await client.wait(task)
        show_task_fault(task)
        vm = await client.vm(args.name)
    ctx.show(vm, output.nics_table(vm))


async def cmd_vm_nic_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.remove_vm_nic(args.name, args.nic))
        show_task_fault(task)
        vm = await client.vm(args.name)
    ctx.show(vm, output.nics_table(vm))


async def cmd_vm_nic_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        vm = await client.vm(args.name)
    ctx.show(list(vm.nics), output.nics_table(vm))


RESET_MAC = ("", "reset")
"""What `vm nic guest-mac` takes for "back to the configured MAC"."""


async def cmd_vm_nic_guest_mac(args: argparse.Namespace, ctx: Context) -> None:
    """The guest of a running VM sets its adapter's MAC (its runtime state only)."""
    from vsim.ethernet_frame import unicast_mac

    reset = args.mac.strip().lower() in RESET_MAC
    mac = "" if reset else unicast_mac(args.mac, "MAC")
    async with await ctx.client() as client:
        port = await client.set_guest_mac(args.name, mac, args.nic)
    ctx.show(port, output.guest_mac_text(port))


def parse_rule(text: str) -> kpb.FirewallRule:
    """'ACTION [DIRECTION [PROTOCOL [ADDRESS [PORT [NAME...]]]]]', e.g.
    'deny in tcp 10.0.0.0/8 22 no-ssh'."""
    from vsim.network_messages import firewall_rule

    words = text.split()
    if not words:
        raise InvalidArgument("--rule needs at least an action: allow or deny")
    keys = ("action", "direction", "protocol", "address", "port")
    rule = kpb.FirewallRule(**dict(zip(keys, words, strict=False)), name=" ".join(words[5:]))
    return firewall_rule(rule, f"--rule {text!r}")


async def cmd_vm_firewall_set(args: argparse.Namespace, ctx: Context) -> None:
    rules = [parse_rule(text) for text in args.rule or ()]
    async with await ctx.client() as client:
        task = await client.set_vm_firewall(args.name, rules, args.nic, args.default)
        show_task_fault(await client.wait(task))
        vm = await client.vm(args.name)
    ctx.show(list(vm.nics), output.firewall_text(vm))


async def cmd_vm_firewall_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        vm = await client.vm(args.name)
    ctx.show(list(vm.nics), output.firewall_text(vm))


def add_commands(vms: Subcommands, command: Command) -> None:
    nic = command(vms, "nic", None, "network adapters").add_subparsers(dest="sub2", required=True)
    p = command(nic, "add", cmd_vm_nic_add, "add a network adapter (live on a running VM)")
    p.add_argument("name")
    p.add_argument("--portgroup", required=True)
    p.add_argument("--mac", help="default: one vCenter assigns")
    p.add_argument("--nic", help="default: the next free ethernetN")
    command(nic, "list", cmd_vm_nic_list, "the VM's network adapters").add_argument("name")
    p = command(nic, "guest-mac", cmd_vm_nic_guest_mac, "the running guest sets an adapter's MAC")
    p.add_argument("name")
    p.add_argument("mac", metavar="MAC", help="a unicast MAC, or reset for the configured one")
    p.add_argument("--nic", default="ethernet0")
    p = command(nic, "remove", cmd_vm_nic_remove, "remove an adapter (live on a running VM)")
    p.add_argument("name")
    p.add_argument("nic", metavar="NIC", help="the adapter, e.g. ethernet1")
    fw = command(vms, "firewall", None, "vNIC firewall").add_subparsers(dest="sub2", required=True)
    p = command(fw, "set", cmd_vm_firewall_set, "replace an adapter's firewall rules")
    p.add_argument("name")
    p.add_argument("--nic", default="ethernet0")
    p.add_argument(
        "--rule",
        action="append",
        help="'ACTION [DIRECTION [PROTOCOL [ADDRESS [PORT [NAME]]]]]', e.g. "
        "'deny in tcp 10.0.0.0/8 22'; repeat, first match wins",
    )
    p.add_argument("--default", choices=["allow", "deny"], default="allow")
    command(fw, "list", cmd_vm_firewall_list, "each adapter's rules").add_argument("name")
