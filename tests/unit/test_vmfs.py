"""The VMFS driver against an in-process LUN: heartbeats, exclusive locks, stale-lock
breaking at exactly 16 s on a SimClock, lost access, and mutual exclusion checked
over whole histories on both lock modes."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from vsim.clock import SimClock, WallClock
from vsim.faults import CannotAccessFile, FileLocked
from vsim.host.storage.vmfs import HB_INTERVAL, HB_TIMEOUT, LunDevice, VmfsVolume, format_volume
from vsim.storage.lun import Lun
from vsim.storage.vmfs_format import (
    HeartbeatSlot,
    LockMode,
    LockRecord,
    SlotState,
    Superblock,
    VolumeLockMode,
)

MODES = [VolumeLockMode.ATS_ONLY, VolumeLockMode.ATS_SCSI]


def host_uuid(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


async def volume_with_hosts(tmp_path, mode: VolumeLockMode, hosts: int, clock) -> list[VmfsVolume]:
    lun = Lun(0, tmp_path / "lun.img", 8 * 1024**2, "S")
    await format_volume(LunDevice(lun, "iqn.format"), "vmfs-01", mode, uuid.UUID(int=99))
    volumes = [
        VmfsVolume(LunDevice(lun, f"iqn.esxi-{i}"), host_uuid(i), clock, random.Random(i))
        for i in range(hosts)
    ]
    for v in volumes:
        await v.mount()
    return volumes


def test_layouts_round_trip():
    sb = Superblock(uuid.uuid4(), "datastore1", 1024 * 1024, VolumeLockMode.ATS_SCSI)
    assert Superblock.unpack(sb.pack()) == sb and len(sb.pack()) == 512
    slot = HeartbeatSlot(SlotState.IN_USE, 3, uuid.uuid4(), 17, 12.5)
    assert HeartbeatSlot.unpack(slot.pack()) == slot
    assert HeartbeatSlot.unpack(bytes(512)) == HeartbeatSlot()
    with pytest.raises(ValueError):
        Superblock.unpack(bytes(512))


@pytest.mark.parametrize("mode", MODES)
async def test_hosts_get_distinct_heartbeat_slots(tmp_path, mode):
    volumes = await volume_with_hosts(tmp_path, mode, 4, SimClock())
    assert sorted(v.slot for v in volumes) == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", MODES)
async def test_a_second_exclusive_lock_names_the_holder(tmp_path, mode):
    a, b = await volume_with_hosts(tmp_path, mode, 2, SimClock())
    await a.lock(5, "vm-001/vm-001-flat.vmdk")
    with pytest.raises(FileLocked) as info:
        await b.lock(5, "vm-001/vm-001-flat.vmdk")
    assert info.value.properties["holder"] == str(a.host)
    await a.unlock(5)
    record = await b.lock(5, "vm-001/vm-001-flat.vmdk")
    assert [o.host for o in record.owners] == [b.host]


@pytest.mark.parametrize("mode", MODES)
async def test_read_only_locks_share_and_exclude_writers(tmp_path, mode):
    a, b, c = await volume_with_hosts(tmp_path, mode, 3, SimClock())
    await a.lock(1, "base.vmdk", LockMode.READ_ONLY)
    record = await b.lock(1, "base.vmdk", LockMode.READ_ONLY)
    assert {o.host for o in record.owners} == {a.host, b.host}
    with pytest.raises(FileLocked):
        await c.lock(1, "base.vmdk", LockMode.EXCLUSIVE)


@pytest.mark.parametrize("mode", MODES)
async def test_a_dead_holders_lock_breaks_at_exactly_16_seconds(tmp_path, mode):
    clock = SimClock(1000.0)
    holder, waiter = await volume_with_hosts(tmp_path, mode, 2, clock)
    await holder.lock(7, "vm-002.vmdk")
    # The holder heartbeats at t=0,3,6,9 and then dies (its actor is killed).
    refused_at: list[float] = []
    broken_at = None
    start = clock.now()
    for second in range(40):
        now = clock.now() - start
        if second % HB_INTERVAL == 0:
            assert await waiter.heartbeat()  # the waiter lives on
            if now <= 9:
                assert await holder.heartbeat()
        try:
            await waiter.lock(7, "vm-002.vmdk")
        except FileLocked:
            refused_at.append(now)
        else:
            broken_at = now
            break
        await clock.advance(1)
    assert broken_at == 9 + HB_TIMEOUT  # 16 s after the last heartbeat it saw
    assert refused_at[-1] == broken_at - 1
    # The dead host's slot was cleared: if it comes back it finds out and stops.
    assert not await holder.heartbeat()
    assert holder.lost_access
    with pytest.raises(CannotAccessFile):
        await holder.lock(8, "other.vmdk")


async def test_a_host_that_cannot_heartbeat_for_16_seconds_loses_access(tmp_path):
    clock = SimClock()
    (volume,) = await volume_with_hosts(tmp_path, VolumeLockMode.ATS_ONLY, 1, clock)

    async def broken(*args):
        raise OSError("path down")

    volume.device.compare_and_write = broken  # the storage path is cut
    for _ in range(5):
        await clock.advance(HB_INTERVAL)
        assert await volume.heartbeat()  # 3..15 s: still hoping
    await clock.advance(1)
    assert not await volume.heartbeat()
    assert volume.lost_access


@pytest.mark.real_loop  # on a WallClock: contending hosts back off in real time
@pytest.mark.parametrize("mode", MODES)
async def test_exclusive_holds_never_overlap_under_contention(tmp_path, mode):
    """Four hosts as concurrent tasks hammer one lock; every grant and release is
    recorded, and the history shows at most one holder at any time."""
    clock = WallClock()
    volumes = await volume_with_hosts(tmp_path, mode, 4, clock)
    history: list[tuple[str, int]] = []
    holding: set[int] = set()
    overlaps = 0

    async def hammer(i: int, volume: VmfsVolume) -> None:
        nonlocal overlaps
        rng = random.Random(i)
        for _ in range(40):
            try:
                await volume.lock(3, "shared.vmdk")
            except FileLocked:
                await asyncio.sleep(0)
                continue
            history.append(("grant", i))
            if holding:
                overlaps += 1
            holding.add(i)
            for _ in range(rng.randint(0, 3)):
                await asyncio.sleep(0)
            holding.discard(i)
            history.append(("release", i))
            await volume.unlock(3)

    await asyncio.gather(*(hammer(i, v) for i, v in enumerate(volumes)))
    grants = [h for h in history if h[0] == "grant"]
    assert len(grants) >= 10, "the hosts did get the lock"
    assert overlaps == 0
    current = None
    for kind, who in history:
        if kind == "grant":
            assert current is None, f"{who} granted while {current} held it"
            current = who
        else:
            assert current == who
            current = None
    conflicts = sum(v.stats["reservation_conflicts"] for v in volumes)
    if mode == VolumeLockMode.ATS_SCSI:
        assert conflicts > 0, "hosts contended for the reservation"
    else:
        assert conflicts == 0
    final = LockRecord.unpack(await volumes[0].device.read(volumes[0].superblock.lock_lba(3), 1))
    assert final.mode == LockMode.FREE


@pytest.mark.parametrize("mode", MODES)
async def test_the_same_host_cannot_take_an_exclusive_lock_twice(tmp_path, mode):
    (a,) = await volume_with_hosts(tmp_path, mode, 1, SimClock())
    await a.lock(2, "disk.vmdk")
    with pytest.raises(FileLocked):
        await a.lock(2, "disk.vmdk")


async def test_a_rebooted_host_starts_a_new_generation_and_its_old_locks_are_free(tmp_path):
    clock = SimClock()
    a, b = await volume_with_hosts(tmp_path, VolumeLockMode.ATS_ONLY, 2, clock)
    await a.lock(6, "vm.vmdk")
    old_generation = a.slot_generation
    reborn = VmfsVolume(a.device, a.host, clock, random.Random(9))  # same host, new boot
    await reborn.mount()
    assert reborn.slot == a.slot and reborn.slot_generation == old_generation + 1
    record = await b.lock(6, "vm.vmdk")  # the old incarnation's lock is gone at once
    assert [o.host for o in record.owners] == [b.host]


async def test_no_lock_is_granted_once_this_hosts_heartbeat_is_stale(tmp_path):
    clock = SimClock()
    (a,) = await volume_with_hosts(tmp_path, VolumeLockMode.ATS_SCSI, 1, clock)
    await clock.advance(HB_TIMEOUT)
    with pytest.raises(CannotAccessFile):
        await a.lock(1, "late.vmdk")
    assert a.lost_access and not await a.heartbeat()


class LostReplies(LunDevice):
    """A path that fails after the array ran a COMPARE AND WRITE (its reply is lost):
    `lose` such replies; with `stay_down` the path then stays down (every command
    fails before the array sees it) until `down` is cleared."""

    lose = 0
    stay_down = True
    down = False

    async def compare_and_write(self, lba: int, verify: bytes, data: bytes) -> None:
        if self.down:
            raise ConnectionError("the path is down")
        await super().compare_and_write(lba, verify, data)
        if self.lose:
            self.lose -= 1
            self.down = self.stay_down
            raise ConnectionError("the reply was lost (the array ran the command)")

    async def read(self, lba: int, blocks: int) -> bytes:
        if self.down:
            raise ConnectionError("the path is down")
        return await super().read(lba, blocks)


async def lost_reply_volumes(tmp_path, mode: VolumeLockMode, clock):
    lun = Lun(0, tmp_path / "lun.img", 8 * 1024**2, "S")
    await format_volume(LunDevice(lun, "iqn.format"), "vmfs-01", mode, uuid.UUID(int=99))
    path = LostReplies(lun, "iqn.esxi-0")
    a = VmfsVolume(path, host_uuid(0), clock, random.Random(0))
    b = VmfsVolume(LunDevice(lun, "iqn.esxi-1"), host_uuid(1), clock, random.Random(1))
    await a.mount()
    await b.mount()
    return path, a, b


@pytest.mark.parametrize("mode", MODES)
async def test_a_lock_whose_grant_reply_was_lost_is_known_to_its_holder(tmp_path, mode):
    """The array grants the lock, the reply is lost and the path stays down so the
    host cannot read it back: the host's lock call fails, yet the lock on disk is its
    own. When the path is back, asking again finds it (not "locked by this host"), and
    releasing it frees it for others."""
    path, a, b = await lost_reply_volumes(tmp_path, mode, SimClock())
    path.lose = 1
    with pytest.raises(ConnectionError):
        await a.lock(5, "vm-001/vm-001-flat.vmdk")
    path.down = False
    with pytest.raises(FileLocked) as held:  # the grant did land: a holds it
        await b.lock(5, "vm-001/vm-001-flat.vmdk")
    assert held.value.properties["holder"] == str(a.host)
    record = await a.lock(5, "vm-001/vm-001-flat.vmdk")
    assert [o.host for o in record.owners] == [a.host]
    await a.unlock(5)
    assert [o.host for o in (await b.lock(5, "vm-001/vm-001-flat.vmdk")).owners] == [b.host]


@pytest.mark.parametrize("mode", MODES)
async def test_a_lock_whose_reply_was_lost_is_read_back(tmp_path, mode):
    """The reply is lost but the path is back at once: the host reads the sector and
    has the lock."""
    path, a, _ = await lost_reply_volumes(tmp_path, mode, SimClock())
    path.lose, path.stay_down = 1, False
    record = await a.lock(5, "vm-001/vm-001-flat.vmdk")
    assert [o.host for o in record.owners] == [a.host]
    assert a.stats["lost_replies"] == 1


async def test_a_heartbeat_whose_reply_was_lost_does_not_lose_the_volume(tmp_path):
    """A heartbeat lands but its reply is lost and the path stays down for a moment:
    the next heartbeat's COMPARE AND WRITE against the old counter miscompares, which
    is not another host clearing the slot: the host goes on from the sector it wrote."""
    clock = SimClock()
    path, a, _ = await lost_reply_volumes(tmp_path, VolumeLockMode.ATS_ONLY, clock)
    path.lose = 1
    assert await a.heartbeat()  # failed, but not yet too old
    assert a.stats["heartbeat_failures"] == 1
    path.down = False
    await clock.advance(HB_INTERVAL)
    assert await a.heartbeat()
    assert not a.lost_access and a.stats["lost_replies"] == 1
    await a.lock(1, "still-usable")
