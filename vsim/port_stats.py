"""A network port's counters, and why a frame stops at a vSwitch's port.

Owns `PortStats` (what a port's counters read), `PortCounters` (the live counters the
vSwitches' and the physical switch's ports keep) and the reasons a vSwitch drops a
frame, the keys of its ports' `PortStats.dropped`: the hosts count and report them,
and vCenter reads them in the traces of test frames (some are only flooding).

Never does: decide a drop (the vSwitches and the physical switch do).
"""

from __future__ import annotations

from dataclasses import dataclass

# Why a frame was dropped (the keys of PortStats.dropped).
DROP_VLAN = "vlan"
"""A tagged frame from a guest whose port group is not VGT (4095)."""
DROP_FORGED_TRANSMIT = "forged_transmit"
"""Forged transmits = reject and the source MAC is not the port's effective MAC."""
DROP_MAC_CHANGE = "mac_change"
"""MAC address changes = reject and the guest changed its MAC: nothing comes in."""
DROP_FIREWALL = "firewall"
"""The vNIC firewall denied it (egress or ingress)."""
DROP_NO_PATH = "no_path"
"""It had to leave the host and the vSwitch has no uplink with its link up."""
DROP_OWN_MAC = "own_mac"
"""Unicast to the sender's own MAC: the vSwitch never reflects a frame to its sender."""
DROP_NO_PORT = "no_port"
"""From the physical network, for no port of this vSwitch in that VLAN."""
DROP_STANDBY = "standby"
"""Arrived on a standby uplink: only the active uplink carries the vSwitch's frames."""
DROP_LINK_DOWN = "link_down"
"""Arrived on an uplink whose link is down."""
DROP_NO_VSWITCH = "no_vswitch"
"""Arrived on a physical NIC that is no vSwitch's uplink."""


@dataclass(frozen=True)
class PortStats:
    """Counters of one port (a vNIC's, an uplink's or a physical switch port's)."""

    tx: int
    """Frames that went through it out of the guest (vNIC) or onto the wire (uplink)."""
    rx: int
    """Frames delivered through it to the guest (vNIC) or accepted from the wire (uplink)."""
    dropped: dict[str, int]
    """Frames stopped at this port, by reason (the DROP_* values, here or the physical
    switch's)."""

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class PortCounters:
    """A port's live counters (the switch's ports use them too); `snapshot` reads them."""

    __slots__ = ("tx", "rx", "dropped")

    def __init__(self) -> None:
        self.tx = 0
        self.rx = 0
        self.dropped: dict[str, int] = {}

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def snapshot(self) -> PortStats:
        return PortStats(self.tx, self.rx, dict(self.dropped))
