"""The physical network between the hosts: one Ethernet switch whose ports are the
hosts' uplinks.

`PhysicalSwitch` owns which (host, uplink) is cabled to a port, each port's VLAN
configuration, port shutdown, per-port counters, and the forwarding of a frame that
enters one port. A port is a trunk carrying a set of VLANs (default all, 0-4094; VLAN
0 is the native VLAN, untagged on the wire) or an access port in one VLAN (untagged
on the wire both ways, as for a vSwitch port group with VLAN 0: EST). A frame is
delivered to every other enabled port that carries its VLAN and never back to the
port it came in through.

The switch floods: it learns no MAC addresses, so it is a hub per VLAN. Flooding keeps
it stateless (a VM that moves to another host is found at once, with no RARP and no
stale table to age out) and cannot deliver less than a learning switch would; the
hosts' vSwitches drop what is not for them with one dict lookup.

A frame's walk across hosts and this switch is `frame_walk`'s; `network.Network` runs
it in-process over the hosts' network cores, vCenter over their RPCs.

Never does: look inside a host (the switch sees frames on uplinks only), I/O or time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from vsim import validate
from vsim.ethernet_frame import VLAN_VST_MAX, Frame, uplink_name
from vsim.faults import AlreadyExists, InvalidArgument, NotFound
from vsim.port_stats import PortCounters, PortStats

NATIVE_VLAN = 0
"""The trunk's native VLAN: its frames are untagged on the wire."""
ALL_VLANS = frozenset(range(NATIVE_VLAN, VLAN_VST_MAX + 1))
"""What a trunk carries unless told otherwise (switchport trunk allowed vlan all)."""

# Why the switch dropped a frame (keys of its ports' PortStats.dropped).
DROP_NOT_CABLED = "not_cabled"
"""Sent out of an uplink that is cabled to no switch port."""
DROP_PORT_DISABLED = "port_disabled"
"""The switch port is shut down."""
DROP_VLAN = "vlan"
"""The port does not carry the frame's VLAN (or: a tagged frame on an access port)."""
DROP_HOST_UNREACHABLE = "host_unreachable"
"""Delivered to a port whose host is not running or does not answer."""


def vlan_set(value: Iterable[int]) -> frozenset[int]:
    """The VLAN ids a trunk carries; InvalidArgument for any outside 0-4094."""
    try:
        vlans = frozenset(value)
    except TypeError:
        raise InvalidArgument(f"vlans must be a collection of VLAN ids, got {value!r}") from None
    bad = sorted(
        (
            v
            for v in vlans
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= VLAN_VST_MAX
        ),
        key=repr,
    )
    if bad:
        raise InvalidArgument(
            f"a trunk carries VLANs {NATIVE_VLAN}-{VLAN_VST_MAX} ({NATIVE_VLAN} = native, "
            f"untagged); not {', '.join(map(repr, bad[:5]))}"
        )
    return vlans


@dataclass(frozen=True)
class SwitchPort:
    """One switch port and the host uplink cabled to it."""

    host: str
    uplink: str
    """The host's physical NIC at the other end of the cable (vmnic0, ...)."""
    vlans: frozenset[int] = ALL_VLANS
    """Trunk: the VLANs it carries (0 = native, untagged on the wire)."""
    access_vlan: int | None = None
    """Access port: its one VLAN, untagged on the wire; None for a trunk."""
    enabled: bool = True
    """False: shut down; nothing goes in or out."""

    @property
    def mode(self) -> str:
        return "trunk" if self.access_vlan is None else "access"

    def carries(self, vlan: int) -> bool:
        return vlan == self.access_vlan if self.access_vlan is not None else vlan in self.vlans

    def describe(self) -> str:
        if self.access_vlan is not None:
            return f"access port in VLAN {self.access_vlan}"
        return "trunk" if self.vlans == ALL_VLANS else f"trunk carrying {len(self.vlans)} VLANs"


class FabricDrop(NamedTuple):
    """A frame, or one copy of it, the switch stopped at a port."""

    host: str
    uplink: str
    reason: str
    """One of the DROP_* values of this module."""
    detail: str


class Forwarding(NamedTuple):
    """What the switch did with one frame."""

    deliveries: tuple[tuple[str, str, Frame], ...]
    """(host, uplink, frame as it leaves the switch port)."""
    dropped: tuple[FabricDrop, ...]


class _Port(PortCounters):
    __slots__ = ("config",)

    def __init__(self, config: SwitchPort) -> None:
        super().__init__()
        self.config = config


def _configured(
    host: str, uplink: str, vlans: Iterable[int] | None, access_vlan: int | None, enabled: bool
) -> SwitchPort:
    validate.host_name(host, "host")
    uplink_name(uplink)
    if vlans is not None and access_vlan is not None:
        raise InvalidArgument(
            "a port is either a trunk (vlans) or an access port (access_vlan), not both"
        )
    if access_vlan is not None:
        if isinstance(access_vlan, bool) or not isinstance(access_vlan, int):
            raise InvalidArgument(
                f"access_vlan must be an integer 0-{VLAN_VST_MAX}, got {access_vlan!r}"
            )
        validate.int_range(access_vlan, 0, VLAN_VST_MAX, "access_vlan")
        return SwitchPort(host, uplink, frozenset(), access_vlan, enabled)
    return SwitchPort(host, uplink, ALL_VLANS if vlans is None else vlan_set(vlans), None, enabled)


