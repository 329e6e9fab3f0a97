"""The on-disk layout of a vsim VMFS volume: every byte's place, in one module.

VMFS keeps its locks on the LUN itself; hosts coordinate only through these sectors
(no lock server). All integers are little-endian. Each structure is one 512-byte
sector, so COMPARE AND WRITE (ATS) can swap it whole.

    LBA 0                       superblock
    LBA 1 .. 1+H-1              heartbeat region: H slots, one per mounting host
    LBA 1+H .. 1+H+L-1          lock records: L locks, one sector each
    next L sectors              file descriptors: descriptor i is guarded by lock i
    next B sectors              block allocation bitmap (4,096 file blocks a sector)
    file block D onwards        file data, in file blocks of the superblock's size

File blocks below D hold the metadata and are marked used in the bitmap at format
time, so block address 0 never names file data and can mean "no block".

Superblock (LBA 0):
    0   8   magic b"VSIMVMFS"
    8   4   version (2)
    12  16  volume UUID
    28  64  label, UTF-8, NUL-padded
    92  4   file block size in bytes (a power of two, 4 KiB .. 1 MiB)
    96  1   lock mode: 1 = ats-only, 2 = ats+scsi
    97  4   heartbeat slots H
    101 4   lock records L (and file descriptors)
    105 4   file blocks N on the volume
    109 4   first data block D

Heartbeat slot (one sector):
    0   2   magic b"HB"
    2   1   state: 0 free, 1 in use, 2 being replayed
    3   8   generation: +1 each time the slot is cleared by another host
    11  16  owner host UUID (zeros when free)
    27  8   heartbeat counter: +1 at every heartbeat (every 3 s)
    35  8   owner's clock at the last heartbeat (float64 seconds; for people only:
            liveness is judged by the counter changing, never by another host's clock)

Lock record (one sector):
    0   2   magic b"LK"
    2   1   mode: 0 free, 1 exclusive, 2 read-only, 3 multi-writer
    3   8   lock generation: +1 at every change of owner
    11  1   number of owners n (1 for exclusive; up to 8 shared)
    12  n*28 owners: host UUID (16), heartbeat slot index (4), slot generation (8)
    236 2   length of the locked file's path, then the path (UTF-8, at most 256 bytes)

File descriptor (one sector; descriptor 0 is the root directory "/"):
    0   2   magic b"FD"
    2   1   type: 0 free, 1 file, 2 directory
    3   8   generation: +1 at every change
    11  8   file size in bytes
    19  4   indirect pointer block: a file block of 4-byte block addresses for the
            file blocks after the direct ones (0: none yet)
    23  192 48 direct block addresses, one per file block (0: a hole, reads as zeros)
    236 2   length of the path, then the path (UTF-8, at most 256 bytes): the file's
            full path from the volume root, without a leading "/"

Files are thin: a file block gets a volume block at its first write. A pointer is set
with one atomic sector update, so two writers racing for the same hole both end up
using the block that won.

Allocation bitmap: bit b of byte j of bitmap sector s (least significant bit first)
is file block s*4096 + 8*j + b; 1 = in use.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass, field, replace

SECTOR = 512
MAGIC = b"VSIMVMFS"
VERSION = 2
SUPERBLOCK_LBA = 0
HEARTBEAT_SLOTS = 64
LOCK_RECORDS = 1024
MAX_SHARED_OWNERS = 8
MAX_PATH = 256
DIRECT_POINTERS = 48
BLOCKS_PER_BITMAP_SECTOR = SECTOR * 8
MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 1024 * 1024
"""One block is one SCSI transfer at most (the array moves 1 MiB a command)."""


class LockMode(enum.IntEnum):
    FREE = 0
    EXCLUSIVE = 1
    READ_ONLY = 2
    MULTI_WRITER = 3


class VolumeLockMode(enum.IntEnum):
    """How metadata changes are made atomic: ATS alone, or SCSI-2 reservations."""

    ATS_ONLY = 1
    ATS_SCSI = 2


class SlotState(enum.IntEnum):
    FREE = 0
    IN_USE = 1
    REPLAYING = 2


def _pad(data: bytes) -> bytes:
    if len(data) > SECTOR:
        raise ValueError(f"{len(data)} bytes do not fit one sector")
    return data + bytes(SECTOR - len(data))


PATH_AT = 236
"""Where lock records and file descriptors keep their path: a 2-byte length, then the
UTF-8 bytes (at most MAX_PATH)."""


def _with_path(head: bytes, path: str) -> bytes:
    """A sector: head, then path at PATH_AT."""
    raw = path.encode()
    if len(raw) > MAX_PATH:
        raise ValueError(f"a path is at most {MAX_PATH} bytes")
    return _pad(head.ljust(PATH_AT, b"\0") + struct.pack("<H", len(raw)) + raw)


def _path_of(sector: bytes) -> str:
    (length,) = struct.unpack_from("<H", sector, PATH_AT)
    return sector[PATH_AT + 2 : PATH_AT + 2 + min(length, MAX_PATH)].decode()


@dataclass(frozen=True)
class Superblock:
    uuid: uuid.UUID
    label: str
    block_size: int
    lock_mode: VolumeLockMode
    heartbeat_slots: int = HEARTBEAT_SLOTS
    lock_records: int = LOCK_RECORDS
    blocks: int = 0
    """File blocks on the volume (its capacity in block_size units)."""
    first_data_block: int = 0

    _FORMAT = struct.Struct("<8sI16s64sIBIIII")

    @classmethod
    def for_capacity(
        cls,
        volume_uuid: uuid.UUID,
        label: str,
        block_size: int,
        lock_mode: VolumeLockMode,
        capacity: int,
    ) -> Superblock:
        """The superblock of a new volume on a LUN of `capacity` bytes; ValueError
        when the block size is not allowed or the LUN cannot hold the metadata."""
        if not (
            MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE and block_size & (block_size - 1) == 0
        ):
            raise ValueError(
                f"the file block size must be a power of two from {MIN_BLOCK_SIZE} to "
                f"{MAX_BLOCK_SIZE} bytes, got {block_size}"
            )
        blocks = capacity // block_size
        draft = cls(volume_uuid, label, block_size, lock_mode, blocks=blocks)
        first = -(-draft.metadata_sectors * SECTOR // block_size)
        if blocks < first + 1:
            raise ValueError(
                f"a LUN of {capacity} bytes cannot hold a VMFS volume with {block_size}-byte "
                f"blocks: its metadata alone takes {first * block_size} bytes"
            )
        return replace(draft, first_data_block=first)

    def pack(self) -> bytes:
        return _pad(
            self._FORMAT.pack(
                MAGIC,
                VERSION,
                self.uuid.bytes,
                self.label.encode()[:64],
                self.block_size,
                self.lock_mode,
                self.heartbeat_slots,
                self.lock_records,
                self.blocks,
                self.first_data_block,
            )
        )

    @classmethod
    def unpack(cls, sector: bytes) -> Superblock:
        magic, version, raw_uuid, label, block_size, mode, slots, locks, blocks, first = (
            cls._FORMAT.unpack_from(sector)
        )
        if magic != MAGIC:
            raise ValueError("no vsim VMFS volume here (bad superblock magic)")
        if version != VERSION:
            raise ValueError(
                f"the volume has on-disk version {version}; this vsim reads version {VERSION} "
                "(format the LUN again)"
            )
        return cls(
            uuid.UUID(bytes=raw_uuid),
            label.rstrip(b"\0").decode(),
            block_size,
            VolumeLockMode(mode),
            slots,
            locks,
            blocks,
            first,
        )

    def heartbeat_lba(self, slot: int) -> int:
        return 1 + slot

    def lock_lba(self, index: int) -> int:
        return 1 + self.heartbeat_slots + index

    def descriptor_lba(self, index: int) -> int:
        return 1 + self.heartbeat_slots + self.lock_records + index

    def bitmap_lba(self, sector: int = 0) -> int:
        return self.descriptor_lba(self.lock_records) + sector

    @property
    def bitmap_sectors(self) -> int:
        return -(-self.blocks // BLOCKS_PER_BITMAP_SECTOR)

    @property
    def metadata_sectors(self) -> int:
        """Sectors of metadata (superblock, heartbeats, locks, descriptors, bitmap)."""
        return self.bitmap_lba(self.bitmap_sectors)

    def block_lba(self, block: int) -> int:
        return block * (self.block_size // SECTOR)

    @property
    def pointers_per_block(self) -> int:
        return self.block_size // 4

    @property
    def max_file_size(self) -> int:
        return (DIRECT_POINTERS + self.pointers_per_block) * self.block_size


@dataclass(frozen=True)
class HeartbeatSlot:
    state: SlotState = SlotState.FREE
    generation: int = 0
    owner: uuid.UUID = uuid.UUID(int=0)
    counter: int = 0
    owner_clock: float = 0.0

    _FORMAT = struct.Struct("<2sBQ16sQd")

    def pack(self) -> bytes:
        return _pad(
            self._FORMAT.pack(
                b"HB", self.state, self.generation, self.owner.bytes, self.counter, self.owner_clock
            )
        )

    @classmethod
    def unpack(cls, sector: bytes) -> HeartbeatSlot:
        if sector[:2] != b"HB":
            return cls()  # never written: free
        _, state, generation, owner, counter, clock = cls._FORMAT.unpack_from(sector)
        return cls(SlotState(state), generation, uuid.UUID(bytes=owner), counter, clock)


@dataclass(frozen=True)
class LockOwner:
    host: uuid.UUID
    slot: int
    slot_generation: int


@dataclass(frozen=True)
class LockRecord:
    mode: LockMode = LockMode.FREE
    generation: int = 0
    owners: tuple[LockOwner, ...] = field(default_factory=tuple)
    path: str = ""

    _HEAD = struct.Struct("<2sBQB")
    _OWNER = struct.Struct("<16sIQ")

    def pack(self) -> bytes:
        if len(self.owners) > MAX_SHARED_OWNERS:
            raise ValueError(f"a lock has at most {MAX_SHARED_OWNERS} owners")
        head = self._HEAD.pack(b"LK", self.mode, self.generation, len(self.owners))
        owners = b"".join(
            self._OWNER.pack(o.host.bytes, o.slot, o.slot_generation) for o in self.owners
        )
        return _with_path(head + owners, self.path)

    @classmethod
    def unpack(cls, sector: bytes) -> LockRecord:
        if sector[:2] != b"LK":
            return cls()
        _, mode, generation, n = cls._HEAD.unpack_from(sector)
        owners = tuple(
            LockOwner(uuid.UUID(bytes=h), slot, gen)
            for h, slot, gen in (
                cls._OWNER.unpack_from(sector, cls._HEAD.size + i * cls._OWNER.size)
                for i in range(min(n, MAX_SHARED_OWNERS))
            )
        )
        return cls(LockMode(mode), generation, owners, _path_of(sector))


class FileType(enum.IntEnum):
    FREE = 0
    FILE = 1
    DIRECTORY = 2


@dataclass(frozen=True)
class FileDescriptor:
    type: FileType = FileType.FREE
    generation: int = 0
    size: int = 0
    indirect: int = 0
    direct: tuple[int, ...] = (0,) * DIRECT_POINTERS
    path: str = ""

    _HEAD = struct.Struct(f"<2sBQQI{DIRECT_POINTERS}I")

    def pack(self) -> bytes:
        head = self._HEAD.pack(
            b"FD", self.type, self.generation, self.size, self.indirect, *self.direct
        )
        return _with_path(head, self.path)

    @classmethod
    def unpack(cls, sector: bytes) -> FileDescriptor:
        if sector[:2] != b"FD":
            return cls()
        _, kind, generation, size, indirect, *direct = cls._HEAD.unpack_from(sector)
        return cls(FileType(kind), generation, size, indirect, tuple(direct), _path_of(sector))


def bitmap_bit(block: int) -> tuple[int, int, int]:
    """(bitmap sector, byte in it, bit in the byte) of a file block."""
    sector, within = divmod(block, BLOCKS_PER_BITMAP_SECTOR)
    return sector, within // 8, within % 8
