"""The host's proportional-share CPU scheduler.

Owns: the powered-on VMs' CPU (their admission into the host's resource-pool tree,
whose CPU view it reads: a VM powers on only if its CPU reservation fits), each VM's
CPU demand (set by whoever plays its guest workload), and
the accounting of each tick: entitlement, usage, used MHz-seconds and ready time.

Must never: let a VM use more than its vCPUs can run (vcpus x core MHz), more than its
limit, or more than it demands; leave capacity idle while a VM's demand is unmet and
not capped; read a clock (time comes in as `tick(dt)`); loop in Python over the VMs in
a tick (the division is one vectorised pass through the tree's CPU view).

Usage follows the fluid model of ESX's proportional-share scheduler over a tick: each
VM runs at its entitlement (`ResourceView.entitlements`: shares, reservations, limits,
pools), or at its demand if that is less. Ready time is vSphere's %RDY idea: the vCPU
time a VM was ready to run but not running, (demand - usage) / core MHz vCPU-seconds
per second; like esxtop's %RDY it includes time held back by a limit (%MLMTD) and is
summed over the VM's vCPUs, so it can exceed 100 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsim import validate
from vsim.faults import InsufficientResourcesFault, InvalidArgument
from vsim.host.kernel.resources.pool_tree import PoolTree
from vsim.resource_allocation import (
    ROOT_POOL,
    Allocation,
    Unit,
    vm_cpu_allocation,
)
from vsim.spec import HostSpec

_PER_VM_FLOATS = (
    "_demand",
    "_entitlement",
    "_usage",
    "_ready_percent",
    "_used_mhz_s",
    "_ready_s",
)
"""The float arrays kept per powered-on VM, in the CPU view's consumer order."""


@dataclass(frozen=True)
class VmCpuStats:
    """One VM's CPU numbers: the last tick's rates and the totals since power-on."""

    name: str
    vcpus: int
    demand_mhz: float
    """What the guest wants now, capped at what its vCPUs can run (the rest are the
    last tick's)."""
    entitlement_mhz: float
    """What shares, reservation, limit and pools gave it in the last tick."""
    usage_mhz: float
    """What it ran in the last tick: min(demand, entitlement)."""
    ready_percent: float
    """Last tick's ready time, in % of one vCPU (esxtop %RDY; up to 100 x vcpus)."""
    used_mhz_s: float
    """CPU consumed since power-on, in MHz-seconds."""
    ready_s: float
    """vCPU-seconds spent ready to run but not running, since power-on."""


@dataclass(frozen=True)
class HostCpuStats:
    """The host's CPU numbers: the last tick's rates and the totals since start."""

    capacity_mhz: int
    reserved_mhz: int
    """CPU reservations held by powered-on VMs and pools."""
    vms: int
    """Powered-on VMs."""
    demand_mhz: float
    entitlement_mhz: float
    usage_mhz: float
    utilization: float
    """usage / capacity in the last tick (0..1)."""
    elapsed_s: float
    """Time the scheduler has run (sum of the ticks)."""
    used_mhz_s: float
    """CPU consumed by all VMs since start, in MHz-seconds (including powered-off ones)."""


