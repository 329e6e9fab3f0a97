"""The data path of one host's standard vSwitches: a frame from a guest (`send`) or
from the physical network (`receive`) forwarded to the vSwitch's ports and uplinks,
through the port's security policy and vNIC firewall.

Owns the forwarding tables of each vSwitch (`SwitchTables`: ports by VLAN and MAC,
promiscuous ports, the active uplink) and of each vNIC port (`VnicPort`: its MACs,
VLAN, the policy in force, counters), which the configuration (vswitch.py) builds and
changes, and the forwarding decision for every frame:

- Forwarding is by configuration, never by learning: each port is known by its MAC
  (the configured one, or the effective one once the guest changes it and the policy
  accepts MAC address changes). A unicast frame for a MAC in its VLAN on this vSwitch
  stays on the vSwitch; any other unicast, and every broadcast or multicast, also
  leaves through the active uplink. A frame that came in from an uplink is delivered
  to local ports only, never out of another uplink: no loops.
- VLANs: a VST port group's frames leave tagged and arrive untagged to its guests (a
  tagged frame from such a guest is dropped); a VGT (4095) port passes the guest's
  tags and receives every VLAN with the tag kept.
- Security policy: forged transmits = reject drops a guest's frame whose source MAC is
  not the effective MAC; MAC address changes = reject stops every inbound frame to a
  port whose effective MAC differs from the configured one; promiscuous = accept
  hands the port a copy of every frame on the vSwitch in a VLAN its port group sees.
- Only the active uplink carries the vSwitch's frames, both ways; the standby ones
  drop what they receive, so a frame never comes back in through a second uplink.

Never does: change the configuration (vswitch.py does); learn MACs from traffic; move
a frame from one vSwitch to another; talk to the physical network itself (frames for
it are handed back as (uplink, frame) pairs, frames from it come in through
`receive`); I/O or time.
"""

from __future__ import annotations

from typing import NamedTuple

from vsim.ethernet_frame import VLAN_NONE, VLAN_VGT, Frame, tagged
from vsim.faults import NotFound
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
)
from vsim.security_policy import STANDARD_SWITCH_SECURITY, SecurityPolicy
from vsim.vnic_firewall import IN, OUT, VnicFirewall


class VnicId(NamedTuple):
    """A VM network adapter: the VM's name and the adapter's .vmx name (ethernet0)."""

    vm: str
    nic: str

    def __str__(self) -> str:
        return f"{self.vm}/{self.nic}"


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


class VnicPort(PortCounters):
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

    def __init__(self, vnic: VnicId, port_group: str, switch: SwitchTables, mac: str) -> None:
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


class SwitchTables:
    """One vSwitch's forwarding tables, keyed so that unicast is a dict lookup."""

    def __init__(self, name: str, security: SecurityPolicy) -> None:
        self.name = name
        self.security = security
        self.uplinks: list[str] = []
        self.active: str | None = None
        self.configured_macs: dict[str, VnicId] = {}
        self.by_mac: dict[tuple[int, str], list[VnicPort]] = {}
        """(VLAN, MAC) -> the ports of that VLAN known by that MAC (VLAN 0-4094)."""
        self.trunk_by_mac: dict[str, list[VnicPort]] = {}
        """MAC -> VGT ports known by it (they see every VLAN)."""
        self.members: dict[int, dict[VnicPort, None]] = {}
        self.trunk_members: dict[VnicPort, None] = {}
        self.promiscuous: dict[int, dict[VnicPort, None]] = {}
        self.trunk_promiscuous: dict[VnicPort, None] = {}
        self.promiscuous_count = 0

    def index(self, port: VnicPort) -> None:
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

    def unindex(self, port: VnicPort) -> None:
        if port.vlan == VLAN_VGT:
            _remove(self.trunk_by_mac, port.fwd_mac, port)
            del self.trunk_members[port]
            self.trunk_promiscuous.pop(port, None)
        else:
            _remove(self.by_mac, (port.vlan, port.fwd_mac), port)
            _discard(self.members, port.vlan, port)
            _discard(self.promiscuous, port.vlan, port)
        self.promiscuous_count -= bool(port.policy.allow_promiscuous)

    def addressed(self, vlan: int, mac: str) -> list[VnicPort]:
        """Ports known by `mac` that see `vlan`."""
        ports = self.by_mac.get((vlan, mac))
        trunk = self.trunk_by_mac.get(mac)
        if trunk is None:
            return ports or []
        return (ports or []) + trunk

    def seeing(self, vlan: int) -> list[VnicPort]:
        """Every port that sees `vlan` (broadcast and multicast go to all of them)."""
        return [*self.members.get(vlan, ()), *self.trunk_members]

    def watching(self, vlan: int) -> list[VnicPort]:
        """The promiscuous ports that see `vlan`."""
        return [*self.promiscuous.get(vlan, ()), *self.trunk_promiscuous]


def _remove(table: dict, key: object, port: VnicPort) -> None:
    ports = table[key]
    ports.remove(port)
    if not ports:
        del table[key]


def _discard(table: dict[int, dict[VnicPort, None]], vlan: int, port: VnicPort) -> None:
    ports = table.get(vlan)
    if ports is None:
        return
    ports.pop(port, None)
    if not ports:
        del table[vlan]


def _seen_by(port: VnicPort, frame: Frame, vlan: int) -> Frame:
    """The frame as the port's guest gets it: tag kept on VGT, removed otherwise."""
    if port.vlan == VLAN_VGT:
        return tagged(frame, vlan or None)
    return tagged(frame, None)


def _with_extra(targets: list[VnicPort], extra: list[VnicPort]) -> list[VnicPort]:
    return list(dict.fromkeys([*targets, *extra]))


class DataPath:
    """The forwarding tables of one host's vSwitches and vNIC ports, and the frames
    through them; `HostNetworkSystem` configures them."""

    def __init__(self, host: str = "") -> None:
        self.host = host
        """The host's name, for messages."""
        self._switches: dict[str, SwitchTables] = {}
        self._uplink_owner: dict[str, str] = {}
        """Uplink -> the vSwitch it is on."""
        self._link_down: set[str] = set()
        self._uplink_counters: dict[str, PortCounters] = {}
        self._ports: dict[tuple[str, str], VnicPort] = {}

    def _where(self) -> str:
        return f" on {self.host}" if self.host else ""

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

    def _forward(self, sw: SwitchTables, frame: Frame, vlan: int, sender: VnicPort) -> Delivery:
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
        self,
        sw: SwitchTables,
        frame: Frame,
        vlan: int,
        sender: VnicPort,
        dropped: list[Drop],
        must: bool,
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


def _fast_unicast(sw: SwitchTables, sender: VnicPort, frame: Frame, vlan: int) -> Delivery | None:
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
    port: VnicPort,
    frame: Frame,
    vlan: int,
    received: list[tuple[VnicId, Frame]],
    dropped: list[Drop],
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


def _refuse(port: VnicPort, reason: str, detail: str) -> Delivery:
    port.drop(reason)
    return Delivery((), (), (Drop(reason, port.id, "", detail),))


def _refused_at_uplink(
    counters: PortCounters | None, uplink: str, reason: str, detail: str
) -> Delivery:
    if counters is not None:
        counters.drop(reason)
    return Delivery((), (), (Drop(reason, None, uplink, detail),))
