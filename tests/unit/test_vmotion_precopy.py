"""vMotion's pre-copy on the simulated clock: dirty-page tracking in the memory
manager, rounds that shrink until the rest fits the 500 ms switchover goal, SDPS
slowing a guest that outruns the link, the pages arriving whole at the destination,
and a failure leaving the guest running on its source."""

from __future__ import annotations

import numpy as np
import pytest

from vsim.clock import SimClock
from vsim.faults import HostConnectFault, InvalidArgument, MigrationFault
from vsim.guest_workload import GuestWorkload
from vsim.host.guest.memory import GuestMemoryModel
from vsim.host.kernel.memory.memsched import MemoryManager
from vsim.host.kernel.memory.pmap import PAGE_SIZE, PAGES_PER_MB
from vsim.host.vm.vmotion import (
    SDPS_SHRINK,
    SWITCHOVER_GOAL_S,
    PreCopy,
    PreCopySettings,
    precopy,
)
from vsim.memory_settings import MemorySettings, VmMemorySettings

MB_PER_S = PAGES_PER_MB  # pages a second in one MB a second
TEN_GBPS_PAGES = 10e9 / 8 / PAGE_SIZE


def host(tmp_path, name: str = "src", memory_mb: int = 8192) -> MemoryManager:
    directory = tmp_path / name
    directory.mkdir()
    return MemoryManager(memory_mb, SimClock(), directory, MemorySettings(page_sharing=False))


def running(memory: MemoryManager, memory_mb: int, dirty_mb_s: float, working_set_pct=25.0):
    workload = GuestWorkload(
        working_set_pct=working_set_pct,
        boot_touch_pct=40.0,
        dirty_rate=dirty_mb_s * MB_PER_S,
        touch_rate=0.0,
    )
    memory.power_on("vm-1", "4c4c4544-0000-0000-0000-000000000001", memory_mb, "", None, workload)
    return memory


async def sink(ppns: np.ndarray, fingerprints: np.ndarray) -> None:
    assert len(ppns) == len(fingerprints)


# dirty-page tracking


def test_every_guest_write_sets_the_dirty_bitmap_and_a_take_clears_it(tmp_path):
    memory = running(host(tmp_path), 64, 0)
    memory.take_dirty("vm-1")  # the boot's writes
    memory.write("vm-1", np.array([7, 3, 7, 900]), np.array([1, 2, 3, 0], np.uint64))
    assert memory.take_dirty("vm-1").tolist() == [3, 7, 900]
    assert memory.take_dirty("vm-1").tolist() == []


async def test_reclaim_moving_a_page_does_not_dirty_it(tmp_path):
    memory = running(host(tmp_path, memory_mb=1024), 512, 0)
    touched = memory.touched_pages("vm-1")
    before = memory.guest_content("vm-1", touched)
    memory.take_dirty("vm-1")
    memory.set_vm_settings("vm-1", VmMemorySettings(limit_mb=64, balloon_driver=False))
    for _ in range(5):
        await memory.clock.sleep(1)
        memory.tick()
    stats = memory.vm_stats("vm-1")
    assert stats.swapped + stats.compressed > 100
    assert memory.take_dirty("vm-1").tolist() == []
    # What the guest sees is kept wherever its page went (zero pages simply dropped).
    assert np.array_equal(memory.guest_content("vm-1", touched), before)


def test_a_guest_goes_on_from_its_checkpointed_state():
    source = GuestMemoryModel("u-1", "ubuntu64Guest", 4096, GuestWorkload(dirty_rate=100))
    source.step(3.3)
    arrived = GuestMemoryModel("u-1", "ubuntu64Guest", 4096, GuestWorkload(dirty_rate=100))
    arrived.restore(source.state())
    for a, b in zip(source.step(1.7), arrived.step(1.7), strict=True):
        assert np.array_equal(a, b)


# the rounds


async def test_a_4_gib_vm_dirtying_50_mb_s_over_10_gbps_converges_with_a_short_stun(tmp_path):
    memory = running(host(tmp_path), 4096, 50)
    clock = memory.clock
    touched = len(memory.touched_pages("vm-1"))
    assert touched == 4096 * PAGES_PER_MB * 40 // 100
    began = clock.now()
    report = await precopy(memory, "vm-1", clock, sink)

    first = report.rounds[0]
    assert first.pages == touched
    assert first.seconds == pytest.approx(touched / TEN_GBPS_PAGES)
    assert 1 <= len(report.rounds) <= 3 and not report.sdps
    for before, after in zip(report.rounds, report.rounds[1:], strict=False):
        assert after.pages == before.dirtied < before.pages
    # The guest wrote about 50 MB/s x the first round's 1.37 s into its 1 GiB working set.
    expected = 50 * MB_PER_S * first.seconds
    assert 0.9 * expected < first.dirtied <= expected
    assert report.stun_pages == report.rounds[-1].dirtied
    assert report.stun_send_s == pytest.approx(report.stun_pages / TEN_GBPS_PAGES)
    assert report.stun_send_s <= SWITCHOVER_GOAL_S
    assert report.pages_sent == touched + report.pages_resent
    assert clock.now() - began == pytest.approx(report.precopy_s + report.stun_send_s)
    assert report.stunned_at == pytest.approx(began + report.precopy_s)
    assert memory.speed("vm-1") == 0.0  # stunned: the caller resumes it


