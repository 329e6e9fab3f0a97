"""The simulated guest's disk writes through a path outage: retried, unacknowledged,
until the paths come back (then resumed with no sequence number skipped) or until
the APD timeout (then the guest stops writing)."""

from __future__ import annotations

import asyncio
import uuid

from test_vscsi import MemoryDisk

from vsim.clock import SimClock
from vsim.host.guest.disk_writes import GUEST_BLOCK, verify_guest_disk
from vsim.host.storage.disk_scheduler import DiskScheduler
from vsim.host.vm.vmx import APD_TIMEOUT, RETRY_BACKOFF, VmxProcess
from vsim.runtime import Runtime
from vsim.storage.scsi import CHECK_CONDITION, WRITE_ERROR, ScsiError
from vsim.storage.vmfs_format import SECTOR

VM_UUID = uuid.UUID(int=7)
IOPS = 10


async def running_guest(clock: SimClock) -> tuple[VmxProcess, MemoryDisk]:
    disk = MemoryDisk(64 * GUEST_BLOCK // SECTOR)  # a 64-block write area
    runtime = Runtime.simulated(clock, 0)
    vmx = VmxProcess("g", VM_UUID, [], DiskScheduler(runtime=runtime), runtime, IOPS)
    vmx.disks = [disk]
    vmx.disk_specs = [("vmfs-01", None, disk.path)]
    vmx.start_guest()
    await clock.advance(5)
    assert vmx.acked_seq >= 5 * IOPS - 1
    return vmx, disk


async def test_writes_wait_out_an_outage_and_resume_without_a_gap():
    clock = SimClock()
    vmx, disk = await running_guest(clock)
    disk.failing = True
    stalled = vmx.acked_seq
    await clock.advance(60)
    assert vmx.acked_seq == stalled, "nothing is acknowledged while the paths are down"
    assert vmx.write_retries >= 60 / RETRY_BACKOFF[1]
    disk.failing = False
    await clock.advance(RETRY_BACKOFF[1] + 1)
    assert vmx.acked_seq > stalled
    # Every acknowledged write is on disk, and none was skipped: each block holds the
    # last write acknowledged to it.
    report = await verify_guest_disk(disk, VM_UUID, vmx.acked_seq)
    assert (report.corrupt, report.missing) == (0, 0)
    assert report.highest_seq == vmx.acked_seq
    await vmx.stop_guest()


async def test_any_io_error_is_retried_and_a_failing_guest_stops_at_once():
    """A SCSI error is not a vSphere fault, and is retried all the same; powering off
    while writes fail waits for no backoff, and raises nothing."""
    clock = SimClock()
    vmx, disk = await running_guest(clock)

    async def scsi_error(lba: int, data: bytes) -> None:
        raise ScsiError(CHECK_CONDITION, WRITE_ERROR)

    write, disk.write = disk.write, scsi_error
    await clock.advance(30)
    assert vmx.write_retries > 0
    disk.write = write
    stalled = vmx.acked_seq
    await clock.advance(RETRY_BACKOFF[1] + 1)
    assert vmx.acked_seq > stalled
    disk.write = scsi_error
    await clock.advance(1)
    stop = asyncio.get_running_loop().create_task(vmx.stop_guest())
    await clock.advance(0)
    assert stop.done() and stop.exception() is None


async def test_the_guest_gives_up_after_the_apd_timeout():
    clock = SimClock()
    vmx, disk = await running_guest(clock)
    disk.failing = True
    stalled = vmx.acked_seq
    await clock.advance(APD_TIMEOUT + RETRY_BACKOFF[1] + 1)
    retries = vmx.write_retries
    disk.failing = False
    await clock.advance(30)
    assert vmx.acked_seq == stalled and vmx.write_retries == retries
    report = await verify_guest_disk(disk, VM_UUID, stalled)
    assert (report.corrupt, report.missing) == (0, 0)
    await vmx.stop_guest()
