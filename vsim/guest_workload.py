"""How a simulated guest uses its memory: the workload's parameters, as a value.

Owns: `GuestWorkload` and its validation, the defaults per guest OS family, and which
family a vSphere guest id belongs to. Shared by the host (its guest memory model,
host/guest/memory.py), vCenter (checking a VM's settings) and the CLI.

Must never: touch memory or draw a page; that is the guest model's.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsim.faults import InvalidArgument


@dataclass(frozen=True)
class GuestWorkload:
    """How a guest uses its memory."""

    working_set_pct: float = 25.0
    """Share of configured memory the guest keeps active (its demand)."""
    boot_touch_pct: float = 40.0
    """Share of configured memory touched while booting (at least the working set)."""
    zero_pct: float = 20.0
    """Share of written pages that are zero."""
    common_pct: float = 30.0
    """Share of written pages drawn from the guest OS family's common pool."""
    dirty_rate: float = 256.0
    """Working-set pages rewritten per second."""
    touch_rate: float = 1024.0
    """Working-set pages read per second."""

    def validated(self) -> GuestWorkload:
        for name in ("working_set_pct", "boot_touch_pct", "zero_pct", "common_pct"):
            value = getattr(self, name)
            if not 0 <= value <= 100:
                raise InvalidArgument(f"{name} must be between 0 and 100, got {value}")
        if self.zero_pct + self.common_pct > 100:
            raise InvalidArgument(
                f"zero_pct + common_pct cannot pass 100, got {self.zero_pct + self.common_pct}"
            )
        for name in ("dirty_rate", "touch_rate"):
            if not 0 <= getattr(self, name) < 1e9:
                raise InvalidArgument(f"{name} must be >= 0 pages per second")
        return self


GUEST_DEFAULTS: dict[str, GuestWorkload] = {
    # Windows zeroes its free memory at boot, so much of it is zero pages.
    "windows": GuestWorkload(boot_touch_pct=100.0, zero_pct=45.0, common_pct=25.0),
    "linux": GuestWorkload(boot_touch_pct=35.0, zero_pct=15.0, common_pct=35.0),
    "other": GuestWorkload(),
}


def os_family(guest_os: str) -> str:
    """vSphere guest ids (windows2019srv_64Guest, rhel9_64Guest, ubuntu64Guest...)."""
    name = guest_os.lower()
    if name.startswith("win"):
        return "windows"
    linux = ("rhel", "centos", "ubuntu", "debian", "sles", "oracle", "linux", "photon", "rocky")
    if name.startswith(linux):
        return "linux"
    return "other"
