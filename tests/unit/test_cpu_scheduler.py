"""The proportional-share CPU scheduler: entitlements by hand, shares, reservations,
limits, noisy neighbours, work conservation, pools, admission, accounting, and the
rules over random hosts, pools, VMs and demand histories."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.faults import AlreadyExists, InsufficientResourcesFault, InvalidArgument, NotFound
from vsim.host.kernel.cpu_scheduler import CpuScheduler
from vsim.resource_allocation import (
    ROOT_POOL,
    UNLIMITED,
    Allocation,
    Unit,
    pool_allocation,
    vm_cpu_allocation,
)
from vsim.spec import HostSpec

EPS = 1e-6


def _usage(cpu: CpuScheduler) -> dict[str, float]:
    return {vm: cpu.vm_stats(vm).usage_mhz for vm in cpu.vms()}


def test_entitlements_by_hand():
    # 4 cores x 2500 MHz = 10000 MHz.
    #   A: 2 vCPUs, high   -> 4000 shares, demand 5000 (its 2 x 2500 cap)
    #   B: 2 vCPUs, normal -> 2000 shares, demand 5000
    #   C: 1 vCPU,  low    ->  500 shares, reservation 2000, demand 2500
    #   D: 1 vCPU,  normal -> 1000 shares, limit 1000, demand 2500
    # Water level t (MHz per share): x = clip(t * shares, floor, cap) with floors
    # A 0, B 0, C min(2000, 2500) = 2000, D 0 and caps A 5000, B 5000, C 2500,
    # D min(2500, 1000) = 1000. Guess C on its floor (500 t <= 2000) and D on its cap
    # (1000 t >= 1000): 4000 t + 2000 t + 2000 + 1000 = 10000 -> t = 7/6, which
    # agrees (500 * 7/6 = 583 <= 2000; 1000 * 7/6 = 1167 >= 1000; A, B below 5000).
    # A = 4000 * 7/6 = 14000/3, B = 2000 * 7/6 = 7000/3, C = 2000, D = 1000.
    cpu = CpuScheduler(cores=4, core_mhz=2500)
    cpu.power_on("A", 2, vm_cpu_allocation("high", 2))
    cpu.power_on("B", 2, vm_cpu_allocation("normal", 2))
    cpu.power_on("C", 1, vm_cpu_allocation("low", 1, reservation=2000))
    cpu.power_on("D", 1, vm_cpu_allocation("normal", 1, limit=1000))
    for vm in "ABCD":
        cpu.set_demand(vm, 10_000)  # more than any can run: capped at vcpus x 2500
    host = cpu.tick(1.0)
    assert _usage(cpu) == pytest.approx({"A": 14000 / 3, "B": 7000 / 3, "C": 2000, "D": 1000})
    assert host.usage_mhz == pytest.approx(10_000) and host.utilization == pytest.approx(1.0)
    assert host.demand_mhz == 15_000 and host.reserved_mhz == 2000
    # Ready: A wanted 5000 and ran 14000/3, so 1000/3 MHz waited = 0.1333 of a 2500 MHz
    # vCPU = 13.3 %RDY; D is held back by its limit: 1500 / 2500 = 60 %.
    assert cpu.vm_stats("A").ready_percent == pytest.approx(100 * (1000 / 3) / 2500)
    assert cpu.vm_stats("D").ready_percent == pytest.approx(60.0)
    assert cpu.vm_stats("C").ready_percent == pytest.approx(100 * 500 / 2500)


def test_shares_two_to_one_under_contention():
    cpu = CpuScheduler(cores=2, core_mhz=3000)  # 6000 MHz
    cpu.power_on("gold", 2, Allocation(2000))
    cpu.power_on("silver", 2, Allocation(1000))
    cpu.set_demand("gold", 6000)
    cpu.set_demand("silver", 6000)
    cpu.tick(1.0)
    assert _usage(cpu) == pytest.approx({"gold": 4000, "silver": 2000})


def test_a_reservation_is_honoured_under_contention():
    cpu = CpuScheduler(cores=4, core_mhz=1000)  # 4000 MHz
    cpu.power_on("reserved", 1, vm_cpu_allocation("low", 1, reservation=900))
    for i in range(3):
        cpu.power_on(f"vm-{i}", 2, vm_cpu_allocation("high", 2))
    for vm in cpu.vms():
        cpu.set_demand(vm, 4000)
    cpu.tick(1.0)
    # By shares alone it would get 500 / (500 + 3 x 4000) of 4000 = 160 MHz.
    assert cpu.vm_stats("reserved").usage_mhz == pytest.approx(900)
    assert cpu.vm_stats("vm-0").usage_mhz == pytest.approx((4000 - 900) / 3)
    # Not demanded, a reservation is not held: the others run in it.
    cpu.set_demand("reserved", 100)
    cpu.tick(1.0)
    assert cpu.vm_stats("reserved").usage_mhz == pytest.approx(100)
    assert cpu.vm_stats("vm-0").usage_mhz == pytest.approx(1300)


def test_a_limit_caps_even_with_the_host_idle():
    cpu = CpuScheduler(cores=8, core_mhz=2000)
    cpu.power_on("capped", 4, vm_cpu_allocation("high", 4, limit=1500))
    cpu.set_demand("capped", 8000)
    host = cpu.tick(2.0)
    stats = cpu.vm_stats("capped")
    assert stats.usage_mhz == 1500 and host.usage_mhz == 1500
    assert stats.ready_s == pytest.approx((8000 - 1500) / 2000 * 2.0)  # limit-held time


def test_a_vm_never_runs_faster_than_its_vcpus():
    cpu = CpuScheduler(cores=8, core_mhz=2000)
    cpu.power_on("small", 1)
    assert cpu.set_demand("small", 5000) == 2000
    cpu.tick(1.0)
    assert cpu.vm_stats("small").usage_mhz == 2000
    assert cpu.vm_stats("small").ready_s == 0  # capped demand: nothing waits


def test_a_noisy_neighbour_with_equal_shares_is_held_to_its_share():
    cpu = CpuScheduler(cores=4, core_mhz=1000)  # 4000 MHz
    cpu.power_on("noisy", 4, Allocation(1000))
    for i in range(3):
        cpu.power_on(f"quiet-{i}", 1, Allocation(1000))
    cpu.set_demand("noisy", 4000)
    for i in range(3):
        cpu.set_demand(f"quiet-{i}", 1000)
    cpu.tick(1.0)
    assert _usage(cpu) == pytest.approx(
        {"noisy": 1000, "quiet-0": 1000, "quiet-1": 1000, "quiet-2": 1000}
    )
    assert cpu.vm_stats("quiet-0").ready_s == 0


def test_idle_capacity_goes_to_whoever_demands_it():
    cpu = CpuScheduler(cores=4, core_mhz=1000)
    cpu.power_on("busy", 4, vm_cpu_allocation("low", 4))
    cpu.power_on("idle", 4, vm_cpu_allocation("high", 4))
    cpu.set_demand("busy", 4000)
    cpu.set_demand("idle", 300)
    host = cpu.tick(1.0)
    # "idle" has 4x the shares but uses 300; the low-share VM takes the other 3700.
    assert _usage(cpu) == pytest.approx({"busy": 3700, "idle": 300})
    assert host.usage_mhz == pytest.approx(4000)


def test_two_pools_high_and_normal():
    # 8 cores x 2000 = 16000 MHz. prod (high, 8000 shares) : test (normal, 4000) =
    # 2 : 1 -> 10666.67 and 5333.33, each split between two equal VMs.
    cpu = CpuScheduler(cores=8, core_mhz=2000)
    cpu.pools.add_pool("prod", {Unit.MHZ: pool_allocation("MHz", "high")})
    cpu.pools.add_pool("test", {Unit.MHZ: pool_allocation("MHz", "normal")})
    for vm, pool in [("p1", "prod"), ("p2", "prod"), ("t1", "test"), ("t2", "test")]:
        cpu.power_on(vm, 8, pool=pool)
        cpu.set_demand(vm, 16_000)
    cpu.tick(1.0)
    assert _usage(cpu) == pytest.approx(
        {"p1": 16000 / 3, "p2": 16000 / 3, "t1": 8000 / 3, "t2": 8000 / 3}
    )
    # Per VM the test VMs have as many shares as the prod ones: the pool decides.
    # When prod goes quiet, test gets the rest.
    cpu.set_demand("p1", 1000)
    cpu.set_demand("p2", 1000)
    cpu.tick(1.0)
    assert _usage(cpu) == pytest.approx({"p1": 1000, "p2": 1000, "t1": 7000, "t2": 7000})


def test_used_and_ready_time_accumulate():
    cpu = CpuScheduler(cores=1, core_mhz=1000)
    cpu.power_on("a", 1)
    cpu.power_on("b", 1)
    cpu.set_demand("a", 1000)
    cpu.set_demand("b", 1000)
    cpu.tick(0.5)  # 500 each; each waits half a vCPU for 0.5 s
    cpu.set_demand("b", 0)
    host = cpu.tick(1.5)  # a alone: 1000
    a = cpu.vm_stats("a")
    assert a.used_mhz_s == pytest.approx(500 * 0.5 + 1000 * 1.5)
    assert a.ready_s == pytest.approx(0.5 * 0.5)
    assert cpu.vm_stats("b").used_mhz_s == pytest.approx(250)
    assert host.elapsed_s == 2.0 and host.used_mhz_s == pytest.approx(250 + 250 + 1500)


def test_power_on_admission():
    cpu = CpuScheduler.for_host(HostSpec(name="esxi-01", cpu_cores=2, cpu_mhz=2000))
    assert cpu.capacity_mhz == 4000
    cpu.power_on("big", 2, vm_cpu_allocation("normal", 2, reservation=3000))
    before = (cpu.vms(), cpu.host_stats())
    with pytest.raises(InsufficientResourcesFault) as e:
        cpu.power_on("late", 1, vm_cpu_allocation("normal", 1, reservation=1001))
    assert "4001" in e.value.message and "4000" in e.value.message
    with pytest.raises(InsufficientResourcesFault):
        cpu.power_on("wide", 4)  # more vCPUs than cores
    with pytest.raises(AlreadyExists):
        cpu.power_on("big", 1)
    with pytest.raises(NotFound):
        cpu.power_on("lost", 1, pool="nope")
    assert (cpu.vms(), cpu.host_stats()) == before
    cpu.power_on("fits", 1, vm_cpu_allocation("normal", 1, reservation=1000))
    with pytest.raises(InsufficientResourcesFault):
        cpu.tree.set_consumer("fits", vm_cpu_allocation("normal", 1, reservation=1001))
    assert cpu.allocation("fits").reservation == 1000


def test_power_off_releases_and_keeps_the_others_aligned():
    cpu = CpuScheduler(cores=4, core_mhz=1000)
    for vm, demand in [("a", 500), ("b", 700), ("c", 900)]:
        cpu.power_on(vm, 1, vm_cpu_allocation("normal", 1, reservation=1000))
        cpu.set_demand(vm, demand)
    cpu.tick(1.0)
    final = cpu.power_off("b")
    assert final.used_mhz_s == pytest.approx(700)
    assert cpu.vms() == ("a", "c") and cpu.host_stats().reserved_mhz == 2000
    assert cpu.vm_stats("c").used_mhz_s == pytest.approx(900)
    assert cpu.vm_stats("c").demand_mhz == 900
    cpu.power_on("d", 2, vm_cpu_allocation("normal", 2, reservation=2000))
    with pytest.raises(NotFound):
        cpu.vm_stats("b")


@pytest.mark.parametrize(
    "call",
    [
        lambda cpu: cpu.set_demand("vm", -1),
        lambda cpu: cpu.set_demand("vm", math.inf),
        lambda cpu: cpu.set_demand("vm", math.nan),
        lambda cpu: cpu.set_demand("vm", "lots"),
        lambda cpu: cpu.set_demands(np.array([1.0, 2.0])),
        lambda cpu: cpu.tick(0),
        lambda cpu: cpu.tick(-1),
        lambda cpu: cpu.tick(math.nan),
        # A running VM's allocation changes in its resource pool tree (ReconfigVM).
        lambda cpu: cpu.tree.set_consumer("vm", Allocation(0)),
        lambda cpu: cpu.tree.set_consumer("vm", Allocation(1000, 500, 100)),
        lambda cpu: cpu.power_on("other", 0),
        lambda cpu: cpu.power_on("other", 1, vm_cpu_allocation("extreme", 1)),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(call):
    cpu = CpuScheduler(cores=2, core_mhz=1000)
    cpu.power_on("vm", 1)
    cpu.set_demand("vm", 400)
    cpu.tick(1.0)
    before = (cpu.vms(), cpu.vm_stats("vm"), cpu.allocation("vm"), cpu.host_stats())
    with pytest.raises(InvalidArgument):
        call(cpu)
    assert (cpu.vms(), cpu.vm_stats("vm"), cpu.allocation("vm"), cpu.host_stats()) == before


def test_bad_hosts_are_refused():
    with pytest.raises(InvalidArgument):
        CpuScheduler(cores=0, core_mhz=1000)
    with pytest.raises(InvalidArgument):
        CpuScheduler(cores=2, core_mhz=0)


# -- the rules over random hosts and histories ------------------------------------------


def _is_under(cpu: CpuScheduler, vm: str, pool: str) -> bool:
    current: str | None = cpu.tree.consumer_pool(vm)
    while current is not None and current != pool:
        current = cpu.tree.parent(current)
    return current == pool


def _under_a_full_pool(cpu: CpuScheduler, vm: str, pool_ent: dict[str, float]) -> bool:
    pool: str | None = cpu.tree.consumer_pool(vm)
    while pool is not None:
        allocation = cpu.tree.pool(pool)
        if allocation.limited and pool_ent[pool] >= allocation.limit - 1e-3:
            return True
        pool = cpu.tree.parent(pool)
    return False


vm_specs = st.tuples(
    st.integers(1, 4),  # vcpus
    st.sampled_from(["low", "normal", "high"]),
    st.one_of(st.just(0), st.integers(0, 3000)),  # reservation
    st.one_of(st.just(UNLIMITED), st.integers(0, 6000)),  # limit headroom above it
    st.integers(0, 3),  # pool number (0 = root)
)
pool_specs = st.tuples(
    st.sampled_from(["low", "normal", "high"]),
    st.integers(0, 2000),  # reservation
    st.one_of(st.just(UNLIMITED), st.integers(0, 8000)),  # limit headroom
    st.booleans(),  # expandable
    st.integers(0, 2),  # parent: root or an earlier pool
)


@settings(max_examples=200, deadline=None)
@given(
    cores=st.integers(1, 8),
    core_mhz=st.sampled_from([1000, 2000, 2600]),
    pools=st.lists(pool_specs, max_size=3),
    vms=st.lists(vm_specs, min_size=1, max_size=16),
    history=st.lists(
        st.tuples(st.lists(st.integers(0, 12_000), min_size=16, max_size=16), st.integers(1, 20)),
        min_size=1,
        max_size=4,
    ),
)
def test_scheduler_rules_over_random_histories(cores, core_mhz, pools, vms, history):
    cpu = CpuScheduler(cores, core_mhz)
    names = [ROOT_POOL]
    for i, (level, reservation, headroom, expandable, parent) in enumerate(pools):
        limit = UNLIMITED if headroom == UNLIMITED else reservation + headroom
        try:
            alloc = pool_allocation("MHz", level, reservation, limit, expandable)
            cpu.pools.add_pool(f"pool-{i}", {Unit.MHZ: alloc}, names[min(parent, len(names) - 1)])
            names.append(f"pool-{i}")
        except InsufficientResourcesFault:
            pass
    for i, (vcpus, level, reservation, headroom, pool) in enumerate(vms):
        limit = UNLIMITED if headroom == UNLIMITED else reservation + headroom
        try:
            allocation = vm_cpu_allocation(level, vcpus, reservation, limit)
            cpu.power_on(f"vm-{i}", vcpus, allocation, names[min(pool, len(names) - 1)])
        except InsufficientResourcesFault:
            pass  # more vCPUs than cores, or its reservation does not fit
    if not cpu.vms():
        return
    allocs = [cpu.allocation(vm) for vm in cpu.vms()]
    reservation = np.array([a.reservation for a in allocs], dtype=float)
    limit = np.array([a.limit if a.limited else math.inf for a in allocs])
    vcpu_cap = np.array([cpu.vm_stats(vm).vcpus * core_mhz for vm in cpu.vms()], dtype=float)
    used = np.zeros(len(allocs))
    ready = np.zeros(len(allocs))
    for demands, tenths in history:
        dt = tenths / 10
        for vm, mhz in zip(cpu.vms(), demands, strict=False):
            cpu.set_demand(vm, mhz)
        demand = np.minimum(np.array(demands[: len(allocs)], dtype=float), vcpu_cap)
        host = cpu.tick(dt)
        usage = cpu.usage_mhz()
        # Never past the host, the demand, the limit, the vCPUs.
        assert usage.sum() <= cpu.capacity_mhz + EPS
        assert np.all(usage <= np.minimum(np.minimum(demand, limit), vcpu_cap) + EPS)
        # Reservations (admitted, so they fit) honoured as far as demanded.
        assert np.all(usage >= np.minimum(reservation, demand) - EPS)
        # A pool's limit holds all the VMs under it.
        for pool in cpu.tree.pools()[1:]:
            if cpu.tree.pool(pool).limited:
                under = [i for i, vm in enumerate(cpu.vms()) if _is_under(cpu, vm, pool)]
                assert usage[under].sum() <= cpu.tree.pool(pool).limit + EPS
        # No idle capacity while a VM wants more and nothing caps it: without pool
        # limits the host runs everything wanted, up to its capacity; with them, a VM
        # short of what it wants sits under a pool that is at its limit, or the host
        # is full.
        wanted = np.minimum(demand, limit)
        pool_limited = any(cpu.tree.pool(p).limited for p in cpu.tree.pools()[1:])
        if not pool_limited:
            assert usage.sum() == pytest.approx(min(cpu.capacity_mhz, wanted.sum()), abs=1e-6)
        elif usage.sum() < cpu.capacity_mhz - 1e-3:
            pool_ent = cpu.tree.pool_entitlements(demand)
            for i in np.flatnonzero(usage < wanted - 1e-3):
                assert _under_a_full_pool(cpu, cpu.vms()[i], pool_ent)
        # The accounting is the integral of what happened.
        used += usage * dt
        ready += (demand - usage) * dt / core_mhz
        assert np.allclose([cpu.vm_stats(vm).used_mhz_s for vm in cpu.vms()], used)
        assert np.allclose(cpu.ready_s(), ready)
        assert host.usage_mhz == pytest.approx(usage.sum())
