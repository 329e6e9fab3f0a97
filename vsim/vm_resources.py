"""A VM's resource settings as a value: CPU and memory shares, reservations and limits,
disk shares and IOPS limit, its resource pool, and its simulated guest's load.

Owns: `VmResources` and its validation against the VM's size. Shared by the host (the
VMkernel admits and schedules by it), vCenter (keeps it in the inventory and checks a
reconfiguration with the host's own rules) and the CLI.

Must never: schedule or admit; that is the VMkernel's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from vsim import validate
from vsim.faults import InvalidArgument
from vsim.guest_workload import GuestWorkload
from vsim.memory_settings import VmMemorySettings
from vsim.resource_allocation import (
    ROOT_POOL,
    UNLIMITED,
    VM_CPU_SHARES_PER_VCPU,
    Allocation,
    pool_name,
)


@dataclass(frozen=True)
class VmResources:
    """A VM's resource settings and its simulated guest's load."""

    cpu_shares: int = 0
    """0: normal (1000 per vCPU)."""
    cpu_reservation_mhz: int = 0
    cpu_limit_mhz: int = UNLIMITED
    memory: VmMemorySettings = field(default_factory=VmMemorySettings)
    cpu_load_pct: int = 0
    """Share of its vCPUs the guest keeps busy (0: idle)."""
    workload: GuestWorkload | None = None
    """How the guest uses its memory; None: its guest OS's defaults."""
    disk_shares: int = 0
    """Per disk under Storage I/O Control; 0: normal (1000)."""
    disk_iops_limit: int = UNLIMITED
    resource_pool: str = ""
    """The host resource pool it runs in; "" is the root ("Resources"). The pool must
    exist on the host when the VM powers on there (a VM may be registered first)."""

    @property
    def pool(self) -> str:
        """The pool's name in the resource-pool tree."""
        return self.resource_pool or ROOT_POOL

    def cpu_allocation(self, vcpus: int) -> Allocation:
        shares = self.cpu_shares or VM_CPU_SHARES_PER_VCPU["normal"] * vcpus
        return Allocation(shares, self.cpu_reservation_mhz, self.cpu_limit_mhz)

    def validated(self, vcpus: int, memory_mb: int) -> VmResources:
        if self.cpu_shares < 0 or self.disk_shares < 0:
            raise InvalidArgument("shares must be > 0 (or 0 for normal)")
        self.cpu_allocation(vcpus)  # reservation >= 0, limit >= reservation
        self.memory.validated(memory_mb)
        validate.int_range(self.cpu_load_pct, 0, 100, "cpu_load_pct", "%")
        if self.workload is not None:
            self.workload.validated()
        if self.disk_iops_limit != UNLIMITED:
            validate.int_range(self.disk_iops_limit, 1, 1_000_000, "disk_iops_limit")
        if self.resource_pool == ROOT_POOL:
            return replace(self, resource_pool="")  # one way to say "the root"
        if self.resource_pool:
            pool_name(self.resource_pool, "resource_pool")
        return self
