"""`vsim network ...`: standard vSwitches and port groups on a host (added, changed,
listed, removed, with their security policy), the physical switch the hosts' NICs are cabled
to (`pswitch`: trunked VLANs, shutdown), and test frames sent from a running VM.

Like every command, these are a thin layer over the SDK client: they validate what
the user typed before sending anything, and keep no state of their own. The
standard switch's default policy the parser shows is vsim.security_policy's.
"""

from __future__ import annotations

import argparse

from vsim import validate
from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands
from vsim.faults import InvalidArgument
from vsim.security_policy import SECURITY_FIELDS, STANDARD_SWITCH_SECURITY
from vsim.v1 import kernel_pb2 as kpb

STANDARD_SWITCH_DEFAULTS = {f: getattr(STANDARD_SWITCH_SECURITY, f) for f in SECURITY_FIELDS}
"""A new standard vSwitch's policy, by SecurityPolicy field."""


SECURITY_OPTIONS = (
    ("promiscuous", "allow_promiscuous"),
    ("mac_changes", "mac_changes"),
    ("forged_transmits", "forged_transmits"),
)
"""(option dest, SecurityPolicy field) of --promiscuous, --mac-changes, --forged-transmits."""


INHERIT = "inherit"
"""What `portgroup update` takes for "back to the vSwitch's setting"."""


def security_policy(args: argparse.Namespace) -> kpb.SecurityPolicy:
    """The policy options given (accept/reject); those not given stay unset: a new
    vSwitch then takes the standard switch's defaults, a port group its vSwitch's,
    and an update leaves them as they are."""
    policy = kpb.SecurityPolicy()
    for option, field in SECURITY_OPTIONS:
        value = getattr(args, option)
        if value is not None and value != INHERIT:
            setattr(policy, field, value == "accept")
    return policy


def inherited(args: argparse.Namespace) -> list[str]:
    """The SecurityPolicy fields given as `inherit`."""
    return [field for option, field in SECURITY_OPTIONS if getattr(args, option) == INHERIT]


async def cmd_vswitch_add(args: argparse.Namespace, ctx: Context) -> None:
    security = security_policy(args)
    async with await ctx.client() as client:
        network = await client.add_virtual_switch(args.host, args.name, args.uplink or (), security)
    ctx.show(network, output.vswitches_table(network))


async def cmd_vswitch_update(args: argparse.Namespace, ctx: Context) -> None:
    uplinks = () if args.no_uplinks else args.uplink
    security = security_policy(args)
    async with await ctx.client() as client:
        network = await client.update_virtual_switch(args.host, args.name, uplinks, security)
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


async def cmd_portgroup_update(args: argparse.Namespace, ctx: Context) -> None:
    if args.vlan is not None:
        validate.int_range(args.vlan, 0, 4095, "--vlan")
    security, inherit = security_policy(args), inherited(args)
    async with await ctx.client() as client:
        network = await client.update_port_group(args.host, args.name, args.vlan, security, inherit)
    ctx.show(network, output.port_groups_table(network))


async def cmd_portgroup_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        network = await client.remove_port_group(args.host, args.name)
    ctx.show(network, output.port_groups_table(network))


async def cmd_portgroup_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        network = await client.host_network(args.host)
    ctx.show(list(network.port_groups), output.port_groups_table(network))


async def cmd_vmknic_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        network = await client.host_network(args.host)
    ctx.show(list(network.vmknics), vmknics_table(network))


async def cmd_vmknic_set(args: argparse.Namespace, ctx: Context) -> None:
    vmotion = None if args.vmotion is None else args.vmotion == "on"
    async with await ctx.client() as client:
        network = await client.update_vmknic(args.host, args.device, vmotion, args.link_speed or 0)
    ctx.show(list(network.vmknics), vmknics_table(network))


def vmknics_table(network) -> str:
    rows = [
        {
            "device": n.device,
            "network": n.network,
            "services": ",".join(n.services) or "-",
            "link_mbps": n.link_speed_mbps,
            "address": n.address,
        }
        for n in network.vmknics
    ]
    return output.table(rows, ["device", "network", "services", "link_mbps", "address"])


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


def add_security_options(p: argparse.ArgumentParser, vswitch: bool, update: bool = False) -> None:
    """--promiscuous, --mac-changes, --forged-transmits (HostNetworkSecurityPolicy); on
    an update, unset leaves a setting as it is, and a port group's may be inherited."""
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
        choices = ["accept", "reject"]
        if update:
            unset = "as it is"
            choices += [] if vswitch else [INHERIT]
        p.add_argument(
            "--" + option.replace("_", "-"), choices=choices, help=f"{help_} (unset: {unset})"
        )


def add_commands(commands: Subcommands, command: Command) -> None:
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
    p = command(vswitch, "update", cmd_vswitch_update, "change a vSwitch's uplinks or policy")
    p.add_argument("host")
    p.add_argument("name")
    uplinks = p.add_mutually_exclusive_group()
    uplinks.add_argument(
        "--uplink", action="append", help="its uplinks from now on, in failover order; repeatable"
    )
    uplinks.add_argument("--no-uplinks", action="store_true", help="take every uplink away")
    add_security_options(p, vswitch=True, update=True)
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
    p = command(portgroup, "update", cmd_portgroup_update, "change a port group's VLAN or policy")
    p.add_argument("host")
    p.add_argument("name")
    p.add_argument("--vlan", type=int, help="0 none, 1-4094, 4095 guest tagging (unset: as it is)")
    add_security_options(p, vswitch=False, update=True)
    command(portgroup, "list", cmd_portgroup_list, "a host's port groups").add_argument("host")
    p = command(portgroup, "remove", cmd_portgroup_remove, "remove a port group no VM uses")
    p.add_argument("host")
    p.add_argument("name")
    vmknic = command(groups, "vmknic", None, "VMkernel adapters").add_subparsers(
        dest="sub2", required=True
    )
    command(vmknic, "list", cmd_vmknic_list, "a host's VMkernel adapters").add_argument("host")
    p = command(vmknic, "set", cmd_vmknic_set, "tag vmk1 for vMotion, or set its link speed")
    p.add_argument("host")
    p.add_argument("device", help="vmk1")
    p.add_argument("--vmotion", choices=["on", "off"])
    p.add_argument("--link-speed", type=int, metavar="MBPS", help="1000, 10000, 25000, ...")
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
