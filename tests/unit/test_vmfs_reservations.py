"""A SCSI-2 reservation left by a dead host: the others reset the LUN once it has
blocked them for RESERVATION_RESET_AFTER seconds, and never for a live holder's
short hold."""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest

from vsim.clock import WallClock
from vsim.host.storage.vmfs import RESERVATION_RESET_AFTER, LunDevice, VmfsVolume, format_volume
from vsim.storage.lun import Lun
from vsim.storage.vmfs_format import VolumeLockMode

pytestmark = pytest.mark.real_loop  # real time: WallClock backoffs

SPEED = 20.0


async def two_hosts(tmp_path) -> tuple[Lun, WallClock, list[VmfsVolume]]:
    lun = Lun(0, tmp_path / "lun.img", 8 * 1024**2, "S")
    await format_volume(LunDevice(lun, "iqn.f"), "v", VolumeLockMode.ATS_SCSI, uuid.uuid4())
    clock = WallClock(speed=SPEED)
    volumes = [
        VmfsVolume(LunDevice(lun, f"iqn.{i}"), uuid.UUID(int=i + 1), clock, random.Random(i))
        for i in range(2)
    ]
    for volume in volumes:
        await volume.mount()
    return lun, clock, volumes


async def test_a_dead_hosts_reservation_is_reset_after_the_timeout(tmp_path):
    lun, clock, (dead, live) = await two_hosts(tmp_path)
    lun.reserve("iqn.0")  # the dead host reserved the LUN and never released it
    started = clock.now()
    await live.lock(5, "a.vmdk")
    assert clock.now() - started >= RESERVATION_RESET_AFTER
    assert live.stats["lun_resets"] == 1 and live.stats["reservation_conflicts"] > 0
    assert lun.stats["iqn.1"]["lun_reset"] == 1
    assert lun.reservation is None


async def test_a_live_holders_short_reservation_is_waited_for_not_reset(tmp_path):
    lun, clock, (holder, waiter) = await two_hosts(tmp_path)
    lun.reserve("iqn.0")

    async def release_soon() -> None:
        await clock.sleep(RESERVATION_RESET_AFTER / 4)
        lun.release("iqn.0")

    await asyncio.gather(release_soon(), waiter.lock(5, "a.vmdk"))
    assert waiter.stats["reservation_conflicts"] > 0
    assert waiter.stats["lun_resets"] == 0 and lun.stats["iqn.1"]["lun_reset"] == 0


class StallsUnderReservation(LunDevice):
    """A live host that stalls (3 s of the clock) at its first command under a
    reservation, in the middle of its update: long enough for another host to reset
    the LUN and update first."""

    stall = False

    async def _maybe_stall(self) -> None:
        if self.stall and self.lun.reservation == self.initiator:
            self.stall = False
            await asyncio.sleep(3.0 / SPEED)

    async def read(self, lba: int, blocks: int) -> bytes:
        data = await super().read(lba, blocks)
        await self._maybe_stall()  # having read what it will decide on
        return data

    async def write(self, lba: int, data: bytes) -> None:
        await self._maybe_stall()
        await super().write(lba, data)

    async def compare_and_write(self, lba: int, verify: bytes, data: bytes) -> None:
        await self._maybe_stall()
        await super().compare_and_write(lba, verify, data)


async def test_a_reset_under_a_stalled_live_holder_never_gives_a_lock_twice(tmp_path):
    lun = Lun(0, tmp_path / "lun.img", 8 * 1024**2, "S")
    await format_volume(LunDevice(lun, "iqn.f"), "v", VolumeLockMode.ATS_SCSI, uuid.uuid4())
    clock = WallClock(speed=SPEED)
    slow = StallsUnderReservation(lun, "iqn.0")
    a = VmfsVolume(slow, uuid.UUID(int=1), clock, random.Random(0))
    b = VmfsVolume(LunDevice(lun, "iqn.1"), uuid.UUID(int=2), clock, random.Random(1))
    await a.mount()
    await b.mount()
    slow.stall = True

    async def b_a_moment_later():
        await asyncio.sleep(0.01)
        return await b.lock(5, "x.vmdk")

    outcomes = await asyncio.gather(a.lock(5, "x.vmdk"), b_a_moment_later(), return_exceptions=True)
    assert b.stats["lun_resets"] == 1  # b took the stalled holder for dead
    granted = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(granted) == 1, outcomes  # the other got FileLocked: one owner
    record = await b.read_lock(5)
    assert len(record.owners) == 1 and record.owners[0] == granted[0].owners[0]
