"""Virtual disks as ESXi keeps them: a small text descriptor plus one extent.

    name.vmdk           the descriptor (text, below)
    name-flat.vmdk      a flat extent: the disk's bytes in order (thin: unwritten
                        blocks take no space)
    name-delta.vmdk     a delta extent: only the grains written since the disk was
                        made over its parent; the rest is read from the parent

Descriptor (the lines ESXi writes that vsim reads):

    # Disk DescriptorFile
    version=1
    CID=<8 hex digits>          changes when the disk is first written after an open
    parentCID=<8 hex digits>    the parent's CID when this delta was made (ffffffff: none)
    createType="vmfs"           or "vmfsSparse" for a delta
    parentFileNameHint="<datastore path of the parent descriptor>"   (deltas only)
    RW <sectors> VMFS "<flat extent file>"          or VMFSSPARSE for a delta
    ddb.uuid = "<disk UUID>"

A delta over a parent whose CID no longer matches refuses to open: the parent was
written after the child was made, so the child's view of it is gone. Parents are
opened read-only by every child, so this cannot happen through vsim.

Delta extent (little-endian):

    0   8   magic b"VSIMDLT1"
    8   8   capacity in sectors
    16  4   grain size in sectors (128: 64 KiB)
    20  4   grains in use
    512 4*G grain table: one entry per grain of the disk; 0 = not in this extent
            (read the parent), n = the grain is at data slot n - 1
    D       data slots, one grain each, from the first grain boundary after the table

A write to a grain not yet in the delta copies the parent's grain, merges the write
into it, writes it to a new slot, then records it in the grain table: a crash in
between leaves an unused slot, never a table entry pointing at unwritten data.
"""

from __future__ import annotations

import contextlib
import random
import re
import struct
from dataclasses import dataclass, replace

from vsim.faults import CannotAccessFile, FileNotFound, InvalidArgument, InvalidState
from vsim.host.storage.datastore_files import (
    DatastoreFile,
    DatastoreFiles,
    close_all,
    parent_of,
    write_whole,
)
from vsim.runtime import random_hex, random_uuid
from vsim.storage.vmfs_format import SECTOR, LockMode

GRAIN_SECTORS = 128
GRAIN = GRAIN_SECTORS * SECTOR
DELTA_MAGIC = b"VSIMDLT1"
_HEADER = struct.Struct("<8sQII")
NO_PARENT_CID = "ffffffff"
MAX_DISK_BYTES = 2 * 1024**4
"""2 TiB: the largest disk vsim makes (a VMFS file with 1 MiB blocks holds 256 GiB;
the datastore refuses what it cannot hold when it is written)."""


@dataclass(frozen=True)
class Descriptor:
    cid: str
    parent_cid: str
    sectors: int
    extent: str
    """The extent's file name, in the descriptor's directory."""
    parent: str = ""
    """The parent descriptor's datastore path; "" for a flat disk."""
    disk_uuid: str = ""

    @property
    def is_delta(self) -> bool:
        return bool(self.parent)

    def render(self) -> str:
        kind, extent_kind = ("vmfsSparse", "VMFSSPARSE") if self.parent else ("vmfs", "VMFS")
        lines = [
            "# Disk DescriptorFile",
            "version=1",
            'encoding="UTF-8"',
            f"CID={self.cid}",
            f"parentCID={self.parent_cid}",
            f'createType="{kind}"',
        ]
        if self.parent:
            lines.append(f'parentFileNameHint="{self.parent}"')
        lines += [
            "",
            "# Extent description",
            f'RW {self.sectors} {extent_kind} "{self.extent}"',
            "",
            "# The Disk Data Base",
            'ddb.adapterType = "lsilogic"',
            f'ddb.uuid = "{self.disk_uuid}"',
            'ddb.virtualHWVersion = "21"',
            "",
        ]
        return "\n".join(lines)

    @classmethod
    def parse(cls, text: str, path: str) -> Descriptor:
        fields = dict(re.findall(r'^([A-Za-z.]+)\s*=\s*"?([^"\n]*)"?\s*$', text, re.M))
        extent = re.search(r'^RW (\d+) (VMFS|VMFSSPARSE) "([^"/]+)"\s*$', text, re.M)
        if "CID" not in fields or extent is None:
            raise CannotAccessFile(f"{path} is not a virtual disk descriptor vsim can read")
        parent = fields.get("parentFileNameHint", "")
        if (extent.group(2) == "VMFSSPARSE") != bool(parent):
            raise CannotAccessFile(f"{path}: a delta extent needs a parent, a flat one none")
        return cls(
            fields["CID"],
            fields.get("parentCID", NO_PARENT_CID),
            int(extent.group(1)),
            extent.group(3),
            parent,
            fields.get("ddb.uuid", ""),
        )


def new_cid(rng: random.Random) -> str:
    """A content id, from the writing host's rng (fs.rng)."""
    return random_hex(rng, 8)


def extent_path(descriptor_path: str, extent: str) -> str:
    directory, _ = parent_of(descriptor_path)
    return f"{directory}/{extent}" if directory else extent


