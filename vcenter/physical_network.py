"""The physical network between the hosts, as vCenter sees it: the switch ports the
hosts' uplinks are cabled to; SendTestFrame, which follows one frame from a VM's
vNIC through its host's vSwitch, the physical switch and every other host's vSwitch;
and SetGuestMac, the guest of a running VM giving its adapter another MAC.

Every host in the inventory has its physical NICs (vmnic0..vmnic3) cabled to one
switch; a port is a trunk of every VLAN (0 = native, untagged) unless a configured
row (kept in the inventory) says which VLANs it carries or that it is shut down. The
switch itself is `fabric.physical_switch.PhysicalSwitch`, brought in line with the
inventory once the sender's host has sent the frame; the frame is run by
`fabric.frame_walk`, the walk the in-process `fabric.network.Network` runs too, here
over the hosts' RPCs: SendFrame on the sender's host gives (uplink, frame) pairs, the
switch turns each into (host, uplink, frame) deliveries, and each goes to ReceiveFrame
on that host (all of one forwarding at once), which never sends it out again (no
loops). The copies a host discards only because they were flooded to it are left out
of the trace (see FLOODED_COPY_DISCARDS).

A test frame without a source MAC leaves with the adapter's effective MAC, as its
host reports it: a guest that changed its MAC sends with the new one, and only a
frame given another source MAC is a forged transmit. The effective MAC is the
guest's runtime state, kept by the VM's host alone (never in the inventory); every
power-on starts again with the configured MAC. `dst_vm` addresses the frame to the
destination's configured MAC.

Never does: look inside a host (it sees what hosts report), or change a VM or a
host's configuration.
"""

from __future__ import annotations

from dataclasses import replace

from vsim import network_messages, validate
from vsim.ethernet_frame import PHYSICAL_NICS, Frame, unicast_mac, uplink_name
from vsim.fabric.frame_walk import HostPart, Reception, Trace, TraceDrop, Unreachable, run_async
from vsim.fabric.physical_switch import ALL_VLANS, PhysicalSwitch, vlan_set
from vsim.faults import (
    HostConnectFault,
    HostNotConnected,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    RequestTimeout,
)
from vsim.network_messages import frame_to_proto
from vsim.port_stats import DROP_NO_PORT, DROP_NO_VSWITCH, DROP_STANDBY
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.virtual_nic import DEFAULT_NIC, find_nic

MAX_FRAME_PAYLOAD = 9000
"""Bytes: the largest MTU a standard vSwitch takes (jumbo frames)."""
UNREACHABLE = (HostNotConnected, HostConnectFault, RequestTimeout)
"""Faults of a host that does not answer: its copy of a frame is lost, not the trace."""
FLOODED_COPY_DISCARDS = frozenset({DROP_NO_PORT, DROP_NO_VSWITCH, DROP_STANDBY})
"""Why a host discards, at an uplink, a copy that is not for it. The switch floods
(it learns no MACs), so every host in the VLAN gets a copy of each frame; a learning
switch would have sent most of them nowhere, and ESXi discards the rest without a
word. A trace leaves these out: it shows who got the frame and where it was stopped,
not the flooding."""


def frame_from_proto(frame: kpb.Frame) -> Frame:
    """The frame as the network cores carry it; InvalidArgument if a field is bad."""
    if len(frame.payload) > MAX_FRAME_PAYLOAD:
        raise InvalidArgument(
            f"payload is {len(frame.payload)} bytes; a frame carries at most {MAX_FRAME_PAYLOAD}"
        )
    return network_messages.frame_from_proto(frame)


