"""The physical network between the hosts, as vCenter sees it: the switch ports the
hosts' uplinks are cabled to; SendTestFrame, which follows one frame from a VM's
vNIC through its host's vSwitch, the physical switch and every other host's vSwitch;
and SetGuestMac, the guest of a running VM giving its adapter another MAC.

Every host in the inventory has its physical NICs (vmnic0..vmnic3) cabled to one
switch; a port is a trunk of every VLAN (0 = native, untagged) unless a configured
row (kept in the inventory) says which VLANs it carries or that it is shut down. The
switch itself is `cluster.physical_switch.PhysicalSwitch`, brought in line with the
inventory before each frame; a frame is run as that module's in-process `Network`
runs it, but over the hosts' RPCs: SendFrame on the sender's host gives (uplink,
frame) pairs, the switch turns each into (host, uplink, frame) deliveries, and each
goes to ReceiveFrame on that host, which never sends it out again (no loops). The
copies a host discards only because they were flooded to it are left out of the
trace (see FLOODED_COPY_DISCARDS).

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

import asyncio

from vsim import validate
from vsim.ethernet_frame import Frame, unicast_mac, uplink_name
from vsim.fabric.physical_switch import (
    ALL_VLANS,
    DROP_HOST_UNREACHABLE,
    FabricDrop,
    PhysicalSwitch,
    vlan_set,
)
from vsim.faults import (
    HostConnectFault,
    HostNotConnected,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    RequestTimeout,
)
from vsim.host.hostd import kernel_messages
from vsim.host.hostd.kernel_messages import frame_to_proto
from vsim.host.kernel.net.vswitch import DROP_NO_PORT, DROP_NO_VSWITCH, DROP_STANDBY
from vsim.host.kernel.vmkernel import PHYSICAL_NICS
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
    return kernel_messages.frame_from_proto(frame)


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
        frame = frame_to_proto(frame_from_proto(self._addressed(request, nic)))
        if not request.frame.src_mac:
            frame.src_mac = await self._effective_mac(vm, nic)
        trace = kpb.FrameTrace(host=vm.host, vm=vm.name, nic=nic.name, frame=frame)
        first = await self._hosts.call(
            vm.host, "SendFrame", hpb.SendFrameRequest(vm=vm.name, nic=nic.name, frame=frame)
        )
        _merge(trace, vm.host, first)
        self._sync()
        for out in first.sent:
            await self._across_switch(vm.host, out.uplink, out.frame, trace)
        return trace

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

    async def _across_switch(
        self, host: str, uplink: str, frame: kpb.Frame, trace: kpb.FrameTrace
    ) -> None:
        forwarding = self.switch.forward(host, uplink, frame_from_proto(frame))
        for drop in forwarding.dropped:
            self._switch_dropped(trace, drop)
        connected = set(self._hosts.connected_names())

        async def deliver(to_host: str, to_uplink: str, copy: Frame) -> kpb.FrameTrace:
            part = kpb.FrameTrace()
            if to_host not in connected:
                detail = f"{to_host} is not connected to vCenter"
                drop = FabricDrop(to_host, to_uplink, DROP_HOST_UNREACHABLE, detail)
                self._switch_dropped(part, drop)
                return part
            request = hpb.ReceiveFrameRequest(uplink=to_uplink, frame=frame_to_proto(copy))
            try:
                delivery = await self._hosts.call(to_host, "ReceiveFrame", request)
            except UNREACHABLE as fault:
                drop = FabricDrop(to_host, to_uplink, DROP_HOST_UNREACHABLE, fault.message)
                self._switch_dropped(part, drop)
                return part
            _merge(part, to_host, delivery, skip=FLOODED_COPY_DISCARDS)
            return part

        # The hosts take their copies at once; the parts join the trace in the
        # switch's port order, so a trace reads the same every run.
        parts = await asyncio.gather(*(deliver(*d) for d in forwarding.deliveries))
        for part in parts:
            trace.received.extend(part.received)
            trace.dropped.extend(part.dropped)

    def _switch_dropped(self, trace: kpb.FrameTrace, drop: FabricDrop) -> None:
        trace.dropped.add(
            host="",
            where=f"{self.switch.name}:{drop.host}/{drop.uplink}",
            reason=drop.reason,
            detail=drop.detail,
        )


def _merge(
    trace: kpb.FrameTrace, host: str, delivery: kpb.HostDelivery, skip: frozenset[str] = frozenset()
) -> None:
    """Adds one host's part of the journey to the trace, without drops for `skip`
    reasons."""
    for reception in delivery.received:
        trace.received.append(reception)
        trace.received[-1].host = reception.host or host
    for drop in delivery.dropped:
        if drop.reason not in skip:
            trace.dropped.append(drop)
            trace.dropped[-1].host = drop.host or host


def _describe(port: kpb.PhysicalPort) -> str:
    state = "shut down" if port.disabled else "up"
    vlans = "all VLANs" if not port.vlans else "VLANs " + ", ".join(map(str, port.vlans))
    return f"trunk of {vlans}, {state}"
