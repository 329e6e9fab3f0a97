"""A SCSI-2 reservation left by a dead host: the others reset the LUN once it has
blocked them for RESERVATION_RESET_AFTER seconds, and never for a live holder's
short hold."""

from __future__ import annotations

import asyncio
import random
import uuid

from vsim.clock import WallClock
from vsim.host.vmfs import RESERVATION_RESET_AFTER, LunDevice, VmfsVolume, format_volume
from vsim.storage.lun import Lun
from vsim.storage.vmfs_format import VolumeLockMode

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
