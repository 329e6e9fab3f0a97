"""What the hosts' VMkernels report and how their memory is set up, as vCenter
exposes them (vSphere's PerformanceManager and a host's advanced Mem.* settings).

Statistics are read from the host at the moment they are asked for; vCenter keeps
no history. A memory setting is checked at once by the host's own rule
(MemorySettings), forwarded, and recorded as an event once the host has applied it.
Never does: keep statistics, or settings the host owns.
"""

from __future__ import annotations

from dataclasses import replace

from vsim import validate
from vsim.faults import InvalidArgument, InvalidPowerState
from vsim.memory_settings import MemorySettings
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager
from vsim.vcenter.inventory import Inventory

MEMORY_SETTINGS = ("share_force_salting", "page_sharing_disabled", "share_scan_period")
"""The host memory settings a request may change (any of them, at least one)."""


class Performance:
    def __init__(self, inventory: Inventory, hosts: HostManager, events: EventLog) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._events = events

    async def host_stats(self, request: pb.HostRequest) -> kpb.HostStats:
        validate.host_name(request.name, "name")
        return await self._host_stats(request.name)

    async def _host_stats(self, host: str) -> kpb.HostStats:
        self._hosts.connected(host)
        stats = await self._hosts.call(host, "GetHostStats", hpb.GetHostStatsRequest())
        stats.host = stats.host or host
        return stats

    async def vm_stats(self, request: pb.VmRequest) -> kpb.VmStats:
        vm = self._inventory.require_vm(request.name)
        if vm.power_state != pb.POWER_STATE_POWERED_ON:
            raise InvalidPowerState(
                f"{vm.name} is powered off; a VM has statistics only while it runs"
            )
        self._hosts.connected(vm.host)
        stats = await self._hosts.call(vm.host, "GetVmStats", hpb.HostVmRequest(name=vm.name))
        stats.host = stats.host or vm.host
        return stats

    async def update_memory_settings(
        self, request: pb.UpdateHostMemorySettingsRequest, user: str
    ) -> kpb.HostMemorySettings:
        validate.host_name(request.host, "host")
        self._hosts.connected(request.host)
        given = [name for name in MEMORY_SETTINGS if request.HasField(name)]
        if not given:
            raise InvalidArgument(
                "nothing to change: give share_force_salting, page_sharing_disabled or "
                "share_scan_period"
            )
        _memory_settings(request).validated()  # the host's own check
        forwarded = hpb.UpdateMemorySettingsRequest(**{n: getattr(request, n) for n in given})
        changes = []
        if request.HasField("share_force_salting"):
            changes.append(f"Mem.ShareForceSalting={request.share_force_salting}")
        if request.HasField("page_sharing_disabled"):
            changes.append(f"page sharing {'off' if request.page_sharing_disabled else 'on'}")
        if request.HasField("share_scan_period"):
            changes.append(f"scan every {request.share_scan_period:g} s")
        settings = await self._hosts.call(request.host, "UpdateMemorySettings", forwarded)
        self._events.post(
            "HostMemorySettingsChangedEvent",
            f"Memory settings of {request.host}: {', '.join(changes)}",
            user=user,
            host=request.host,
        )
        return settings


def _memory_settings(request: pb.UpdateHostMemorySettingsRequest) -> MemorySettings:
    """The settings the request gives, over the defaults. The host checks each setting
    alone, so the defaults standing in for those not given change no verdict."""
    settings = MemorySettings()
    if request.HasField("share_force_salting"):
        settings = replace(settings, share_force_salting=request.share_force_salting)
    if request.HasField("page_sharing_disabled"):
        settings = replace(settings, page_sharing=not request.page_sharing_disabled)
    if request.HasField("share_scan_period"):
        settings = replace(settings, share_scan_period=request.share_scan_period)
    return settings
