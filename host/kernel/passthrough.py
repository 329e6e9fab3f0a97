"""DirectPath I/O (PCI passthrough) on one ESXi host, as vSphere's HostPciPassthruSystem
keeps it: the host's PCI devices, which of them are enabled for passthrough, and
which VM each passthrough device is assigned to.

Owns the device inventory and the assignments, one fact in one place: a device is
assigned to at most one VM, and only while it is enabled for passthrough. Every
refused request changes nothing (it is checked in full before anything moves). A VM
sees only its own passthrough devices (`guest_devices`), at its own virtual slots
(pciPassthru0, 1, ...). Must never decide who exists or what is powered on: the
kernel owns the VMs and passes them in, and calls `check_power_on` before it admits a
VM, since a device that DMAs into guest memory needs all of that memory reserved.

vSphere applies a passthrough toggle at the next host reboot; vsim applies it at
once, and instead refuses to disable passthrough for a device a VM has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from vsim import validate
from vsim.faults import (
    AlreadyExists,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    ResourceInUse,
)
from vsim.pci_device import MAX_PASSTHRU_DEVICES_PER_VM, pci_id

PASSTHRU_KEY = "pciPassthru"
"""The .vmx name of a VM's passthrough slots: pciPassthru0, pciPassthru1, ..."""
MAX_NAME = 256


