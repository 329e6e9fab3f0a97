"""A VM's files on its datastore, as ESXi lays them out: a folder named for the VM
with its configuration (`<name>.vmx`) and its disks (`<name>.vmdk` and extents;
`<name>-00000N.vmdk` for the deltas added when it is linked-cloned)."""

from __future__ import annotations

import contextlib

from vsim.faults import FileAlreadyExists, InvalidArgument, VimFault
from vsim.host.datastore_files import DatastoreFiles, split_path
from vsim.host.kernel import DiskConfig, VmConfig
from vsim.host.vmdk import create_delta, create_disk, delete_disk
from vsim.storage.vmfs_format import LockMode


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
    path = vmx_path(vm)
    if create:
        await files.create(path)
    file = await files.open(path, LockMode.EXCLUSIVE)
    try:
        text = render_vmx(vm).encode()
        old = await file.size()
        await file.write(0, text + b"\n" * max(0, old - len(text)))
    finally:
        await file.close()


async def create_vm_files(files: DatastoreFiles, vm: VmConfig) -> None:
    """The VM's folder, .vmx and disks; on failure removes what it made."""
    split_path(vm.name)
    made: list[tuple[str, str]] = []
    try:
        try:
            await files.mkdir(vm.name)
        except FileAlreadyExists:
            raise FileAlreadyExists(
                f"a folder named {vm.name} already exists on {vm.datastore}"
            ) from None
        made.append(("dir", vm.name))
        await write_vmx(files, vm, create=True)
        made.append(("file", vmx_path(vm)))
        for disk in vm.disks:
            if disk.parent:
                await create_delta(files, disk.path, disk.parent)
            else:
                await create_disk(files, disk.path, disk.capacity_bytes)
            made.append(("disk", disk.path))
    except BaseException:
        for kind, path in reversed(made):
            with contextlib.suppress(VimFault):
                if kind == "disk":
                    await delete_disk(files, path)
                else:
                    await files.remove(path)
        raise


async def delete_vm_files(files: DatastoreFiles, vm: VmConfig) -> None:
    """Removes the VM's disks (never a parent another VM uses: parents live in their
    own VM's folder), its .vmx and folder. FileLocked if a disk is open anywhere."""
    for disk in vm.disks:
        await delete_disk(files, disk.path)
    with contextlib.suppress(VimFault):
        await files.remove(vmx_path(vm))
    # Deltas the VM got as a linked-clone source are in its folder too.
    for info in await files.listdir(vm.name):
        if info.path.endswith(".vmdk") and not info.path.endswith(("-flat.vmdk", "-delta.vmdk")):
            with contextlib.suppress(VimFault):
                await delete_disk(files, info.path)
    await files.remove(vm.name)


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
