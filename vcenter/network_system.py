"""The hosts' standard switches as vCenter manages them (vSphere's HostNetworkSystem):
adding, changing and removing vSwitches and port groups on a host, and reading a
host's network.

The host is the truth for its network (vSwitches, uplinks, port groups with their
security policy, connected vNICs): vCenter checks what it can without the host (the
host exists and is connected, names and VLANs are well formed), forwards the change,
and records an event once the host has made it. A vSwitch's security policy fields
left unset take the standard switch's defaults (promiscuous reject, MAC address
changes accept, forged transmits accept); a port group's inherit its vSwitch's. An
update changes only what it sets: a vSwitch's uplinks (the whole failover order) and
policy fields, a port group's VLAN and overrides (or sends them back to inheriting).

Never does: keep its own copy of a host's network.
"""

from __future__ import annotations

from collections.abc import Iterable

from vsim import validate
from vsim.ethernet_frame import uplink_name, vlan_id
from vsim.faults import InvalidArgument, NotFound
from vsim.network_messages import security_changes
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager

SECURITY_WORDS = (
    ("allow_promiscuous", "promiscuous mode"),
    ("mac_changes", "MAC address changes"),
    ("forged_transmits", "forged transmits"),
)
"""SecurityPolicy's fields, with vSphere's names for them (HostNetworkSecurityPolicy)."""


def security_words(policy: kpb.SecurityPolicy) -> str:
    """The settings a policy makes, e.g. "MAC address changes reject" ("" if none)."""
    return ", ".join(
        f"{words} {'accept' if getattr(policy, name) else 'reject'}"
        for name, words in SECURITY_WORDS
        if policy.HasField(name)
    )


