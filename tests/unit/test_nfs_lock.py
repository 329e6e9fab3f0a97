"""NFS lock files: 84-byte records and renewals, stale after exactly 35 s on a
SimClock, lost locks, and mutual exclusion over a history of contending hosts."""

from __future__ import annotations

import asyncio
import struct
import uuid

import pytest

from vsim.clock import SimClock
from vsim.faults import CannotAccessFile, FileLocked
from vsim.host.storage.nfs_lock import (
    DISK_FILE_LOCK_UPDATE_FREQ,
    GIVE_UP_AFTER,
    RECORD_SIZE,
    STALE_AFTER,
    ExportClient,
    LockFile,
    NfsLockManager,
    lock_file_name,
)
from vsim.storage.nfs_export import ExportOptions, NfsExport


def managers(tmp_path, n: int, clock) -> tuple[NfsExport, list[NfsLockManager]]:
    export = NfsExport("nfs-01", tmp_path / "export", ExportOptions())
    return export, [
        NfsLockManager(
            ExportClient(export, f"esxi-{i:02d}"),
            uuid.UUID(int=i + 1),
            f"esxi-{i:02d}",
            clock,
            boot=100 + i,
        )
        for i in range(1, n + 1)
    ]


def test_the_lock_record_is_84_bytes_and_round_trips():
    record = LockFile(1, uuid.uuid4(), 7, 123.5, "esxi-01", boot=2**64 - 1)
    assert len(record.pack()) == RECORD_SIZE == 84
    assert LockFile.unpack(record.pack()) == record
    assert LockFile.unpack(b"x" * 84) is None


def test_a_version_1_record_reads_with_its_40_byte_name_and_no_boot_id():
    owner = uuid.UUID(int=9)
    old = struct.pack("<4sHH16sQdI40s", b"VLCK", 1, 1, owner.bytes, 3, 1.5, 10000, b"x" * 40)
    record = LockFile.unpack(old)
    assert (record.owner, record.host_name, record.boot) == (owner, "x" * 40, 0)


def rebooted(manager: NfsLockManager, boot: int) -> NfsLockManager:
    """The same host (UUID, name, export) after a reboot: a new manager, a new boot id."""
    return NfsLockManager(manager.client, manager.host, manager.host_name, manager.clock, boot)


async def test_a_host_breaks_at_once_its_own_lock_left_by_an_earlier_boot(tmp_path):
    clock = SimClock()
    _, (a, b) = managers(tmp_path, 2, clock)
    await a.lock("", 0x42, "vm.vmdk")  # then esxi-01 crashes: nothing is unlocked
    again = rebooted(a, boot=a.boot + 1)
    await again.lock("", 0x42, "vm.vmdk")  # no 35 s wait
    record = LockFile.unpack((tmp_path / "export" / lock_file_name(0x42)).read_bytes())
    assert (record.owner, record.boot) == (a.host, again.boot)
    assert again.stats["locks_broken"] == 1
    # Another host still waits: to it the new boot's lock is live.
    with pytest.raises(FileLocked, match="esxi-01"):
        await b.lock("", 0x42, "vm.vmdk")


async def test_a_lock_of_the_same_boot_or_without_a_boot_id_is_never_broken_early(tmp_path):
    clock = SimClock()
    export, (a,) = managers(tmp_path, 1, clock)
    await a.lock("", 1, "one.vmdk")
    twin = rebooted(a, boot=a.boot)  # the same boot id: the same boot, still running
    # (as a second mount of one export, which the storage stack refuses: its creates
    # are its own, not retries of the first's)
    twin._creates = 1000
    with pytest.raises(FileLocked):
        await twin.lock("", 1, "one.vmdk")
    # A version 1 record in this host's own name says nothing of its boot: 35 s rule.
    path = tmp_path / "export" / lock_file_name(2)
    path.write_bytes(
        struct.pack("<4sHH16sQdI40s", b"VLCK", 1, 1, a.host.bytes, 1, 0.0, 10000, b"esxi-01")
    )
    later = rebooted(a, boot=a.boot + 1)
    with pytest.raises(FileLocked):
        await later.lock("", 2, "two.vmdk")
    await clock.advance(STALE_AFTER)
    await later.lock("", 2, "two.vmdk")


def test_a_boot_id_is_never_zero():
    with pytest.raises(ValueError):
        NfsLockManager(None, uuid.UUID(int=1), "esxi-01", SimClock(), boot=0)


async def test_lock_renew_and_every_write_is_84_bytes(tmp_path):
    clock = SimClock()
    export, (a, b) = managers(tmp_path, 2, clock)
    await a.lock("", 0x42, "vm-001.vmdk")
    with pytest.raises(FileLocked) as info:
        await b.lock("", 0x42, "vm-001.vmdk")
    assert "esxi-01" in info.value.message
    for _ in range(5):
        await clock.advance(DISK_FILE_LOCK_UPDATE_FREQ)
        await a.renew()
    record = LockFile.unpack((tmp_path / "export" / lock_file_name(0x42)).read_bytes())
    assert record.sequence == 6 and record.owner == a.host
    assert dict(export.stats.write_sizes["esxi-01"]) == {84: 6}
    await a.unlock("", 0x42)
    await b.lock("", 0x42, "vm-001.vmdk")