class PhysicalNetwork:
    def __init__(self, inventory: Inventory, hosts: HostManager, events: EventLog) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._events = events
        self.switch = PhysicalSwitch()

    # the switch's ports

    def configure(self, port: kpb.PhysicalPort, user: str) -> kpb.PhysicalPort:
        """Sets one port's VLANs (empty: all) and shutdown state; replaces the row."""
        validate.host_name(port.host, "host")
        self._hosts.record(port.host)
        uplink_name(port.uplink)
        if port.uplink not in PHYSICAL_NICS:
            raise NotFound(
                f"{port.host} has no physical NIC {port.uplink}; it has {', '.join(PHYSICAL_NICS)}"
            )
        row = kpb.PhysicalPort(
            host=port.host,
            uplink=port.uplink,
            vlans=sorted(vlan_set(port.vlans)),
            disabled=port.disabled,
        )
        with self._inventory.transaction():
            self._inventory.set_physical_port(row)
            self._events.post(
                "PhysicalSwitchPortConfiguredEvent",
                f"Switch port of {row.host}/{row.uplink}: {_describe(row)}",
                user=user,
                host=row.host,
            )
        return row

    def ports(self) -> list[kpb.PhysicalPort]:
        """Every host's physical NICs, as configured or by default (trunks of all VLANs)."""
        configured = {(p.host, p.uplink): p for p in self._inventory.physical_ports()}
        return [
            configured.get((h.name, nic)) or kpb.PhysicalPort(host=h.name, uplink=nic)
            for h in self._inventory.hosts()
            for nic in PHYSICAL_NICS
        ]

    def _sync(self) -> None:
        """Brings the switch core in line with the inventory (hosts come and go)."""
        wanted = {(p.host, p.uplink): p for p in self.ports()}
        for port in self.switch.ports():
            if (port.host, port.uplink) not in wanted:
                self.switch.disconnect(port.host, port.uplink)
        for (host, uplink), row in wanted.items():
            vlans = frozenset(row.vlans) if row.vlans else ALL_VLANS
            try:
                current = self.switch.port(host, uplink)
            except NotFound:
                current = self.switch.connect(host, uplink, vlans=vlans)
            if current.vlans != vlans:
                self.switch.configure(host, uplink, vlans=vlans)
            if current.enabled == row.disabled:
                self.switch.set_enabled(host, uplink, not row.disabled)

    # SendTestFrame

    async def send_test_frame(self, request: pb.SendTestFrameRequest) -> kpb.FrameTrace:
        vm = self._inventory.require_vm(request.vm)
        if vm.power_state != pb.POWER_STATE_POWERED_ON:
            raise InvalidPowerState(f"{vm.name} is powered off; power it on to send frames")
        self._hosts.connected(vm.host)
        nic = find_nic(vm.nics, vm.name, request.nic or DEFAULT_NIC)
        frame = frame_from_proto(self._addressed(request, nic))
        if not request.frame.src_mac:
            frame = replace(frame, src_mac=await self._effective_mac(vm, nic))
        trace = await run_async(self.switch, _Hosts(self), vm.host, vm.name, nic.name, frame)
        return _trace_to_proto(trace)

    async def _effective_mac(self, vm: pb.Vm, nic: kpb.VmNic) -> str:
        """The MAC the guest uses on the adapter now (its host knows; the configured
        one if the host has no port for it, whose SendFrame then says why)."""
        network = await self._hosts.call(vm.host, "GetNetwork", hpb.GetNetworkRequest())
        for port in network.nics:
            if (port.vm, port.nic) == (vm.name, nic.name):
                return port.effective_mac or nic.mac
        return nic.mac

    def _addressed(self, request: pb.SendTestFrameRequest, nic: kpb.VmNic) -> kpb.Frame:
        """The request's frame with its addresses filled in (the source, until the
        host is asked for the effective MAC, with the configured one)."""
        frame = kpb.Frame()
        frame.CopyFrom(request.frame)
        frame.src_mac = frame.src_mac or nic.mac
        if request.dst_vm:
            if frame.dst_mac:
                raise InvalidArgument("give dst_vm or the frame's dst_mac, not both")
            dst = self._inventory.require_vm(request.dst_vm)
            if not dst.nics:
                raise InvalidState(f"{dst.name} has no network adapter to send to")
            frame.dst_mac = dst.nics[0].mac
        elif not frame.dst_mac:
            raise InvalidArgument(
                "the frame needs a destination: dst_vm, or dst_mac (ff:ff:ff:ff:ff:ff to broadcast)"
            )
        return frame

    # SetGuestMac

    async def set_guest_mac(self, request: kpb.SetGuestMacRequest) -> kpb.ConnectedNic:
        """The guest of a running VM sets its adapter's MAC on the VM's host (empty:
        back to the configured MAC). Checked before the host is asked: a unicast MAC,
        a VM that runs, an adapter it has."""
        mac = unicast_mac(request.mac, "mac") if request.mac else ""
        vm = self._inventory.require_vm(request.vm)
        nic = find_nic(vm.nics, vm.name, request.nic or DEFAULT_NIC)
        if vm.power_state != pb.POWER_STATE_POWERED_ON:
            raise InvalidPowerState(
                f"{vm.name} is powered off: only a running guest sets its MAC, and every "
                "power-on starts with the configured one"
            )
        self._hosts.connected(vm.host)
        wanted = kpb.SetGuestMacRequest(vm=vm.name, nic=nic.name, mac=mac)
        return await self._hosts.call(vm.host, "SetGuestMac", wanted)


