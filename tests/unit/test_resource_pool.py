"""Resource pools: allocations and share levels, divvy's water-filling, admission
control through expandable reservations (checked against a from-scratch model over
random operation sequences), and hierarchical entitlements (checked against the rules
over random trees and demands)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.faults import (
    AlreadyExists,
    DuplicateName,
    InsufficientResourcesFault,
    InvalidArgument,
    NotFound,
)
from vsim.host.kernel.resources.entitlement import divvy
from vsim.host.kernel.resources.pool_tree import PoolTree, ResourceView
from vsim.resource_allocation import (
    ROOT_POOL,
    UNLIMITED,
    Allocation,
    Unit,
    pool_allocation,
    vm_cpu_allocation,
    vm_memory_allocation,
)

EPS = 1e-6


# -- allocations -------------------------------------------------------------------------


def test_share_levels_are_vspheres():
    assert vm_cpu_allocation("low", 4).shares == 4 * 500
    assert vm_cpu_allocation("normal", 4).shares == 4 * 1000
    assert vm_cpu_allocation("high", 4).shares == 4 * 2000
    assert vm_memory_allocation("low", 4096).shares == 4096 * 5
    assert vm_memory_allocation("normal", 4096).shares == 4096 * 10
    assert vm_memory_allocation("high", 4096).shares == 4096 * 20
    assert [pool_allocation("MHz", lvl).shares for lvl in ("low", "normal", "high")] == [
        2000,
        4000,
        8000,
    ]
    assert [pool_allocation(Unit.MB, lvl).shares for lvl in ("low", "normal", "high")] == [
        81920,
        163840,
        327680,
    ]
    assert pool_allocation("MHz").expandable_reservation
    assert vm_cpu_allocation("normal", 2, reservation=500, limit=1000) == Allocation(
        2000, 500, 1000
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: Allocation(0),
        lambda: Allocation(-5),
        lambda: Allocation(1000, reservation=-1),
        lambda: Allocation(1000, reservation=500, limit=499),
        lambda: Allocation(1000, limit=-2),
        lambda: Allocation(1000, reservation=1.5),  # type: ignore[arg-type]
        lambda: Allocation(True),  # type: ignore[arg-type]
        lambda: vm_cpu_allocation("medium", 2),
        lambda: vm_cpu_allocation("normal", 0),
        lambda: vm_memory_allocation("Normal", 1024),
        lambda: pool_allocation("GHz"),
        lambda: pool_allocation("MHz", "custom"),
    ],
)
def test_bad_allocations_are_invalid_arguments(build):
    with pytest.raises(InvalidArgument):
        build()


def test_limit_equal_to_reservation_and_zero_limit_are_allowed():
    assert Allocation(1000, 300, 300).limit == 300
    assert Allocation(1000, 0, 0).limit == 0
    assert not Allocation(1000).limited


# -- divvy -------------------------------------------------------------------------------


def test_divvy_by_shares_with_a_cap():
    # 100 among shares 1:1:2; the second is capped at 10, so 90 goes 1:2 -> 30, 60.
    assert divvy(100, [1, 1, 2], [0, 0, 0], [100, 10, 100]).tolist() == pytest.approx([30, 10, 60])


def test_a_reservation_is_a_floor_not_an_addition():
    # Equal shares of 100 would be 50 each; the first reserves 60, so it gets 60 (not
    # 60 + 20) and the other the remaining 40.
    assert divvy(100, [1, 1], [60, 0], [100, 100]).tolist() == pytest.approx([60, 40])
    # A reservation below the share changes nothing.
    assert divvy(100, [1, 1], [30, 0], [100, 100]).tolist() == pytest.approx([50, 50])


def test_divvy_edges():
    assert divvy(100, [1, 1], [0, 0], [20, 30]).tolist() == [20, 30]  # enough for every cap
    assert divvy(50, [1, 3], [40, 60], [90, 90]).tolist() == pytest.approx([20, 30])  # pro rata
    assert divvy(100, [1, 1], [0, 0], [math.inf, 30]).tolist() == pytest.approx([70, 30])
    assert divvy(0, [1], [0], [10]).tolist() == [0]
    assert divvy(10, [], [], []).size == 0


@pytest.mark.parametrize(
    "args",
    [
        (10, [0, 1], [0, 0], [5, 5]),
        (10, [1, 1], [6, 0], [5, 5]),
        (10, [1, 1], [-1, 0], [5, 5]),
        (10, [1], [0, 0], [5, 5]),
        (-1, [1], [0], [5]),
        (math.nan, [1], [0], [5]),
        (10, [1], [0], [math.nan]),
    ],
)
def test_divvy_refuses_bad_input(args):
    with pytest.raises(InvalidArgument):
        divvy(*args)


def _divvy_by_bisection(capacity: float, s: np.ndarray, f: np.ndarray, c: np.ndarray):
    """The definition, solved the slow way: the water level t where
    sum(clip(t*s, f, c)) reaches capacity."""
    if capacity >= c.sum():
        return c
    if capacity <= f.sum():
        return f * (capacity / f.sum()) if f.sum() else np.zeros_like(f)
    low, high = 0.0, 1.0
    while np.clip(high * s, f, c).sum() < capacity:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if np.clip(mid * s, f, c).sum() < capacity else (low, mid)
    return np.clip(high * s, f, c)


siblings = st.lists(
    st.tuples(
        st.integers(1, 10_000),  # shares
        st.integers(0, 3_000),  # floor
        st.one_of(st.integers(0, 5_000), st.just(-1)),  # cap above floor, -1 = inf
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(siblings=siblings, fraction=st.floats(0, 1.3))
def test_divvy_is_the_water_level(siblings, fraction):
    s = np.array([x[0] for x in siblings], dtype=float)
    f = np.array([x[1] for x in siblings], dtype=float)
    c = np.array([math.inf if x[2] < 0 else x[1] + x[2] for x in siblings])
    reach = np.where(np.isinf(c), f + 5_000, c).sum()
    capacity = fraction * reach
    x = divvy(capacity, s, f, c)
    assert np.allclose(x, _divvy_by_bisection(capacity, s, f, c), rtol=1e-9, atol=1e-6)
    assert x.sum() <= capacity + EPS or np.allclose(x, c)
    if f.sum() <= capacity:
        assert np.all(x >= f - EPS) and np.all(x <= c + EPS)
        # Those strictly between floor and cap share one level: x / shares is equal.
        free = (x > f + EPS) & (x < c - EPS)
        if free.sum() > 1:
            ratio = x[free] / s[free]
            assert np.allclose(ratio, ratio[0], rtol=1e-9)


def test_divvy_of_1024_siblings_is_one_call():
    n = 1024
    x = divvy(1_000_000, np.full(n, 1000.0), np.zeros(n), np.full(n, 5000.0))
    assert np.allclose(x, 1_000_000 / n)


# -- the tree: admission -----------------------------------------------------------------


def _state(tree: ResourceView):
    return (
        tree.capacity,
        tree.consumer_names,
        [(n, tree.consumer(n), tree.consumer_pool(n)) for n in tree.consumer_names],
        [(p, tree.pool(p), tree.parent(p), tree.reserved(p)) for p in tree.pools()],
    )


def test_a_non_expandable_pool_holds_only_its_reservation():
    pools = PoolTree({Unit.MHZ: 10_000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool(
        "prod", {Unit.MHZ: Allocation(4000, reservation=3000, expandable_reservation=False)}
    )
    tree.add_consumer("vm-1", Allocation(1000, reservation=2000), "prod")
    before = _state(tree)
    with pytest.raises(InsufficientResourcesFault) as e:
        tree.add_consumer("vm-2", Allocation(1000, reservation=1500), "prod")
    assert "3500" in e.value.message and "3000" in e.value.message and "'prod'" in e.value.message
    assert _state(tree) == before
    assert tree.unreserved("prod") == 1000
    tree.add_consumer("vm-2", Allocation(1000, reservation=1000), "prod")
    assert tree.reserved("prod") == 3000 and tree.reserved() == 3000


def test_an_expandable_pool_borrows_from_its_parent_up_to_the_root():
    pools = PoolTree({Unit.MHZ: 10_000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool("dev", {Unit.MHZ: pool_allocation("MHz", reservation=1000)})  # expandable
    # expandable, 0 reserved
    pools.add_pool("team", {Unit.MHZ: pool_allocation("MHz")}, parent="dev")
    tree.add_consumer("vm-a", Allocation(1000, reservation=6000), "team")
    # team borrows 6000 from dev, which reserves 1000 itself and borrows 5000 from root.
    assert tree.reserved("team") == 6000 and tree.reserved("dev") == 6000
    assert tree.reserved() == 6000
    assert tree.unreserved("team") == 4000
    before = _state(tree)
    with pytest.raises(InsufficientResourcesFault) as e:
        tree.add_consumer("vm-b", Allocation(1000, reservation=4001), "team")
    assert "10001" in e.value.message and "10000" in e.value.message
    assert _state(tree) == before
    # A fixed pool elsewhere cannot take what is borrowed.
    with pytest.raises(InsufficientResourcesFault):
        pools.add_pool("fixed", {Unit.MHZ: Allocation(4000, 4001, UNLIMITED, False)})
    pools.add_pool("fixed", {Unit.MHZ: Allocation(4000, 4000, UNLIMITED, False)})
    assert tree.unreserved() == 0 and tree.unreserved("team") == 0


def test_an_expandable_pool_cannot_borrow_past_its_limit():
    pools = PoolTree({Unit.MHZ: 10_000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool("capped", {Unit.MHZ: pool_allocation("MHz", reservation=0, limit=2000)})
    tree.add_consumer("vm-a", Allocation(1000, reservation=1500), "capped")
    assert tree.unreserved("capped") == 500
    with pytest.raises(InsufficientResourcesFault, match="limited to 2000"):
        tree.add_consumer("vm-b", Allocation(1000, reservation=600), "capped")


def test_changing_a_pool_is_admission_controlled():
    pools = PoolTree({Unit.MB: 8_000})
    tree = pools.view(Unit.MB)
    pools.add_pool("p", {Unit.MB: pool_allocation("MB", reservation=1000)})
    tree.add_consumer("vm", Allocation(10, reservation=3000), "p")
    before = _state(tree)
    with pytest.raises(InsufficientResourcesFault):  # children hold 3000
        pools.set_pool(
            "p", {Unit.MB: Allocation(163840, 1000, UNLIMITED, expandable_reservation=False)}
        )
    with pytest.raises(InsufficientResourcesFault):
        pools.set_pool("p", {Unit.MB: Allocation(163840, 9000)})  # more than the root has
    assert _state(tree) == before
    pools.set_pool("p", {Unit.MB: Allocation(163840, 5000, UNLIMITED, False)})
    assert tree.reserved() == 5000 and tree.unreserved() == 3000 and tree.unreserved("p") == 2000


def test_removing_a_pool_moves_its_children_to_the_parent():
    pools = PoolTree({Unit.MHZ: 10_000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool(
        "a", {Unit.MHZ: pool_allocation("MHz", reservation=4000, expandable_reservation=False)}
    )
    pools.add_pool("b", {Unit.MHZ: pool_allocation("MHz", reservation=1000)}, parent="a")
    tree.add_consumer("vm-1", Allocation(1000, reservation=500), "b")
    tree.add_consumer("vm-2", Allocation(1000, reservation=2000), "a")
    pools.remove_pool("a")
    assert tree.pools() == [ROOT_POOL, "b"]
    assert tree.parent("b") == ROOT_POOL
    assert tree.consumer_pool("vm-2") == ROOT_POOL and tree.consumer_pool("vm-1") == "b"
    # a's 4000 is released; the root now holds b (1000) and vm-2 (2000) directly.
    assert tree.reserved() == 3000
    pools.remove_pool("b")
    assert tree.pools() == [ROOT_POOL] and tree.consumer_pool("vm-1") == ROOT_POOL
    assert tree.reserved() == 2500


def test_the_root_and_names_are_guarded():
    pools = PoolTree({Unit.MHZ: 1000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool("p", {Unit.MHZ: pool_allocation("MHz")})
    tree.add_consumer("vm", Allocation(1000))
    for call, fault in [
        (lambda: pools.remove_pool(ROOT_POOL), InvalidArgument),
        (lambda: pools.set_pool(ROOT_POOL, {Unit.MHZ: Allocation(1)}), InvalidArgument),
        (lambda: pools.add_pool("p", {Unit.MHZ: pool_allocation("MHz")}), DuplicateName),
        (lambda: pools.add_pool("q", {Unit.MHZ: pool_allocation("MHz")}, parent="nope"), NotFound),
        (lambda: pools.add_pool("", {Unit.MHZ: pool_allocation("MHz")}), InvalidArgument),
        (lambda: tree.add_consumer("vm", Allocation(1000)), AlreadyExists),
        (lambda: tree.add_consumer("vm2", Allocation(1000), "nope"), NotFound),
        (lambda: tree.add_consumer("vm2", "normal"), InvalidArgument),  # type: ignore[arg-type]
        (lambda: tree.set_consumer("ghost", Allocation(1)), NotFound),
        (lambda: pools.change_consumer("vm", "nope", {Unit.MHZ: Allocation(1000)}), NotFound),
        (lambda: tree.remove_consumer("ghost"), NotFound),
        (lambda: tree.entitlements([1.0, 2.0]), InvalidArgument),
        (lambda: tree.entitlements([-1.0]), InvalidArgument),
        (lambda: tree.entitlements([math.nan]), InvalidArgument),
        (lambda: PoolTree({"MHz": -1}), InvalidArgument),
        (lambda: PoolTree({"cores": 100}), InvalidArgument),
    ]:
        before = _state(tree)
        with pytest.raises(fault):
            call()
        assert _state(tree) == before


def test_consumer_order_is_stable_and_indexed():
    pools = PoolTree({Unit.MHZ: 10_000})
    tree = pools.view(Unit.MHZ)
    for name in ["vm-a", "vm-b", "vm-c", "vm-d"]:
        tree.add_consumer(name, Allocation(1000))
    tree.remove_consumer("vm-b")
    tree.add_consumer("vm-e", Allocation(3000))
    assert tree.consumer_names == ("vm-a", "vm-c", "vm-d", "vm-e")
    assert [tree.index(n) for n in tree.consumer_names] == [0, 1, 2, 3]
    # Entitlements follow that order: shares 1:1:1:3 of 6000 demanded by all.
    ent = tree.entitlements([6000, 6000, 6000, 6000])
    assert ent.tolist() == pytest.approx([10_000 / 6] * 3 + [5000])


# -- admission against a model ---------------------------------------------------------


@dataclass
class Model:
    """The admission rules computed from scratch after every change."""

    capacity: int
    pools: dict[str, tuple[Allocation, str | None]] = field(default_factory=dict)
    consumers: dict[str, tuple[Allocation, str]] = field(default_factory=dict)

    def used(self, pool: str) -> int:
        mine = sum(a.reservation for a, p in self.consumers.values() if p == pool)
        return mine + sum(self.effective(c) for c, (_, p) in self.pools.items() if p == pool)

    def effective(self, pool: str) -> int:
        allocation = self.pools[pool][0]
        used = self.used(pool)
        return (
            max(allocation.reservation, used)
            if allocation.expandable_reservation
            else (allocation.reservation)
        )

    def admits(self) -> bool:
        if self.used(ROOT_POOL) > self.capacity:
            return False
        for name, (allocation, parent) in self.pools.items():
            if parent is None:
                continue
            used = self.used(name)
            if not allocation.expandable_reservation and used > allocation.reservation:
                return False
            if allocation.limited and used > allocation.limit:
                return False
        return True

    def copy(self) -> Model:
        return Model(self.capacity, dict(self.pools), dict(self.consumers))


allocations = st.builds(
    lambda shares, reservation, headroom, expandable: Allocation(
        shares, reservation, UNLIMITED if headroom < 0 else reservation + headroom, expandable
    ),
    shares=st.integers(1, 10_000),
    reservation=st.one_of(st.just(0), st.integers(0, 4_000)),
    headroom=st.one_of(st.just(-1), st.integers(0, 4_000)),
    expandable=st.booleans(),
)
POOL_NAMES = [f"p{i}" for i in range(1, 7)]
VM_NAMES = [f"vm-{i}" for i in range(1, 11)]


def _apply(model: Model, op: tuple) -> Model | None:
    """The model after op, or None if op names something absent or duplicated."""
    kind, name, *rest = op
    m = model.copy()
    if kind == "add_pool":
        allocation, parent = rest
        if name in m.pools or parent not in m.pools:
            return None
        m.pools[name] = (allocation, parent)
    elif kind == "set_pool":
        if name not in m.pools or name == ROOT_POOL:
            return None
        m.pools[name] = (rest[0], m.pools[name][1])
    elif kind == "remove_pool":
        if name not in m.pools or name == ROOT_POOL:
            return None
        parent = m.pools.pop(name)[1]
        assert parent is not None
        m.pools = {c: (a, parent if p == name else p) for c, (a, p) in m.pools.items()}
        m.consumers = {c: (a, parent if p == name else p) for c, (a, p) in m.consumers.items()}
    elif kind == "add_consumer":
        allocation, pool = rest
        if name in m.consumers or pool not in m.pools:
            return None
        m.consumers[name] = (allocation, pool)
    elif kind == "set_consumer":
        if name not in m.consumers:
            return None
        m.consumers[name] = (rest[0], m.consumers[name][1])
    elif kind == "move_consumer":
        if name not in m.consumers or rest[0] not in m.pools:
            return None
        m.consumers[name] = (m.consumers[name][0], rest[0])
    elif kind == "remove_consumer":
        if name not in m.consumers:
            return None
        del m.consumers[name]
    return m


def _call(pools: PoolTree, op: tuple) -> None:
    """Pools change in the tree (with an allocation per resource), consumers in the
    resource's view."""
    kind, name, *rest = op
    if kind in ("add_pool", "set_pool"):
        allocation, *parent = rest
        getattr(pools, kind)(name, {Unit.MHZ: allocation}, *parent)
    elif kind == "remove_pool":
        pools.remove_pool(name)
    elif kind == "move_consumer":  # MoveIntoResourcePool: the tree moves every resource
        view = pools.view(Unit.MHZ)
        pools.change_consumer(name, rest[0], {Unit.MHZ: view.consumer(name)})
    else:
        getattr(pools.view(Unit.MHZ), kind)(name, *rest)


