"""The standard vSwitches of one ESXi host (vSphere's HostNetworkSystem).

Owns which vSwitches exist, which physical NICs (vmnic0..) are their uplinks, the
port groups (VLAN and security policy; names unique on the host), the VMs' vNIC ports
with their configured and effective MAC addresses, per-port statistics, and the
forwarding decision for every frame.

- VLANs (HostPortGroupSpec.vlanId): 0 = none, the port group carries untagged frames;
  1-4094 = VST, the vSwitch adds the tag on the way out of the host and removes it on
  the way in, the guest never sees it (a tagged frame from such a guest is dropped);
  4095 = VGT, the guest tags its own frames and the port receives frames of every VLAN
  with the tag kept.
- Forwarding is by configuration, never by learning: each port is known by its MAC
  (the configured one, or the effective one once the guest changes it and the policy
  accepts MAC address changes). A unicast frame for a MAC in its VLAN on this vSwitch
  stays on the vSwitch; any other unicast, and every broadcast or multicast, also
  leaves through the active uplink. A frame that came in from an uplink is delivered
  to local ports only, never out of another uplink: no loops.
- Security policy (HostNetworkSecurityPolicy, per vSwitch, overridable per port group):
  forged transmits = reject drops a guest's frame whose source MAC is not the
  effective MAC; MAC address changes = reject stops every inbound frame to a port
  whose effective MAC differs from the configured one; promiscuous = accept hands the
  port a copy of every frame on the vSwitch in a VLAN its port group sees.
- NIC teaming: explicit failover order (HostNicTeamingPolicy.policy
  "failover_explicit"). The first uplink in order whose link is up is the active one
  and carries every frame of the vSwitch in both directions; the others are standby
  and drop what they receive. One active uplink per vSwitch means a frame the vSwitch
  sends can never come back in through a second uplink of its own (no duplicates).

Never does: learn MACs from traffic; move a frame from one vSwitch to another (the
only path between two vSwitches of a host is out through the physical network); talk
to the physical network itself (frames for it are handed back as (uplink, frame)
pairs, frames from it come in through `receive`); I/O or time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NamedTuple

from vsim import validate
from vsim.ethernet_frame import (
    VLAN_NONE,
    VLAN_VGT,
    Frame,
    tagged,
    unicast_mac,
    uplink_name,
    vlan_id,
)
from vsim.faults import (
    AlreadyExists,
    InsufficientResourcesFault,
    InvalidArgument,
    NotFound,
    ResourceInUse,
)
from vsim.host.kernel.net.vnic_firewall import decide, describe
from vsim.port_stats import (
    DROP_FIREWALL,
    DROP_FORGED_TRANSMIT,
    DROP_LINK_DOWN,
    DROP_MAC_CHANGE,
    DROP_NO_PATH,
    DROP_NO_PORT,
    DROP_NO_VSWITCH,
    DROP_OWN_MAC,
    DROP_STANDBY,
    DROP_VLAN,
    PortCounters,
    PortStats,
)
from vsim.vnic_firewall import IN, OUT, VnicFirewall

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
class SecurityPolicy:
    """HostNetworkSecurityPolicy. True = accept, False = reject, None = inherit
    (a port group's override; a vSwitch's policy has no None)."""

    allow_promiscuous: bool | None = None
    """Promiscuous mode: the port also sees frames for other ports in its VLAN(s)."""
    mac_changes: bool | None = None
    """MAC address changes: the port keeps receiving after the guest changes its MAC."""
    forged_transmits: bool | None = None
    """Forged transmits: the guest may send with a source MAC that is not its own."""

    def checked(self, complete: bool) -> SecurityPolicy:
        """Itself, if every field is a bool (or None where `complete` is False)."""
        if not isinstance(self, SecurityPolicy):
            raise InvalidArgument(f"a security policy must be a SecurityPolicy, got {self!r}")
        for name in ("allow_promiscuous", "mac_changes", "forged_transmits"):
            value = getattr(self, name)
            if value is None and complete:
                raise InvalidArgument(f"a vSwitch's security policy needs {name} (True or False)")
            if value is not None and not isinstance(value, bool):
                raise InvalidArgument(
                    f"security policy {name} must be True, False or None, got {value!r}"
                )
        return self

    def over(self, base: SecurityPolicy) -> SecurityPolicy:
        """This override applied on top of `base`."""
        return SecurityPolicy(
            base.allow_promiscuous if self.allow_promiscuous is None else self.allow_promiscuous,
            base.mac_changes if self.mac_changes is None else self.mac_changes,
            base.forged_transmits if self.forged_transmits is None else self.forged_transmits,
        )


STANDARD_SWITCH_SECURITY = SecurityPolicy(
    allow_promiscuous=False, mac_changes=True, forged_transmits=True
)
"""A new standard vSwitch's policy: promiscuous reject, MAC changes and forged transmits accept."""


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


