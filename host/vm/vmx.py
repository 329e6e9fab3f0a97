"""The VMX of a VM: what runs on a host while the VM is powered on. It opens the VM's
disks (exclusive locks on their tops, read-only on their parents), runs the
simulated guest's disk writes through the host's disk scheduler, and closes the
disks at power-off.

The simulated guest writes 4 KiB blocks that prove themselves: each carries a
header (below) and a payload derived from the VM's UUID and the sequence number,
with a checksum over both. Write n goes to block (n - 1) mod `blocks` of the guest's
write area at the start of the first disk, and is counted as acknowledged only once
the datastore has it durably. `verify_guest_disk` reads the area back: every block
must be zero (never written) or a valid write of this VM's, and no block may be
older than the last acknowledged write to it.

Guest block header (little-endian):
    0   8   magic b"VSIMGW01"
    8   16  VM UUID
    24  8   sequence number (from 1)
    32  8   block number in the write area
    40  16  BLAKE2b-128 of bytes 0..40 and the payload
    56  ... payload, to 4096 bytes
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
import uuid
from dataclasses import dataclass

from vsim.clock import Clock
from vsim.faults import InvalidState
from vsim.host.storage.datastore_files import DatastoreFiles, close_all
from vsim.host.storage.disk_scheduler import DiskScheduler
from vsim.host.storage.vmdk import VirtualDisk, open_disk
from vsim.storage.vmfs_format import SECTOR, LockMode

log = logging.getLogger(__name__)

APD_TIMEOUT = 140.0
"""Misc.APDTimeout: seconds a host keeps retrying a VM's I/O to a datastore whose
paths are all down before it fails the I/O back to the guest."""
RETRY_BACKOFF = (0.1, 5.0)
"""Seconds: the first wait before a failed guest write is retried, and the most."""

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


class VmxProcess:
    """One powered-on VM's disks and guest I/O on this host."""

    def __init__(
        self,
        name: str,
        vm_uuid: uuid.UUID,
        disks: list[tuple[str, DatastoreFiles, str]],
        scheduler: DiskScheduler,
        clock: Clock,
        guest_write_iops: int = 0,
    ) -> None:
        """disks: (datastore, its files, descriptor path) of each disk."""
        self.name = name
        self.vm_uuid = vm_uuid
        self.disk_specs = disks
        self.scheduler = scheduler
        self.clock = clock
        self.guest_write_iops = guest_write_iops
        self.disks: list[VirtualDisk] = []
        self.acked_seq = 0
        self.write_retries = 0
        self._guest: asyncio.Task | None = None
        self._next_seq = 1
        self._stopping = False
        self._writing = False

    async def open_disks(self) -> None:
        """Opens every disk, or none (FileLocked names whoever holds one)."""
        if self.disks:
            return
        opened: list[VirtualDisk] = []
        try:
            for _, files, path in self.disk_specs:
                opened.append(await open_disk(files, path, LockMode.EXCLUSIVE))
        except BaseException:
            await close_all(opened)
            raise
        self.disks = opened

    def start_guest(self) -> None:
        if not self.disks:
            raise InvalidState(f"{self.name}'s disks are not open on this host")
        if self.guest_write_iops > 0 and self._guest is None:
            self.write_retries = 0
            self._guest = asyncio.get_running_loop().create_task(self._guest_writes())

    async def _guest_writes(self) -> None:
        disk = self.disks[0]
        target = self.disk_specs[0][0]
        blocks = area_blocks(disk.sectors)
        if blocks == 0:
            return
        # A guest that ran before (another host, another boot) goes on from its newest
        # write on disk, so sequence numbers never repeat.
        found = await verify_guest_disk(disk, self.vm_uuid, 0)
        self._next_seq = max(self._next_seq, found.highest_seq + 1)
        self.acked_seq = max(self.acked_seq, found.highest_seq)
        interval = 1.0 / self.guest_write_iops
        failing_since: float | None = None
        backoff = RETRY_BACKOFF[0]
        while not self._stopping:
            seq = self._next_seq
            block = (seq - 1) % blocks
            data = guest_block(self.vm_uuid, seq, block)
            lba = block * (GUEST_BLOCK // SECTOR)
            self._writing = True
            failure: Exception | None = None
            try:
                await self.scheduler.submit(
                    target, self.name, lambda lba=lba, data=data: disk.write(lba, data)
                )
            except Exception as e:  # noqa: BLE001 - a fault or a SCSI error: an I/O error
                failure = e
            finally:
                self._writing = False
            if failure is not None:
                if self._stopping:
                    return  # powering off: the write was never acknowledged
                # Paths down (the array restarting, a cut link): the same write is
                # retried, unacknowledged, as ESXi retries I/O until the APD timeout.
                # Once the volume is lost or the lock broken, every retry fails before
                # any I/O is sent.
                now = self.clock.now()
                if failing_since is None:
                    failing_since = now
                    log.warning("%s: guest write %d failed, retrying: %s", self.name, seq, failure)
                if now - failing_since >= APD_TIMEOUT:
                    log.warning("%s: the guest stops writing to its disk: %s", self.name, failure)
                    return
                self.write_retries += 1
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF[1])
                continue
            if failing_since is not None:
                log.warning("%s: guest writes resumed", self.name)
                failing_since, backoff = None, RETRY_BACKOFF[0]
            self.acked_seq = seq
            self._next_seq = seq + 1
            await self.clock.sleep(interval)

    async def stop_guest(self) -> None:
        """Stops the guest's I/O; when it returns, no write is in flight."""
        if self._guest is not None:
            self._stopping = True
            if not self._writing:
                self._guest.cancel()  # asleep between writes
            try:
                await self._guest  # a write under way is let finish (and acknowledged)
            except asyncio.CancelledError:
                pass
            except Exception as e:  # noqa: BLE001 - its disk failed; it is stopped either way
                log.warning("%s: the guest had stopped: %s", self.name, e)
            self._guest = None
            self._stopping = False

    async def close_disks(self) -> None:
        await self.stop_guest()
        disks, self.disks = self.disks, []
        await close_all(disks)

    def kill(self) -> None:
        """The host died: the guest stops mid-stride, nothing is closed."""
        if self._guest is not None:
            self._guest.cancel()
            self._guest = None

    async def verify(self, acked_seq: int) -> GuestDiskReport:
        if not self.disks:
            raise InvalidState(f"{self.name}'s disks are not open on this host")
        return await verify_guest_disk(self.disks[0], self.vm_uuid, acked_seq)