class PassthroughVm(Protocol):
    """What this module reads of a VM (`vsim.host.kernel.vmkernel.VmConfig` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def memory_mb(self) -> int: ...

    @property
    def powered_on(self) -> bool: ...


@dataclass(frozen=True)
class PciDevice:
    """One PCI function of the host (vSphere's HostPciDevice)."""

    id: str
    """domain:bus:device.function, e.g. 0000:3b:00.0."""
    vendor_name: str
    """e.g. NVIDIA Corporation."""
    device_name: str
    """e.g. GA100 [A100 PCIe 80GB]."""
    vendor_id: int = 0
    """The PCI vendor ID (0x10de); 0 when not given."""
    device_id: int = 0
    """The PCI device ID; 0 when not given."""

    def validated(self) -> PciDevice:
        """This device with its id in canonical (lower-case) form; InvalidArgument if a
        field is not valid."""
        validate.text(self.vendor_name, "vendor_name", MAX_NAME)
        validate.text(self.device_name, "device_name", MAX_NAME)
        validate.int_range(self.vendor_id, 0, 0xFFFF, "vendor_id")
        validate.int_range(self.device_id, 0, 0xFFFF, "device_id")
        return replace(self, id=pci_id(self.id))


@dataclass(frozen=True)
class PassthruInfo:
    """A device's passthrough state (vSphere's HostPciPassthruInfo, plus its VM)."""

    id: str
    """The device's PCI id."""
    enabled: bool
    """Enabled for passthrough: a VM may have it."""
    vm: str = ""
    """The VM it is assigned to; "" if none."""


@dataclass(frozen=True)
class GuestPciDevice:
    """A passthrough device as its VM sees it: the device, at the VM's own slot."""

    key: str
    """The VM's slot for it: pciPassthru<n>."""
    vendor_id: int
    device_id: int
    vendor_name: str
    device_name: str


@dataclass(frozen=True)
class _Assignment:
    vm: str
    slot: int
    """n of the VM's pciPassthru<n>."""


class PciPassthruSystem:
    """The host's PCI devices and their DirectPath I/O state."""

    def __init__(self, devices: Iterable[PciDevice] = (), enabled: Iterable[str] = ()) -> None:
        inventory: dict[str, PciDevice] = {}
        for device in devices:
            device = device.validated()
            if device.id in inventory:
                raise InvalidArgument(f"PCI device {device.id} is listed twice")
            inventory[device.id] = device
        on = {pci_id(i, "enabled device") for i in enabled}
        missing = sorted(on - inventory.keys())
        if missing:
            raise InvalidArgument(f"cannot enable passthrough for absent devices {missing}")
        self._devices = inventory
        self._enabled: set[str] = on
        self._assigned: dict[str, _Assignment] = {}
        """PCI id -> the VM that has it: the only record of who has what."""

    # the host's view

    def devices(self) -> list[PciDevice]:
        return [self._devices[i] for i in sorted(self._devices)]

    def device(self, pci: str) -> PciDevice:
        canonical = pci_id(pci)
        try:
            return self._devices[canonical]
        except KeyError:
            raise NotFound(f"this host has no PCI device {canonical}") from None

    def passthru_info(self) -> list[PassthruInfo]:
        return [self._info(i) for i in sorted(self._devices)]

    def holder(self, pci: str) -> str | None:
        """The VM the device is assigned to, if any."""
        assignment = self._assigned.get(self.device(pci).id)
        return assignment.vm if assignment else None

    def vm_devices(self, vm: str) -> list[str]:
        """The PCI ids of vm's passthrough devices, in its slot order."""
        mine = [(a.slot, i) for i, a in self._assigned.items() if a.vm == vm]
        return [i for _, i in sorted(mine)]

    def _info(self, pci: str) -> PassthruInfo:
        assignment = self._assigned.get(pci)
        return PassthruInfo(pci, pci in self._enabled, assignment.vm if assignment else "")

    def update_passthru_config(self, pci: str, enabled: bool) -> PassthruInfo:
        """Enables or disables passthrough for a device (vSphere: UpdatePassthruConfig).
        Disabling is refused while a VM has the device: unassign it first."""
        device = self.device(pci)
        holder = self._assigned.get(device.id)
        if not enabled and holder is not None:
            raise InvalidState(
                f"PCI device {device.id} is assigned to {holder.vm}; remove it from "
                f"{holder.vm} before disabling passthrough",
                device=device.id,
                vm=holder.vm,
            )
        if enabled:
            self._enabled.add(device.id)
        else:
            self._enabled.discard(device.id)
        return self._info(device.id)

    # a VM's devices

    def assign(self, vm: PassthroughVm, pci: str) -> GuestPciDevice:
        """Gives vm the device at its lowest free pciPassthru slot. Only an enabled
        device that no VM has, only while vm is powered off (DirectPath I/O devices
        are not hot-added)."""
        validate.vm_name(vm.name, "vm")
        device = self.device(pci)
        self._check_powered_off(vm, f"add PCI device {device.id} to it")
        holder = self._assigned.get(device.id)
        if holder is not None and holder.vm == vm.name:
            raise AlreadyExists(f"{vm.name} already has PCI device {device.id}")
        self._check_can_take(vm.name, device.id, len(self.vm_devices(vm.name)) + 1)
        return _guest_view(device, self._take(vm.name, device.id))

    def set_vm_devices(self, vm: PassthroughVm, wanted: Sequence[str]) -> list[str]:
        """Gives vm exactly the devices `wanted`, all or nothing: every one is checked
        before any assignment changes. Returns its devices in slot order."""
        validate.vm_name(vm.name, "vm")
        ids = [self.device(pci).id for pci in wanted]
        if len(set(ids)) != len(ids):
            raise InvalidArgument(f"{vm.name} names a PCI device twice: {', '.join(ids)}")
        current = self.vm_devices(vm.name)
        if set(ids) == set(current):
            return current
        self._check_powered_off(vm, "change its PCI devices")
        for pci in ids:
            if pci not in current:
                self._check_can_take(vm.name, pci, len(ids))
        for pci in set(current) - set(ids):
            del self._assigned[pci]
        for pci in ids:
            if pci not in current:
                self._take(vm.name, pci)
        return self.vm_devices(vm.name)

    def _check_can_take(self, vm: str, pci: str, devices: int) -> None:
        """vm may get pci (an enabled device nobody else has), ending with `devices`."""
        holder = self._assigned.get(pci)
        if holder is not None and holder.vm != vm:
            raise ResourceInUse(
                f"PCI device {pci} is in use by {holder.vm}; a passthrough device "
                f"belongs to one VM: remove it from {holder.vm} first",
                device=pci,
                vm=holder.vm,
            )
        if pci not in self._enabled:
            raise InvalidState(
                f"PCI device {pci} is not enabled for passthrough on this host; "
                "enable it (Configure > Hardware > PCI Devices) first",
                device=pci,
            )
        if devices > MAX_PASSTHRU_DEVICES_PER_VM:
            raise InvalidState(
                f"{vm} would have {devices} passthrough devices; a VM may have at most "
                f"{MAX_PASSTHRU_DEVICES_PER_VM}"
            )

    def _take(self, vm: str, pci: str) -> int:
        """Assigns pci to vm at its lowest free slot; returns the slot."""
        slots = {a.slot for a in self._assigned.values() if a.vm == vm}
        slot = min(set(range(len(slots) + 1)) - slots)
        self._assigned[pci] = _Assignment(vm, slot)
        return slot

    def unassign(self, vm: PassthroughVm, pci: str) -> None:
        """Takes the device from vm (powered off: DirectPath I/O devices are not
        hot-removed). Its slot is free for the next one."""
        validate.vm_name(vm.name, "vm")
        device = self.device(pci)
        holder = self._assigned.get(device.id)
        if holder is None or holder.vm != vm.name:
            raise NotFound(f"{vm.name} has no PCI device {device.id}")
        self._check_powered_off(vm, f"remove PCI device {device.id} from it")
        del self._assigned[device.id]

    def release_vm(self, vm: str) -> list[str]:
        """Frees every device of an unregistered VM; returns their ids."""
        validate.vm_name(vm, "vm")
        released = self.vm_devices(vm)
        for pci in released:
            del self._assigned[pci]
        return released

    def guest_devices(self, vm: str) -> list[GuestPciDevice]:
        """The passthrough devices vm's guest finds on its PCI bus: its own, and no
        other."""
        return [_guest_view(self._devices[i], self._assigned[i].slot) for i in self.vm_devices(vm)]

    def check_power_on(self, vm: PassthroughVm, memory_reservation_mb: int) -> None:
        """Refuses (InvalidState) to power on a VM with DirectPath I/O devices unless all
        its memory is reserved: the devices DMA into guest memory, which must stay
        where it is (no ballooning, swapping or page sharing)."""
        validate.int_range(memory_reservation_mb, 0, vm.memory_mb, "memory_reservation_mb", "MB")
        devices = self.vm_devices(vm.name)
        if devices and memory_reservation_mb < vm.memory_mb:
            raise InvalidState(
                "Invalid memory setting: memory reservation (sched.mem.min) should be "
                f"equal to memsize({vm.memory_mb}). {vm.name} has DirectPath I/O device(s) "
                f"{', '.join(devices)} and {memory_reservation_mb} MB reserved: reserve all "
                f"{vm.memory_mb} MB of its memory, or remove the devices",
                vm=vm.name,
                reserved_mb=memory_reservation_mb,
                memory_mb=vm.memory_mb,
            )

    @staticmethod
    def _check_powered_off(vm: PassthroughVm, what: str) -> None:
        if vm.powered_on:
            raise InvalidPowerState(f"{vm.name} is powered on; power it off to {what}")


def _guest_view(device: PciDevice, slot: int) -> GuestPciDevice:
    return GuestPciDevice(
        f"{PASSTHRU_KEY}{slot}",
        device.vendor_id,
        device.device_id,
        device.vendor_name,
        device.device_name,
    )