KINDS = [
    *("add_pool", "set_pool", "remove_pool"),
    *("add_consumer", "set_consumer", "move_consumer", "remove_consumer"),
    *("add_pool", "add_consumer", "add_consumer", "add_consumer"),
]
"""Additions are likelier than changes, so that trees grow."""


def _draw_op(data: st.DataObject, model: Model) -> tuple:
    """An operation naming mostly what exists (and sometimes what does not)."""

    def pick(existing: list[str], universe: list[str]) -> str:
        names = st.sampled_from(universe)
        return data.draw(st.one_of(st.sampled_from(existing), names) if existing else names)

    pools = [ROOT_POOL, *POOL_NAMES]
    kind = data.draw(st.sampled_from(KINDS))
    if kind == "add_pool":
        return kind, pick([], POOL_NAMES), data.draw(allocations), pick(list(model.pools), pools)
    if kind == "add_consumer":
        return kind, pick([], VM_NAMES), data.draw(allocations), pick(list(model.pools), pools)
    if kind in ("set_pool", "remove_pool"):
        name = pick([p for p in model.pools if p != ROOT_POOL], POOL_NAMES)
        return (kind, name, data.draw(allocations)) if kind == "set_pool" else (kind, name)
    name = pick(list(model.consumers), VM_NAMES)
    if kind == "set_consumer":
        return kind, name, data.draw(allocations)
    if kind == "move_consumer":
        return kind, name, pick(list(model.pools), pools)
    return kind, name


