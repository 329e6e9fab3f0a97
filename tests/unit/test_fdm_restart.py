"""The FDM master's restart core (vSphere HA) on exact simulated times. esxi-09 is the
dead host in every scenario: last heard at 100 s, declared dead at 115 s, so its locks
are stale at 116 s on VMFS and at 135 s on NFS."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vsim.faults import InvalidArgument
from vsim.host.fdm import restart as restart_module
from vsim.host.fdm.restart import (
    DISABLED,
    HIGH,
    HIGHEST,
    LOW,
    LOWEST,
    MEDIUM,
    NFS,
    VMFS,
    Datastore,
    FailoverCompleted,
    FailoverInitiated,
    GiveUp,
    LeftOff,
    PowerOn,
    ProtectedVm,
    RestartManager,
    RestartSettings,
    SurvivingHost,
)
from vsim.host.storage import nfs_lock, vmfs

DEAD = "esxi-09"
LAST_HEARD = 100.0
DECLARED = 115.0
VMFS_01 = Datastore("vmfs-01", VMFS)
NFS_01 = Datastore("nfs-01", NFS)
NFS_02 = Datastore("nfs-02", NFS)
REACHED = frozenset({"vmfs-01", "nfs-01"})
"""What every host reaches unless a test says otherwise (nfs-02: none)."""


def vm(
    name: str,
    priority: str = MEDIUM,
    memory_mb: int = 1024,
    cpu_mhz: int = 500,
    datastores: tuple[Datastore, ...] = (VMFS_01,),
    has_disks: bool = True,
) -> ProtectedVm:
    return ProtectedVm(name, memory_mb, cpu_mhz, datastores, priority, has_disks)


def diskless(name: str, priority: str = MEDIUM, memory_mb: int = 1024) -> ProtectedVm:
    return vm(name, priority, memory_mb, datastores=(), has_disks=False)


def host(
    name: str,
    memory_mb: int = 65536,
    cpu_mhz: int = 40000,
    datastores: frozenset[str] = REACHED,
    in_maintenance: bool = False,
) -> SurvivingHost:
    return SurvivingHost(name, datastores, memory_mb, cpu_mhz, in_maintenance)


def manager(*hosts: SurvivingHost) -> RestartManager:
    return RestartManager(hosts or (host("esxi-01"),), now=0.0)


def begin(m: RestartManager, *vms: ProtectedVm, now: float = DECLARED) -> list:
    return m.begin(now, DEAD, vms, LAST_HEARD)


def power_ons(actions: list) -> list[PowerOn]:
    return [a for a in actions if isinstance(a, PowerOn)]


# order and what is left off


def test_restarts_go_highest_priority_first_ties_by_name_and_disabled_is_left_off():
    m = manager()
    vms = [
        diskless("vm-a", LOWEST),
        diskless("vm-b", HIGH),
        diskless("vm-c", DISABLED),
        diskless("vm-d", HIGHEST),
        diskless("vm-e", LOW),
        diskless("vm-f", HIGH),
        diskless("vm-g"),  # medium, the default
    ]
    order = ["vm-d", "vm-b", "vm-f", "vm-g", "vm-e", "vm-a"]
    assert begin(m, *vms) == [
        FailoverInitiated(DEAD, tuple(order)),
        LeftOff("vm-c", "its restart priority is disabled"),
        *[PowerOn(name, "esxi-01", 1) for name in order],
    ]


def test_when_capacity_runs_short_the_higher_priority_gets_it():
    m = manager(host("esxi-01", memory_mb=2048))
    actions = begin(m, diskless("vm-a", LOW, 1024), diskless("vm-z", HIGH, 2048))
    assert power_ons(actions) == [PowerOn("vm-z", "esxi-01", 1)]


def test_a_failover_of_disabled_vms_only_leaves_them_off_and_is_done():
    m = manager()
    assert begin(m, diskless("vm-b", DISABLED), diskless("vm-a", DISABLED)) == [
        LeftOff("vm-a", "its restart priority is disabled"),
        LeftOff("vm-b", "its restart priority is disabled"),
    ]
    assert m.done(DEAD)
    assert m.next_wakeup() is None


# the dead host's locks


def test_a_power_on_waits_for_the_locks_to_go_stale_vmfs_16_s_nfs_35_s():
    m = manager()
    actions = begin(
        m,
        vm("vm-vmfs", datastores=(VMFS_01,)),
        vm("vm-nfs", datastores=(NFS_01,)),
        vm("vm-both", datastores=(VMFS_01, NFS_01)),
        diskless("vm-nodisk"),
    )
    assert power_ons(actions) == [PowerOn("vm-nodisk", "esxi-01", 1)]
    assert m.next_wakeup() == 116.0
    assert m.tick(115.999) == []

    assert m.tick(116.0) == [PowerOn("vm-vmfs", "esxi-01", 1)]
    assert m.next_wakeup() == 135.0
    assert m.tick(134.999) == []

    assert m.tick(135.0) == [PowerOn("vm-both", "esxi-01", 1), PowerOn("vm-nfs", "esxi-01", 1)]
    assert m.next_wakeup() is None


def test_a_tick_after_the_locks_went_stale_powers_on_then_not_earlier_nor_twice():
    m = manager()
    begin(m, vm("vm-nfs", datastores=(NFS_01,)))
    assert m.tick(120.0) == []
    assert m.tick(150.0) == [PowerOn("vm-nfs", "esxi-01", 1)]
    assert m.tick(151.0) == []


def test_a_failover_begun_after_the_locks_went_stale_powers_on_at_once():
    m = manager()
    actions = begin(m, vm("vm-nfs", datastores=(NFS_01,)), vm("vm-vmfs"), now=140.0)
    assert power_ons(actions) == [
        PowerOn("vm-nfs", "esxi-01", 1),
        PowerOn("vm-vmfs", "esxi-01", 1),
    ]


def test_the_stale_times_are_the_storage_stacks():
    settings = RestartSettings()
    assert settings.vmfs_lock_stale_s == vmfs.HB_TIMEOUT
    assert settings.nfs_lock_stale_s == nfs_lock.STALE_AFTER


# placement


def test_placement_picks_the_host_reaching_the_datastores_with_most_free_memory():
    m = manager(
        host("esxi-01", memory_mb=8192),
        host("esxi-02", memory_mb=6144),
        host("esxi-03", memory_mb=65536, datastores=frozenset({"nfs-01"})),  # no vmfs-01
        host("esxi-04", memory_mb=65536, in_maintenance=True),
    )
    vms = [vm(f"vm-{i}", memory_mb=4096) for i in "abcd"]
    # a: 01 (8192 > 6144), 4096 left; b: 02 (6144), 2048 left; c: 01 (4096 >= 4096)
    assert power_ons(begin(m, *vms)) == []
    assert m.tick(116.0) == [
        PowerOn("vm-a", "esxi-01", 1),
        PowerOn("vm-b", "esxi-02", 1),
        PowerOn("vm-c", "esxi-01", 1),
    ]
    # d fits nowhere: that is its first attempt, the next at 116 + 120
    assert m.next_wakeup() == 236.0


def test_equal_free_memory_goes_to_the_first_host_by_name_and_cpu_is_admitted_too():
    m = manager(
        host("esxi-03", memory_mb=4096),
        host("esxi-02", memory_mb=4096),
        host("esxi-01", memory_mb=65536, cpu_mhz=1000),
    )
    actions = begin(m, diskless("vm-a"), diskless("vm-b"))
    # esxi-01 has the memory but not the CPU: vm-a's 500 MHz leave 500, vm-b's fit too
    assert power_ons(actions) == [
        PowerOn("vm-a", "esxi-01", 1),
        PowerOn("vm-b", "esxi-01", 1),
    ]
    actions = m.begin(116.0, "esxi-08", [diskless("vm-c"), diskless("vm-d")], 100.0)
    assert power_ons(actions) == [
        PowerOn("vm-c", "esxi-02", 1),  # 4096 = 4096, by name
        PowerOn("vm-d", "esxi-03", 1),  # esxi-02 has 3072 left
    ]


def test_a_vm_no_host_reaches_waits_and_goes_to_the_host_that_appears():
    m = manager(host("esxi-01"))
    begin(m, vm("vm-a", datastores=(NFS_02,)))
    assert m.tick(135.0) == []
    assert m.next_wakeup() == 255.0  # attempt 1 found no host: retried at 135 + 120
    assert m.host_changed(150.0, host("esxi-01", memory_mb=1000)) == []
    assert m.host_changed(200.0, host("esxi-02", datastores=frozenset({"nfs-02"}))) == [
        PowerOn("vm-a", "esxi-02", 2)
    ]
    assert m.power_on_succeeded(210.0, "vm-a", "esxi-02") == [
        FailoverCompleted(DEAD, (("vm-a", "esxi-02"),), ())
    ]
    assert m.done(DEAD)


def test_a_vm_too_big_for_any_host_is_placed_when_a_host_frees_memory():
    m = manager(host("esxi-01", memory_mb=2048))
    begin(m, diskless("vm-a", memory_mb=4096))
    assert m.next_wakeup() == 235.0
    assert m.host_changed(130.0, host("esxi-01", memory_mb=4096)) == [PowerOn("vm-a", "esxi-01", 2)]


def test_a_vm_that_never_fits_follows_the_retry_timeline_and_is_given_up():
    m = manager(host("esxi-01", datastores=frozenset({"vmfs-01"})), host("esxi-02", memory_mb=512))
    begin(m, vm("vm-a", datastores=(NFS_01,)))
    assert m.tick(135.0) == []
    tried = [135.0]
    for delay in (120, 240, 480, 960):
        assert m.tick(tried[-1] + delay - 0.5) == []
        tried.append(tried[-1] + delay)
        actions = m.tick(tried[-1])
    assert tried == [135.0, 255.0, 495.0, 975.0, 1935.0]
    why = (
        "no host fits: esxi-01 does not reach nfs-01; "
        "esxi-02 has 512 MB of memory free, 1024 needed"
    )
    assert actions == [
        GiveUp("vm-a", tuple(f"attempt {n}: {why}" for n in range(1, 6))),
        FailoverCompleted(DEAD, (), ("vm-a",)),
    ]
    assert m.next_wakeup() is None
    assert m.host_changed(2000.0, host("esxi-03")) == []  # given up: for good


def test_a_host_report_takes_the_power_ons_in_flight_on_it_into_account():
    m = manager(host("esxi-01", memory_mb=4096))
    begin(m, diskless("vm-a", HIGH, 2048), diskless("vm-b", memory_mb=4096))
    # the host reports 4096 MB free: vm-a's 2048 are not counted yet, so 2048 are left
    assert m.host_changed(120.0, host("esxi-01", memory_mb=4096)) == []
    assert m.host_changed(121.0, host("esxi-01", memory_mb=6144)) == [PowerOn("vm-b", "esxi-01", 2)]


# slots


def test_33_vms_to_one_host_32_at_once_the_33rd_when_a_power_on_ends():
    m = manager()
    names = [f"vm-{i:02}" for i in range(1, 34)]
    actions = begin(m, *(diskless(name) for name in names))
    assert power_ons(actions) == [PowerOn(name, "esxi-01", 1) for name in names[:32]]
    assert m.next_wakeup() is None  # it waits for a slot, not for a time
    assert m.tick(500.0) == []
    assert m.power_on_succeeded(501.0, "vm-05", "esxi-01") == [PowerOn("vm-33", "esxi-01", 1)]


def test_a_failed_power_on_frees_its_slot_too():
    m = manager()
    begin(m, *(diskless(f"vm-{i:02}") for i in range(1, 34)))
    assert m.power_on_failed(120.0, "vm-05", "esxi-01", "boom") == [PowerOn("vm-33", "esxi-01", 1)]


def test_a_vm_that_fits_only_a_full_host_waits_for_a_slot_without_counting_attempts():
    m = manager(host("esxi-01"), host("esxi-02", memory_mb=512))
    begin(m, *(diskless(f"vm-{i:02}") for i in range(1, 34)))
    assert m.next_wakeup() is None
    assert m.tick(1000.0) == []
    assert m.host_changed(2000.0, host("esxi-03")) == [PowerOn("vm-33", "esxi-03", 1)]


# retries


def test_retries_at_120_240_480_960_s_after_each_failure_avoiding_the_failing_host():
    m = manager(host("esxi-01", memory_mb=8192), host("esxi-02", memory_mb=4096))
    assert m.tick(116.0) == []
    begin(m, vm("vm-a"), now=116.0)
    timeline = []
    failures = [(120.0, "esxi-01"), (250.0, "esxi-02"), (500.0, "esxi-01"), (1000.0, "esxi-02")]
    for n, (failed_at, on) in enumerate(failures, start=1):
        assert m.power_on_failed(failed_at, "vm-a", on, f"failure {n}") == []
        wakeup = m.next_wakeup()
        assert m.tick(wakeup - 0.001) == []
        timeline.append((wakeup, m.tick(wakeup)))
    assert timeline == [
        (240.0, [PowerOn("vm-a", "esxi-02", 2)]),  # 120 + 120, not the failed esxi-01
        (490.0, [PowerOn("vm-a", "esxi-01", 3)]),  # 250 + 240
        (980.0, [PowerOn("vm-a", "esxi-02", 4)]),  # 500 + 480, esxi-01 has more memory
        (1960.0, [PowerOn("vm-a", "esxi-01", 5)]),  # 1000 + 960
    ]
    assert m.power_on_failed(1970.0, "vm-a", "esxi-01", "failure 5") == [
        GiveUp(
            "vm-a",
            (
                "attempt 1 on esxi-01: failure 1",
                "attempt 2 on esxi-02: failure 2",
                "attempt 3 on esxi-01: failure 3",
                "attempt 4 on esxi-02: failure 4",
                "attempt 5 on esxi-01: failure 5",
            ),
        ),
        FailoverCompleted(DEAD, (), ("vm-a",)),
    ]
    assert m.done(DEAD)
    assert m.next_wakeup() is None


def test_the_failing_host_is_tried_again_when_no_other_fits():
    m = manager(host("esxi-01"), host("esxi-02", memory_mb=512))
    begin(m, diskless("vm-a"))
    m.power_on_failed(120.0, "vm-a", "esxi-01", "boom")
    assert m.tick(240.0) == [PowerOn("vm-a", "esxi-01", 2)]


def test_a_failed_power_on_gives_its_memory_to_a_vm_waiting_for_it():
    m = manager(host("esxi-01", memory_mb=2048))
    begin(m, diskless("vm-a", HIGH, 2048), diskless("vm-b", LOW, 2048))
    assert m.power_on_failed(130.0, "vm-a", "esxi-01", "boom") == [PowerOn("vm-b", "esxi-01", 2)]
    # vm-a's retry at 250 finds esxi-01 full: its second attempt fails to place
    assert m.tick(250.0) == []
    assert m.next_wakeup() == 490.0


def test_a_host_that_dies_during_a_power_on_fails_it_and_the_retry_goes_elsewhere():
    m = manager(host("esxi-01", memory_mb=8192), host("esxi-02", memory_mb=4096))
    begin(m, vm("vm-a", datastores=(NFS_01,)))
    assert m.tick(135.0) == [PowerOn("vm-a", "esxi-01", 1)]
    # esxi-01, last heard at 500 (the power-on never answered), is declared dead at 515
    assert m.begin(515.0, "esxi-01", [], 500.0) == []
    assert m.next_wakeup() == 635.0  # 515 + 120; its NFS locks were stale at 535
    assert m.tick(635.0) == [PowerOn("vm-a", "esxi-02", 2)]


def test_the_retry_after_a_host_died_during_a_power_on_waits_for_its_locks():
    settings = RestartSettings(retry_delays_s=(1.0, 1.0, 1.0, 1.0))
    hosts = (host("esxi-01", memory_mb=8192), host("esxi-02", memory_mb=4096))
    m = RestartManager(hosts, 0.0, settings)
    begin(m, vm("vm-a", datastores=(NFS_01,)))
    assert m.tick(135.0) == [PowerOn("vm-a", "esxi-01", 1)]
    m.begin(140.0, "esxi-01", [], 139.0)
    assert m.next_wakeup() == 174.0  # not 141: the locks esxi-01 took are stale at 139 + 35
    assert m.tick(173.9) == []
    assert m.tick(174.0) == [PowerOn("vm-a", "esxi-02", 2)]


# the failover as a whole


def test_a_failover_is_completed_when_each_vm_is_restarted_or_given_up():
    m = manager(host("esxi-01"), host("esxi-02", memory_mb=2048))
    assert begin(m, diskless("vm-a"), diskless("vm-b"), diskless("vm-c", DISABLED)) == [
        FailoverInitiated(DEAD, ("vm-a", "vm-b")),
        LeftOff("vm-c", "its restart priority is disabled"),
        PowerOn("vm-a", "esxi-01", 1),
        PowerOn("vm-b", "esxi-01", 1),
    ]
    assert not m.done(DEAD)
    assert m.power_on_succeeded(120.0, "vm-b", "esxi-01") == []
    assert not m.done(DEAD)
    assert m.power_on_succeeded(121.0, "vm-a", "esxi-01") == [
        FailoverCompleted(DEAD, (("vm-a", "esxi-01"), ("vm-b", "esxi-01")), ())
    ]
    assert m.done(DEAD)
    assert m.tick(1000.0) == []  # reported once


# bad input


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: vm("vm-a", priority="urgent"), "VM 'vm-a' has restart priority 'urgent'; use"),
        (lambda: vm("vm-a", memory_mb=-1), "memory_mb of VM 'vm-a' must be between 0 and"),
        (lambda: vm("vm-a", cpu_mhz=-5), r"cpu_mhz of VM 'vm-a' must be .* >= 0 MHz, got -5"),
        (lambda: vm("vm-a", datastores=()), "VM 'vm-a' has disks but names no datastore"),
        (lambda: vm("vm-a", datastores=(VMFS_01, VMFS_01)), "names a datastore twice"),
        (lambda: Datastore("ds-1", "vsan"), "datastore 'ds-1' has kind 'vsan'; use one of"),
        (lambda: vm("vm/a"), "VM name 'vm/a' may not contain '/'"),
        (lambda: host("ESXI 1"), "host name 'ESXI 1' is not a valid host name"),
        (lambda: host("esxi-01", memory_mb=-1), "free_memory_mb of host 'esxi-01' must be"),
        (lambda: RestartManager((host("esxi-01"), host("esxi-01")), 0.0), "named twice"),
        (lambda: RestartSettings(retry_delays_s=(120, 240)), "5 attempts need 4"),
    ],
)
def test_bad_input_is_refused_by_name(make, words):
    with pytest.raises(InvalidArgument, match=words):
        make()


def started() -> RestartManager:
    m = manager(host("esxi-01"))
    begin(m, diskless("vm-a"), diskless("vm-b", DISABLED))
    return m


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (
            lambda m: m.begin(120, "esxi-08", [diskless("vm-c"), diskless("vm-c")], 100),
            "VM 'vm-c' is named twice in the VMs of esxi-08",
        ),
        (
            lambda m: m.begin(120, "esxi-08", [diskless("vm-a")], 100),
            r"VM 'vm-a' is being restarted already \(failover of esxi-09\)",
        ),
        (lambda m: m.begin(120, DEAD, [], 100), "esxi-09 is failing over already"),
        (lambda m: m.begin(120, "esxi-08", [], 130), "last heard at 130, after now"),
        (lambda m: m.tick(110), "now is 110, before the last call's 115"),
        (
            lambda m: m.power_on_succeeded(120, "vm-a", "esxi-07"),
            r"host 'esxi-07' is not a surviving host \(they are: esxi-01\)",
        ),
        (
            lambda m: m.power_on_failed(120, "vm-b", "esxi-01", "boom"),
            "VM 'vm-b' has no power-on in flight",
        ),
        (lambda m: m.done("esxi-07"), "host 'esxi-07' has had no failover"),
    ],
)
def test_bad_calls_are_refused_and_change_nothing(call, words):
    m = started()
    with pytest.raises(InvalidArgument, match=words):
        call(m)
    assert m.power_on_succeeded(120.0, "vm-a", "esxi-01") == [
        FailoverCompleted(DEAD, (("vm-a", "esxi-01"),), ())
    ]


def test_a_report_from_another_host_than_the_one_powering_on_is_refused():
    m = manager(host("esxi-01"), host("esxi-02", memory_mb=512))
    begin(m, diskless("vm-a"))
    with pytest.raises(InvalidArgument, match="'vm-a' is being powered on by esxi-01, not by"):
        m.power_on_failed(120.0, "vm-a", "esxi-02", "boom")


def test_the_core_is_sans_io():
    tree = ast.parse(Path(restart_module.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert imported == {
        "__future__",
        "collections.abc",
        "dataclasses",
        "math",
        "vsim",
        "vsim.faults",
        "vsim.ha_settings",
    }
