"""The VMX of a VM: what runs on a host while the VM is powered on. It opens the VM's
disks (exclusive locks on their tops, read-only on their parents), runs the
simulated guest's disk writes (their blocks: host/guest/disk_writes.py) through the
host's disk scheduler, retrying a failed write until the APD timeout as ESXi retries
I/O, and closes the disks at power-off. A write counts as acknowledged only once the
datastore has it durably.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from vsim.faults import InvalidState
from vsim.host.guest.disk_writes import (
    GUEST_BLOCK,
    GuestDiskReport,
    area_blocks,
    guest_block,
    verify_guest_disk,
)
from vsim.host.storage.datastore_files import DatastoreFiles, close_all
from vsim.host.storage.disk_scheduler import DiskScheduler
from vsim.host.storage.vmdk import VirtualDisk, open_disk
from vsim.runtime import Runtime
from vsim.storage.vmfs_format import SECTOR, LockMode

log = logging.getLogger(__name__)

APD_TIMEOUT = 140.0
"""Misc.APDTimeout: seconds a host keeps retrying a VM's I/O to a datastore whose
paths are all down before it fails the I/O back to the guest."""
RETRY_BACKOFF = (0.1, 5.0)
"""Seconds: the first wait before a failed guest write is retried, and the most."""


class VmxProcess:
    """One powered-on VM's disks and guest I/O on this host."""

    def __init__(
        self,
        name: str,
        vm_uuid: uuid.UUID,
        disks: list[tuple[str, DatastoreFiles, str]],
        scheduler: DiskScheduler,
        runtime: Runtime,
        guest_write_iops: int = 0,
    ) -> None:
        """disks: (datastore, its files, descriptor path) of each disk; runtime: the
        host boot's (the guest's writes run as its task)."""
        self.name = name
        self.vm_uuid = vm_uuid
        self.disk_specs = disks
        self.scheduler = scheduler
        self.runtime = runtime
        self.clock = runtime.clock
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
            self._guest = self.runtime.spawn(self._guest_writes(), f"guest:{self.name}")

    async def _guest_writes(self) -> None:
        disk = self.disks[0]
        target = self.disk_specs[0][0]
        blocks = area_blocks(disk.sectors)
        if blocks == 0:
            return
        # A guest that ran before (another host, another boot) goes on from its newest
        # write on disk, so sequence numbers never repeat; it reads that as it writes,
        # retrying while the disk cannot be read (paths down), up to the APD timeout
        # (a lost lock: its host kills the VM meanwhile).
        began, backoff = self.clock.now(), RETRY_BACKOFF[0]
        while True:
            try:
                found = await verify_guest_disk(disk, self.vm_uuid, 0)
                break
            except Exception as e:  # noqa: BLE001 - a fault or a SCSI error: an I/O error
                if self._stopping or self.clock.now() - began >= APD_TIMEOUT:
                    log.warning("%s: the guest cannot read its disk: %s", self.name, e)
                    return
                await self.clock.sleep(backoff)
                backoff = min(backoff * 2, RETRY_BACKOFF[1])
        self._next_seq = max(self._next_seq, found.highest_seq + 1)
        self.acked_seq = max(self.acked_seq, found.highest_seq)
        interval = 1.0 / self.guest_write_iops
        # The guest's first write comes a random part of an interval after it starts
        # (its own boot), so guests and heartbeats do not all tick in one phase.
        await self.clock.sleep(self.runtime.random.uniform(0, interval))
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

    def lock_lost(self) -> bool:
        """Whether another host may hold one of its disks' locks now."""
        return any(disk.lock_lost() for disk in self.disks)

    def lock_in_doubt(self) -> bool:
        return any(disk.lock_in_doubt() for disk in self.disks)

    def kill(self) -> None:
        """The host died: the guest stops mid-stride, nothing is closed."""
        if self._guest is not None:
            self._guest.cancel()
            self._guest = None

    async def verify(self, acked_seq: int) -> GuestDiskReport:
        if not self.disks:
            raise InvalidState(f"{self.name}'s disks are not open on this host")
        return await verify_guest_disk(self.disks[0], self.vm_uuid, acked_seq)