class PhysicalSwitch:
    """One physical Ethernet switch, flooding per VLAN."""

    def __init__(self, name: str = "pswitch-01") -> None:
        self.name = name
        self._ports: dict[tuple[str, str], _Port] = {}

    def _port(self, host: str, uplink: str) -> _Port:
        try:
            return self._ports[(host, uplink)]
        except KeyError:
            raise NotFound(f"{host}/{uplink} is not cabled to {self.name}") from None

    def port(self, host: str, uplink: str) -> SwitchPort:
        return self._port(host, uplink).config

    def ports(self) -> list[SwitchPort]:
        return [p.config for p in self._ports.values()]

    def connect(
        self,
        host: str,
        uplink: str,
        *,
        vlans: Iterable[int] | None = None,
        access_vlan: int | None = None,
    ) -> SwitchPort:
        """Cables host's uplink to a new port: a trunk carrying `vlans` (default all),
        or an access port in `access_vlan`."""
        config = _configured(host, uplink, vlans, access_vlan, True)
        if (host, uplink) in self._ports:
            raise AlreadyExists(f"{host}/{uplink} is already cabled to {self.name}")
        self._ports[(host, uplink)] = _Port(config)
        return config

    def disconnect(self, host: str, uplink: str) -> SwitchPort:
        """Pulls the cable: the port is gone, with its counters."""
        port = self._port(host, uplink)
        del self._ports[(host, uplink)]
        return port.config

    def configure(
        self,
        host: str,
        uplink: str,
        *,
        vlans: Iterable[int] | None = None,
        access_vlan: int | None = None,
    ) -> SwitchPort:
        """Replaces the port's VLAN configuration (same meaning as in `connect`)."""
        port = self._port(host, uplink)
        port.config = _configured(host, uplink, vlans, access_vlan, port.config.enabled)
        return port.config

    def set_enabled(self, host: str, uplink: str, enabled: bool) -> SwitchPort:
        """Shuts the port down (False) or brings it back (True)."""
        port = self._port(host, uplink)
        if not isinstance(enabled, bool):
            raise InvalidArgument(f"enabled must be True or False, got {enabled!r}")
        c = port.config
        port.config = SwitchPort(c.host, c.uplink, c.vlans, c.access_vlan, enabled)
        return port.config

    def stats(self, host: str, uplink: str) -> PortStats:
        return self._port(host, uplink).snapshot()

    def forward(self, host: str, uplink: str, frame: Frame) -> Forwarding:
        """The frame host sent out of `uplink`: where it goes, and where it stopped."""
        port = self._ports.get((host, uplink))
        if port is None:
            drop = FabricDrop(
                host, uplink, DROP_NOT_CABLED, f"{host}/{uplink} is cabled to no port"
            )
            return Forwarding((), (drop,))
        vlan = self._ingress_vlan(port, frame)
        if isinstance(vlan, FabricDrop):
            return Forwarding((), (vlan,))
        port.rx += 1
        deliveries: list[tuple[str, str, Frame]] = []
        dropped: list[FabricDrop] = []
        for other in self._ports.values():
            if other is not port:
                _egress(other, frame, vlan, deliveries, dropped)
        return Forwarding(tuple(deliveries), tuple(dropped))

    @staticmethod
    def _ingress_vlan(port: _Port, frame: Frame) -> int | FabricDrop:
        """The VLAN the frame travels in inside the switch, or why it cannot enter."""
        c = port.config
        reason, detail = "", ""
        if not c.enabled:
            reason, detail = DROP_PORT_DISABLED, f"switch port of {c.host}/{c.uplink} is shut down"
        elif c.access_vlan is not None:
            if frame.vlan is None:
                return c.access_vlan
            reason = DROP_VLAN
            detail = f"tagged frame (VLAN {frame.vlan}) on access port {c.host}/{c.uplink}"
        elif (frame.vlan or NATIVE_VLAN) in c.vlans:
            return frame.vlan or NATIVE_VLAN
        else:
            reason = DROP_VLAN
            detail = f"trunk {c.host}/{c.uplink} does not carry VLAN {frame.vlan or NATIVE_VLAN}"
        port.drop(reason)
        return FabricDrop(c.host, c.uplink, reason, detail)


def _egress(
    port: _Port,
    frame: Frame,
    vlan: int,
    deliveries: list[tuple[str, str, Frame]],
    dropped: list[FabricDrop],
) -> None:
    c = port.config
    if not c.enabled:
        port.drop(DROP_PORT_DISABLED)
        dropped.append(
            FabricDrop(
                c.host,
                c.uplink,
                DROP_PORT_DISABLED,
                f"switch port of {c.host}/{c.uplink} is shut down",
            )
        )
        return
    if not c.carries(vlan):
        port.drop(DROP_VLAN)
        dropped.append(
            FabricDrop(
                c.host,
                c.uplink,
                DROP_VLAN,
                f"{c.host}/{c.uplink} ({c.describe()}) does not carry VLAN {vlan}",
            )
        )
        return
    port.tx += 1
    tag = None if c.access_vlan is not None or vlan == NATIVE_VLAN else vlan
    deliveries.append((c.host, c.uplink, frame.with_vlan(tag)))