def _stem(path: str) -> str:
    _, name = parent_of(path)
    if not name.endswith(".vmdk") or len(name) <= len(".vmdk"):
        raise InvalidArgument(f"a virtual disk's descriptor is named <name>.vmdk, not {name!r}")
    return name[: -len(".vmdk")]


async def read_descriptor(fs: DatastoreFiles, path: str) -> Descriptor:
    # Read-only opens share: a descriptor being read by one host stays readable by all.
    file = await fs.open(path, LockMode.READ_ONLY)
    try:
        size = await file.size()
        if size > 64 * 1024:
            raise CannotAccessFile(f"{path} is too large to be a disk descriptor")
        data = await file.read(0, size)
    finally:
        await file.close()
    try:
        return Descriptor.parse(data.decode(), path)
    except UnicodeDecodeError:
        raise CannotAccessFile(f"{path} is not a virtual disk descriptor") from None


async def create_disk(fs: DatastoreFiles, path: str, capacity_bytes: int) -> Descriptor:
    """A new thin flat disk: descriptor and an empty flat extent."""
    if not 0 < capacity_bytes <= MAX_DISK_BYTES or capacity_bytes % SECTOR:
        raise InvalidArgument(
            f"a disk is 1 sector to {MAX_DISK_BYTES} bytes in whole {SECTOR}-byte sectors, "
            f"got {capacity_bytes}"
        )
    stem = _stem(path)
    descriptor = Descriptor(
        new_cid(fs.rng),
        NO_PARENT_CID,
        capacity_bytes // SECTOR,
        f"{stem}-flat.vmdk",
        disk_uuid=str(random_uuid(fs.rng)),
    )
    await fs.create(extent_path(path, descriptor.extent))
    await write_whole(fs, path, descriptor.render().encode(), create=True)
    return descriptor


async def create_delta(fs: DatastoreFiles, path: str, parent: str) -> Descriptor:
    """A new delta disk over the disk whose descriptor is `parent`: the child sees the
    parent's content and keeps its own writes."""
    base = await read_descriptor(fs, parent)
    stem = _stem(path)
    descriptor = Descriptor(
        new_cid(fs.rng),
        base.cid,
        base.sectors,
        f"{stem}-delta.vmdk",
        parent,
        str(random_uuid(fs.rng)),
    )
    await write_whole(
        fs, extent_path(path, descriptor.extent), _header(base.sectors, 0), create=True
    )
    await write_whole(fs, path, descriptor.render().encode(), create=True)
    return descriptor


async def delete_disk(fs: DatastoreFiles, path: str) -> None:
    """Removes a disk's descriptor and extent (never its parent). What is gone
    already is skipped, so a delete cut short can be finished."""
    try:
        descriptor = await read_descriptor(fs, path)
    except FileNotFound:
        return
    with contextlib.suppress(FileNotFound):
        await fs.remove(extent_path(path, descriptor.extent))
    with contextlib.suppress(FileNotFound):
        await fs.remove(path)


async def delta_grains_used(fs: DatastoreFiles, path: str) -> int:
    """How many grains the delta disk `path` holds (0: it was never written)."""
    descriptor = await read_descriptor(fs, path)
    if not descriptor.is_delta:
        raise InvalidArgument(f"{path} is a flat disk, not a delta")
    extent = await fs.open(extent_path(path, descriptor.extent), LockMode.READ_ONLY)
    layer = _Layer(path, descriptor, extent)
    try:
        await layer.load()
    finally:
        await layer.extent.close()
    return layer.used


def _header(sectors: int, used: int) -> bytes:
    return _HEADER.pack(DELTA_MAGIC, sectors, GRAIN_SECTORS, used)