class _Hosts:
    """The walk's driver: the hosts' SendFrame and ReceiveFrame RPCs."""

    flooded_copy_discards = FLOODED_COPY_DISCARDS

    def __init__(self, network: PhysicalNetwork) -> None:
        self._network = network
        self._hosts = network._hosts

    async def send(self, host: str, vm: str, nic: str, frame: Frame) -> HostPart:
        request = hpb.SendFrameRequest(vm=vm, nic=nic, frame=frame_to_proto(frame))
        delivery = await self._hosts.call(host, "SendFrame", request)
        # The switch as the inventory has it once the sender's host has answered.
        self._network._sync()
        return _host_part(host, delivery, sent=True)

    async def receive(self, host: str, uplink: str, frame: Frame) -> HostPart | Unreachable:
        if host not in self._hosts.connected_names():
            return Unreachable(f"{host} is not connected to vCenter")
        request = hpb.ReceiveFrameRequest(uplink=uplink, frame=frame_to_proto(frame))
        try:
            delivery = await self._hosts.call(host, "ReceiveFrame", request)
        except UNREACHABLE as fault:
            return Unreachable(fault.message)
        return _host_part(host, delivery)


def _host_part(host: str, delivery: kpb.HostDelivery, sent: bool = False) -> HostPart:
    """One host's answer as the walk reads it (a host that names none is `host`).
    What a host sends on is taken only from the sender: a vSwitch never sends a frame
    that came in at an uplink out again."""
    return HostPart(
        tuple(
            Reception(r.host or host, r.vm, r.nic, network_messages.frame_from_proto(r.frame))
            for r in delivery.received
        ),
        tuple(TraceDrop(d.host or host, d.where, d.reason, d.detail) for d in delivery.dropped),
        tuple((u.uplink, frame_from_proto(u.frame)) for u in delivery.sent) if sent else (),
    )


def _trace_to_proto(trace: Trace) -> kpb.FrameTrace:
    """A drop at a switch port names no host (FrameDrop.host is "" for the switch)."""
    return kpb.FrameTrace(
        host=trace.host,
        vm=trace.vm,
        nic=trace.nic,
        frame=frame_to_proto(trace.frame),
        received=[
            kpb.FrameReception(host=r.host, vm=r.vm, nic=r.nic, frame=frame_to_proto(r.frame))
            for r in trace.received
        ],
        dropped=[
            kpb.FrameDrop(
                host="" if d.switch else d.host, where=d.where, reason=d.reason, detail=d.detail
            )
            for d in trace.dropped
        ],
    )


def _describe(port: kpb.PhysicalPort) -> str:
    state = "shut down" if port.disabled else "up"
    vlans = "all VLANs" if not port.vlans else "VLANs " + ", ".join(map(str, port.vlans))
    return f"trunk of {vlans}, {state}"