class VnicId(NamedTuple):
    """A VM network adapter: the VM's name and the adapter's .vmx name (ethernet0)."""

    vm: str
    nic: str

    def __str__(self) -> str:
        return f"{self.vm}/{self.nic}"


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


class Drop(NamedTuple):
    """A frame, or one copy of it, that stopped at a port. (A tuple: built per frame.)"""

    reason: str
    """One of the DROP_* values."""
    port: VnicId | None
    """The vNIC port it stopped at, or None when it stopped at an uplink."""
    uplink: str
    """The uplink it stopped at ("" at a vNIC port)."""
    detail: str
    """What happened, for a person."""

    @property
    def where(self) -> str:
        return str(self.port) if self.port is not None else self.uplink


class Delivery(NamedTuple):
    """What the vSwitch did with one frame. (A tuple: built per frame.)"""

    received: tuple[tuple[VnicId, Frame], ...]
    """Each vNIC that received it, with the frame as its guest sees it."""
    sent: tuple[tuple[str, Frame], ...]
    """(uplink, frame as it goes on the wire) for the physical network."""
    dropped: tuple[Drop, ...]


class _Port(PortCounters):
    """A vNIC's port: configuration plus the resolved policy the data path reads."""

    __slots__ = (
        "id",
        "port_group",
        "switch",
        "mac",
        "effective_mac",
        "vlan",
        "policy",
        "firewall",
        "fwd_mac",
        "blocked",
    )

    def __init__(self, vnic: VnicId, port_group: str, switch: _Switch, mac: str) -> None:
        super().__init__()
        self.id = vnic
        self.port_group = port_group
        self.switch = switch
        self.mac = mac
        self.effective_mac = mac
        self.vlan = VLAN_NONE
        self.policy = STANDARD_SWITCH_SECURITY
        self.firewall: VnicFirewall | None = None
        self.fwd_mac = mac
        """The MAC the forwarding table knows it by (set when indexed)."""
        self.blocked = False
        """MAC address changes = reject and the effective MAC differs: receives nothing."""

    def resolve(self, vlan: int, policy: SecurityPolicy) -> None:
        self.vlan = vlan
        self.policy = policy
        self.fwd_mac = self.effective_mac if policy.mac_changes else self.mac
        self.blocked = not policy.mac_changes and self.effective_mac != self.mac


class _Switch:
    """One vSwitch's forwarding tables, keyed so that unicast is a dict lookup."""

    def __init__(self, name: str, security: SecurityPolicy) -> None:
        self.name = name
        self.security = security
        self.uplinks: list[str] = []
        self.active: str | None = None
        self.configured_macs: dict[str, VnicId] = {}
        self.by_mac: dict[tuple[int, str], list[_Port]] = {}
        """(VLAN, MAC) -> the ports of that VLAN known by that MAC (VLAN 0-4094)."""
        self.trunk_by_mac: dict[str, list[_Port]] = {}
        """MAC -> VGT ports known by it (they see every VLAN)."""
        self.members: dict[int, dict[_Port, None]] = {}
        self.trunk_members: dict[_Port, None] = {}
        self.promiscuous: dict[int, dict[_Port, None]] = {}
        self.trunk_promiscuous: dict[_Port, None] = {}
        self.promiscuous_count = 0

    def index(self, port: _Port) -> None:
        if port.vlan == VLAN_VGT:
            self.trunk_by_mac.setdefault(port.fwd_mac, []).append(port)
            self.trunk_members[port] = None
            if port.policy.allow_promiscuous:
                self.trunk_promiscuous[port] = None
        else:
            self.by_mac.setdefault((port.vlan, port.fwd_mac), []).append(port)
            self.members.setdefault(port.vlan, {})[port] = None
            if port.policy.allow_promiscuous:
                self.promiscuous.setdefault(port.vlan, {})[port] = None
        self.promiscuous_count += bool(port.policy.allow_promiscuous)

    def unindex(self, port: _Port) -> None:
        if port.vlan == VLAN_VGT:
            _remove(self.trunk_by_mac, port.fwd_mac, port)
            del self.trunk_members[port]
            self.trunk_promiscuous.pop(port, None)
        else:
            _remove(self.by_mac, (port.vlan, port.fwd_mac), port)
            _discard(self.members, port.vlan, port)
            _discard(self.promiscuous, port.vlan, port)
        self.promiscuous_count -= bool(port.policy.allow_promiscuous)

    def addressed(self, vlan: int, mac: str) -> list[_Port]:
        """Ports known by `mac` that see `vlan`."""
        ports = self.by_mac.get((vlan, mac))
        trunk = self.trunk_by_mac.get(mac)
        if trunk is None:
            return ports or []
        return (ports or []) + trunk

    def seeing(self, vlan: int) -> list[_Port]:
        """Every port that sees `vlan` (broadcast and multicast go to all of them)."""
        return [*self.members.get(vlan, ()), *self.trunk_members]

    def watching(self, vlan: int) -> list[_Port]:
        """The promiscuous ports that see `vlan`."""
        return [*self.promiscuous.get(vlan, ()), *self.trunk_promiscuous]