def _grains(sectors: int) -> int:
    return -(-sectors // GRAIN_SECTORS)


def _data_start(sectors: int) -> int:
    table_end = SECTOR + 4 * _grains(sectors)
    return -(-table_end // GRAIN) * GRAIN


class _Layer:
    """One opened link of a disk chain."""

    def __init__(self, path: str, descriptor: Descriptor, extent: DatastoreFile) -> None:
        self.path = path
        self.descriptor = descriptor
        self.extent = extent
        self.table: list[int] = []
        self.used = 0

    async def load(self) -> None:
        if not self.descriptor.is_delta:
            return
        header = await self.extent.read(0, _HEADER.size)
        magic, sectors, grain, used = _HEADER.unpack(header)
        if magic != DELTA_MAGIC or grain != GRAIN_SECTORS or sectors != self.descriptor.sectors:
            raise CannotAccessFile(f"{self.path}: the delta extent's header is damaged")
        count = _grains(sectors)
        raw = await self.extent.read(SECTOR, 4 * count)
        self.table = list(struct.unpack(f"<{count}I", raw))
        self.used = used


class VirtualDisk:
    """An open disk: its top layer opened in the VM's mode, every parent read-only.
    Reads and writes are in whole sectors."""

    def __init__(self, fs: DatastoreFiles, path: str, layers: list[_Layer]) -> None:
        self.fs = fs
        self.path = path
        self.layers = layers
        self._written = False
        self._closed = False

    @property
    def sectors(self) -> int:
        return self.layers[0].descriptor.sectors

    def _span(self, lba: int, sectors: int) -> None:
        if self._closed:
            raise InvalidState(f"{self.path} is closed")
        if lba < 0 or sectors < 0 or lba + sectors > self.sectors:
            raise InvalidArgument(
                f"sectors {lba}..{lba + sectors} are outside the {self.sectors}-sector disk"
            )

    def lock_lost(self) -> bool:
        """Whether the lock on its top layer is gone: another host may write it."""
        return self.layers[0].extent.lock_lost()

    def lock_in_doubt(self) -> bool:
        """Whether this host may no longer hold the lock on its top layer."""
        return self.layers[0].extent.lock_in_doubt()

    def abandon(self) -> None:
        """Dropped without closing (its VM killed for a lost lock)."""
        self._closed = True
        for layer in self.layers:
            layer.extent.abandon()

    @property
    def has_parent(self) -> bool:
        """A delta over other disks: blocks written by the VMs of the chain below may
        show through (or be copied up with a grain)."""
        return len(self.layers) > 1

    async def read(self, lba: int, sectors: int) -> bytes:
        self._span(lba, sectors)
        return await self._read(0, lba * SECTOR, sectors * SECTOR)

    async def _read(self, depth: int, offset: int, count: int) -> bytes:
        layer = self.layers[depth]
        if not layer.descriptor.is_delta:
            return await layer.extent.read(offset, count)
        out = bytearray()
        start = _data_start(layer.descriptor.sectors)
        while count > 0:
            grain, within = divmod(offset, GRAIN)
            length = min(count, GRAIN - within)
            slot = layer.table[grain]
            if slot:
                out += await layer.extent.read(start + (slot - 1) * GRAIN + within, length)
            else:
                out += await self._read(depth + 1, offset, length)
            offset += length
            count -= length
        return bytes(out)

    async def write(self, lba: int, data: bytes) -> None:
        if len(data) % SECTOR:
            raise InvalidArgument(f"writes are whole {SECTOR}-byte sectors, got {len(data)} bytes")
        self._span(lba, len(data) // SECTOR)
        top = self.layers[0]
        if top.extent.mode == LockMode.READ_ONLY:
            raise InvalidState(f"{self.path} is open read-only")
        if not self._written:
            await self._new_cid()
        offset = lba * SECTOR
        if not top.descriptor.is_delta:
            await top.extent.write(offset, data)
            return
        start = _data_start(top.descriptor.sectors)
        done = 0
        while done < len(data):
            grain, within = divmod(offset + done, GRAIN)
            length = min(len(data) - done, GRAIN - within)
            piece = data[done : done + length]
            slot = top.table[grain]
            if slot:
                await top.extent.write(start + (slot - 1) * GRAIN + within, piece)
            else:
                whole = bytearray(await self._read(1, grain * GRAIN, GRAIN))
                whole[within : within + length] = piece
                slot = top.used + 1
                await top.extent.write(start + (slot - 1) * GRAIN, bytes(whole))
                top.used = slot
                await top.extent.write(0, _header(top.descriptor.sectors, slot))
                await top.extent.write(SECTOR + 4 * grain, struct.pack("<I", slot))
                top.table[grain] = slot
            done += length

    async def _new_cid(self) -> None:
        """The first write after an open gives the disk a new CID, so deltas made over
        its old content would notice (none can be: parents are read-only)."""
        top = self.layers[0]
        descriptor = replace(top.descriptor, cid=new_cid(self.fs.rng))
        # The descriptor is only read by others, briefly: its lock is waited for.
        await write_whole(self.fs, self.path, descriptor.render().encode())
        top.descriptor = descriptor
        self._written = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await close_all(layer.extent for layer in self.layers)


async def open_disk(
    fs: DatastoreFiles, path: str, mode: LockMode = LockMode.EXCLUSIVE, max_chain: int = 255
) -> VirtualDisk:
    """Opens a disk and its parents: the top's extent in mode, each parent's
    read-only. FileLocked if another host holds a conflicting lock on any of them."""
    layers: list[_Layer] = []
    try:
        current, want = path, mode
        child: Descriptor | None = None
        while current:
            if len(layers) >= max_chain:
                raise CannotAccessFile(f"{path}: the chain of parents is longer than {max_chain}")
            descriptor = await read_descriptor(fs, current)
            if child is not None and child.parent_cid != descriptor.cid:
                raise CannotAccessFile(
                    f"the parent {current} of {layers[-1].path} was changed after the child "
                    "was made (CID mismatch)"
                )
            extent = await fs.open(extent_path(current, descriptor.extent), want)
            layer = _Layer(current, descriptor, extent)
            layers.append(layer)
            await layer.load()
            child, current, want = descriptor, descriptor.parent, LockMode.READ_ONLY
    except BaseException:
        with contextlib.suppress(Exception):  # the open failed: release what it took
            await close_all(layer.extent for layer in layers)
        raise
    return VirtualDisk(fs, path, layers)
