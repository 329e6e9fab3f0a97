"""A PCI device's address and DirectPath I/O's per-VM limit, as vCenter checks them
in a request and a host's PCI passthrough system keeps them.

Never does: hold devices or assignments (host/kernel/passthrough.py does).
"""

from __future__ import annotations

import re

from vsim.faults import InvalidArgument

PCI_ID = re.compile(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])")
"""domain:bus:device.function, in hex, as ESXi lists them (0000:3b:00.0)."""
MAX_PCI_DEVICE = 0x1F
"""A PCI bus has devices 0..31."""
MAX_PASSTHRU_DEVICES_PER_VM = 128
"""DirectPath I/O devices per VM: ESXi 8.0 U2, hardware version 21 (KB 309986)."""


def pci_id(value: str, field: str = "pci id") -> str:
    """A PCI id in canonical form (lower-case hex); InvalidArgument if it is not one."""
    text = value.lower() if isinstance(value, str) else ""
    match = PCI_ID.fullmatch(text)
    if match is None or int(match.group(3), 16) > MAX_PCI_DEVICE:
        shown = repr(value)[:60]
        raise InvalidArgument(
            f"{field} {shown} is not a PCI address: use domain:bus:device.function in hex, "
            f"device 00-{MAX_PCI_DEVICE:02x} and function 0-7 (e.g. 0000:3b:00.0)"
        )
    return text
