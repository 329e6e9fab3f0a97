"""The standard vSwitches of one ESXi host as configured (vSphere's HostNetworkSystem).

Owns which vSwitches exist, which physical NICs (vmnic0..) are their uplinks and in
what failover order, the port groups (VLAN and security policy; names unique on the
host), the VMs' vNIC ports with their configured and effective MAC addresses and
firewalls, and per-port statistics. Every change is applied to the forwarding tables
at once (connected ports follow a port group's new VLAN or policy); the frames
themselves go through `forwarding.DataPath`, which `HostNetworkSystem` extends.

- VLANs (HostPortGroupSpec.vlanId): 0 = none, the port group carries untagged frames;
  1-4094 = VST, the vSwitch adds the tag on the way out of the host and removes it on
  the way in, the guest never sees it; 4095 = VGT, the guest tags its own frames.
- Security policy (HostNetworkSecurityPolicy, `vsim.security_policy`): per vSwitch,
  overridable per port group; the policy in force on a port is the port group's
  overrides over its vSwitch's.
- NIC teaming: explicit failover order (HostNicTeamingPolicy.policy
  "failover_explicit"). The first uplink in order whose link is up is the active one
  and carries every frame of the vSwitch in both directions; the others are standby.
  One active uplink per vSwitch means a frame the vSwitch sends can never come back in
  through a second uplink of its own (no duplicates).

Never does: forward a frame (forwarding.py does); keep anything on disk (hostd's
esx.conf keeps the configuration); I/O or time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from vsim import validate
from vsim.ethernet_frame import VLAN_NONE, unicast_mac, uplink_name, vlan_id
from vsim.faults import (
    AlreadyExists,
    InsufficientResourcesFault,
    InvalidArgument,
    NotFound,
    ResourceInUse,
)
from vsim.host.kernel.net.forwarding import DataPath, SwitchTables, VnicId, VnicPort
from vsim.port_stats import PortCounters, PortStats
from vsim.security_policy import STANDARD_SWITCH_SECURITY, SecurityPolicy
from vsim.vnic_firewall import VnicFirewall

NIC_TEAMING_POLICY = "failover_explicit"
"""HostNicTeamingPolicy.policy of every vSwitch here: use explicit failover order."""
MAX_UPLINKS_PER_VSWITCH = 32
"""Physical NICs in one NIC team (vSphere configuration maximums)."""
MAX_PORT_GROUPS_PER_VSWITCH = 512
"""Port groups per standard switch (vSphere configuration maximums)."""
MAX_PORTS_PER_HOST = 4096
"""Virtual network switch ports per host (vSphere configuration maximums)."""
MAX_VSWITCH_NAME = 32

_VSWITCH_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_VSWITCH_NAME - 1}}}")
_NIC_NAME = re.compile(r"ethernet[0-9]")
"""A VM's network adapters, as the .vmx names them: ethernet0..ethernet9 (10 per VM)."""


@dataclass(frozen=True)
class VirtualSwitch:
    """A standard vSwitch as configured (HostVirtualSwitch)."""

    name: str
    """e.g. vSwitch0."""
    uplinks: tuple[str, ...]
    """Physical NICs in failover order."""
    security: SecurityPolicy
    """The switch-wide policy port groups inherit (no None)."""
    active_uplink: str | None
    """The uplink carrying its frames now: the first in order whose link is up."""


@dataclass(frozen=True)
class PortGroup:
    """A port group (HostPortGroup)."""

    name: str
    """Unique on the host, e.g. "VM Network"."""
    vswitch: str
    vlan: int = VLAN_NONE
    """0 none, 1-4094 VST, 4095 VGT."""
    security: SecurityPolicy = SecurityPolicy()
    """Overrides of the vSwitch's policy; None fields inherit."""


@dataclass(frozen=True)
class Vnic:
    """A connected VM network adapter and its port's state."""

    vm: str
    nic: str
    port_group: str
    vswitch: str
    mac: str
    """The configured MAC (from the VM's configuration)."""
    effective_mac: str
    """The MAC the guest uses now; starts as the configured one."""
    vlan: int
    """Its port group's VLAN id."""
    security: SecurityPolicy
    """The policy in force on its port (the port group's override over the vSwitch's)."""
    firewall: VnicFirewall | None


