"""The simulated guest's disk writes: 4 KiB blocks that prove themselves, and the
check that reads them back.

Each block carries a header (below) and a payload derived from the VM's UUID and the
sequence number, with a checksum over both. Write n goes to block (n - 1) mod
`blocks` of the guest's write area at the start of the first disk.
`verify_guest_disk` reads the area back: every block must be zero (never written) or
a valid write of this VM's, and no block may be older than the last acknowledged
write to it. The VMX (host/vm/vmx.py) issues the writes and decides what is
acknowledged.

Guest block header (little-endian):
    0   8   magic b"VSIMGW01"
    8   16  VM UUID
    24  8   sequence number (from 1)
    32  8   block number in the write area
    40  16  BLAKE2b-128 of bytes 0..40 and the payload
    56  ... payload, to 4096 bytes

Never does: write (it builds blocks and reads them back), or keep state.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass

from vsim.host.storage.vmdk import VirtualDisk
from vsim.storage.vmfs_format import SECTOR

GUEST_BLOCK = 4096
GUEST_AREA_BLOCKS = 256
"""The guest's write area: 256 blocks (1 MiB) at the start of its first disk."""
MAGIC = b"VSIMGW01"
_HEAD = struct.Struct("<8s16sQQ")
_SUM_AT = _HEAD.size
_PAYLOAD_AT = _SUM_AT + 16


def area_blocks(disk_sectors: int) -> int:
    return min(GUEST_AREA_BLOCKS, disk_sectors * SECTOR // GUEST_BLOCK)


def guest_block(vm_uuid: uuid.UUID, seq: int, block: int) -> bytes:
    head = _HEAD.pack(MAGIC, vm_uuid.bytes, seq, block)
    payload = hashlib.shake_128(vm_uuid.bytes + seq.to_bytes(8, "little")).digest(
        GUEST_BLOCK - _PAYLOAD_AT
    )
    checksum = hashlib.blake2b(head + payload, digest_size=16).digest()
    return head + checksum + payload


def read_guest_block(
    data: bytes, vm_uuid: uuid.UUID, block: int, inherited: bool = False
) -> int | None:
    """The sequence number of a valid guest write of this VM's to this block; 0 for a
    block never written (all zeros), or, when `inherited` (the block comes from a
    linked clone's chain, where the copy-on-write of a grain also carries the parent's
    neighbouring blocks), for a valid write of another VM's; None for anything else
    (corrupt)."""
    if not any(data):
        return 0
    magic, owner, seq, where = _HEAD.unpack_from(data)
    checksum = hashlib.blake2b(data[:_SUM_AT] + data[_PAYLOAD_AT:], digest_size=16).digest()
    if magic != MAGIC or where != block or checksum != data[_SUM_AT:_PAYLOAD_AT] or seq < 1:
        return None
    if owner != vm_uuid.bytes:
        return 0 if inherited else None
    return seq


@dataclass(frozen=True)
class GuestDiskReport:
    disk: str
    blocks: int
    written: int
    corrupt: int
    missing: int
    highest_seq: int
    acked_seq: int


async def verify_guest_disk(
    disk: VirtualDisk, vm_uuid: uuid.UUID, acked_seq: int
) -> GuestDiskReport:
    blocks = area_blocks(disk.sectors)
    sectors_per_block = GUEST_BLOCK // SECTOR
    data = b""
    for start in range(0, blocks, 256):
        count = min(256, blocks - start)
        data += await disk.read(start * sectors_per_block, count * sectors_per_block)
    written = corrupt = missing = highest = 0
    for block in range(blocks):
        seq = read_guest_block(
            data[block * GUEST_BLOCK : (block + 1) * GUEST_BLOCK],
            vm_uuid,
            block,
            inherited=disk.has_parent,
        )
        if seq is None:
            corrupt += 1
            continue
        if seq:
            written += 1
            highest = max(highest, seq)
            if (seq - 1) % blocks != block:
                corrupt += 1
                continue
        # The last acknowledged write to this block: the largest n <= acked_seq with
        # (n - 1) mod blocks == block.
        if acked_seq > block:
            expected = block + 1 + ((acked_seq - block - 1) // blocks) * blocks
            if seq < expected:
                missing += 1
    return GuestDiskReport(disk.path, blocks, written, corrupt, missing, highest, acked_seq)
