"""Files on a VMFS volume: descriptors, the allocation bitmap and thin file blocks,
laid out as `vsim.storage.vmfs_format` documents.

Every metadata change is one atomic sector update through the volume (ATS, or a
write under a SCSI-2 reservation): claiming a descriptor, setting a bitmap bit,
setting a block pointer. Creating or removing a name holds the parent directory's
on-disk lock meanwhile, so two hosts cannot create one path twice. Opening a file
takes its descriptor's lock (exclusive, read-only or multi-writer); data then goes
straight to the file's blocks on the LUN.

Crash safety comes from the order of updates: a block is marked in use before any
pointer names it, and a descriptor is freed before its blocks are, so a crash can
leak blocks but never give one block to two files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import struct
from collections.abc import AsyncIterator
from dataclasses import replace

from vsim.faults import (
    CannotAccessFile,
    FileAlreadyExists,
    FileNotFound,
    FileTooLarge,
    InvalidArgument,
    InvalidState,
    NoDiskSpace,
)
from vsim.host.storage.datastore_files import (
    SHORT_HOLD_WAIT,
    FileInfo,
    SharedLocks,
    check_span,
    parent_of,
    split_path,
    wait_out_short_holds,
)
from vsim.host.storage.vmfs import VmfsVolume
from vsim.storage.vmfs_format import (
    BLOCKS_PER_BITMAP_SECTOR,
    DIRECT_POINTERS,
    SECTOR,
    FileDescriptor,
    FileType,
    LockMode,
    Superblock,
    bitmap_bit,
)

DIR_LOCK_WAIT = SHORT_HOLD_WAIT
"""Seconds to wait for another host's short hold of a directory's lock (it creates or
removes a name there) before reporting FileLocked."""
POINTERS_PER_SECTOR = SECTOR // 4


_unpack_descriptor = functools.lru_cache(maxsize=4096)(FileDescriptor.unpack)
"""Descriptors are immutable and most sectors read again are unchanged (the whole
region is read to list or find files): each distinct sector is parsed once."""


class VmfsFileSystem:
    def __init__(self, volume: VmfsVolume) -> None:
        self.volume = volume
        self.clock = volume.clock
        self.rng = volume.rng
        self._index: dict[str, int] = {"": 0}
        """path -> descriptor index, checked against the descriptor on every use."""
        self._dir_guards: dict[int, asyncio.Lock] = {}
        self._opens = SharedLocks()  # keyed by descriptor index

    @property
    def sb(self) -> Superblock:
        return self.volume.mounted()

    # descriptors

    async def _descriptor(self, index: int) -> tuple[bytes, FileDescriptor]:
        sector = await self.volume.io(self.volume.device.read, self.sb.descriptor_lba(index), 1)
        return sector, self._parse(sector)

    @staticmethod
    def _parse(sector: bytes) -> FileDescriptor:
        try:
            return _unpack_descriptor(sector)
        except (ValueError, UnicodeDecodeError, struct.error) as e:
            raise CannotAccessFile(f"a file descriptor on the volume is damaged: {e}") from None

    async def _region(self) -> list[tuple[int, bytes, FileDescriptor]]:
        """Every descriptor, free ones too, in one read (and the path index refreshed)."""
        sb = self.sb
        region = await self.volume.io(
            self.volume.device.read, sb.descriptor_lba(0), sb.lock_records
        )
        out = []
        for index in range(sb.lock_records):
            sector = region[index * SECTOR : (index + 1) * SECTOR]
            descriptor = self._parse(sector)
            out.append((index, sector, descriptor))
            if descriptor.type != FileType.FREE:
                self._index[descriptor.path] = index
        return out

    async def _all(self) -> list[tuple[int, bytes, FileDescriptor]]:
        """The descriptors in use."""
        return [entry for entry in await self._region() if entry[2].type != FileType.FREE]

    async def _find(self, path: str) -> tuple[int, bytes, FileDescriptor] | None:
        index = self._index.get(path)
        if index is not None:
            sector, descriptor = await self._descriptor(index)
            if descriptor.type != FileType.FREE and descriptor.path == path:
                return index, sector, descriptor
            del self._index[path]
        for index, sector, descriptor in await self._all():
            if descriptor.path == path:
                return index, sector, descriptor
        return None

    async def lock_index(self, path: str) -> int | None:
        """The lock record guarding a file (its descriptor's index), or None when
        there is no such file."""
        split_path(path)
        found = await self._find(path)
        return None if found is None else found[0]

    async def _lookup(self, path: str) -> tuple[int, bytes, FileDescriptor]:
        found = await self._find(path)
        if found is None:
            raise FileNotFound(f"{path or '/'} does not exist on {self.sb.label}")
        return found

    async def stat(self, path: str) -> FileInfo:
        if path:
            split_path(path)
        _, _, descriptor = await self._lookup(path)
        return self._info(descriptor)

    @staticmethod
    def _info(descriptor: FileDescriptor) -> FileInfo:
        kind = "dir" if descriptor.type == FileType.DIRECTORY else "file"
        return FileInfo(descriptor.path, kind, descriptor.size)

    async def listdir(self, path: str) -> list[FileInfo]:
        if path:
            split_path(path)
        _, _, directory = await self._lookup(path)
        if directory.type != FileType.DIRECTORY:
            raise InvalidArgument(f"{path} is not a directory")
        return sorted(
            (self._info(d) for _, _, d in await self._all() if d.path and _parent(d.path) == path),
            key=lambda info: info.path,
        )

    # names

    @contextlib.asynccontextmanager
    async def _directory_locked(self, path: str) -> AsyncIterator[int]:
        """Holds a directory's on-disk lock (and, within this host, its guard) while
        a name in it is created or removed."""
        index, _, directory = await self._lookup(path)
        if directory.type != FileType.DIRECTORY:
            raise InvalidArgument(f"{path} is not a directory")
        guard = self._dir_guards.setdefault(index, asyncio.Lock())
        async with guard:
            await wait_out_short_holds(
                self.clock,
                self.rng,
                lambda: self.volume.lock(index, path or "/", LockMode.EXCLUSIVE),
                DIR_LOCK_WAIT,
            )
            try:
                # It may have been removed while this host waited for its lock.
                _, now = await self._descriptor(index)
                if now.type != FileType.DIRECTORY or now.path != directory.path:
                    raise FileNotFound(f"{path or '/'} does not exist on {self.sb.label}")
                yield index
            finally:
                await self.volume.unlock(index)

    async def mkdir(self, path: str) -> None:
        await self._create(path, FileType.DIRECTORY)

    async def create(self, path: str) -> None:
        await self._create(path, FileType.FILE)

    async def _create(self, path: str, kind: FileType) -> None:
        split_path(path)
        parent, _ = parent_of(path)
        async with self._directory_locked(parent):
            while True:
                # One read of the descriptors answers both: is the name taken, and
                # which descriptor is free.
                region = await self._region()
                if any(d.type != FileType.FREE and d.path == path for _, _, d in region):
                    raise FileAlreadyExists(f"{path} already exists on {self.sb.label}")
                free = self._free_descriptor(region)
                if free is None:
                    raise NoDiskSpace(
                        f"{self.sb.label} has no free file descriptor "
                        f"(it holds at most {self.sb.lock_records - 1} files)"
                    )
                index, sector, old = free
                new = FileDescriptor(kind, old.generation + 1, path=path)
                if await self.volume.swap(self.sb.descriptor_lba(index), sector, new.pack()):
                    self._index[path] = index
                    return

    def _free_descriptor(
        self, region: list[tuple[int, bytes, FileDescriptor]]
    ) -> tuple[int, bytes, FileDescriptor] | None:
        # Hosts start looking at different places, so they rarely race for one.
        count = len(region) - 1  # descriptor 0 is the root
        start = self.volume.host.int % count
        for step in range(count):
            entry = region[1 + (start + step) % count]
            if entry[2].type == FileType.FREE:
                return entry
        return None

    async def remove(self, path: str) -> None:
        split_path(path)
        parent, _ = parent_of(path)
        async with self._directory_locked(parent):
            index, _, descriptor = await self._lookup(path)
            await self.volume.lock(index, path, LockMode.EXCLUSIVE)  # FileLocked if open
            try:
                # Checked under the directory's own lock: no create can slip in now.
                if descriptor.type == FileType.DIRECTORY and any(
                    _parent(d.path) == path for _, _, d in await self._all()
                ):
                    raise InvalidState(f"directory {path} is not empty")
                while True:
                    sector, descriptor = await self._descriptor(index)
                    freed = FileDescriptor(FileType.FREE, descriptor.generation + 1)
                    if await self.volume.swap(self.sb.descriptor_lba(index), sector, freed.pack()):
                        break
                self._index.pop(path, None)
                await self._free_blocks(await self._blocks_of(descriptor))
            finally:
                await self.volume.unlock(index)

    async def _blocks_of(self, descriptor: FileDescriptor) -> list[int]:
        blocks = [b for b in descriptor.direct if b]
        if descriptor.indirect:
            sb = self.sb
            table = await self.volume.io(
                self.volume.device.read, sb.block_lba(descriptor.indirect), sb.block_size // SECTOR
            )
            blocks += [b for b in struct.unpack(f"<{len(table) // 4}I", table) if b]
            blocks.append(descriptor.indirect)
        return blocks

    # the allocation bitmap

    async def allocate(self) -> int:
        """A free file block, now marked in use."""
        sb = self.sb
        start = self.volume.host.int % sb.bitmap_sectors
        for step in range(sb.bitmap_sectors):
            index = (start + step) % sb.bitmap_sectors
            while True:
                sector = await self.volume.io(self.volume.device.read, sb.bitmap_lba(index), 1)
                block = _first_clear(sector, index, sb.blocks)
                if block is None:
                    break
                _, byte, bit = bitmap_bit(block)
                taken = bytearray(sector)
                taken[byte] |= 1 << bit
                if await self.volume.swap(sb.bitmap_lba(index), sector, bytes(taken)):
                    self.volume.stats["blocks_allocated"] += 1
                    return block
        raise NoDiskSpace(f"{sb.label} is full")

    async def _free_blocks(self, blocks: list[int]) -> None:
        by_sector: dict[int, list[int]] = {}
        for block in blocks:
            by_sector.setdefault(bitmap_bit(block)[0], []).append(block)
        sb = self.sb
        for index, members in by_sector.items():
            while True:
                sector = await self.volume.io(self.volume.device.read, sb.bitmap_lba(index), 1)
                cleared = bytearray(sector)
                for block in members:
                    _, byte, bit = bitmap_bit(block)
                    cleared[byte] &= ~(1 << bit) & 0xFF
                if await self.volume.swap(sb.bitmap_lba(index), sector, bytes(cleared)):
                    break

    async def free_bytes(self) -> int:
        sb = self.sb
        bitmap = await self.volume.io(self.volume.device.read, sb.bitmap_lba(), sb.bitmap_sectors)
        used = int.from_bytes(bitmap, "little").bit_count()
        return (sb.blocks - used) * sb.block_size

    # open files

    async def open(self, path: str, mode: LockMode = LockMode.EXCLUSIVE) -> VmfsFile:
        split_path(path)
        if mode == LockMode.FREE:
            raise InvalidArgument("open a file exclusive, read-only or multi-writer")
        index, _, descriptor = await self._lookup(path)
        if descriptor.type != FileType.FILE:
            raise InvalidArgument(f"{path} is a directory")
        opened: list[bytes] = []

        async def still_there() -> None:  # it may be removed between lookup and lock
            sector, descriptor = await self._descriptor(index)
            if descriptor.type != FileType.FILE or descriptor.path != path:
                raise FileNotFound(f"{path} does not exist on {self.sb.label}")
            opened.append(sector)

        await self._opens.open(
            index,
            mode,
            lambda: self.volume.lock(index, path, mode),
            lambda: self.volume.unlock(index),
            still_there,
        )
        return VmfsFile(self, index, path, mode, opened[0])

    async def release(self, index: int) -> None:
        """Drops one open's hold on a file's lock; the lock goes with the last one."""
        await self._opens.close(index, lambda: self.volume.unlock(index))


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _first_clear(sector: bytes, index: int, blocks: int) -> int | None:
    """The first 0 bit of bitmap sector `index` naming a block below `blocks`."""
    for byte_at, byte in enumerate(sector):
        if byte != 0xFF:
            bit = (~byte & (byte + 1)).bit_length() - 1
            block = index * BLOCKS_PER_BITMAP_SECTOR + byte_at * 8 + bit
            return block if block < blocks else None
    return None


class VmfsFile:
    """An open file. Reads and writes go to the file's blocks; a hole gets a block at
    its first write (thin provisioning). All I/O stops once the volume is lost."""

    def __init__(
        self, fs: VmfsFileSystem, index: int, path: str, mode: LockMode, sector: bytes
    ) -> None:
        self.fs = fs
        self.volume = fs.volume
        self.index = index
        self.path = path
        self.mode = mode
        self._sector = sector
        self._descriptor = FileDescriptor.unpack(sector)
        self._pointer_sectors: dict[int, bytes] = {}
        self._closed = False

    def lock_lost(self) -> bool:
        """Whether another host has cleared this host's heartbeat slot, breaking
        every lock it held on the volume."""
        return self.volume.slot_cleared

    def abandon(self) -> None:
        """The file is dropped unclosed (its VM killed after another host broke its
        locks): nothing of it is this host's any more."""
        self._closed = True

    def lock_in_doubt(self) -> bool:
        """Whether this host may have lost the lock: its volume is lost (its heartbeat
        too old, so others may break its locks) or its slot was cleared."""
        return self.volume.access_in_doubt()

    def _check(self, writing: bool = False) -> Superblock:
        if self._closed:
            raise InvalidState(f"{self.path} is closed")
        if writing and self.mode == LockMode.READ_ONLY:
            raise InvalidState(f"{self.path} is open read-only")
        return self.volume.mounted()

    async def size(self) -> int:
        self._check()
        if self.mode == LockMode.MULTI_WRITER:
            await self._reload()
        return self._descriptor.size

    async def _reload(self) -> None:
        self._sector, self._descriptor = await self.fs._descriptor(self.index)
        self._pointer_sectors.clear()

    async def _update(self, change) -> None:
        """Applies change(descriptor) -> descriptor atomically, re-reading on a race
        (another multi-writer host changed the descriptor first)."""
        sb = self.volume.mounted()
        while True:
            new = change(self._descriptor)
            if new == self._descriptor:
                return
            new = replace(new, generation=self._descriptor.generation + 1)
            if await self.volume.swap(sb.descriptor_lba(self.index), self._sector, new.pack()):
                self._sector, self._descriptor = new.pack(), new
                return
            await self._reload()

    # block pointers

    def _pointer_location(self, file_block: int) -> tuple[int, int]:
        """(LBA of the pointer sector, entry in it) for a file block past the direct
        pointers."""
        sb = self.volume.mounted()
        slot = file_block - DIRECT_POINTERS
        return (
            sb.block_lba(self._descriptor.indirect) + slot // POINTERS_PER_SECTOR,
            slot % POINTERS_PER_SECTOR,
        )

    async def _pointer(self, file_block: int) -> int:
        if file_block < DIRECT_POINTERS:
            return self._descriptor.direct[file_block]
        sb = self.volume.mounted()
        if not self._descriptor.indirect or file_block >= DIRECT_POINTERS + sb.pointers_per_block:
            return 0  # no block can be there: reads as zeros
        lba, entry = self._pointer_location(file_block)
        if lba not in self._pointer_sectors:
            self._pointer_sectors[lba] = await self.volume.io(self.volume.device.read, lba, 1)
        return struct.unpack_from("<I", self._pointer_sectors[lba], entry * 4)[0]

    async def _set_pointer(self, file_block: int, block: int) -> int:
        """Points file_block at block unless it got one meanwhile; returns the block
        the file now uses there."""
        if file_block < DIRECT_POINTERS:

            def point(d: FileDescriptor) -> FileDescriptor:
                if d.direct[file_block]:
                    return d
                direct = list(d.direct)
                direct[file_block] = block
                return replace(d, direct=tuple(direct))

            await self._update(point)
            return self._descriptor.direct[file_block]
        if not self._descriptor.indirect:
            await self._add_indirect()
        lba, entry = self._pointer_location(file_block)
        while True:
            sector = self._pointer_sectors.get(lba) or await self.volume.io(
                self.volume.device.read, lba, 1
            )
            current = struct.unpack_from("<I", sector, entry * 4)[0]
            if current:
                self._pointer_sectors[lba] = sector
                return current
            new = bytearray(sector)
            struct.pack_into("<I", new, entry * 4, block)
            if await self.volume.swap(lba, sector, bytes(new)):
                self._pointer_sectors[lba] = bytes(new)
                return block
            self._pointer_sectors.pop(lba, None)

    async def _add_indirect(self) -> None:
        sb = self.volume.mounted()
        block = await self.fs.allocate()
        await self.volume.io(self.volume.device.write, sb.block_lba(block), bytes(sb.block_size))
        await self._update(lambda d: d if d.indirect else replace(d, indirect=block))
        if self._descriptor.indirect != block:
            await self.fs._free_blocks([block])  # another writer added one first

    # data

    async def read(self, offset: int, count: int) -> bytes:
        sb = self._check()
        check_span(offset, count)
        if self.mode == LockMode.MULTI_WRITER:
            await self._reload()
        out = bytearray()
        for file_block, start, length in _pieces(offset, count, sb.block_size):
            block = await self._pointer(file_block)
            if not block:
                out += bytes(length)
                continue
            first = start // SECTOR
            last = -(-(start + length) // SECTOR)
            data = await self.volume.io(
                self.volume.device.read, sb.block_lba(block) + first, last - first
            )
            skip = start - first * SECTOR
            out += data[skip : skip + length]
        return bytes(out)

    async def write(self, offset: int, data: bytes) -> None:
        sb = self._check(writing=True)
        check_span(offset, len(data))
        if offset + len(data) > sb.max_file_size:
            raise FileTooLarge(
                f"a file on {sb.label} is at most {sb.max_file_size} bytes "
                f"({sb.block_size}-byte blocks)"
            )
        if not data:
            return
        done = 0
        for file_block, start, length in _pieces(offset, len(data), sb.block_size):
            piece = data[done : done + length]
            done += length
            block = await self._pointer(file_block)
            if not block:
                block = await self._fill_hole(file_block, start, piece)
                if block is None:
                    continue  # the new block was written whole with this piece
            await self._write_in_block(block, start, piece)
        if offset + len(data) > self._descriptor.size:
            end = offset + len(data)
            await self._update(lambda d: d if d.size >= end else replace(d, size=end))

    async def _fill_hole(self, file_block: int, start: int, piece: bytes) -> int | None:
        """Gives a hole a block written with piece (zeros elsewhere). Returns None when
        done, or the block another writer put there first (piece not yet written)."""
        sb = self.volume.mounted()
        block = await self.fs.allocate()
        whole = bytearray(sb.block_size)
        whole[start : start + len(piece)] = piece
        try:
            await self.volume.io(self.volume.device.write, sb.block_lba(block), bytes(whole))
            used = await self._set_pointer(file_block, block)
        except BaseException:
            # The pointer update may have landed even so (a lost reply): give the block
            # back only if the file does not name it. If that cannot be read, leak it.
            with contextlib.suppress(Exception):
                await self._reload()
                if await self._pointer(file_block) != block:
                    await self.fs._free_blocks([block])
            raise
        if used == block:
            return None
        await self.fs._free_blocks([block])
        return used

    async def _write_in_block(self, block: int, start: int, piece: bytes) -> None:
        sb = self.volume.mounted()
        first = start // SECTOR
        last = -(-(start + len(piece)) // SECTOR)
        lba = sb.block_lba(block) + first
        skip = start - first * SECTOR
        if skip or len(piece) % SECTOR:
            # Partial sectors: read, merge, write back.
            buffer = bytearray(await self.volume.io(self.volume.device.read, lba, last - first))
            buffer[skip : skip + len(piece)] = piece
            piece = bytes(buffer)
        await self.volume.io(self.volume.device.write, lba, piece)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A lost volume's locks are broken by others, not released from here.
        with contextlib.suppress(CannotAccessFile):
            await self.fs.release(self.index)


def _pieces(offset: int, count: int, block_size: int) -> list[tuple[int, int, int]]:
    """(file block, offset in it, length) covering count bytes from offset."""
    out = []
    while count > 0:
        file_block, start = divmod(offset, block_size)
        length = min(count, block_size - start)
        out.append((file_block, start, length))
        offset += length
        count -= length
    return out
