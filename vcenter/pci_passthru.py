"""The hosts' PCI devices and their DirectPath I/O state, as vCenter manages them
(vSphere's HostPciPassthruSystem): listing a host's devices and turning passthrough
on or off for one. Assigning a device to a VM is a VM reconfiguration (see
vm_reconfigure).

The host is the truth for its devices and which VM has one; vCenter checks the
request's form and that the host is connected, and records an event once the host
has made the change. Never does: keep its own list of a host's devices.
"""

from __future__ import annotations

from vsim import validate
from vsim.pci_device import pci_id
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager


class PciPassthruManager:
    """vCenter's manager of its hosts' DirectPath I/O: each host's own
    HostPciPassthruSystem (host/kernel/passthrough.py) is reached through its API."""

    def __init__(self, hosts: HostManager, events: EventLog) -> None:
        self._hosts = hosts
        self._events = events

    async def devices(self, request: pb.HostRequest) -> kpb.PciDevices:
        validate.host_name(request.name, "name")
        self._hosts.connected(request.name)
        reply = await self._hosts.call(request.name, "ListPciDevices", hpb.ListPciDevicesRequest())
        reply.host = reply.host or request.name
        return reply

    async def update(self, request: pb.UpdateHostPassthruRequest, user: str) -> kpb.PciDevice:
        validate.host_name(request.host, "host")
        device = pci_id(request.id, "id")
        self._hosts.connected(request.host)
        forwarded = hpb.UpdatePassthruRequest(id=device, enabled=request.enabled)
        reply = await self._hosts.call(request.host, "UpdatePassthruConfig", forwarded)
        self._events.post(
            "HostPciPassthruChangedEvent",
            f"Passthrough {'enabled' if request.enabled else 'disabled'} for PCI device "
            f"{device} on {request.host}",
            user=user,
            host=request.host,
        )
        return reply
