"""What the hosts' VMkernels report and how their memory is set up, as vCenter
exposes it (vSphere's PerformanceManager and a host's advanced Mem.* settings).

Statistics are read from the host at the moment they are asked for; vCenter keeps
no history. A memory setting is checked, forwarded and recorded as an event once the
host has applied it. Never does: keep statistics, or settings the host owns.
"""

from __future__ import annotations

import math

from vsim import validate
from vsim.faults import InvalidArgument, InvalidPowerState, NotFound
from vsim.host.page_sharing import SALTING_MODES
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager
from vsim.vcenter.inventory import Inventory

MAX_SHARE_SCAN_PERIOD = 36_000.0
"""Seconds between TPS scans, at most 10 h: Mem.ShareScanTime's maximum (600 minutes)."""


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
        for stats in (await self._host_stats(vm.host)).vms:
            if stats.name == vm.name:
                stats.host = stats.host or vm.host
                return stats
        raise NotFound(f"{vm.host} reports no statistics for {vm.name}; is it running there?")

    async def update_memory_settings(
        self, request: pb.UpdateHostMemorySettingsRequest, user: str
    ) -> kpb.HostMemorySettings:
        validate.host_name(request.host, "host")
        self._hosts.connected(request.host)
        forwarded = hpb.UpdateMemorySettingsRequest()
        changes = []
        if request.HasField("share_force_salting"):
            if request.share_force_salting not in SALTING_MODES:
                raise InvalidArgument(
                    "share_force_salting (Mem.ShareForceSalting) must be 0 (share across "
                    "VMs), 1 (share when salts match) or 2 (share within a VM), got "
                    f"{request.share_force_salting}"
                )
            forwarded.share_force_salting = request.share_force_salting
            changes.append(f"Mem.ShareForceSalting={request.share_force_salting}")
        if request.HasField("page_sharing_disabled"):
            forwarded.page_sharing_disabled = request.page_sharing_disabled
            changes.append(f"page sharing {'off' if request.page_sharing_disabled else 'on'}")
        if request.HasField("share_scan_period"):
            period = request.share_scan_period
            if not (0 < period <= MAX_SHARE_SCAN_PERIOD and math.isfinite(period)):
                raise InvalidArgument(
                    f"share_scan_period must be > 0 and at most {MAX_SHARE_SCAN_PERIOD:.0f} "
                    f"seconds, got {period}"
                )
            forwarded.share_scan_period = period
            changes.append(f"scan every {period:g} s")
        if not changes:
            raise InvalidArgument(
                "nothing to change: give share_force_salting, page_sharing_disabled or "
                "share_scan_period"
            )
        settings = await self._hosts.call(request.host, "UpdateMemorySettings", forwarded)
        self._events.post(
            "HostMemorySettingsChangedEvent",
            f"Memory settings of {request.host}: {', '.join(changes)}",
            user=user,
            host=request.host,
        )
        return settings
