"""The host memory manager: salting as documented, sharing switched off, overcommit
reclaim in balloon → compress → swap order with reservations kept, statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vsim.clock import SimClock
from vsim.faults import InvalidArgument, NotFound
from vsim.guest_workload import GuestWorkload, os_family
from vsim.host.guest.memory import common_pool
from vsim.host.kernel.memory.memsched import MemoryManager
from vsim.host.kernel.memory.pmap import PAGES_PER_MB, MachineMemory
from vsim.host.kernel.memory.reclaim import MemoryState, min_free_pages
from vsim.memory_settings import MemorySettings, VmMemorySettings
from vsim.virtual_time import run

QUIET = GuestWorkload(
    working_set_pct=0, boot_touch_pct=0, zero_pct=0, common_pct=0, dirty_rate=0, touch_rate=0
)
"""A guest that writes one private page at boot and nothing after: tests write the rest."""
SAME = np.arange(1000, 1064, dtype=np.uint64)
"""Content two VMs both write."""


def advance(clock: SimClock, seconds: float) -> None:
    """Moves the clock these synchronous tests read (each step on a loop of its own)."""
    run(clock.advance(seconds))


def manager(tmp_path: Path, memory_mb: int = 256, **settings: object) -> MemoryManager:
    return MemoryManager(memory_mb, SimClock(), tmp_path, MemorySettings(**settings))


def start(m: MemoryManager, name: str, memory_mb: int = 16, **settings: object) -> None:
    uuid = f"{name:0<8}-0000-4000-8000-000000000000"
    m.power_on(name, uuid, memory_mb, "rhel9_64Guest", VmMemorySettings(**settings), QUIET)


def shared_between(m: MemoryManager, a: str, b: str) -> int:
    pa, pb = (m.memory.vms[n] for n in (a, b))
    return len(np.intersect1d(pa.pmap[pa.pmap >= 0], pb.pmap[pb.pmap >= 0]))


def write_same_twice(m: MemoryManager, name: str) -> None:
    """SAME at pages 100.. and 200..: sharable within the VM under any salting."""
    m.write(name, np.arange(100, 164), SAME)
    m.write(name, np.arange(200, 264), SAME)


@pytest.mark.parametrize(
    ("salting", "salts", "across"),
    [
        (2, ("", ""), False),  # default: each VM its own UUID as salt
        (2, ("x", "x"), True),  # administrators gave both the same salt
        (2, ("x", "y"), False),
        (1, ("", ""), True),  # no salt: the common default
        (1, ("x", "x"), True),
        (1, ("x", ""), False),
        (0, ("x", "y"), True),  # salting off: salts ignored
    ],
)
def test_salting_decides_what_is_shared(tmp_path, salting, salts, across):
    m = manager(tmp_path, share_force_salting=salting)
    for name, salt in zip(("a", "b"), salts, strict=True):
        start(m, name, salt=salt)
        write_same_twice(m, name)
    m.scan()
    within = m.memory.vms["a"]
    assert within.pmap[100] == within.pmap[200]  # always shared inside one VM
    assert (shared_between(m, "a", "b") == 64) is across
    assert (shared_between(m, "a", "b") == 0) is not across
    m.memory.check()


def test_a_salting_change_reaches_a_vm_at_its_next_power_on(tmp_path):
    m = manager(tmp_path, share_force_salting=2)
    start(m, "a")
    start(m, "b")
    m.set_settings(MemorySettings(share_force_salting=0))
    for name in ("a", "b"):
        write_same_twice(m, name)
    m.scan()
    assert shared_between(m, "a", "b") == 0
    m.power_off("b")
    start(m, "b")
    write_same_twice(m, "b")
    m.power_off("a")
    start(m, "a")
    write_same_twice(m, "a")
    m.scan()
    assert shared_between(m, "a", "b") == 64


def test_sharing_disabled_on_the_host_shares_nothing(tmp_path):
    clock = SimClock()
    m = MemoryManager(256, clock, tmp_path, MemorySettings(page_sharing=False))
    start(m, "a")
    write_same_twice(m, "a")
    advance(clock, 10 * m.settings.share_scan_period)
    m.tick()
    assert m.scans == 0
    assert m.vm_stats("a").shared == 0
    m.set_settings(MemorySettings(page_sharing=True))
    m.tick()
    assert m.scans == 1
    assert m.vm_stats("a").shared == 128 / PAGES_PER_MB


def test_sharing_disabled_for_a_vm_shares_none_of_its_pages(tmp_path):
    m = manager(tmp_path, share_force_salting=0)
    start(m, "a", page_sharing=False)
    start(m, "b")
    write_same_twice(m, "a")
    write_same_twice(m, "b")
    m.scan()
    assert m.vm_stats("a").shared == 0
    assert shared_between(m, "a", "b") == 0
    assert m.vm_stats("b").shared == 128 / PAGES_PER_MB


def test_statistics_follow_the_pages(tmp_path):
    m = manager(tmp_path, share_force_salting=0)
    start(m, "a")
    start(m, "b")
    for name in ("a", "b"):
        m.write(name, np.arange(10, 74), SAME)
        m.write(name, np.arange(300, 364), np.zeros(64, np.uint64))
    m.scan()
    a = m.vm_stats("a")
    mb = 1 / PAGES_PER_MB
    assert a.granted == pytest.approx(129 * mb)  # 64 + 64 + the boot page
    assert a.zero == pytest.approx(64 * mb)
    assert a.shared == pytest.approx(128 * mb)
    # Its part of the savings: half of each SAME page, 127/128 of each zero page.
    assert a.shared_saved == pytest.approx((64 / 2 + 64 * 127 / 128) * mb)
    assert a.consumed == pytest.approx(a.granted - a.shared_saved)
    host = m.host_stats()
    assert host.shared_common == pytest.approx(65 * mb)  # 64 SAME pages and one zero page
    assert host.shared_saved == pytest.approx(2 * 128 * mb - 65 * mb)
    assert host.consumed == pytest.approx((65 + 2) * mb)
    assert host.state == "high"


def test_min_free_follows_the_sliding_scale():
    gb = 1024 * PAGES_PER_MB
    # 64 GB: 6% of 4 GB + 4% of 8 GB + 2% of 16 GB + 1% of 36 GB = 1.24 GB
    assert min_free_pages(64 * gb) == int(0.24 * gb + 0.32 * gb + 0.32 * gb + 0.36 * gb)
    assert min_free_pages(2 * gb) == int(0.12 * gb)


def overcommitted(tmp_path: Path, **first: object) -> tuple[MemoryManager, SimClock]:
    """A 1 GB host with three 512 MB VMs that have each booted 256 MB."""
    clock = SimClock()
    m = MemoryManager(1024, clock, tmp_path, MemorySettings(share_force_salting=2))
    workload = GuestWorkload(
        working_set_pct=50, boot_touch_pct=50, zero_pct=0, common_pct=0, dirty_rate=0,
        touch_rate=0,
    )  # fmt: skip
    for i, name in enumerate(("vm-1", "vm-2", "vm-3")):
        settings = VmMemorySettings(**first) if i == 0 else VmMemorySettings()
        uuid = f"0000000{i}-0000-4000-8000-000000000000"
        m.power_on(name, uuid, 512, "rhel9_64Guest", settings, workload)
    return m, clock


def test_overcommit_reclaims_in_balloon_compress_swap_order(tmp_path):
    """Demand grows 32 MB per VM per second until it is half again the host's memory:
    balloons first (soft state), then compression, then swapping; every page still
    reads back what was written."""
    m, clock = overcommitted(tmp_path, reservation_mb=384)
    model = {name: np.zeros(512 * PAGES_PER_MB, np.uint64) for name in m.powered_on()}
    for name in m.powered_on():
        booted = np.arange(256 * PAGES_PER_MB)
        model[name][booted] = m.read(name, booted)
    rng = np.random.default_rng(5)
    history: list[str] = []
    reserved = m.reclaimer.vms["vm-1"]
    touched = 256 * PAGES_PER_MB
    for step in range(8):
        for name in m.powered_on():
            ppns = np.arange((256 + 32 * step) * PAGES_PER_MB, (288 + 32 * step) * PAGES_PER_MB)
            content = rng.integers(1, 2**63, len(ppns), dtype=np.uint64)
            m.write(name, ppns, content)
            model[name][ppns] = content
        advance(clock, 1.0)
        m.tick()
        for vm in m.reclaimer.vms.values():
            history += [what for what, _ in vm.log]
            vm.log.clear()
        touched += 32 * PAGES_PER_MB
        # Reserved memory the guest has touched is never reclaimed.
        assert reserved.granted >= min(reserved.reservation_pages, touched)
    first = {t: history.index(t) for t in ("balloon", "compress", "swap")}
    assert first["balloon"] < first["compress"] < first["swap"]
    stats = m.host_stats()
    assert stats.ballooned > 0 and stats.compressed > 0 and stats.swapped > 0
    assert m.vm_stats("vm-1").granted >= 384
    for name, expected in model.items():
        assert np.array_equal(m.read(name, np.arange(512 * PAGES_PER_MB)), expected), name
    m.memory.check()


def test_no_reservation_is_ever_reclaimed(tmp_path):
    m, clock = overcommitted(tmp_path, reservation_mb=512)
    full = np.arange(512 * PAGES_PER_MB)
    for name in ("vm-1", "vm-2", "vm-3"):
        m.write(name, full, full.astype(np.uint64) + 1)
        advance(clock, 1.0)
        m.tick()
    reserved = m.vm_stats("vm-1")
    assert reserved.granted == 512
    assert reserved.ballooned == reserved.compressed == reserved.swapped == 0
    assert np.array_equal(m.read("vm-1", full), full.astype(np.uint64) + 1)


def grow(m: MemoryManager, clock: SimClock, steps: int = 8) -> None:
    for step in range(steps):
        for name in m.powered_on():
            ppns = np.arange((256 + 32 * step) * PAGES_PER_MB, (288 + 32 * step) * PAGES_PER_MB)
            m.write(name, ppns, ppns.astype(np.uint64) + 1)
        advance(clock, 1.0)
        m.tick()


def test_without_a_balloon_driver_compression_comes_first(tmp_path):
    m, clock = overcommitted(tmp_path)
    for name in m.powered_on():
        m.set_vm_settings(name, VmMemorySettings(balloon_driver=False))
    grow(m, clock)
    logs = [what for vm in m.reclaimer.vms.values() for what, _ in vm.log]
    assert "balloon" not in logs
    assert logs.index("compress") < logs.index("swap")
    assert m.host_stats().ballooned == 0


def test_the_swap_file_is_a_real_file_holding_the_pages(tmp_path):
    m, clock = overcommitted(tmp_path)
    grow(m, clock)
    swapping = [vm for vm in m.reclaimer.vms.values() if vm.swap.used]
    assert swapping
    vm = swapping[0]
    ppn = int(np.flatnonzero(vm.pages.backing == 4)[0])
    slot = int(vm.pages.stash[ppn])
    raw = vm.swap.path.read_bytes()[slot * 4096 : slot * 4096 + 8]
    assert int.from_bytes(raw, "little") == ppn + 1
    path = vm.swap.path
    m.power_off(vm.pages.name)
    assert not path.exists()


def test_bad_settings_change_nothing(tmp_path):
    m = manager(tmp_path)
    start(m, "a", memory_mb=64, reservation_mb=32)
    before = m.reclaimer.vms["a"].reservation_pages
    with pytest.raises(InvalidArgument, match="below the reservation"):
        m.set_vm_settings("a", VmMemorySettings(reservation_mb=32, limit_mb=16))
    with pytest.raises(InvalidArgument):
        m.set_vm_settings("a", VmMemorySettings(reservation_mb=128))
    with pytest.raises(InvalidArgument):
        m.set_vm_settings("a", VmMemorySettings(shares=-5))
    with pytest.raises(InvalidArgument):
        m.set_settings(MemorySettings(share_force_salting=3))
    assert m.reclaimer.vms["a"].reservation_pages == before
    assert m.settings.share_force_salting == 2
    with pytest.raises(NotFound):
        m.vm_stats("nope")


def test_guests_of_one_family_have_common_pages(tmp_path):
    assert os_family("windows2019srv_64Guest") == "windows"
    assert os_family("ubuntu64Guest") == "linux"
    pool = set(common_pool("linux").tolist())
    m = manager(tmp_path, memory_mb=2048, share_force_salting=0)
    for name in ("a", "b"):
        m.power_on(name, f"{name:0<8}-0000-4000-8000-000000000000", 256, "ubuntu64Guest")
    m.scan()
    common = m.memory.content[np.flatnonzero(m.memory.refcount > 1)]
    assert set(common.tolist()) & pool
    assert m.vm_stats("a").zero > 0


def busy(memory_mb: int, shares: int = 0, **settings: object) -> tuple:
    workload = GuestWorkload(
        working_set_pct=100, boot_touch_pct=10, zero_pct=0, common_pct=0,
        dirty_rate=memory_mb * PAGES_PER_MB / 4, touch_rate=0,
    )  # fmt: skip
    return VmMemorySettings(shares=shares, **settings), workload


def test_under_contention_memory_follows_shares(tmp_path):
    """Two guests that each want the whole host: the one with four times the shares
    ends up with about four times the memory (it is reclaimed from the other)."""
    clock = SimClock()
    m = MemoryManager(1024, clock, tmp_path)
    for name, per_mb in (("hi", 20), ("lo", 5)):
        settings, workload = busy(1024, shares=per_mb * 1024)
        m.power_on(name, f"{name:0<8}-0000-4000-8000-000000000000", 1024, "rhel9_64Guest",
                   settings, workload)  # fmt: skip
    for _ in range(40):
        advance(clock, 1.0)
        m.tick()
    hi, lo = m.vm_stats("hi"), m.vm_stats("lo")
    assert hi.target == pytest.approx(4 * lo.target, rel=0.05)
    assert hi.granted > 2 * lo.granted
    m.memory.check()


def test_a_memory_limit_holds_while_the_host_has_memory_to_spare(tmp_path):
    clock = SimClock()
    m = MemoryManager(4096, clock, tmp_path)
    settings, workload = busy(1024, limit_mb=256)
    m.power_on("capped", "c0000000-0000-4000-8000-000000000000", 1024, "rhel9_64Guest",
               settings, workload)  # fmt: skip
    for _ in range(5):
        advance(clock, 1.0)
        assert m.tick() == MemoryState.HIGH
        assert m.vm_stats("capped").granted <= 256
    assert m.vm_stats("capped").swapped + m.vm_stats("capped").ballooned > 0


def test_shared_pages_can_be_reclaimed(tmp_path):
    """Two VMs share 8 pages; a third needs 12 of 16: the shared pages are swapped
    out of both sharers, which frees them."""
    from vsim.host.kernel.memory.page_sharing import PageSharing
    from vsim.host.kernel.memory.reclaim import Reclaimer, VmReclaim, VmSwapFile

    memory = MachineMemory(16)
    reclaimer = Reclaimer(memory)
    vms = {}
    for name in "abc":
        pages = memory.add_vm(name, 12, domain=0, sharable=True)
        vms[name] = VmReclaim(
            pages, VmSwapFile(tmp_path / f"{name}.vswp", 12), balloon_driver=False
        )
        reclaimer.add(vms[name])
    same = np.arange(1, 9, dtype=np.uint64)
    for name in "ab":
        reclaimer.overwrite(vms[name], np.arange(8), same)
    PageSharing(memory).scan()
    assert memory.used_pages == 8
    reclaimer.overwrite(vms["c"], np.arange(12), np.arange(100, 112, dtype=np.uint64))
    memory.check()
    for name in "ab":
        reclaimer.bring_in(vms[name], np.arange(4))
    assert memory.read_mapped(vms["a"].pages, np.arange(4)).tolist() == [1, 2, 3, 4]


def test_a_host_back_from_idle_does_not_replay_the_idle_time(tmp_path):
    from vsim.host.kernel.vmkernel import HostKernel, VmConfig
    from vsim.spec import HostSpec
    from vsim.vm_resources import VmResources

    clock = SimClock()
    kernel = HostKernel(HostSpec("esxi-01", cpu_cores=4, cpu_mhz=2000), clock, tmp_path)
    kernel.register_vm(VmConfig("vm", "0000000a-0000-4000-8000-000000000000", 1, 256,
                                resources=VmResources(cpu_load_pct=100)))  # fmt: skip
    advance(clock, 3600.0)
    kernel.power_on("vm")
    advance(clock, 1.0)
    kernel.tick()
    assert kernel.cpu.vm_stats("vm").used_mhz_s == pytest.approx(2000.0)


def test_pool_reservations_and_limits_hold_like_a_vms_own(tmp_path):
    """A pool's reservation protects its VMs' memory as a VM's own reservation does,
    and a pool's limit holds on an idle host."""
    from vsim.resource_allocation import Unit, pool_allocation

    clock = SimClock()
    m = MemoryManager(1024, clock, tmp_path)
    gold = pool_allocation("MB", reservation=384, expandable_reservation=False)
    m.pools.add_pool("gold", {Unit.MB: gold})
    m.pools.add_pool("capped", {Unit.MB: pool_allocation("MB", limit=64)})
    for name, pool, reservation in (
        ("g", "gold", 0), ("r", "Resources", 384), ("x", "Resources", 0),
        ("y", "Resources", 0),
    ):  # fmt: skip
        settings, workload = busy(512, reservation_mb=reservation)
        uuid = f"{name:0<8}-0000-4000-8000-000000000000"
        m.power_on(name, uuid, 512, "rhel9_64Guest", settings, workload, pool=pool)
    for _ in range(12):
        advance(clock, 1.0)
        m.tick()
    # Both hold what is reserved for them, the pool's as the VM's own.
    assert m.vm_stats("g").granted >= 384
    assert m.vm_stats("r").granted >= 384
    assert m.vm_stats("x").granted < 384
    m.power_off("x")
    m.power_off("y")
    settings, workload = busy(256)
    m.power_on("a", "a0000000-0000-4000-8000-000000000000", 256, "rhel9_64Guest",
               settings, workload, pool="capped")  # fmt: skip
    for _ in range(3):
        advance(clock, 1.0)
        m.tick()
        assert m.vm_stats("a").granted <= 64
    m.memory.check()
