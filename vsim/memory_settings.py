"""Memory resource settings as values: the host's advanced memory settings (Mem.*) and a
VM's (its .vmx sched.mem.* keys).

Owns: `MemorySettings`, `VmMemorySettings` and their validation. Shared by the host's
memory scheduler (host/kernel/memory/), vCenter and the CLI.

Must never: hold state or know about pages and machine memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from vsim import validate
from vsim.faults import InvalidArgument
from vsim.resource_allocation import UNLIMITED, VM_MEMORY_SHARES_PER_MB, Allocation

SHARE_FORCE_SALTING = 2
"""Mem.ShareForceSalting default."""
SHARE_SCAN_PERIOD = 60.0
"""Seconds between TPS scans (ESXi spreads a full scan over Mem.ShareScanTime)."""
MAX_SHARE_SCAN_PERIOD = 36_000.0


@dataclass(frozen=True)
class MemorySettings:
    """The host's advanced memory settings."""

    share_force_salting: int = SHARE_FORCE_SALTING
    """Mem.ShareForceSalting: 0, 1 or 2; reaches a VM at its next power-on."""
    page_sharing: bool = True
    """False stops the TPS scan on this host (Mem.ShareScanGHz = 0)."""
    share_scan_period: float = SHARE_SCAN_PERIOD
    """Seconds between scans."""

    def validated(self) -> MemorySettings:
        if self.share_force_salting not in (0, 1, 2):
            raise InvalidArgument(
                f"Mem.ShareForceSalting must be 0, 1 or 2, got {self.share_force_salting}"
            )
        validate.positive_number(self.share_scan_period, "share_scan_period")
        if self.share_scan_period > MAX_SHARE_SCAN_PERIOD:
            raise InvalidArgument(
                f"share_scan_period is at most {MAX_SHARE_SCAN_PERIOD:.0f} s, "
                f"got {self.share_scan_period}"
            )
        return self


@dataclass(frozen=True)
class VmMemorySettings:
    """A VM's memory resource settings (its .vmx sched.mem.* keys)."""

    reservation_mb: int = 0
    """sched.mem.min: never reclaimed once the guest has touched it."""
    limit_mb: int = -1
    """sched.mem.max; -1 for unlimited."""
    shares: int = 0
    """sched.mem.shares; 0 means normal (10 per MB)."""
    page_sharing: bool = True
    """sched.mem.pshare.enable; applies from the next power-on."""
    salt: str = ""
    """sched.mem.pshare.salt; applies from the next power-on."""
    balloon_driver: bool = True
    """VMware Tools' balloon driver runs in the guest."""

    def validated(self, memory_mb: int) -> VmMemorySettings:
        if not 0 <= self.reservation_mb <= memory_mb:
            raise InvalidArgument(
                f"memory reservation must be 0..{memory_mb} MB (the VM's memory), "
                f"got {self.reservation_mb}"
            )
        if self.limit_mb != -1 and self.limit_mb < self.reservation_mb:
            raise InvalidArgument(
                f"memory limit {self.limit_mb} MB is below the reservation "
                f"{self.reservation_mb} MB; use -1 for unlimited"
            )
        if self.shares < 0:
            raise InvalidArgument(f"memory shares must be > 0, got {self.shares}")
        if len(self.salt) > 256:
            raise InvalidArgument("sched.mem.pshare.salt is at most 256 characters")
        return self

    def allocation(self, memory_mb: int) -> Allocation:
        shares = self.shares or VM_MEMORY_SHARES_PER_MB["normal"] * memory_mb
        limit = UNLIMITED if self.limit_mb == -1 else self.limit_mb
        return Allocation(shares, self.reservation_mb, limit)