class NetworkSystem:
    def __init__(self, hosts: HostManager, events: EventLog) -> None:
        self._hosts = hosts
        self._events = events

    def _connected(self, host: str) -> None:
        validate.host_name(host, "host")
        self._hosts.connected(host)

    async def get(self, request: pb.HostRequest) -> kpb.HostNetwork:
        self._connected(request.name)
        return await self._network(request.name)

    async def update_vmknic(
        self, request: pb.UpdateHostVmknicRequest, user: str
    ) -> kpb.HostNetwork:
        """vmk1: tagged for vMotion or not, and its link's speed (the host checks both
        and keeps them in esx.conf)."""
        self._connected(request.host)
        tagged = request.HasField("vmotion")
        if not (tagged or request.link_speed_mbps):
            raise InvalidArgument(
                f"nothing to change on {request.device[:20]!r}: give vmotion or link_speed_mbps"
            )
        forwarded = hpb.UpdateVmknicRequest(
            device=request.device, link_speed_mbps=request.link_speed_mbps
        )
        if tagged:
            forwarded.vmotion = request.vmotion
        network = await self._hosts.call(request.host, "UpdateVmknic", forwarded)
        done = [
            ("tagged for vMotion" if request.vmotion else "no longer tagged for vMotion")
            if tagged
            else "",
            f"link {request.link_speed_mbps} Mb/s" if request.link_speed_mbps else "",
        ]
        self._events.post(
            "HostVmknicReconfiguredEvent",
            f"Reconfigured {request.device} on {request.host}: " + ", ".join(filter(None, done)),
            user=user,
            host=request.host,
        )
        network.host = network.host or request.host
        return network

    async def _network(self, host: str) -> kpb.HostNetwork:
        network = await self._hosts.call(host, "GetNetwork", hpb.GetNetworkRequest())
        network.host = network.host or host
        return network

    async def add_vswitch(self, request: pb.HostVirtualSwitchRequest, user: str) -> kpb.HostNetwork:
        self._connected(request.host)
        vswitch = request.vswitch
        validate.text(vswitch.name, "vswitch name", 64)
        for uplink in vswitch.uplinks:
            uplink_name(uplink)
        request_ = hpb.AddVirtualSwitchRequest(vswitch=vswitch)
        network = await self._hosts.call(request.host, "AddVirtualSwitch", request_)
        uplinks = f" with uplinks {', '.join(vswitch.uplinks)}" if vswitch.uplinks else ""
        policy = security_words(vswitch.security)
        policy = f" ({policy})" if policy else ""
        self._events.post(
            "HostVirtualSwitchAddedEvent",
            f"Added vSwitch {vswitch.name}{uplinks} on {request.host}{policy}",
            user=user,
            host=request.host,
        )
        network.host = network.host or request.host
        return network

    async def add_port_group(self, request: pb.HostPortGroupRequest, user: str) -> kpb.HostNetwork:
        self._connected(request.host)
        pg = request.port_group
        validate.vm_name(pg.name, "port group name")
        validate.text(pg.vswitch, "vswitch", 64)
        vlan_id(pg.vlan)
        request_ = hpb.AddPortGroupRequest(port_group=pg)
        network = await self._hosts.call(request.host, "AddPortGroup", request_)
        settings = ", ".join(filter(None, (f"VLAN {pg.vlan}", security_words(pg.security))))
        self._events.post(
            "HostPortGroupAddedEvent",
            f"Added port group {pg.name!r} ({settings}) on {pg.vswitch} of {request.host}",
            user=user,
            host=request.host,
        )
        network.host = network.host or request.host
        return network

    async def remove_vswitch(
        self, request: pb.RemoveHostVirtualSwitchRequest, user: str
    ) -> kpb.HostNetwork:
        """The host refuses while the vSwitch has port groups, and for the management
        vSwitch; its uplinks are free for other vSwitches afterwards."""
        self._connected(request.host)
        if not request.name:
            raise InvalidArgument("name the vSwitch to remove (e.g. vSwitch1)")
        validate.text(request.name, "vswitch name", 64)
        forwarded = hpb.RemoveVirtualSwitchRequest(name=request.name)
        network = await self._hosts.call(request.host, "RemoveVirtualSwitch", forwarded)
        self._events.post(
            "HostVirtualSwitchRemovedEvent",
            f"Removed vSwitch {request.name} from {request.host}",
            user=user,
            host=request.host,
        )
        network.host = network.host or request.host
        return network

    async def remove_port_group(
        self, request: pb.RemoveHostPortGroupRequest, user: str
    ) -> kpb.HostNetwork:
        """The host refuses (naming them) while a VM registered there, running or not,
        has an adapter on the port group: every VM of vCenter's on that host is."""
        self._connected(request.host)
        validate.vm_name(request.name, "port group name")
        forwarded = hpb.RemovePortGroupRequest(name=request.name)
        network = await self._hosts.call(request.host, "RemovePortGroup", forwarded)
        self._events.post(
            "HostPortGroupRemovedEvent",
            f"Removed port group {request.name!r} from {request.host}",
            user=user,
            host=request.host,
        )
        network.host = network.host or request.host
        return network

    async def update_vswitch(
        self, request: pb.UpdateHostVirtualSwitchRequest, user: str
    ) -> kpb.HostNetwork:
        """HostNetworkSystem.UpdateVirtualSwitch. Checked here: the host, the name,
        uplink names, that something changes; the host refuses a NIC it does not have
        or one on another of its vSwitches, and keeps the change in esx.conf."""
        self._connected(request.host)
        update = request.update
        if not update.name:
            raise InvalidArgument("name the vSwitch to change (e.g. vSwitch1)")
        validate.text(update.name, "vswitch name", 64)
        changes = security_changes(update.security)
        if update.HasField("uplinks"):
            for uplink in update.uplinks.uplinks:
                uplink_name(uplink)
        elif not changes:
            raise InvalidArgument(
                f"nothing to change on {update.name}: give its uplinks or security settings"
            )
        forwarded = hpb.UpdateVirtualSwitchRequest(update=update)
        network = await self._hosts.call(request.host, "UpdateVirtualSwitch", forwarded)
        done = [security_words(update.security)]
        if update.HasField("uplinks"):
            done.insert(0, "uplinks " + (", ".join(update.uplinks.uplinks) or "none"))
        self._events.post(
            "HostVirtualSwitchReconfiguredEvent",
            f"Reconfigured vSwitch {update.name} on {request.host}: "
            + ", ".join(filter(None, done)),
            user=user,
            host=request.host,
        )
        network.host = network.host or request.host
        return network

    async def update_port_group(
        self, request: pb.UpdateHostPortGroupRequest, user: str
    ) -> kpb.HostNetwork:
        """HostNetworkSystem.UpdatePortGroup. Checked here: the host, the name, the
        VLAN, the security settings and that something changes; the host applies it
        to the connected ports at once and keeps it in esx.conf."""
        self._connected(request.host)
        update = request.update
        validate.vm_name(update.name, "port group name")
        if update.HasField("vlan"):
            vlan_id(update.vlan)
        changes = security_changes(update.security, update.inherit)
        if not (update.HasField("vlan") or changes):
            raise InvalidArgument(
                f"nothing to change on port group {update.name!r}: give its VLAN, security "
                "settings or the settings to inherit"
            )
        forwarded = hpb.UpdatePortGroupRequest(update=update)
        network = await self._hosts.call(request.host, "UpdatePortGroup", forwarded)
        done = [
            f"VLAN {update.vlan}" if update.HasField("vlan") else "",
            security_words(update.security),
            *(f"{words} inherited" for name, words in SECURITY_WORDS if name in update.inherit),
        ]
        self._events.post(
            "HostPortGroupReconfiguredEvent",
            f"Reconfigured port group {update.name!r} on {request.host}: "
            + ", ".join(filter(None, done)),
            user=user,
            host=request.host,
        )
        network.host = network.host or request.host
        return network

    async def require_port_groups(self, host: str, port_groups: Iterable[str]) -> None:
        """NotFound unless every port group is on the host (asked of the host)."""
        wanted = set(port_groups)
        if not wanted:
            return
        network = await self._network(host)
        missing = sorted(wanted - {pg.name for pg in network.port_groups})
        if missing:
            raise NotFound(
                f"port group {missing[0]!r} does not exist on {host}; add it there first "
                f"(vsim network portgroup add {host} ...) or pick one of: "
                + ", ".join(repr(pg.name) for pg in network.port_groups)
            )
