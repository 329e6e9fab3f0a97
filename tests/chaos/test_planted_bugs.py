"""The checkers can fail: each test plants a known bug through dependency injection
(a patched function of the product, in this test only) and shows that the seeded
runs report it, as the invariant the bug breaks, within a bounded number of seeds,
and that the failing seed replays to the same violation. Without the bug the same
seeds pass (tests/chaos/test_seeds.py runs them and more)."""

from __future__ import annotations

import asyncio

import pytest

from vsim.cluster.simulator import workload
from vsim.cluster.simulator.run import SeedReport, Settings, run_seed
from vsim.host.fdm.service import Fdm
from vsim.host.hostd.migration import Migrations
from vsim.host.kernel.memory.memsched import MemoryManager
from vsim.host.storage import nfs_lock, vmfs
from vsim.host.storage.vmdk import VirtualDisk


def first_failure(settings: Settings, seeds: range, checker: str) -> SeedReport:
    """The first seed whose run breaks `checker`'s invariant."""
    for seed in seeds:
        report = run_seed(seed, settings)
        if any(v.checker == checker for v in report.violations):
            return report
    pytest.fail(f"no seed of {seeds} broke {checker!r}: the checker cannot see the bug")


def replays(report: SeedReport, settings: Settings, checker: str) -> None:
    again = run_seed(report.seed, settings)
    assert again.digest == report.digest
    assert [v for v in again.violations if v.checker == checker]


def lock_breakers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users who break locks by hand often, among their other work."""
    monkeypatch.setattr(workload, "WEIGHTS", {**workload.WEIGHTS, "break-lock": 150})


def test_a_vmfs_lock_broken_before_its_owner_is_stale_is_caught(monkeypatch):
    """Planted: the staleness test waits one second instead of 16, so a live host's
    disk lock is broken while its guest still writes, before its next heartbeat
    tells it so."""
    monkeypatch.setattr(vmfs, "is_live", lambda age: age is not None and age < 1.0)
    lock_breakers(monkeypatch)
    settings = Settings(hosts=3, minutes=2, faults=())
    report = first_failure(settings, range(40), "disk-lock exclusion")
    broken = [v for v in report.violations if v.checker == "disk-lock exclusion"]
    assert any("cleared its heartbeat slot" in v.event or "held by" in v.event for v in broken)
    replays(report, settings, "disk-lock exclusion")


def test_an_nfs_holder_writing_past_its_give_up_point_is_caught(monkeypatch):
    """Planted: the holder never gives its lock up however long its renewals fail,
    past the 35 s at which other hosts may break it, so once its path is back its
    writes land on a lock another host broke."""
    monkeypatch.setattr(nfs_lock, "GIVE_UP_AFTER", 10_000.0)
    lock_breakers(monkeypatch)
    settings = Settings(hosts=3, minutes=4, faults=("storage-path",))
    report = first_failure(settings, range(80), "disk-lock exclusion")
    broken = [v for v in report.violations if v.checker == "disk-lock exclusion"]
    assert any("nfs-01" in v.event or "extra-" in v.event for v in broken)
    replays(report, settings, "disk-lock exclusion")


def test_a_guest_write_acknowledged_before_it_is_durable_is_caught(monkeypatch):
    """Planted: a disk write is acknowledged at once and sent to the array a second
    later, so a host that crashes in that second loses writes its guest was told
    were done."""
    write = VirtualDisk.write

    async def write_back(self: VirtualDisk, lba: int, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(1.0, lambda: loop.create_task(write(self, lba, data)))

    monkeypatch.setattr(VirtualDisk, "write", write_back)
    settings = Settings(hosts=3, minutes=2, faults=("crash",))
    report = first_failure(settings, range(40), "acknowledged writes survive")
    lost = [v for v in report.violations if v.checker == "acknowledged writes survive"]
    assert any("missing" in v.event for v in lost)
    replays(report, settings, "acknowledged writes survive")


def migrators(monkeypatch: pytest.MonkeyPatch) -> None:
    """Users who migrate VMs often, among their other work."""
    monkeypatch.setattr(workload, "WEIGHTS", {**workload.WEIGHTS, "migrate": 120})


def test_a_vmotion_that_loses_pages_is_caught(monkeypatch):
    """Planted: the destination drops the last page of every batch the source sends,
    so the guest resumes there with memory unlike what it left."""
    receive = MemoryManager.receive

    def lossy(self: MemoryManager, name: str, ppns, fingerprints) -> None:
        receive(self, name, ppns[:-1], fingerprints[:-1])

    monkeypatch.setattr(MemoryManager, "receive", lossy)
    migrators(monkeypatch)
    settings = Settings(hosts=3, minutes=1, faults=())
    report = first_failure(settings, range(20), "vmotion moves the whole VM")
    broken = [v for v in report.violations if v.checker == "vmotion moves the whole VM"]
    assert any("pages unlike" in v.event for v in broken)
    replays(report, settings, "vmotion moves the whole VM")


def test_a_failed_switchover_that_never_resumes_the_guest_is_caught(monkeypatch):
    """Planted: a source whose switchover failed takes its VM's disks back but never
    lets its guest run again, so the VM stays frozen on its source for good."""

    async def frozen(self, name, vmx, link, checkpoint) -> bool:
        if vmx is not None and vmx.disk_specs:
            await vmx.open_disks()
        return False

    monkeypatch.setattr(Migrations, "_resolve_switchover", frozen)
    migrators(monkeypatch)
    settings = Settings(hosts=3, minutes=2, faults=("migration",))
    report = first_failure(settings, range(40), "vmotion moves the whole VM")
    broken = [v for v in report.violations if v.checker == "vmotion moves the whole VM"]
    assert any("still stunned" in v.event for v in broken)
    replays(report, settings, "vmotion moves the whole VM")


def test_a_master_that_restarts_nothing_is_caught(monkeypatch):
    """Planted: the HA master declares hosts dead but never restarts their VMs, so a
    crashed host's protected VMs stay down."""
    monkeypatch.setattr(Fdm, "_fail_over", lambda self, host, names=None: None)
    monkeypatch.setattr(Fdm, "_find_missing", lambda self: None)
    settings = Settings(hosts=3, minutes=4, faults=("crash",))
    report = first_failure(settings, range(40), "HA restarts a failed host's VMs")
    broken = [v for v in report.violations if v.checker == "HA restarts a failed host's VMs"]
    assert any("runs on no host" in v.event for v in broken)
    replays(report, settings, "HA restarts a failed host's VMs")