class HostNetworkSystem(DataPath):
    """The vSwitches, port groups and vNIC ports of one host."""

    def __init__(self, host: str = "") -> None:
        super().__init__(host)
        self._port_groups: dict[str, PortGroup] = {}
        self._pg_ports: dict[str, dict[VnicPort, None]] = {}

    # ---- configuration: vSwitches and uplinks

    def _switch(self, name: str) -> SwitchTables:
        try:
            return self._switches[name]
        except KeyError:
            raise NotFound(f"no vSwitch named {name!r}{self._where()}") from None

    def _view(self, sw: SwitchTables) -> VirtualSwitch:
        return VirtualSwitch(sw.name, tuple(sw.uplinks), sw.security, sw.active)

    def vswitch(self, name: str) -> VirtualSwitch:
        return self._view(self._switch(name))

    def vswitches(self) -> list[VirtualSwitch]:
        return [self._view(sw) for sw in self._switches.values()]

    def _checked_uplinks(self, uplinks: tuple[str, ...], vswitch: str) -> tuple[str, ...]:
        """The uplinks in failover order, if each is a physical NIC named once and on
        no vSwitch but `vswitch`."""
        if isinstance(uplinks, str):
            raise InvalidArgument(f"uplinks must be a list of physical NICs, e.g. ['{uplinks}']")
        uplinks = tuple(uplinks)
        if len(uplinks) > MAX_UPLINKS_PER_VSWITCH:
            raise InvalidArgument(f"a vSwitch has at most {MAX_UPLINKS_PER_VSWITCH} uplinks")
        for uplink in uplinks:
            uplink_name(uplink)
            owner = self._uplink_owner.get(uplink)
            if owner is not None and owner != vswitch:
                raise AlreadyExists(
                    f"{uplink} is already an uplink of {owner}{self._where()}; an uplink "
                    f"belongs to one vSwitch: remove it from {owner} first"
                )
        if len(set(uplinks)) != len(uplinks):
            raise InvalidArgument(f"uplinks {list(uplinks)} name one physical NIC twice")
        return uplinks

    def add_vswitch(
        self,
        name: str,
        uplinks: tuple[str, ...] = (),
        security: SecurityPolicy = STANDARD_SWITCH_SECURITY,
    ) -> VirtualSwitch:
        """A new standard vSwitch with these uplinks (in failover order)."""
        if not isinstance(name, str) or not _VSWITCH_NAME.fullmatch(name):
            raise InvalidArgument(
                f"vSwitch name {name!r} must be 1-{MAX_VSWITCH_NAME} letters, digits, '_', '.' "
                "or '-', starting with a letter or digit (e.g. vSwitch1)"
            )
        if name in self._switches:
            raise AlreadyExists(f"a vSwitch named {name!r} already exists{self._where()}")
        SecurityPolicy.checked(security, complete=True)
        uplinks = self._checked_uplinks(uplinks, name)
        sw = self._switches[name] = SwitchTables(name, security)
        for uplink in uplinks:
            self._attach(sw, uplink)
        self._repin(sw)
        return self._view(sw)

    def remove_vswitch(self, name: str) -> VirtualSwitch:
        """Removes a vSwitch that has no port groups (so no vNIC is on it either);
        its uplinks are free for other vSwitches from then on."""
        sw = self._switch(name)
        groups = [pg.name for pg in self._port_groups.values() if pg.vswitch == name]
        if groups:
            raise ResourceInUse(
                f"vSwitch {name}{self._where()} still has port groups "
                f"{', '.join(map(repr, groups))}; remove them first"
            )
        view = self._view(sw)
        for uplink in sw.uplinks:
            del self._uplink_owner[uplink]
        del self._switches[name]
        return view

    def _attach(self, sw: SwitchTables, uplink: str) -> None:
        sw.uplinks.append(uplink)
        self._uplink_owner[uplink] = sw.name
        self._uplink_counters.setdefault(uplink, PortCounters())

    def update_vswitch(
        self,
        name: str,
        *,
        uplinks: tuple[str, ...] | None = None,
        security: SecurityPolicy | None = None,
    ) -> VirtualSwitch:
        """Changes the uplinks (the new failover order; a NIC left out is free for other
        vSwitches) and/or the policy (complete); None leaves it as it is. All is
        checked before anything changes; the ports of its port groups follow at once."""
        sw = self._switch(name)
        if uplinks is not None:
            uplinks = self._checked_uplinks(uplinks, name)
        if security is not None:
            SecurityPolicy.checked(security, complete=True)
        if uplinks is not None:
            for uplink in sw.uplinks:
                del self._uplink_owner[uplink]
            sw.uplinks = []
            for uplink in uplinks:
                self._attach(sw, uplink)
            self._repin(sw)
        if security is not None:
            sw.security = security
            for pg in self._port_groups.values():
                if pg.vswitch == name:
                    self._reresolve(pg)
        return self._view(sw)

    def set_link_state(self, uplink: str, up: bool) -> None:
        """The physical NIC's link came up or went down (cable, switch port, failure)."""
        uplink_name(uplink)
        if not isinstance(up, bool):
            raise InvalidArgument(f"link state must be True (up) or False (down), got {up!r}")
        if up:
            self._link_down.discard(uplink)
        else:
            self._link_down.add(uplink)
        owner = self._uplink_owner.get(uplink)
        if owner is not None:
            self._repin(self._switches[owner])

    def link_up(self, uplink: str) -> bool:
        return uplink not in self._link_down

    def _repin(self, sw: SwitchTables) -> None:
        """Explicit failover order: the first uplink whose link is up is active."""
        sw.active = next((u for u in sw.uplinks if u not in self._link_down), None)

    # ---- configuration: port groups

    def _port_group(self, name: str) -> PortGroup:
        try:
            return self._port_groups[name]
        except KeyError:
            raise NotFound(f"no port group named {name!r}{self._where()}") from None

    def port_group(self, name: str) -> PortGroup:
        return self._port_group(name)

    def port_groups(self) -> list[PortGroup]:
        return list(self._port_groups.values())

    def effective_security(self, port_group: str) -> SecurityPolicy:
        """The policy in force on the port group's ports (HostPortGroup.computedPolicy)."""
        pg = self._port_group(port_group)
        return pg.security.over(self._switches[pg.vswitch].security)

    def add_port_group(
        self,
        name: str,
        vswitch: str,
        vlan: int = VLAN_NONE,
        security: SecurityPolicy = SecurityPolicy(),
    ) -> PortGroup:
        """A new port group on vswitch; its name must be unique on the host."""
        if not isinstance(name, str):
            raise InvalidArgument(f"port group name must be text, got {name!r}")
        validate.vm_name(name, "port group name")  # 1-80 printable characters, as VM names
        sw = self._switch(vswitch)
        vlan_id(vlan)
        SecurityPolicy.checked(security, complete=False)
        if name in self._port_groups:
            raise AlreadyExists(
                f"a port group named {name!r} already exists{self._where()} "
                f"(on {self._port_groups[name].vswitch}); port group names are unique per host"
            )
        on_switch = sum(pg.vswitch == vswitch for pg in self._port_groups.values())
        if on_switch >= MAX_PORT_GROUPS_PER_VSWITCH:
            raise InsufficientResourcesFault(
                f"{vswitch} already has {MAX_PORT_GROUPS_PER_VSWITCH} port groups, the most a "
                "standard switch holds"
            )
        pg = self._port_groups[name] = PortGroup(name, sw.name, vlan, security)
        self._pg_ports[name] = {}
        return pg

    def update_port_group(
        self, name: str, *, vlan: int | None = None, security: SecurityPolicy | None = None
    ) -> PortGroup:
        """Changes the VLAN and/or the security overrides (None: leave as is; pass
        SecurityPolicy() to inherit everything). Connected ports follow at once."""
        pg = self._port_group(name)
        if vlan is not None:
            vlan_id(vlan)
        if security is not None:
            SecurityPolicy.checked(security, complete=False)
        pg = replace(
            pg,
            vlan=pg.vlan if vlan is None else vlan,
            security=pg.security if security is None else security,
        )
        self._port_groups[name] = pg
        self._reresolve(pg)
        return pg

    def remove_port_group(self, name: str) -> PortGroup:
        """Removes an unused port group."""
        self._port_group(name)
        if self._pg_ports[name]:
            users = ", ".join(sorted(str(p.id) for p in self._pg_ports[name]))
            raise ResourceInUse(f"port group {name!r} is in use by {users}; disconnect them first")
        del self._pg_ports[name]
        return self._port_groups.pop(name)

    def _reresolve(self, pg: PortGroup) -> None:
        sw = self._switches[pg.vswitch]
        policy = pg.security.over(sw.security)
        for port in self._pg_ports[pg.name]:
            sw.unindex(port)
            port.resolve(pg.vlan, policy)
            sw.index(port)

    # ---- configuration: vNIC ports

    def _port(self, vm: str, nic: str) -> VnicPort:
        port = self._ports.get((vm, nic))
        if port is None:
            raise NotFound(f"{vm}/{nic} is not connected to any port group{self._where()}")
        return port

    def _vnic(self, port: VnicPort) -> Vnic:
        return Vnic(
            port.id.vm,
            port.id.nic,
            port.port_group,
            port.switch.name,
            port.mac,
            port.effective_mac,
            port.vlan,
            port.policy,
            port.firewall,
        )

    def vnic(self, vm: str, nic: str = "ethernet0") -> Vnic:
        return self._vnic(self._port(vm, nic))

    def vnics(self) -> list[Vnic]:
        return [self._vnic(p) for p in self._ports.values()]

    def connect_vnic(
        self,
        vm: str,
        nic: str,
        port_group: str,
        mac: str,
        firewall: VnicFirewall | None = None,
    ) -> Vnic:
        """Connects a VM's network adapter, with the MAC of its configuration."""
        validate.vm_name(vm, "vm")
        if not isinstance(nic, str) or not _NIC_NAME.fullmatch(nic):
            raise InvalidArgument(f"nic {nic!r} must be a VM network adapter, ethernet0-ethernet9")
        mac = unicast_mac(mac)
        pg = self._port_group(port_group)
        if firewall is not None and not isinstance(firewall, VnicFirewall):
            raise InvalidArgument(f"firewall must be a VnicFirewall, got {type(firewall).__name__}")
        vnic = VnicId(vm, nic)
        if vnic in self._ports:
            raise AlreadyExists(
                f"{vnic} is already connected to {self._ports[vnic].port_group!r}{self._where()}"
            )
        sw = self._switches[pg.vswitch]
        holder = sw.configured_macs.get(mac)
        if holder is not None:
            raise AlreadyExists(
                f"MAC {mac} is already used by {holder} on {sw.name}{self._where()}; "
                "give this adapter another MAC"
            )
        if len(self._ports) >= MAX_PORTS_PER_HOST:
            raise InsufficientResourcesFault(
                f"{self.host or 'the host'} already has {MAX_PORTS_PER_HOST} vNIC ports"
            )
        port = VnicPort(vnic, pg.name, sw, mac)
        port.firewall = firewall
        port.resolve(pg.vlan, pg.security.over(sw.security))
        sw.index(port)
        sw.configured_macs[mac] = vnic
        self._pg_ports[pg.name][port] = None
        self._ports[vnic] = port
        return self._vnic(port)

    def disconnect_vnic(self, vm: str, nic: str = "ethernet0") -> Vnic:
        port = self._port(vm, nic)
        view = self._vnic(port)
        port.switch.unindex(port)
        del port.switch.configured_macs[port.mac]
        del self._pg_ports[port.port_group][port]
        del self._ports[port.id]
        return view

    def set_effective_mac(self, vm: str, nic: str, mac: str) -> Vnic:
        """The guest changed its adapter's MAC (any unicast MAC no other adapter on its
        vSwitch has; the configured one to change back). With MAC address changes =
        reject the port then receives nothing until the guest changes back; with
        accept the port is known by the new MAC."""
        port = self._port(vm, nic)
        mac = unicast_mac(mac)
        for other in self._ports.values():
            if (
                other is not port
                and other.switch is port.switch
                and mac
                in (
                    other.mac,
                    other.effective_mac,
                )
            ):
                raise InvalidArgument(
                    f"MAC {mac} is {other.id}'s on {port.switch.name}{self._where()}: a "
                    "guest cannot take another adapter's address on its vSwitch"
                )
        port.switch.unindex(port)
        port.effective_mac = mac
        port.resolve(port.vlan, port.policy)
        port.switch.index(port)
        return self._vnic(port)

    def set_firewall(self, vm: str, nic: str, firewall: VnicFirewall | None) -> Vnic:
        """Replaces the adapter's firewall rules (None: no firewall, everything passes)."""
        port = self._port(vm, nic)
        if firewall is not None and not isinstance(firewall, VnicFirewall):
            raise InvalidArgument(f"firewall must be a VnicFirewall, got {type(firewall).__name__}")
        port.firewall = firewall
        return self._vnic(port)

    # ---- statistics

    def stats(self, vm: str, nic: str = "ethernet0") -> PortStats:
        return self._port(vm, nic).snapshot()

    def uplink_stats(self, uplink: str) -> PortStats:
        counters = self._uplink_counters.get(uplink)
        if counters is None:
            raise NotFound(f"{uplink!r} has never been an uplink{self._where()}")
        return counters.snapshot()