async def test_a_dead_holders_lock_is_stale_after_exactly_35_seconds(tmp_path):
    clock = SimClock(500.0)
    export, (holder, waiter) = managers(tmp_path, 2, clock)
    await holder.lock("", 7, "vm-002.vmdk")
    start = clock.now()
    taken_at = None
    for _ in range(80):
        now = clock.now() - start
        if now in (10, 20):  # the holder renews twice, then its host dies
            await holder.renew()
        try:
            await waiter.lock("", 7, "vm-002.vmdk")
        except FileLocked:
            pass
        else:
            taken_at = now
            break
        await clock.advance(1)
    assert taken_at == 20 + STALE_AFTER
    # The old holder, back, finds its lock gone and stops counting on it.
    await holder.renew()
    assert ("", lock_file_name(7)) in holder.lost and not holder.held
    assert all(size == 84 for size in export.stats.write_sizes["esxi-01"])


async def test_exclusive_holds_never_overlap_under_contention(tmp_path):
    clock = SimClock()
    _, hosts = managers(tmp_path, 4, clock)
    history: list[tuple[str, int]] = []

    async def hammer(i: int, manager: NfsLockManager) -> None:
        for round_ in range(50):
            try:
                await manager.lock("", 9, "shared.vmdk")
            except FileLocked:
                await asyncio.sleep(0)
                continue
            history.append(("grant", i))
            for _ in range((i + round_) % 3):
                await asyncio.sleep(0)
            history.append(("release", i))
            await manager.unlock("", 9)

    await asyncio.gather(*(hammer(i, m) for i, m in enumerate(hosts)))
    assert sum(kind == "grant" for kind, _ in history) >= 10
    current = None
    for kind, who in history:
        if kind == "grant":
            assert current is None, f"{who} granted while {current} held the lock"
            current = who
        else:
            assert current == who
            current = None


async def test_unlock_after_being_broken_leaves_the_new_holders_lock(tmp_path):
    clock = SimClock()
    export, (a, b, c) = managers(tmp_path, 3, clock)
    await a.lock("", 5, "vm.vmdk")
    with pytest.raises(FileLocked):
        await b.lock("", 5, "vm.vmdk")
    await clock.advance(STALE_AFTER)  # a stalls: no renewals
    await b.lock("", 5, "vm.vmdk")  # stale: b breaks it and takes it
    await a.unlock("", 5)  # a wakes up and releases what it thinks it holds
    with pytest.raises(FileLocked):
        await c.lock("", 5, "vm.vmdk")  # b still holds it
    record = LockFile.unpack((tmp_path / "export" / lock_file_name(5)).read_bytes())
    assert record.owner == b.host


async def test_a_host_that_cannot_renew_gives_its_lock_up_before_others_may_break_it(tmp_path):
    clock = SimClock()
    _, (a,) = managers(tmp_path, 1, clock)
    await a.lock("", 8, "vm.vmdk")

    async def array_down(*args):
        raise ConnectionError("the storage path is down")

    a.client.read = array_down
    for _ in range(2):
        await clock.advance(DISK_FILE_LOCK_UPDATE_FREQ)
        await a.renew()
        assert a.held, "still within the renewal budget"
    await clock.advance(DISK_FILE_LOCK_UPDATE_FREQ / 2)
    await a.renew()  # 25 s without a renewal: given up, 10 s before it could be broken
    assert not a.held and ("", lock_file_name(8)) in a.lost


async def test_io_under_a_lock_unrenewed_for_25_s_is_refused_even_between_renewals(tmp_path):
    """A path that comes back between two renewals must not carry a write past the
    point where another host may break the lock: every I/O checks the renewal age."""
    clock = SimClock()
    _, (a,) = managers(tmp_path, 1, clock)
    await a.lock("", 8, "vm.vmdk")
    key = ("", lock_file_name(8))
    await clock.advance(GIVE_UP_AFTER - 0.5)
    a.check_held(key, "vm.vmdk")  # still ours: no renewal was due to fail yet
    await clock.advance(0.5)
    with pytest.raises(CannotAccessFile, match="not renewed for 25 s"):
        a.check_held(key, "vm.vmdk")
    assert not a.held and key in a.lost
    assert GIVE_UP_AFTER + DISK_FILE_LOCK_UPDATE_FREQ == STALE_AFTER


async def test_the_same_host_cannot_lock_a_file_twice(tmp_path):
    _, (a,) = managers(tmp_path, 1, SimClock())
    await a.lock("", 3, "vm.vmdk")
    with pytest.raises(FileLocked):
        await a.lock("", 3, "vm.vmdk")
