"""The VMkernel commands of `vsim`: what runs inside hosts' kernels, and the network.

Owns the `vsim network ...` group (standard vSwitches and port groups, added and
removed; the physical switch; test frames), the VM commands that reach a running VM's
kernel side (`vsim vm resources`, `stats`, `luns`, `nic`, `firewall`, `pci`) and the
host kernel commands (`vsim host stats`, `memory`, `pci`, `pool`): their options, the
parsing of their values, and their handlers.

`vsim.cluster.cli` is the entry point: it builds the parser, registers these commands
with `add_host_commands`, `add_vm_commands` and `add_network_commands`, and runs them.
Like every command, these are a thin layer over the SDK client: they validate what the
user typed before sending anything, and never keep state of their own.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from vsim import validate
from vsim.cluster import output
from vsim.faults import InvalidArgument, NotFound, fault_from_proto
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb

if TYPE_CHECKING:
    from vsim.cluster.cli import Context

# The host's rules that check what the user typed (vsim.host.*: the kernel's own
# modules, with numpy) are imported by the handlers that use them, so that building
# the parser, for every command and `vsim --help`, imports none of them. What the
# parser itself shows of the host is here; a unit test checks it against vsim.host.
ROOT_POOL = "Resources"
"""vsim.host.kernel.resources.allocation.ROOT_POOL: a host's root resource pool."""
STANDARD_SWITCH_DEFAULTS = {"allow_promiscuous": False, "mac_changes": True,
                            "forged_transmits": True}  # fmt: skip
"""vsim.host.kernel.net.vswitch.STANDARD_SWITCH_SECURITY: a new standard vSwitch's policy."""

# `command(parent, name, handler, help_)` from cli.build_parser: adds one subcommand.
Command = Callable[..., argparse.ArgumentParser]
# What add_subparsers() returns; argparse gives it no public name.
Subcommands = argparse._SubParsersAction


# VMs: resources, NICs, firewall, devices, statistics; hosts' kernels


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
    from vsim.host.kernel.resources.allocation import (
        VM_CPU_SHARES_PER_VCPU,
        VM_MEMORY_SHARES_PER_MB,
    )
    from vsim.host.kernel.vmkernel import pool_name

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


def whole(text: str, flag: str, allowed: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"{flag} must be {allowed}, got {text!r}") from None
    if not 0 <= value < 2**62:
        raise InvalidArgument(f"{flag} must be {allowed} (>= 0 and < 2^62), got {value}")
    return value


def show_task_fault(task: common_pb2.Task) -> None:
    if task.state == common_pb2.TASK_STATE_ERROR:
        raise fault_from_proto(task.error)


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
    from vsim.vcenter.virtual_nic import firewall_rule

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


POOL_OPTIONS = (("cpu", "MHz"), ("mem", "MB"))
"""(option prefix, unit) of the --cpu-* and --mem-* options of `vsim host pool`."""
POOL_OPTION_NAMES = ("shares", "reservation", "limit", "expandable")


def pool_allocation(
    args: argparse.Namespace, prefix: str, unit: str, current: kpb.PoolAllocation
) -> kpb.PoolAllocation | None:
    """`current` with the --PREFIX-* options given applied (None if none was given),
    checked as the host checks it (unit: MHz or MB)."""
    from vsim.host.hostd.kernel_messages import pool_allocation_from_proto
    from vsim.host.kernel.resources.allocation import SHARE_LEVELS, Unit

    given = [getattr(args, f"{prefix}_{name}") for name in POOL_OPTION_NAMES]
    if given == [None] * len(POOL_OPTION_NAMES):
        return None
    shares, reservation, limit, expandable = given
    a = kpb.PoolAllocation()
    a.CopyFrom(current)
    if shares in SHARE_LEVELS:
        a.shares_level, a.shares = shares, 0
    elif shares is not None:
        flag = f"--{prefix}-shares"
        value = whole(shares, flag, "low, normal, high or a number")
        a.shares_level, a.shares = "custom", validate.int_range(value, 1, 2**31 - 1, flag)
    if reservation is not None:
        a.reservation = validate.int_range(reservation, 0, 2**40, f"--{prefix}-reservation")
    if limit == "unlimited":
        a.ClearField("limit")
    elif limit is not None:
        a.limit = whole(limit, f"--{prefix}-limit", "a number or unlimited")
    if expandable is not None:
        a.expandable_reservation = expandable == "on"
    pool_allocation_from_proto(a, Unit(unit), f"--{prefix}-*")
    return a