def _remove(table: dict, key: object, port: _Port) -> None:
    ports = table[key]
    ports.remove(port)
    if not ports:
        del table[key]


def _discard(table: dict[int, dict[_Port, None]], vlan: int, port: _Port) -> None:
    ports = table.get(vlan)
    if ports is None:
        return
    ports.pop(port, None)
    if not ports:
        del table[vlan]


def _seen_by(port: _Port, frame: Frame, vlan: int) -> Frame:
    """The frame as the port's guest gets it: tag kept on VGT, removed otherwise."""
    if port.vlan == VLAN_VGT:
        return tagged(frame, vlan or None)
    return tagged(frame, None)


def _with_extra(targets: list[_Port], extra: list[_Port]) -> list[_Port]:
    return list(dict.fromkeys([*targets, *extra]))


class HostNetworkSystem:
    """The vSwitches, port groups and vNIC ports of one host."""

    def __init__(self, host: str = "") -> None:
        self.host = host
        """The host's name, for messages."""
        self._switches: dict[str, _Switch] = {}
        self._uplink_owner: dict[str, str] = {}
        self._link_down: set[str] = set()
        self._uplink_counters: dict[str, PortCounters] = {}
        self._port_groups: dict[str, PortGroup] = {}
        self._pg_ports: dict[str, dict[_Port, None]] = {}
        self._ports: dict[tuple[str, str], _Port] = {}

    # ---- configuration: vSwitches and uplinks

    def _where(self) -> str:
        return f" on {self.host}" if self.host else ""

    def _switch(self, name: str) -> _Switch:
        try:
            return self._switches[name]
        except KeyError:
            raise NotFound(f"no vSwitch named {name!r}{self._where()}") from None

    def _view(self, sw: _Switch) -> VirtualSwitch:
        return VirtualSwitch(sw.name, tuple(sw.uplinks), sw.security, sw.active)

    def vswitch(self, name: str) -> VirtualSwitch:
        return self._view(self._switch(name))

    def vswitches(self) -> list[VirtualSwitch]:
        return [self._view(sw) for sw in self._switches.values()]

    def _check_uplink_free(self, uplink: str) -> None:
        uplink_name(uplink)
        owner = self._uplink_owner.get(uplink)
        if owner is not None:
            raise AlreadyExists(
                f"{uplink} is already an uplink of {owner}{self._where()}; an uplink belongs to "
                f"one vSwitch: remove it from {owner} first"
            )

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
        if isinstance(uplinks, str):
            raise InvalidArgument(f"uplinks must be a list of physical NICs, e.g. ['{uplinks}']")
        uplinks = tuple(uplinks)
        if len(uplinks) > MAX_UPLINKS_PER_VSWITCH:
            raise InvalidArgument(f"a vSwitch has at most {MAX_UPLINKS_PER_VSWITCH} uplinks")
        for uplink in uplinks:
            self._check_uplink_free(uplink)
        if len(set(uplinks)) != len(uplinks):
            raise InvalidArgument(f"uplinks {list(uplinks)} name one physical NIC twice")
        sw = self._switches[name] = _Switch(name, security)
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

    def _attach(self, sw: _Switch, uplink: str) -> None:
        sw.uplinks.append(uplink)
        self._uplink_owner[uplink] = sw.name
        self._uplink_counters.setdefault(uplink, PortCounters())

    def add_uplink(self, vswitch: str, uplink: str) -> VirtualSwitch:
        """Adds a physical NIC at the end of the vSwitch's failover order."""
        sw = self._switch(vswitch)
        self._check_uplink_free(uplink)
        if len(sw.uplinks) >= MAX_UPLINKS_PER_VSWITCH:
            raise InsufficientResourcesFault(
                f"{vswitch} already has {MAX_UPLINKS_PER_VSWITCH} uplinks, "
                "the most a NIC team holds"
            )
        self._attach(sw, uplink)
        self._repin(sw)
        return self._view(sw)

    def remove_uplink(self, vswitch: str, uplink: str) -> VirtualSwitch:
        sw = self._switch(vswitch)
        if uplink not in sw.uplinks:
            raise NotFound(f"{uplink!r} is not an uplink of {vswitch}{self._where()}")
        sw.uplinks.remove(uplink)
        del self._uplink_owner[uplink]
        self._repin(sw)
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

    def _repin(self, sw: _Switch) -> None:
        """Explicit failover order: the first uplink whose link is up is active."""
        sw.active = next((u for u in sw.uplinks if u not in self._link_down), None)

    def update_vswitch_security(self, name: str, security: SecurityPolicy) -> VirtualSwitch:
        sw = self._switch(name)
        SecurityPolicy.checked(security, complete=True)
        sw.security = security
        for pg in self._port_groups.values():
            if pg.vswitch == name:
                self._reresolve(pg)
        return self._view(sw)

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

    def _port(self, vm: str, nic: str) -> _Port:
        port = self._ports.get((vm, nic))
        if port is None:
            raise NotFound(f"{vm}/{nic} is not connected to any port group{self._where()}")
        return port

    def _vnic(self, port: _Port) -> Vnic:
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
        port = _Port(vnic, pg.name, sw, mac)
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

    # ---- the data path

    def send(self, vm: str, nic: str, frame: Frame) -> Delivery:
        """The guest of vm sends `frame` out of adapter `nic`."""
        port = self._ports.get((vm, nic))
        if port is None:
            raise NotFound(f"{vm}/{nic} is not connected to any port group{self._where()}")
        if port.vlan == VLAN_VGT:
            vlan = frame.vlan or 0
        elif frame.vlan is not None:
            return _refuse(
                port,
                DROP_VLAN,
                f"tagged frame (VLAN {frame.vlan}) from a guest on port group "
                f"{port.port_group!r} (VLAN {port.vlan}); only VGT (4095) port groups "
                "pass guest tags",
            )
        else:
            vlan = port.vlan
        if frame.src_mac != port.effective_mac and not port.policy.forged_transmits:
            return _refuse(
                port,
                DROP_FORGED_TRANSMIT,
                f"source MAC {frame.src_mac} is not the adapter's MAC {port.effective_mac} "
                "and forged transmits are rejected",
            )
        if port.firewall is not None:
            decision = decide(port.firewall, OUT, frame.protocol, frame.dst_ip, frame.dst_port)
            if not decision.allowed:
                return _refuse(
                    port, DROP_FIREWALL, f"egress denied by {describe(port.firewall, decision)}"
                )
        port.tx += 1
        sw = port.switch
        if not sw.promiscuous_count and not frame.is_group:
            fast = _fast_unicast(sw, port, frame, vlan)
            if fast is not None:
                return fast
        return self._forward(sw, frame, vlan, port)

    def _forward(self, sw: _Switch, frame: Frame, vlan: int, sender: _Port) -> Delivery:
        received: list[tuple[VnicId, Frame]] = []
        dropped: list[Drop] = []
        leaves = True
        if frame.is_group:
            targets = [p for p in sw.seeing(vlan) if p is not sender]
        else:
            addressed = sw.addressed(vlan, frame.dst_mac)
            leaves = not addressed
            targets = [p for p in addressed if p is not sender]
            if addressed and not targets:
                sender.drop(DROP_OWN_MAC)
                dropped.append(
                    Drop(DROP_OWN_MAC, sender.id, "", f"{frame.dst_mac} is the sender's own MAC")
                )
        if sw.promiscuous_count:
            targets = _with_extra(targets, [p for p in sw.watching(vlan) if p is not sender])
        for target in targets:
            _deliver(target, frame, vlan, received, dropped)
        sent: tuple[tuple[str, Frame], ...] = ()
        if leaves:
            sent = self._leave(sw, frame, vlan, sender, dropped, must=not frame.is_group)
        return Delivery(tuple(received), sent, tuple(dropped))

    def _leave(
        self, sw: _Switch, frame: Frame, vlan: int, sender: _Port, dropped: list[Drop], must: bool
    ) -> tuple[tuple[str, Frame], ...]:
        """Out through the active uplink, tagged with the VLAN (0: untagged)."""
        if sw.active is None:
            if must:
                sender.drop(DROP_NO_PATH)
                dropped.append(
                    Drop(
                        DROP_NO_PATH,
                        sender.id,
                        "",
                        f"{frame.dst_mac} is not on {sw.name} in VLAN {vlan} and {sw.name} has no "
                        "uplink with its link up",
                    )
                )
            return ()
        self._uplink_counters[sw.active].tx += 1
        return ((sw.active, tagged(frame, vlan or None)),)

    def receive(self, uplink: str, frame: Frame) -> Delivery:
        """A frame from the physical network arrived on physical NIC `uplink`."""
        counters = self._uplink_counters.get(uplink)
        owner = self._uplink_owner.get(uplink)
        if owner is None:
            return _refused_at_uplink(
                counters, uplink, DROP_NO_VSWITCH, f"{uplink} is no vSwitch's uplink{self._where()}"
            )
        if uplink in self._link_down:
            return _refused_at_uplink(counters, uplink, DROP_LINK_DOWN, f"{uplink}'s link is down")
        sw = self._switches[owner]
        if sw.active != uplink:
            return _refused_at_uplink(
                counters,
                uplink,
                DROP_STANDBY,
                f"{uplink} is a standby uplink of {sw.name} (active: {sw.active})",
            )
        vlan = frame.vlan or 0
        if frame.is_group:
            targets = sw.seeing(vlan)
        else:
            targets = sw.addressed(vlan, frame.dst_mac)
        if sw.promiscuous_count:
            targets = _with_extra(targets, sw.watching(vlan))
        if not targets:
            return _refused_at_uplink(
                counters,
                uplink,
                DROP_NO_PORT,
                f"no port of {sw.name} takes {frame.dst_mac} in VLAN {vlan}",
            )
        counters.rx += 1
        received: list[tuple[VnicId, Frame]] = []
        dropped: list[Drop] = []
        for target in targets:
            _deliver(target, frame, vlan, received, dropped)
        return Delivery(tuple(received), (), tuple(dropped))


