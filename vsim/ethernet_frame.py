"""An Ethernet frame as the simulation carries it, and the names on an Ethernet segment.

Owns `Frame` (the addresses, the 802.1Q tag held outside the payload, and the few
L3/L4 fields the vNIC firewall reads), retagging a frame on the data path, and the
validation of MAC addresses, IPv4 addresses, VLAN ids (HostPortGroupSpec.vlanId) and
physical NIC (uplink) names, for the vSwitches and the physical switch alike, and
the physical NICs every host has.

- MACs are held in canonical form: lower-case, colon-separated; a group
  (broadcast/multicast) MAC has the I/G bit, the low bit of the first octet, set.
- The tag is a field, not bytes in the payload: None is untagged (a tag with VLAN 0,
  priority-only, is held as None too); a frame carries at most one tag (no QinQ).

Never does: decide where a frame goes or whether it may pass (the vSwitch, the vNIC
firewall and the physical switch do); carry real Ethernet bytes (no FCS, no
EtherType, no length limits on the payload); I/O or time.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from vsim import validate
from vsim.faults import InvalidArgument

VLAN_NONE = 0
"""HostPortGroupSpec.vlanId 0: no VLAN; untagged frames (EST: the physical port tags)."""
VLAN_VST_MAX = 4094
"""vlanId 1-4094: Virtual Switch Tagging; the vSwitch tags and untags."""
VLAN_VGT = 4095
"""vlanId 4095: Virtual Guest Tagging; the guest's tags pass through, all VLANs."""
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"
PHYSICAL_NICS = ("vmnic0", "vmnic1", "vmnic2", "vmnic3")
"""Every host's physical NICs (uplinks), each cabled to the physical switch."""

FRAME_PROTOCOLS = frozenset({"tcp", "udp", "icmp", "other"})

_CANONICAL_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_GROUP_DIGITS = frozenset("13579bdf")
"""Second hex digit of a group (broadcast/multicast) MAC: the I/G bit is set."""
_UPLINK_NAME = re.compile(r"vmnic[0-9]{1,3}")


def mac_address(value: object, field: str = "mac") -> str:
    """The MAC in canonical form (lower-case, colon-separated); accepts ':' or '-'."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{field} must be a MAC address string, got {value!r}")
    mac = value.strip().lower().replace("-", ":")
    if not _CANONICAL_MAC.fullmatch(mac):
        raise InvalidArgument(
            f"{field} {value!r} is not a MAC address: write six hex octets, e.g. 00:50:56:01:02:03"
        )
    return mac


def uplink_name(value: object, field: str = "uplink") -> str:
    """A physical NIC's name: vmnic0, vmnic1, ..."""
    if not isinstance(value, str) or not _UPLINK_NAME.fullmatch(value):
        raise InvalidArgument(f"{field} {value!r} is not a physical NIC name (vmnic0, vmnic1, ...)")
    return value


@lru_cache(maxsize=4096)
def ipv4_int(address: str) -> int | None:
    """The IPv4 address as an int; None for "" (no IP). Cached: frames repeat addresses."""
    if not address:
        return None
    try:
        return int(ipaddress.IPv4Address(address))
    except (ipaddress.AddressValueError, ValueError):
        raise InvalidArgument(
            f"{address!r} is not an IPv4 address (write four decimal octets, e.g. 10.0.0.5)"
        ) from None


def is_group_mac(mac: str) -> bool:
    """Broadcast or multicast (the I/G bit of the first octet is set)."""
    return mac[1] in _GROUP_DIGITS


def unicast_mac(value: object, field: str = "mac") -> str:
    mac = mac_address(value, field)
    if is_group_mac(mac):
        raise InvalidArgument(
            f"{field} {mac} is a multicast/broadcast address (the low bit of the first octet "
            "is set); a vNIC needs a unicast MAC, e.g. 00:50:56:01:02:03"
        )
    if mac == "00:00:00:00:00:00":
        raise InvalidArgument(f"{field} 00:00:00:00:00:00 is not a usable MAC address")
    return mac


def _int(value: object, low: int, high: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{field} must be an integer {low}-{high}, got {value!r}")
    return validate.int_range(value, low, high, field)


def vlan_id(value: object, field: str = "vlan") -> int:
    """A port group's VLAN: 0 none, 1-4094 VST, 4095 VGT."""
    return _int(value, VLAN_NONE, VLAN_VGT, field)


@dataclass(frozen=True, slots=True)
class Frame:
    """An Ethernet frame, with the fields the vNIC firewall reads.

    MACs are held in canonical form. 0 and None both mean untagged and are held as None.
    """

    src_mac: str
    dst_mac: str
    vlan: int | None = None
    """The 802.1Q tag's VLAN id (1-4094), outside the payload; None = untagged."""
    protocol: str = "other"
    """"tcp", "udp", "icmp" or "other" (not IP, or an IP protocol the firewall ignores)."""
    src_ip: str = ""
    """IPv4 source address; "" when the frame has none."""
    dst_ip: str = ""
    src_port: int = 0
    """TCP/UDP ports; 0 for other protocols."""
    dst_port: int = 0
    payload: bytes = b""

    def __post_init__(self) -> None:
        if not _CANONICAL_MAC.fullmatch(self.src_mac):
            object.__setattr__(self, "src_mac", mac_address(self.src_mac, "src_mac"))
        if not _CANONICAL_MAC.fullmatch(self.dst_mac):
            object.__setattr__(self, "dst_mac", mac_address(self.dst_mac, "dst_mac"))
        if self.vlan is not None:
            if _int(self.vlan, 0, VLAN_VST_MAX, "frame vlan") == 0:
                object.__setattr__(self, "vlan", None)
        if self.protocol not in FRAME_PROTOCOLS:
            raise InvalidArgument(
                f"protocol must be one of {', '.join(sorted(FRAME_PROTOCOLS))}, "
                f"got {self.protocol!r}"
            )
        ipv4_int(self.src_ip)
        ipv4_int(self.dst_ip)
        _int(self.src_port, 0, 65535, "src_port")
        _int(self.dst_port, 0, 65535, "dst_port")
        if not isinstance(self.payload, bytes):
            raise InvalidArgument(f"payload must be bytes, got {type(self.payload).__name__}")

    @property
    def is_group(self) -> bool:
        """Broadcast or multicast destination."""
        return self.dst_mac[1] in _GROUP_DIGITS

    def with_vlan(self, vlan: int | None) -> Frame:
        """This frame with another 802.1Q tag (None or 0: untagged)."""
        if vlan is not None and not (isinstance(vlan, int) and 0 < vlan <= VLAN_VST_MAX):
            vlan = _int(vlan, 0, VLAN_VST_MAX, "vlan") or None
        return tagged(self, vlan)


def tagged(frame: Frame, vlan: int | None) -> Frame:
    """The frame with another tag, without validating again: every other field is
    already valid, and a copy is made per delivery on the data path. `vlan` must be
    None or 1-4094 (the data path's own VLANs); anything else goes through
    `Frame.with_vlan`."""
    if frame.vlan == vlan:
        return frame
    copy = object.__new__(Frame)
    for name in _FRAME_FIELDS:
        object.__setattr__(copy, name, getattr(frame, name))
    object.__setattr__(copy, "vlan", vlan)
    return copy


_FRAME_FIELDS = Frame.__slots__
