"""A VM's files on its datastore, as ESXi lays them out: a folder named for the VM
with its configuration (`<name>.vmx`) and its disks (`<name>.vmdk` and extents;
`<name>-00000N.vmdk` for the deltas added when it is linked-cloned)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace

from vsim.faults import (
    FileAlreadyExists,
    FileNotFound,
    InvalidArgument,
    InvalidState,
    VimFault,
)
from vsim.host.kernel.vmkernel import DiskConfig, VmConfig
from vsim.host.storage.datastore_files import DatastoreFiles, split_path, write_whole
from vsim.host.storage.vmdk import create_delta, create_disk, delete_disk, delta_grains_used

log = logging.getLogger(__name__)


def vmx_path(vm: VmConfig) -> str:
    return f"{vm.name}/{vm.name}.vmx"


def render_vmx(vm: VmConfig) -> str:
    lines = [
        '.encoding = "UTF-8"',
        'config.version = "8"',
        'virtualHW.version = "21"',
        f'displayName = "{vm.name}"',
        f'guestOS = "{vm.guest_os}"',
        f'memSize = "{vm.memory_mb}"',
        f'numvcpus = "{vm.cpus}"',
        f'uuid.bios = "{vm.uuid}"',
    ]
    if vm.disks:
        lines += ['scsi0.present = "TRUE"', 'scsi0.virtualDev = "lsilogic"']
    for unit, disk in enumerate(vm.disks):
        own = disk.path.startswith(f"{vm.name}/")
        name = disk.path.rpartition("/")[2] if own else f"[{vm.datastore}] {disk.path}"
        lines += [f'scsi0:{unit}.present = "TRUE"', f'scsi0:{unit}.fileName = "{name}"']
    return "\n".join(lines) + "\n"


def check_disks(vm: VmConfig) -> None:
    for disk in vm.disks:
        split_path(disk.path)
        if disk.parent:
            split_path(disk.parent)
        if not disk.path.endswith(".vmdk"):
            raise InvalidArgument(f"a disk's descriptor is a .vmdk file, not {disk.path[:80]!r}")
    if vm.disks and not vm.datastore:
        raise InvalidArgument("a VM with disks needs a datastore")


async def write_vmx(files: DatastoreFiles, vm: VmConfig, create: bool) -> None:
    await write_whole(files, vmx_path(vm), render_vmx(vm).encode(), create)


async def create_vm_files(files: DatastoreFiles, vm: VmConfig) -> None:
    """The VM's folder, .vmx and disks; on failure removes the folder and whatever
    was made in it (even a file whose first write failed)."""
    split_path(vm.name)
    try:
        await files.mkdir(vm.name)
    except FileAlreadyExists:
        raise FileAlreadyExists(
            f"a folder named {vm.name} already exists on {vm.datastore}"
        ) from None
    try:
        await write_vmx(files, vm, create=True)
        for disk in vm.disks:
            if disk.parent:
                await create_delta(files, disk.path, disk.parent)
            else:
                await create_disk(files, disk.path, disk.capacity_bytes)
    except BaseException:
        with contextlib.suppress(VimFault):
            await _remove_folder(files, vm.name)
        raise


async def _remove_folder(files: DatastoreFiles, folder: str) -> None:
    for info in await files.listdir(folder):
        with contextlib.suppress(FileNotFound):
            await files.remove(info.path)
    with contextlib.suppress(FileNotFound):
        await files.remove(folder)


async def delete_vm_files(files: DatastoreFiles, vm: VmConfig) -> None:
    """Removes the VM's folder: its disks (with the deltas it got as a linked-clone
    source), its .vmx and the folder. vCenter never asks while a linked clone reads
    any of them. FileLocked if a disk is open anywhere; once past that, a retry after
    a failure finishes the job (what is gone already is skipped)."""
    try:
        listing = await files.listdir(vm.name)
    except FileNotFound:
        return  # gone already
    for info in listing:
        if info.path.endswith(".vmdk") and not info.path.endswith(("-flat.vmdk", "-delta.vmdk")):
            await delete_disk(files, info.path)
    await _remove_folder(files, vm.name)


def next_delta_path(vm: VmConfig, taken: set[str]) -> str:
    n = 1
    while f"{vm.name}/{vm.name}-{n:06d}.vmdk" in taken:
        n += 1
    return f"{vm.name}/{vm.name}-{n:06d}.vmdk"


async def snapshot_disks(files: DatastoreFiles, vm: VmConfig) -> tuple[DiskConfig, ...]:
    """A new delta over each disk's current top; returns the VM's new disks. If one
    cannot be made, those made already are deleted again: the disks stay as they were."""
    taken = {info.path for info in await files.listdir(vm.name)}
    disks: list[DiskConfig] = []
    try:
        for disk in vm.disks:
            path = next_delta_path(vm, taken)
            taken.add(path)
            disks.append(DiskConfig(path, disk.capacity_bytes, disk.path))
            await create_delta(files, path, disk.path)
    except BaseException:
        await discard_new_deltas(files, [d.path for d in disks])
        raise
    return tuple(disks)


async def discard_new_deltas(files: DatastoreFiles, paths: list[str]) -> None:
    """Deletes deltas snapshot_disks made (or began: the extent is written before the
    descriptor), as far as the datastore lets it; what cannot go is logged."""
    for path in paths:
        extent = f"{path.removesuffix('.vmdk')}-delta.vmdk"
        for file in (path, extent):
            try:
                await files.remove(file)
            except FileNotFound:
                pass
            except VimFault as fault:
                log.warning("cannot delete %s, a delta no disk uses: %s", file, fault)


async def check_revert(files: DatastoreFiles, vm: VmConfig, disks: tuple[DiskConfig, ...]) -> None:
    """That vm can go back onto `disks`: each is the parent of its current top, a
    delta of the VM's own that was never written (reverting loses nothing)."""
    if len(disks) != len(vm.disks):
        raise InvalidArgument(
            f"{vm.name} has {len(vm.disks)} disks; cannot go back onto {len(disks)}"
        )
    for top, disk in zip(vm.disks, disks, strict=True):
        split_path(disk.path)
        if top.parent != disk.path or not top.path.startswith(f"{vm.name}/"):
            raise InvalidArgument(
                f"{top.path[:80]!r} is not a delta of {vm.name}'s over {disk.path[:80]!r}"
            )
        if disk.capacity_bytes != top.capacity_bytes:
            raise InvalidArgument(
                f"{disk.path[:80]!r} holds {top.capacity_bytes} bytes, not {disk.capacity_bytes}"
            )
        used = await delta_grains_used(files, top.path)
        if used:
            raise InvalidState(
                f"{top.path} has been written ({used} grains): going back to "
                f"{disk.path} would lose those writes"
            )


async def revert_disks(files: DatastoreFiles, vm: VmConfig, disks: tuple[DiskConfig, ...]) -> None:
    """Puts vm's files back onto `disks` (checked by check_revert): its .vmx first, so
    it never names a deleted disk, then the deltas it leaves are deleted."""
    await write_vmx(files, replace(vm, disks=disks), create=False)
    await discard_new_deltas(files, [d.path for d in vm.disks])