async def cmd_host_pool_create(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.host.kernel.vmkernel import pool_name

    pool_name(args.name)
    parent = "" if args.parent in (None, ROOT_POOL) else pool_name(args.parent, "--parent")
    cpu, memory = (
        pool_allocation(args, prefix, unit, kpb.PoolAllocation()) for prefix, unit in POOL_OPTIONS
    )
    async with await ctx.client() as client:
        pools = await client.create_resource_pool(args.host, args.name, parent, cpu, memory)
    ctx.show(pools, output.resource_pools_table(pools))


async def cmd_host_pool_update(args: argparse.Namespace, ctx: Context) -> None:
    """Reads the pool, changes only the settings given, sends the resources changed."""
    from vsim.host.kernel.vmkernel import pool_name

    pool_name(args.name)
    async with await ctx.client() as client:
        pools = await client.resource_pools(args.host)
        current = next((p for p in pools.pools if p.name == args.name), None)
        if current is None:
            raise NotFound(
                f"{args.host} has no resource pool {args.name!r}; it has: "
                + ", ".join(p.name for p in pools.pools)
            )
        (cpu_unit, mem_unit) = (unit for _, unit in POOL_OPTIONS)
        cpu = pool_allocation(args, "cpu", cpu_unit, current.cpu)
        memory = pool_allocation(args, "mem", mem_unit, current.memory)
        if cpu is None and memory is None:
            raise InvalidArgument("nothing to change: give a --cpu-* or --mem-* option")
        pools = await client.update_resource_pool(args.host, args.name, cpu, memory)
    ctx.show(pools, output.resource_pools_table(pools))


async def cmd_host_pool_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        pools = await client.resource_pools(args.host)
    ctx.show(pools, output.resource_pools_table(pools))


async def cmd_host_pool_destroy(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.host.kernel.vmkernel import pool_name

    pool_name(args.name)
    async with await ctx.client() as client:
        task = await client.wait(await client.destroy_resource_pool(args.host, args.name))
    show_task_fault(task)
    ctx.show(task, f"resource pool {args.name} destroyed on {args.host}")


async def cmd_host_pci_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        devices = await client.pci_devices(args.name)
    ctx.show(devices, output.pci_table(devices))


async def cmd_host_pci_passthru(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        device = await client.update_passthru_config(args.name, args.id, args.state == "on")
    ctx.show(device, output.pci_table([device]))


# networking

SECURITY_OPTIONS = (
    ("promiscuous", "allow_promiscuous"),
    ("mac_changes", "mac_changes"),
    ("forged_transmits", "forged_transmits"),
)
"""(option dest, SecurityPolicy field) of --promiscuous, --mac-changes, --forged-transmits."""


def security_policy(args: argparse.Namespace) -> kpb.SecurityPolicy:
    """The policy options given (accept/reject); those not given stay unset: a new
    vSwitch then takes the standard switch's defaults, a port group its vSwitch's."""
    policy = kpb.SecurityPolicy()
    for option, field in SECURITY_OPTIONS:
        value = getattr(args, option)
        if value is not None:
            setattr(policy, field, value == "accept")
    return policy


async def cmd_vswitch_add(args: argparse.Namespace, ctx: Context) -> None:
    security = security_policy(args)
    async with await ctx.client() as client:
        network = await client.add_virtual_switch(args.host, args.name, args.uplink or (), security)
    ctx.show(network, output.vswitches_table(network))


async def cmd_vswitch_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        network = await client.remove_virtual_switch(args.host, args.name)
    ctx.show(network, output.vswitches_table(network))


async def cmd_vswitch_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        network = await client.host_network(args.host)
    ctx.show(list(network.vswitches), output.vswitches_table(network))


async def cmd_portgroup_add(args: argparse.Namespace, ctx: Context) -> None:
    validate.int_range(args.vlan, 0, 4095, "--vlan")
    security = security_policy(args)
    async with await ctx.client() as client:
        network = await client.add_port_group(
            args.host, args.name, args.vswitch, args.vlan, security
        )
    ctx.show(network, output.port_groups_table(network))


async def cmd_portgroup_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        network = await client.remove_port_group(args.host, args.name)
    ctx.show(network, output.port_groups_table(network))


async def cmd_portgroup_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        network = await client.host_network(args.host)
    ctx.show(list(network.port_groups), output.port_groups_table(network))


async def cmd_pswitch_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        ports = await client.physical_ports()
    ctx.show(ports, output.physical_ports_table(ports))


def vlan_list(text: str) -> list[int]:
    """'all', or VLAN ids and ranges: '0,10,20-29' (0 = native, untagged)."""
    from vsim.ethernet_frame import VLAN_VST_MAX

    if text.strip().lower() == "all":
        return []
    vlans: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise InvalidArgument(
                f"--vlans {text!r}: write VLAN ids and ranges like 0,10,20-29, or all"
            ) from None
        if not 0 <= first <= last <= VLAN_VST_MAX:
            raise InvalidArgument(
                f"--vlans {part.strip()!r}: VLANs are 0-{VLAN_VST_MAX} (0 = native), low end first"
            )
        vlans.extend(range(first, last + 1))
    return vlans


async def cmd_pswitch_set(args: argparse.Namespace, ctx: Context) -> None:
    vlans = vlan_list(args.vlans)
    async with await ctx.client() as client:
        port = await client.configure_physical_port(args.host, args.uplink, vlans, args.shutdown)
    ctx.show(port, output.physical_ports_table([port]))


async def cmd_send_frame(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.ethernet_frame import VLAN_VST_MAX, mac_address

    frame = kpb.Frame(
        src_mac=mac_address(args.src_mac, "--src-mac") if args.src_mac else "",
        dst_mac=mac_address(args.dst_mac, "--dst-mac") if args.dst_mac else "",
        vlan=validate.int_range(args.vlan, 0, VLAN_VST_MAX, "--vlan"),
        protocol=args.protocol,
        src_ip=args.src_ip or "",
        dst_ip=args.dst_ip or "",
        src_port=validate.port(args.src_port, "--src-port"),
        dst_port=validate.port(args.dst_port, "--dst-port"),
    )
    async with await ctx.client() as client:
        trace = await client.send_test_frame(args.name, frame, args.nic, args.to_vm or "")
    ctx.show(trace, output.trace_text(trace))


# registration


def add_host_commands(hosts: Subcommands, command: Command) -> None:
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
    add_pool_commands(hosts, command)


def add_pool_commands(hosts: Subcommands, command: Command) -> None:
    pools = command(hosts, "pool", None, "the host's resource pools").add_subparsers(
        dest="sub2", required=True
    )
    p = command(pools, "create", cmd_host_pool_create, "create a resource pool on a host")
    p.add_argument("host")
    p.add_argument("name")
    p.add_argument("--parent", help=f"default: the root pool, {ROOT_POOL}")
    add_pool_options(p, "unset: normal, 0, unlimited, expandable")
    p = command(pools, "update", cmd_host_pool_update, "change a pool's settings (those given)")
    p.add_argument("host")
    p.add_argument("name")
    add_pool_options(p, "unset: unchanged")
    command(pools, "list", cmd_host_pool_list, "a host's pools, their use and VMs").add_argument(
        "host"
    )
    p = command(
        pools, "destroy", cmd_host_pool_destroy, "destroy a pool (its VMs move to the parent)"
    )
    p.add_argument("host")
    p.add_argument("name")


def add_pool_options(p: argparse.ArgumentParser, unset: str) -> None:
    """--cpu-shares ... --mem-expandable: a pool's allocation of each resource."""
    for prefix, unit in POOL_OPTIONS:
        p.add_argument(f"--{prefix}-shares", help=f"low, normal, high or a number ({unset})")
        p.add_argument(f"--{prefix}-reservation", type=int, metavar=unit.upper())
        p.add_argument(f"--{prefix}-limit", metavar=f"{unit.upper()}|unlimited")
        p.add_argument(
            f"--{prefix}-expandable",
            choices=["on", "off"],
            help="children may reserve more, borrowing from the parent",
        )


def add_vm_commands(vms: Subcommands, command: Command) -> None:
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
    pci = command(vms, "pci", None, "DirectPath I/O").add_subparsers(dest="sub2", required=True)
    p = command(pci, "add", cmd_vm_pci_add, "give a powered-off VM a passthrough device")
    p.add_argument("name")
    p.add_argument("id", help="PCI address, e.g. 0000:3b:00.0")
    p = command(pci, "remove", cmd_vm_pci_remove, "take a passthrough device from a powered-off VM")
    p.add_argument("name")
    p.add_argument("id", help="PCI address, e.g. 0000:3b:00.0")


def add_security_options(p: argparse.ArgumentParser, vswitch: bool) -> None:
    """--promiscuous, --mac-changes, --forged-transmits (HostNetworkSecurityPolicy)."""
    for (option, field), help_ in zip(
        SECURITY_OPTIONS,
        (
            "promiscuous mode: also see others' frames in its VLANs",
            "keep receiving after the guest changes its MAC",
            "let the guest send from a MAC not its own",
        ),
        strict=True,
    ):
        default = STANDARD_SWITCH_DEFAULTS[field]
        unset = ("accept" if default else "reject") if vswitch else "inherit the vSwitch's"
        p.add_argument(
            "--" + option.replace("_", "-"),
            choices=["accept", "reject"],
            help=f"{help_} (unset: {unset})",
        )


def add_network_commands(commands: Subcommands, command: Command) -> None:
    network = command(commands, "network", None, "standard switches and the physical network")
    groups = network.add_subparsers(dest="sub", required=True)
    vswitch = command(groups, "vswitch", None, "standard vSwitches").add_subparsers(
        dest="sub2", required=True
    )
    p = command(vswitch, "add", cmd_vswitch_add, "add a standard vSwitch to a host")
    p.add_argument("host")
    p.add_argument("name")
    p.add_argument("--uplink", action="append", help="a physical NIC (vmnic1..); repeatable")
    add_security_options(p, vswitch=True)
    command(vswitch, "list", cmd_vswitch_list, "a host's vSwitches").add_argument("host")
    p = command(vswitch, "remove", cmd_vswitch_remove, "remove a vSwitch without port groups")
    p.add_argument("host")
    p.add_argument("name")
    portgroup = command(groups, "portgroup", None, "port groups").add_subparsers(
        dest="sub2", required=True
    )
    p = command(portgroup, "add", cmd_portgroup_add, "add a port group to a host's vSwitch")
    p.add_argument("host")
    p.add_argument("name")
    p.add_argument("--vswitch", default="vSwitch0")
    p.add_argument("--vlan", type=int, default=0, help="0 none, 1-4094, 4095 guest tagging")
    add_security_options(p, vswitch=False)
    command(portgroup, "list", cmd_portgroup_list, "a host's port groups").add_argument("host")
    p = command(portgroup, "remove", cmd_portgroup_remove, "remove a port group no VM uses")
    p.add_argument("host")
    p.add_argument("name")
    pswitch = command(groups, "pswitch", None, "the physical switch").add_subparsers(
        dest="sub2", required=True
    )
    command(pswitch, "list", cmd_pswitch_list, "the switch ports the hosts' NICs are cabled to")
    p = command(pswitch, "set", cmd_pswitch_set, "set the VLANs a switch port trunks")
    p.add_argument("host")
    p.add_argument("uplink", help="the host's physical NIC: vmnic0..vmnic3")
    p.add_argument("--vlans", default="all", help="e.g. 0,10,20-29 (0 = native) or all")
    p.add_argument("--shutdown", action="store_true", help="shut the port down")
    p = command(groups, "send-frame", cmd_send_frame, "send a test frame from a running VM")
    p.add_argument("name")
    p.add_argument("--nic", default="ethernet0")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-vm", help="to this VM's first adapter")
    to.add_argument("--dst-mac", help="ff:ff:ff:ff:ff:ff to broadcast")
    p.add_argument(
        "--src-mac",
        help="default: the adapter's MAC as the guest set it; another is a forged transmit",
    )
    p.add_argument("--vlan", type=int, default=0, help="a tag the guest puts on (VGT)")
    p.add_argument("--protocol", choices=["tcp", "udp", "icmp", "other"], default="other")
    p.add_argument("--src-ip")
    p.add_argument("--dst-ip")
    p.add_argument("--src-port", type=int, default=0)
    p.add_argument("--dst-port", type=int, default=0)