def _fast_unicast(sw: _Switch, sender: _Port, frame: Frame, vlan: int) -> Delivery | None:
    """The common case in one lookup: one unblocked local port, no firewall, no
    promiscuous port on the vSwitch. None: take the general path."""
    ports = sw.by_mac.get((vlan, frame.dst_mac))
    if ports is None or len(ports) != 1 or frame.dst_mac in sw.trunk_by_mac:
        return None
    target = ports[0]
    if target is sender or target.blocked or target.firewall is not None:
        return None
    target.rx += 1
    seen = frame if frame.vlan is None else tagged(frame, None)
    return Delivery(((target.id, seen),), (), ())


def _deliver(
    port: _Port, frame: Frame, vlan: int, received: list[tuple[VnicId, Frame]], dropped: list[Drop]
) -> None:
    """One copy to one port, through its MAC-change gate and its firewall."""
    if port.blocked:
        port.drop(DROP_MAC_CHANGE)
        dropped.append(
            Drop(
                DROP_MAC_CHANGE,
                port.id,
                "",
                f"the guest changed its MAC to {port.effective_mac} (configured {port.mac}) "
                "and MAC address changes are rejected",
            )
        )
        return
    if port.firewall is not None:
        decision = decide(port.firewall, IN, frame.protocol, frame.src_ip, frame.dst_port)
        if not decision.allowed:
            port.drop(DROP_FIREWALL)
            dropped.append(
                Drop(
                    DROP_FIREWALL,
                    port.id,
                    "",
                    f"ingress denied by {describe(port.firewall, decision)}",
                )
            )
            return
    port.rx += 1
    received.append((port.id, _seen_by(port, frame, vlan)))


def _refuse(port: _Port, reason: str, detail: str) -> Delivery:
    port.drop(reason)
    return Delivery((), (), (Drop(reason, port.id, "", detail),))


def _refused_at_uplink(
    counters: PortCounters | None, uplink: str, reason: str, detail: str
) -> Delivery:
    if counters is not None:
        counters.drop(reason)
    return Delivery((), (), (Drop(reason, None, uplink, detail),))
