"""A VM's files on its datastore, as ESXi lays them out: a folder named for the VM
with its configuration (`<name>.vmx`) and its disks (`<name>.vmdk` and extents;
`<name>-00000N.vmdk` for the deltas added when it is linked-cloned)."""

from __future__ import annotations

import contextlib

from vsim.faults import FileAlreadyExists, FileNotFound, InvalidArgument, VimFault
from vsim.host.datastore_files import DatastoreFiles, split_path, write_whole
from vsim.host.kernel import DiskConfig, VmConfig
from vsim.host.vmdk import create_delta, create_disk, delete_disk


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
    """A new delta over each disk's current top; returns the VM's new disks."""
    taken = {info.path for info in await files.listdir(vm.name)}
    disks = []
    for disk in vm.disks:
        path = next_delta_path(vm, taken)
        taken.add(path)
        await create_delta(files, path, disk.path)
        disks.append(DiskConfig(path, disk.capacity_bytes, disk.path))
    return tuple(disks)
