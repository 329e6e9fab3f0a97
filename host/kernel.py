"""The VMkernel core of one ESXi host.

Owns the host's capacity (CPU cores and MHz, memory), its registered VMs and their
power state, and admission control. Plain Python: no Ray, no sockets, no wall clock;
time comes from the injected `Clock`. Never trusts its caller: hostd checks who is
calling, the kernel checks that what is asked is possible.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vsim import validate
from vsim.clock import Clock
from vsim.cluster.spec import HostSpec
from vsim.faults import (
    AlreadyExists,
    InsufficientResourcesFault,
    InvalidPowerState,
    NotFound,
)


@dataclass(frozen=True)
class DiskConfig:
    path: str
    """The descriptor's datastore path."""
    capacity_bytes: int
    parent: str = ""


@dataclass(frozen=True)
class VmConfig:
    """What a host knows of a registered VM."""

    name: str
    uuid: str
    cpus: int
    memory_mb: int
    guest_os: str = "otherGuest64"
    powered_on: bool = False
    datastore: str = ""
    disks: tuple[DiskConfig, ...] = ()
    guest_write_iops: int = 0


class HostKernel:
    def __init__(self, spec: HostSpec, clock: Clock) -> None:
        self.spec = spec.validated()
        self.clock = clock
        self.boot_time = clock.now()
        self._vms: dict[str, VmConfig] = {}
        self._memory_used_mb = 0  # configured memory of powered-on VMs

    @property
    def memory_used_mb(self) -> int:
        return self._memory_used_mb

    @property
    def memory_free_mb(self) -> int:
        return self.spec.memory_mb - self._memory_used_mb

    def vms(self) -> list[VmConfig]:
        return sorted(self._vms.values(), key=lambda vm: vm.name)

    def vm_count(self) -> int:
        return len(self._vms)

    def powered_on_count(self) -> int:
        return sum(vm.powered_on for vm in self._vms.values())

    def vm(self, name: str) -> VmConfig:
        try:
            return self._vms[name]
        except KeyError:
            raise NotFound(f"no VM named {name!r} is registered on {self.spec.name}") from None

    def register_vm(self, vm: VmConfig) -> VmConfig:
        validate.vm_name(vm.name)
        validate.vcpus(vm.cpus)
        validate.memory_mb(vm.memory_mb)
        if vm.name in self._vms:
            raise AlreadyExists(f"a VM named {vm.name!r} is already registered on {self.spec.name}")
        registered = replace(vm, powered_on=False)
        self._vms[vm.name] = registered
        return registered

    def update_disks(self, name: str, disks: tuple[DiskConfig, ...]) -> VmConfig:
        vm = self.vm(name)
        if vm.powered_on:
            raise InvalidPowerState(f"{name} is powered on; its disks cannot change now")
        vm = self._vms[name] = replace(vm, disks=disks)
        return vm

    def unregister_vm(self, name: str) -> VmConfig:
        vm = self.vm(name)
        if vm.powered_on:
            raise InvalidPowerState(f"{name} is powered on; power it off before unregistering it")
        return self._vms.pop(name)

    def power_on(self, name: str) -> VmConfig:
        vm = self.vm(name)
        if vm.powered_on:
            raise InvalidPowerState(f"{name} is already powered on")
        self._admit(vm)
        vm = self._vms[name] = replace(vm, powered_on=True)
        self._memory_used_mb += vm.memory_mb
        return vm

    def power_off(self, name: str) -> VmConfig:
        vm = self.vm(name)
        if not vm.powered_on:
            raise InvalidPowerState(f"{name} is already powered off")
        vm = self._vms[name] = replace(vm, powered_on=False)
        self._memory_used_mb -= vm.memory_mb
        return vm

    def _admit(self, vm: VmConfig) -> None:
        """Admission control: a VM powers on only if the host can hold it."""
        if vm.cpus > self.spec.cpu_cores:
            raise InsufficientResourcesFault(
                f"{vm.name} has {vm.cpus} virtual CPUs but {self.spec.name} has only "
                f"{self.spec.cpu_cores} cores",
                host=self.spec.name,
            )
        if vm.memory_mb > self.memory_free_mb:
            raise InsufficientResourcesFault(
                f"cannot power on {vm.name}: it needs {vm.memory_mb} MB of memory and "
                f"{self.spec.name} has {self.memory_free_mb} MB free of {self.spec.memory_mb} MB",
                host=self.spec.name,
                requested_mb=vm.memory_mb,
                free_mb=self.memory_free_mb,
            )