class CpuScheduler:
    """Proportional-share CPU scheduling for one host's powered-on VMs.

    Per-VM state lives in numpy arrays in the order of `tree.consumer_names` (see
    ResourceView). `pools` is the host's resource-pool tree, shared with the memory
    manager, its CPU capacity cores x core MHz (a tree of CPU alone if none is given);
    resource pools are made through it (add_pool, set_pool, ...), and `tree` is its
    CPU view.
    """

    def __init__(self, cores: int, core_mhz: int, pools: PoolTree | None = None) -> None:
        validate.int_range(cores, 1, validate.MAX_HOST_CPU_CORES, "cores")
        validate.int_range(core_mhz, 1, 100_000, "core_mhz", "MHz")
        self.cores = cores
        self.core_mhz = core_mhz
        self.pools = pools if pools is not None else PoolTree({Unit.MHZ: cores * core_mhz})
        self.tree = self.pools.view(Unit.MHZ)
        if self.tree.capacity != cores * core_mhz:
            raise InvalidArgument(
                f"the resource-pool tree has {self.tree.capacity} MHz of CPU, but "
                f"{cores} cores x {core_mhz} MHz are {cores * core_mhz} MHz"
            )
        self._vcpus = np.zeros(0, dtype=np.int64)
        self._demand = np.zeros(0)
        self._entitlement = np.zeros(0)
        self._usage = np.zeros(0)
        self._ready_percent = np.zeros(0)
        self._used_mhz_s = np.zeros(0)
        self._ready_s = np.zeros(0)
        self._elapsed_s = 0.0
        self._host_used_mhz_s = 0.0

    @classmethod
    def for_host(cls, spec: HostSpec, pools: PoolTree | None = None) -> CpuScheduler:
        return cls(spec.cpu_cores, spec.cpu_mhz, pools)

    @property
    def capacity_mhz(self) -> int:
        return self.tree.capacity

    def vms(self) -> tuple[str, ...]:
        """Powered-on VMs, in the order of the scheduler's arrays."""
        return self.tree.consumer_names

    # -- power ---------------------------------------------------------------------------

    def power_on(
        self,
        vm: str,
        vcpus: int,
        allocation: Allocation | None = None,
        pool: str = ROOT_POOL,
    ) -> None:
        """Admits a VM: InsufficientResourcesFault if it has more vCPUs than the host
        has cores or its reservation does not fit; default shares are normal (1000 per
        vCPU). Its demand starts at 0."""
        validate.vcpus(vcpus)
        if vcpus > self.cores:
            raise InsufficientResourcesFault(
                f"{vm} has {vcpus} virtual CPUs but the host has only {self.cores} cores",
                requested=vcpus,
                cores=self.cores,
            )
        allocation = allocation if allocation is not None else vm_cpu_allocation("normal", vcpus)
        self.tree.add_consumer(vm, allocation, pool)  # admission: may refuse, changing nothing
        self._vcpus = np.append(self._vcpus, vcpus)
        for name in _PER_VM_FLOATS:
            setattr(self, name, np.append(getattr(self, name), 0.0))

    def power_off(self, vm: str) -> VmCpuStats:
        """Removes a VM and releases its reservation; returns its final numbers."""
        final = self.vm_stats(vm)
        i = self.tree.index(vm)
        self.tree.remove_consumer(vm)
        for name in ("_vcpus", *_PER_VM_FLOATS):
            setattr(self, name, np.delete(getattr(self, name), i))
        return final

    # -- settings ------------------------------------------------------------------------

    def allocation(self, vm: str) -> Allocation:
        return self.tree.consumer(vm)

    def set_demand(self, vm: str, mhz: float) -> float:
        """Sets what the VM's guest wants to run, in MHz; returns the demand kept,
        which is capped at vcpus x core MHz (a vCPU cannot run faster than a core)."""
        i = self.tree.index(vm)
        if isinstance(mhz, bool) or not isinstance(mhz, int | float | np.number):
            raise InvalidArgument(f"CPU demand of {vm} must be a number of MHz, got {mhz!r}")
        if not (mhz >= 0 and np.isfinite(mhz)):
            raise InvalidArgument(f"CPU demand of {vm} must be a finite number >= 0 MHz, got {mhz}")
        self._demand[i] = min(float(mhz), float(self._vcpus[i] * self.core_mhz))
        return float(self._demand[i])

    def set_demands(self, demand_mhz: np.ndarray) -> None:
        """Sets every VM's demand at once, in `vms()` order (capped as in set_demand)."""
        d = np.asarray(demand_mhz, dtype=np.float64)
        if d.shape != self._demand.shape:
            raise InvalidArgument(
                f"one demand per powered-on VM ({self._demand.size}), got shape {d.shape}"
            )
        if not (np.all(d >= 0) and np.all(np.isfinite(d))):
            raise InvalidArgument("CPU demands must be finite numbers >= 0 MHz")
        self._demand = np.minimum(d, self._vcpus * float(self.core_mhz))

    # -- running ---------------------------------------------------------------------------

    def tick(self, dt: float) -> HostCpuStats:
        """Runs the VMs for `dt` seconds at their current demands; returns the host's
        numbers for the tick."""
        validate.positive_number(dt, "dt")
        self._entitlement = self.tree.entitlements(self._demand)
        self._usage = np.minimum(self._demand, self._entitlement)
        self._used_mhz_s += self._usage * dt
        waiting_vcpus = (self._demand - self._usage) / self.core_mhz
        self._ready_percent = waiting_vcpus * 100.0
        self._ready_s += waiting_vcpus * dt
        self._elapsed_s += dt
        self._host_used_mhz_s += float(self._usage.sum()) * dt
        return self.host_stats()

    # -- statistics ------------------------------------------------------------------------

    def vm_stats(self, vm: str) -> VmCpuStats:
        i = self.tree.index(vm)
        return VmCpuStats(
            name=vm,
            vcpus=int(self._vcpus[i]),
            demand_mhz=float(self._demand[i]),
            entitlement_mhz=float(self._entitlement[i]),
            usage_mhz=float(self._usage[i]),
            ready_percent=float(self._ready_percent[i]),
            used_mhz_s=float(self._used_mhz_s[i]),
            ready_s=float(self._ready_s[i]),
        )

    def usage_mhz(self) -> np.ndarray:
        """Last tick's usage per VM, in `vms()` order (a copy)."""
        return self._usage.copy()

    def entitlement_mhz(self) -> np.ndarray:
        """Last tick's entitlement per VM, in `vms()` order (a copy)."""
        return self._entitlement.copy()

    def pool_entitlements(self) -> dict[str, float]:
        """Each resource pool's entitlement (MHz, its whole subtree) for the current
        demands: what the next tick would give it."""
        return self.tree.pool_entitlements(self._demand)

    def ready_s(self) -> np.ndarray:
        """Ready vCPU-seconds since power-on per VM, in `vms()` order (a copy)."""
        return self._ready_s.copy()

    def host_stats(self) -> HostCpuStats:
        usage = float(self._usage.sum())
        return HostCpuStats(
            capacity_mhz=self.capacity_mhz,
            reserved_mhz=self.tree.reserved(),
            vms=len(self.tree),
            demand_mhz=float(self._demand.sum()),
            entitlement_mhz=float(self._entitlement.sum()),
            usage_mhz=usage,
            utilization=usage / self.capacity_mhz,
            elapsed_s=self._elapsed_s,
            used_mhz_s=self._host_used_mhz_s,
        )