async def test_a_guest_dirtying_faster_than_the_link_is_slowed_by_sdps_and_converges(tmp_path):
    memory = running(host(tmp_path), 4096, 400, working_set_pct=50)
    settings = PreCopySettings(link_gbps=1.0)
    report = await precopy(memory, "vm-1", memory.clock, sink, settings)
    assert report.sdps and report.slowest_speed < 1.0
    assert report.stun_send_s <= SWITCHOVER_GOAL_S
    link = settings.pages_per_second
    # At full speed it kept up with the link (a round as long as the one before)...
    full = [r for r in report.rounds if r.speed == 1.0]
    assert any(r.dirtied >= SDPS_SHRINK * r.pages or r.dirtied / r.seconds >= link for r in full)
    # ...slowed enough, it falls behind and every round is shorter than the last.
    slowest = [r for r in report.rounds if r.speed == report.slowest_speed]
    assert len(slowest) >= 2
    assert all(r.dirtied < SDPS_SHRINK * r.pages and r.dirtied / r.seconds < link for r in slowest)
    assert memory.take_dirty("vm-1").tolist() == []  # stunned: it writes nothing more


async def test_an_idle_guest_is_sent_once_and_stunned_with_nothing_left(tmp_path):
    memory = running(host(tmp_path), 1024, 0)
    report = await precopy(memory, "vm-1", memory.clock, sink)
    assert [r.pages for r in report.rounds] == [len(memory.touched_pages("vm-1"))]
    assert (report.stun_pages, report.pages_resent, report.stun_send_s) == (0, 0, 0.0)


async def test_the_destination_ends_with_every_page_the_guest_sees(tmp_path):
    source = running(host(tmp_path), 1024, 40)
    destination = host(tmp_path, "dst")
    destination.power_on("vm-1", "4c4c4544-0000-0000-0000-000000000001", 1024, "", arriving=True)

    async def send(ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        destination.receive("vm-1", ppns, fingerprints)

    await precopy(source, "vm-1", source.clock, send)
    touched = source.touched_pages("vm-1")
    assert np.array_equal(destination.touched_pages("vm-1"), touched)
    assert np.array_equal(
        destination.guest_content("vm-1", touched), source.guest_content("vm-1", touched)
    )
    destination.resume("vm-1", source.guest_state("vm-1"))
    destination.memory.check()
    assert destination.speed("vm-1") == 1.0
    assert destination.vm_stats("vm-1").granted == pytest.approx(len(touched) / PAGES_PER_MB)


async def test_a_failed_send_leaves_the_guest_running_at_full_speed_on_its_source(tmp_path):
    memory = running(host(tmp_path), 4096, 400, working_set_pct=50)
    speeds = []

    async def send(ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        speeds.append(memory.speed("vm-1"))
        if speeds[-1] < 1.0:  # the first batch after SDPS slowed the guest
            raise HostConnectFault("the destination went away")

    with pytest.raises(HostConnectFault):
        await precopy(memory, "vm-1", memory.clock, send, PreCopySettings(link_gbps=1.0))
    assert speeds[-1] < 1.0  # SDPS had slowed it when the send failed
    assert memory.speed("vm-1") == 1.0
    memory.take_dirty("vm-1")
    await memory.clock.sleep(1)
    assert len(memory.take_dirty("vm-1")) > 0  # it writes on


# the core's limits and settings


def test_a_switchover_longer_than_max_switchover_seconds_is_a_migration_fault():
    plan = PreCopy(PreCopySettings(link_gbps=1.0, max_switchover_s=10))
    with pytest.raises(MigrationFault, match="maxSwitchoverSeconds"):
        plan.switchover_seconds(int(plan.settings.pages_per_second * 11))
    assert plan.switchover_seconds(100) == pytest.approx(100 / plan.settings.pages_per_second)


def test_sdps_slows_a_round_that_took_no_time_or_hardly_shrank():
    plan = PreCopy()
    assert plan.round_done(0, 0.0, 10**6) < 1.0  # no division by a zero-length round
    plan = PreCopy()
    # Sent slower than the link (a busy path) and barely shrinking: slowed by the shrink.
    assert plan.round_done(10**6, 10.0, 950_000) == pytest.approx(0.5 * 10**6 / 950_000)
    plan = PreCopy()
    assert plan.round_done(10**6, plan.seconds(10**6), 10) == 1.0  # converged: untouched
    assert not plan.sdps


async def test_a_vm_powered_off_during_pre_copy_ends_it_with_its_own_fault(tmp_path):
    memory = running(host(tmp_path), 1024, 10)

    async def send(ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        memory.power_off("vm-1")
        raise HostConnectFault("the destination saw it go")

    with pytest.raises(HostConnectFault):
        await precopy(memory, "vm-1", memory.clock, send)


def test_a_pre_copy_that_never_converges_fails_after_its_rounds():
    plan = PreCopy()
    with pytest.raises(MigrationFault, match="did not converge"):
        for _ in range(100):
            plan.round_done(10**7, plan.seconds(10**7), 10**7)
    assert plan.sdps and plan.speed < 1.0


@pytest.mark.parametrize(
    "settings",
    [
        PreCopySettings(link_gbps=0),
        PreCopySettings(link_gbps=float("nan")),
        PreCopySettings(switchover_goal_s=0),
        PreCopySettings(switchover_goal_s=200),
        PreCopySettings(max_switchover_s=5000),
    ],
)
def test_bad_pre_copy_settings_are_invalid_argument(settings):
    with pytest.raises(InvalidArgument):
        settings.validated()


def test_a_speed_outside_0_to_1_is_invalid_argument(tmp_path):
    memory = running(host(tmp_path), 64, 0)
    for speed in (-0.1, 1.5):
        with pytest.raises(InvalidArgument):
            memory.set_speed("vm-1", speed)
    assert memory.speed("vm-1") == 1.0