@settings(max_examples=150, deadline=None)
@given(data=st.data(), steps=st.integers(5, 40))
def test_admission_matches_the_model_and_refusals_change_nothing(data, steps):
    capacity = 10_000
    pools = PoolTree({Unit.MHZ: capacity})
    tree = pools.view(Unit.MHZ)
    root = Allocation(4000, capacity, capacity, False)
    model = Model(capacity, {ROOT_POOL: (root, None)})
    for _ in range(steps):
        op = _draw_op(data, model)
        after = _apply(model, op)
        before = _state(tree)
        if after is None:
            with pytest.raises((NotFound, DuplicateName, AlreadyExists)):
                _call(pools, op)
            assert _state(tree) == before
        elif not after.admits():
            with pytest.raises(InsufficientResourcesFault):
                _call(pools, op)
            assert _state(tree) == before
        else:
            _call(pools, op)
            model = after
        for pool in model.pools:
            assert tree.reserved(pool) == model.used(pool), (pool, op)
        assert sorted(tree.consumer_names) == sorted(model.consumers)
        assert {p: tree.parent(p) for p in tree.pools()} == {
            p: parent for p, (_, parent) in model.pools.items()
        }


# -- entitlements ----------------------------------------------------------------------


def test_hierarchical_entitlements_by_hand():
    # Root 12000 MHz: pool "prod" (high, 8000 shares) and "test" (normal, 4000), each
    # with two equal VMs demanding 10000. prod : test = 8000 : 4000 -> 8000 and 4000;
    # inside each pool the two VMs split evenly: 4000, 4000 and 2000, 2000.
    pools = PoolTree({Unit.MHZ: 12_000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool("prod", {Unit.MHZ: pool_allocation("MHz", "high")})
    pools.add_pool("test", {Unit.MHZ: pool_allocation("MHz", "normal")})
    for name, pool in [("p1", "prod"), ("p2", "prod"), ("t1", "test"), ("t2", "test")]:
        tree.add_consumer(name, vm_cpu_allocation("normal", 4), pool)
    assert tree.entitlements([10_000] * 4).tolist() == pytest.approx([4000, 4000, 2000, 2000])
    # prod's VMs now want only 1000 each: test gets the rest, 10000, 5000 each.
    assert tree.entitlements([1000, 1000, 10_000, 10_000]).tolist() == pytest.approx(
        [1000, 1000, 5000, 5000]
    )
    # A reservation inside test (expandable: borrowed from the root) holds against
    # prod's shares. t1 reserves 7000, so test's floor is 7000. At the root, level t:
    # prod = 8000 t, test = max(7000, 4000 t); 8000 t + 7000 = 12000 -> t = 0.625,
    # test's share 2500 < 7000, so prod 5000 (2500 each) and test 7000. Inside test
    # the 7000 is all t1's floor: t1 7000, t2 0.
    tree.set_consumer("t1", vm_cpu_allocation("normal", 4, reservation=7000))
    ent = tree.entitlements([10_000] * 4)
    assert ent.tolist() == pytest.approx([2500, 2500, 7000, 0])
    pools = tree.pool_entitlements([10_000] * 4)
    assert pools == pytest.approx({ROOT_POOL: 12_000, "prod": 5000, "test": 7000})


def test_a_pool_limit_caps_its_subtree_and_the_rest_goes_elsewhere():
    pools = PoolTree({Unit.MHZ: 10_000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool("capped", {Unit.MHZ: pool_allocation("MHz", "high", limit=3000)})
    tree.add_consumer("a", Allocation(1000), "capped")
    tree.add_consumer("b", Allocation(1000), "capped")
    tree.add_consumer("c", Allocation(1000))
    # capped's share would be 8000/(8000+1000) of 10000, but its limit holds it to
    # 3000 (a, b: 1500 each); c takes the other 7000 as it demands 9000.
    assert tree.entitlements([9000, 9000, 9000]).tolist() == pytest.approx([1500, 1500, 7000])


def test_1024_vms_in_one_pool():
    pools = PoolTree({Unit.MHZ: 100_000})
    tree = pools.view(Unit.MHZ)
    pools.add_pool("farm", {Unit.MHZ: pool_allocation("MHz")})
    for i in range(1024):
        tree.add_consumer(
            f"vm-{i:04d}", vm_cpu_allocation("high" if i % 2 else "normal", 1), "farm"
        )
    ent = tree.entitlements(np.full(1024, 1000.0))
    # 512 x 1000 + 512 x 2000 shares = 1,536,000: level = 100000 / 1536000 per share.
    assert ent[0] == pytest.approx(100_000 * 1000 / 1_536_000)
    assert ent[1] == pytest.approx(100_000 * 2000 / 1_536_000)
    assert ent.sum() == pytest.approx(100_000)


def _ancestors(tree: ResourceView, pool: str) -> list[str]:
    chain = []
    current: str | None = pool
    while current is not None:
        chain.append(current)
        current = tree.parent(current)
    return chain


@st.composite
def trees(draw):
    """A random admitted tree (pools up to 4 deep, up to 24 VMs; additions that
    admission refuses are skipped) and a demand for each VM."""
    capacity = draw(st.integers(1_000, 40_000))
    pool_tree = PoolTree({Unit.MHZ: capacity})
    tree = pool_tree.view(Unit.MHZ)
    pools = [ROOT_POOL]
    for i in range(draw(st.integers(0, 5))):
        parent = draw(st.sampled_from(pools))
        try:
            pool_tree.add_pool(f"pool-{i}", {Unit.MHZ: draw(allocations)}, parent)
            pools.append(f"pool-{i}")
        except InsufficientResourcesFault:
            pass
    for i in range(draw(st.integers(0, 24))):
        try:
            tree.add_consumer(f"vm-{i}", draw(allocations), draw(st.sampled_from(pools)))
        except InsufficientResourcesFault:
            pass
    demand = draw(st.lists(st.integers(0, 12_000), min_size=len(tree), max_size=len(tree)))
    return tree, np.array(demand, dtype=float)


@settings(max_examples=300, deadline=None)
@given(case=trees())
def test_entitlements_follow_the_rules(case):
    tree, demand = case
    ent = tree.entitlements(demand)
    pool_ent = tree.pool_entitlements(demand)
    allocs = [tree.consumer(n) for n in tree.consumer_names]
    limit = np.array([a.limit if a.limited else math.inf for a in allocs])
    reservation = np.array([a.reservation for a in allocs], dtype=float)
    cap = np.minimum(demand, limit)
    # Never more than the capacity, than demanded, than the limit.
    assert ent.sum() <= tree.capacity + EPS
    assert np.all(ent <= cap + EPS)
    # Reservations (admitted, so they fit) are honoured as far as demanded.
    assert np.all(ent >= np.minimum(reservation, demand) - EPS)
    # Each pool gets what its children get, never past its limit.
    for pool in tree.pools():
        kids = [p for p in tree.pools() if tree.parent(p) == pool]
        mine = [tree.index(n) for n in tree.consumer_names if tree.consumer_pool(n) == pool]
        inside = sum(pool_ent[k] for k in kids) + ent[mine].sum()
        assert pool_ent[pool] == pytest.approx(inside, abs=1e-6)
        allocation = tree.pool(pool)
        if allocation.limited:
            assert pool_ent[pool] <= allocation.limit + EPS
    # Work conserving: a consumer short of its demand and limit is held only by a full
    # ancestor (one at its limit, or the root at the capacity).
    for i, name in enumerate(tree.consumer_names):
        if ent[i] < cap[i] - 1e-3:
            full = [
                p
                for p in _ancestors(tree, tree.consumer_pool(name))
                if tree.pool(p).limited and pool_ent[p] >= tree.pool(p).limit - 1e-3
            ]
            assert full, (name, ent[i], cap[i])
    # Shares: siblings above their floors and below their caps get equal entitlement per share.
    for pool in tree.pools():
        members = [tree.index(n) for n in tree.consumer_names if tree.consumer_pool(n) == pool]
        free = [i for i in members if ent[i] > reservation[i] + 1e-3 and ent[i] < cap[i] - 1e-3]
        if len(free) > 1:
            per_share = [ent[i] / allocs[i].shares for i in free]
            assert per_share == pytest.approx([per_share[0]] * len(free), rel=1e-6)
