"""The resource-pool hierarchy of one host: one tree of pools, each holding an
allocation of every resource the tree divides (on a host: CPU in MHz and memory in
MB), and the VMs that draw on each resource from their pools.

Owns: the pools (names, parents, order) and their allocations; per resource, its
consumers (powered-on VMs) in consumer order, with their allocations and pools;
admission control of reservations through the tree; and `ResourceView`, one resource's
numbers and its division into entitlements (entitlement.py does the arithmetic).

Must never: change anything on a refused call, nor need to undo one: every change is
checked in full (each resource it touches, each pool up to the root) and only then
applied; store what can be derived (what a pool's children reserve, what it borrows
from its parent, a pool's depth and the root's allocation are computed when asked);
keep a Python object per VM on the hot path (consumers live in numpy arrays); read a
clock.

Pools are shared, consumers are per resource: a pool is one vSphere object with CPU
and memory settings, so it is one node; a VM's CPU and its memory are held by two
mechanisms (the CPU scheduler, the memory manager), each keeping its per-VM arrays in
its own consumer order and admitting the VM as it takes it on. A change that touches
both resources (a running VM's new settings and pool) goes through `change_consumer`,
which checks both before it applies either.

Admission (vSphere Resource Management Guide, "Admission Control"): the reservations of
a pool's children may not exceed the pool's reservation, unless the reservation is
expandable, in which case the pool borrows the rest from its parent (and so on up to
the root, whose reservation is the capacity); an expandable pool with a limit cannot
hold more than its limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from vsim.faults import (
    AlreadyExists,
    DuplicateName,
    InsufficientResourcesFault,
    InvalidArgument,
    NotFound,
)
from vsim.host.kernel.resources.entitlement import FlatTree, divide
from vsim.resource_allocation import (
    POOL_SHARES,
    ROOT_POOL,
    UNLIMITED,
    Allocation,
    Unit,
    check_not_root,
    unit_of,
    whole_number,
)


@dataclass
class _Pool:
    allocations: dict[Unit, Allocation]
    """One per resource of the tree; empty for the root, whose allocation is its
    capacity (see PoolTree.allocation)."""
    parent: str | None
    children: list[str] = field(default_factory=list)
    """Child pools, in the order they were made."""


class _Consumers:
    """One resource's consumers, in consumer order (see ResourceView)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}
        self.shares = np.zeros(0)
        self.reservation = np.zeros(0)
        self.limit = np.zeros(0)  # inf = unlimited
        self.pool_of = np.zeros(0, dtype=np.int64)
        """Pool number per consumer (PoolTree numbers pools in creation order)."""

    def append(self, name: str, allocation: Allocation, pool: int) -> int:
        index = len(self.names)
        self.names.append(name)
        self.index[name] = index
        self.shares = np.append(self.shares, float(allocation.shares))
        self.reservation = np.append(self.reservation, float(allocation.reservation))
        self.limit = np.append(self.limit, _limit_value(allocation))
        self.pool_of = np.append(self.pool_of, pool)
        return index

    def set(self, i: int, allocation: Allocation, pool: int) -> None:
        self.shares[i] = allocation.shares
        self.reservation[i] = allocation.reservation
        self.limit[i] = _limit_value(allocation)
        self.pool_of[i] = pool

    def delete(self, name: str) -> None:
        """Removes one; the consumers after it move down one index."""
        i = self.index.pop(name)
        del self.names[i]
        for later in self.names[i:]:
            self.index[later] -= 1
        self.shares = np.delete(self.shares, i)
        self.reservation = np.delete(self.reservation, i)
        self.limit = np.delete(self.limit, i)
        self.pool_of = np.delete(self.pool_of, i)

    def allocation(self, i: int) -> Allocation:
        limit = self.limit[i]
        return Allocation(
            int(self.shares[i]),
            int(self.reservation[i]),
            UNLIMITED if math.isinf(limit) else int(limit),
        )


@dataclass(frozen=True)
class _Step:
    """A state of one consumer to check: its reservation in a pool."""

    reservation: int
    pool: str
    what: str
    """What the refusal says cannot be done."""


class PoolTree:
    """A root pool holding the whole capacity of each resource, child pools, and each
    resource's consumers in pools.

    Pool names are unique in the tree (a parent is given by name); a consumer's name is
    unique among the consumers of its resource. The root pool, `ROOT_POOL`, has the
    whole capacity as its fixed, non-expandable reservation and cannot be changed or
    removed. Allocations are given as a mapping from each resource the tree divides to
    its Allocation (`PoolConfig.allocations` for a host's CPU and memory).
    """

    def __init__(self, capacities: Mapping[Unit | str, int]) -> None:
        self._capacity: dict[Unit, int] = {}
        for unit, capacity in capacities.items():
            unit = unit_of(unit)
            self._capacity[unit] = _checked_capacity(capacity, unit)
        if not self._capacity:
            raise InvalidArgument("a resource-pool tree divides at least one resource")
        self._pools: dict[str, _Pool] = {ROOT_POOL: _Pool({}, None)}
        self._pool_names: list[str] = [ROOT_POOL]
        """Pool number -> name (consumers record their pool by number)."""
        self._consumers = {unit: _Consumers() for unit in self._capacity}
        self._views = {unit: ResourceView(self, unit) for unit in self._capacity}
        self._flat: dict[Unit, FlatTree] = {}
        """Each resource flattened for division; dropped on any change."""

    # -- reading -----------------------------------------------------------------------

    @property
    def units(self) -> tuple[Unit, ...]:
        """The resources it divides."""
        return tuple(self._capacity)

    def view(self, unit: Unit | str) -> ResourceView:
        """One resource's numbers and division."""
        unit = unit_of(unit)
        if unit not in self._views:
            raise InvalidArgument(
                f"this resource-pool tree divides {', '.join(self.units)}, not {unit}"
            )
        return self._views[unit]

    def pools(self) -> list[str]:
        """Pool names, parents before their children (the root first)."""
        return self._preorder()

    def __contains__(self, pool: object) -> bool:
        return pool in self._pools

    def parent(self, pool: str) -> str | None:
        """The parent pool's name; None for the root."""
        return self._pool(pool).parent

    def allocation(self, pool: str, unit: Unit) -> Allocation:
        """A pool's allocation of one resource; the root's is the capacity, fixed."""
        if pool == ROOT_POOL:
            capacity = self._capacity[unit]
            return Allocation(POOL_SHARES[unit]["normal"], capacity, capacity, False)
        return self._pool(pool).allocations[unit]

    def allocations(self, pool: str) -> dict[Unit, Allocation]:
        """A pool's allocation of each resource."""
        self._pool(pool)
        return {unit: self.allocation(pool, unit) for unit in self.units}

    # -- pools -------------------------------------------------------------------------

    def add_pool(
        self, name: str, allocations: Mapping[Unit, Allocation], parent: str = ROOT_POOL
    ) -> None:
        """Creates a child pool of `parent` (CreateResourcePool), if every resource's
        reservation fits."""
        _check_name(name, "resource pool name")
        if name in self._pools:
            raise DuplicateName(f"a resource pool named {name!r} already exists")
        parent_pool = self._pool(parent)
        allocations = self._checked_allocations(allocations)
        what = f"cannot create resource pool {name!r}"
        for unit, allocation in allocations.items():
            # Empty, it reserves exactly its reservation from the parent.
            self._check(unit, what, held={parent: allocation.reservation})
        self._pools[name] = _Pool(allocations, parent)
        parent_pool.children.append(name)
        self._pool_names.append(name)
        self._flat.clear()

    def set_pool(self, name: str, allocations: Mapping[Unit, Allocation]) -> None:
        """Changes a pool's shares, reservation, limit or expandability of every
        resource (UpdateConfig), if all of them fit."""
        check_not_root(name, "changed")
        pool = self._pool(name)
        allocations = self._checked_allocations(allocations)
        what = f"cannot change resource pool {name!r}"
        for unit, allocation in allocations.items():
            self._check(unit, what, allocations={name: allocation})
        pool.allocations = allocations
        self._flat.clear()

    def remove_pool(self, name: str) -> None:
        """Removes a pool; its child pools and consumers move to its parent, as
        vSphere's ResourcePool.Destroy does. This never needs more reservation, so it
        is never refused: the parent now holds what the children held, which the pool's
        own reservation already covered (or borrowed, if expandable)."""
        check_not_root(name, "removed")
        pool = self._pool(name)
        parent_name = pool.parent
        assert parent_name is not None
        parent = self._pools[parent_name]
        at = parent.children.index(name)
        parent.children[at : at + 1] = pool.children
        for child in pool.children:
            self._pools[child].parent = parent_name
        number = self._number(name)
        for consumers in self._consumers.values():
            pool_of = consumers.pool_of
            pool_of[pool_of == number] = self._number(parent_name)
            pool_of[pool_of > number] -= 1
        del self._pool_names[number]
        del self._pools[name]
        self._flat.clear()

    # -- consumers of several resources --------------------------------------------------

    def check_admission(self, name: str, pool: str, allocations: Mapping[Unit, Allocation]) -> None:
        """Raises InsufficientResourcesFault, changing nothing, if a consumer with these
        allocations would not fit into `pool` (a VM about to power on), resource by
        resource in the order given."""
        self._pool(pool)
        for unit, allocation in allocations.items():
            self.view(unit)
            _check_allocation(allocation)
            self._check(
                unit, _admit_what(name, allocation, unit), held={pool: allocation.reservation}
            )

    def check_consumer_change(
        self, name: str, pool: str, allocations: Mapping[Unit, Allocation]
    ) -> None:
        """Raises, changing nothing, unless `change_consumer` would succeed."""
        self._pool(pool)
        for unit, allocation in allocations.items():
            view = self.view(unit)
            i = view.index(name)
            _check_allocation(allocation)
            source, reservation = (
                view.consumer_pool(name),
                int(self._consumers[unit].reservation[i]),
            )
            for step in _steps(name, source, pool, reservation, allocation, unit):
                held = {source: -reservation}
                held[step.pool] = held.get(step.pool, 0) + step.reservation
                self._check(unit, step.what, held=held)

    def change_consumer(self, name: str, pool: str, allocations: Mapping[Unit, Allocation]) -> None:
        """A consumer's new allocations of several resources and its new pool
        (ReconfigVM of a running VM, MoveIntoResourcePool), all checked, then all
        applied."""
        self.check_consumer_change(name, pool, allocations)
        number = self._number(pool)
        for unit, allocation in allocations.items():
            consumers = self._consumers[unit]
            consumers.set(consumers.index[name], allocation, number)
        self._flat.clear()

    # -- one resource (through ResourceView) --------------------------------------------

    def _add_consumer(self, unit: Unit, name: str, allocation: Allocation, pool: str) -> int:
        _check_name(name, "VM name")
        consumers = self._consumers[unit]
        if name in consumers.index:
            raise AlreadyExists(f"{name!r} already draws on this {unit} tree")
        self._pool(pool)
        _check_allocation(allocation)
        self._check(unit, _admit_what(name, allocation, unit), held={pool: allocation.reservation})
        self._flat.clear()
        return consumers.append(name, allocation, self._number(pool))

    def _set_consumer(self, unit: Unit, name: str, allocation: Allocation) -> None:
        view = self._views[unit]
        i = view.index(name)
        _check_allocation(allocation)
        pool = view.consumer_pool(name)
        what = f"cannot set {name!r} to a {allocation.reservation} {unit} reservation"
        held = {pool: allocation.reservation - int(self._consumers[unit].reservation[i])}
        self._check(unit, what, held=held)
        self._consumers[unit].set(i, allocation, self._number(pool))
        self._flat.clear()

    def _remove_consumer(self, unit: Unit, name: str) -> Allocation:
        """Releasing a reservation always fits: never refused once the name is known."""
        allocation = self._views[unit].consumer(name)
        self._consumers[unit].delete(name)
        self._flat.clear()
        return allocation

    # -- admission ---------------------------------------------------------------------

    def _reservations(
        self,
        unit: Unit,
        held: Mapping[str, int] | None = None,
        allocations: Mapping[str, Allocation] | None = None,
        what: str | None = None,
    ) -> tuple[list[int], list[int]]:
        """Per pool number, what its children reserve from it (reservationUsed) and
        what it reserves from its parent (its reservation, or more when its children
        borrowed through an expandable reservation), for the tree as it is, or with
        consumers' reservations changed by `held` (per pool) and pools' `allocations`
        replaced. With `what`, each pool is checked, children before parents, and the
        first that cannot hold its children's reservations refuses."""
        held, allocations = held or {}, allocations or {}
        consumers = self._consumers[unit]
        n = len(self._pool_names)
        direct = np.bincount(consumers.pool_of, weights=consumers.reservation, minlength=n)
        used = [int(r) for r in direct]
        for pool, delta in held.items():
            used[self._number(pool)] += delta
        effective = [0] * n
        for name in reversed(self._preorder()):  # every pool before its parent
            p = self._number(name)
            allocation = allocations[name] if name in allocations else self.allocation(name, unit)
            if what is not None:
                self._check_fits(unit, name, allocation, used[p], what)
            effective[p] = _effective(allocation, used[p])
            parent = self._pools[name].parent
            if parent is not None:
                used[self._number(parent)] += effective[p]
        return used, effective

    def _check(
        self,
        unit: Unit,
        what: str,
        held: Mapping[str, int] | None = None,
        allocations: Mapping[str, Allocation] | None = None,
    ) -> None:
        """InsufficientResourcesFault, changing nothing, if the tree with this change
        would not hold its reservations."""
        self._reservations(unit, held, allocations, what)

    def _check_fits(
        self, unit: Unit, name: str, allocation: Allocation, used: int, what: str
    ) -> None:
        if name == ROOT_POOL and used > self._capacity[unit]:
            reason = f"the host has {self._capacity[unit]} {unit} to reserve"
        elif not allocation.expandable_reservation and used > allocation.reservation:
            reason = (
                f"pool {name!r} reserves {allocation.reservation} {unit} and its "
                "reservation is not expandable"
            )
        elif allocation.limited and used > allocation.limit:
            reason = f"pool {name!r} is limited to {allocation.limit} {unit}"
        else:
            return
        raise InsufficientResourcesFault(
            f"{what}: the reservations under pool {name!r} would total {used} {unit} "
            f"but {reason}; lower a reservation or raise the pool's",
            pool=name,
            requested=used,
            unit=unit.value,
        )

    # -- helpers -----------------------------------------------------------------------

    def _pool(self, name: str) -> _Pool:
        try:
            return self._pools[name]
        except KeyError:
            raise NotFound(f"no resource pool named {name!r}") from None

    def _number(self, pool: str) -> int:
        return self._pool_names.index(pool)

    def _checked_allocations(
        self, allocations: Mapping[Unit, Allocation]
    ) -> dict[Unit, Allocation]:
        """One Allocation per resource of the tree, in the tree's order."""
        if not isinstance(allocations, Mapping):
            raise InvalidArgument(
                f"expected an Allocation per resource ({', '.join(self.units)}), "
                f"got {type(allocations).__name__}"
            )
        given = {unit_of(unit): allocation for unit, allocation in allocations.items()}
        if set(given) != set(self.units):
            raise InvalidArgument(
                f"a pool needs an allocation of each of {', '.join(self.units)}, got "
                + (", ".join(given) or "none")
            )
        for allocation in given.values():
            _check_allocation(allocation)
        return {unit: given[unit] for unit in self.units}

    def _preorder(self) -> list[str]:
        order, stack = [], [ROOT_POOL]
        while stack:
            name = stack.pop()
            order.append(name)
            stack.extend(reversed(self._pools[name].children))
        return order

    def _flat_tree(self, unit: Unit) -> FlatTree:
        if unit not in self._flat:
            self._flat[unit] = self._flatten(unit)
        return self._flat[unit]

    def _flatten(self, unit: Unit) -> FlatTree:
        names = self._pool_names
        number = {name: i for i, name in enumerate(names)}
        pools = [self._pools[name] for name in names]
        allocations = [self.allocation(name, unit) for name in names]
        consumers = self._consumers[unit]
        by_pool = np.argsort(consumers.pool_of, kind="stable")
        bounds = np.searchsorted(consumers.pool_of[by_pool], np.arange(len(names) + 1))
        return FlatTree(
            capacity=float(self._capacity[unit]),
            preorder=tuple(number[name] for name in self._preorder()),
            parent=np.array([number[p.parent] if p.parent else -1 for p in pools]),
            child_pools=tuple(
                np.array([number[c] for c in p.children], dtype=np.int64) for p in pools
            ),
            pool_shares=np.array([a.shares for a in allocations], dtype=np.float64),
            pool_reservation=np.array([a.reservation for a in allocations], np.float64),
            pool_limit=np.array([_limit_value(a) for a in allocations]),
            shares=consumers.shares.copy(),
            reservation=consumers.reservation.copy(),
            limit=consumers.limit.copy(),
            pool_of=consumers.pool_of.copy(),
            by_pool=by_pool,
            bounds=bounds,
        )


class ResourceView:
    """One resource of a PoolTree (CPU in MHz, or memory in MB): its capacity, its
    consumers, each pool's allocation and reservations of it, and its division.

    Consumer order: consumers are numbered in the order they were added; removing one
    closes the gap (the later ones move down by one, keeping their order).
    `consumer_names` lists them in that order, `index(name)` gives one's position, and
    the demand given to `entitlements` and the array it returns follow that order. A
    caller keeping per-consumer arrays of its own appends on `add_consumer` and deletes
    at `index(name)` (read before `remove_consumer`) to stay aligned.
    """

    def __init__(self, tree: PoolTree, unit: Unit) -> None:
        self.tree = tree
        self.unit = unit
        self._consumers = tree._consumers[unit]
        self._last: dict[str, tuple[FlatTree, bytes, np.ndarray]] = {}
        """The last division of each kind: the kernel divides the same tree for the
        same demand every period while nothing changes, and the tree is rebuilt (a
        new FlatTree) on any change, so (tree, demand) decides the answer."""

    # -- reading -----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.tree._capacity[self.unit]

    @property
    def consumer_names(self) -> tuple[str, ...]:
        """Consumers in the order that demand and entitlement arrays follow."""
        return tuple(self._consumers.names)

    def __len__(self) -> int:
        return len(self._consumers.names)

    def __contains__(self, name: object) -> bool:
        return name in self._consumers.index

    def index(self, name: str) -> int:
        """A consumer's position in `consumer_names` (and in entitlement arrays)."""
        try:
            return self._consumers.index[name]
        except KeyError:
            raise NotFound(f"no VM named {name!r} draws on this {self.unit} tree") from None

    def consumer(self, name: str) -> Allocation:
        return self._consumers.allocation(self.index(name))

    def consumer_pool(self, name: str) -> str:
        return self.tree._pool_names[int(self._consumers.pool_of[self.index(name)])]

    def pools(self) -> list[str]:
        """Pool names, parents before their children (the root first)."""
        return self.tree.pools()

    def pool(self, name: str) -> Allocation:
        return self.tree.allocation(name, self.unit)

    def parent(self, pool: str) -> str | None:
        """The parent pool's name; None for the root."""
        return self.tree.parent(pool)

    def reserved(self, pool: str = ROOT_POOL) -> int:
        """The reservation held by a pool's children (reservationUsed)."""
        self.tree._pool(pool)
        return self.tree._reservations(self.unit)[0][self.tree._number(pool)]

    def unreserved(self, pool: str = ROOT_POOL) -> int:
        """How much a new child of `pool` could reserve now (unreservedForVm): the
        pool's unreserved part, plus what it may borrow from its parent when its
        reservation is expandable, never past its limit."""
        self.tree._pool(pool)
        used = self.tree._reservations(self.unit)[0]
        return self._unreserved(pool, used)

    def _unreserved(self, pool: str, used: list[int]) -> int:
        allocation, parent = self.pool(pool), self.parent(pool)
        held = used[self.tree._number(pool)]
        free = max(0, allocation.reservation - held)
        if allocation.expandable_reservation and parent is not None:
            free += self._unreserved(parent, used)
        if allocation.limited:
            free = min(free, max(0, allocation.limit - held))
        return free

    # -- consumers ---------------------------------------------------------------------

    def add_consumer(self, name: str, allocation: Allocation, pool: str = ROOT_POOL) -> int:
        """Admits a consumer (a VM powering on) into `pool`; returns its index.
        InsufficientResourcesFault if its reservation does not fit."""
        return self.tree._add_consumer(self.unit, name, allocation, pool)

    def set_consumer(self, name: str, allocation: Allocation) -> None:
        """Changes a consumer's shares, reservation or limit (admission-controlled)."""
        self.tree._set_consumer(self.unit, name, allocation)

    def remove_consumer(self, name: str) -> Allocation:
        """Removes a consumer (a VM powering off) and releases its reservation; the
        consumers after it move down one index."""
        return self.tree._remove_consumer(self.unit, name)

    # -- entitlements ------------------------------------------------------------------

    def entitlements(self, demand: np.ndarray | Iterable[float]) -> np.ndarray:
        """Each consumer's entitlement (MHz or MB) for `demand`, in consumer order.

        `demand` is what each consumer would use if nothing held it back, already
        capped by what its hardware can use (a VM's vCPUs, its configured memory).
        """
        return self._divided("entitlements", demand, {})

    def guarantees(self, demand: np.ndarray | Iterable[float]) -> np.ndarray:
        """What the reservations (a consumer's own and its pools') guarantee each
        consumer for `demand`: the reserved capacity alone divided down the tree, each
        pool's reservation shared among its children by shares."""
        return self._divided("guarantees", demand, {"reserved_only": True})

    def caps(self, holding: np.ndarray | Iterable[float]) -> np.ndarray:
        """The most each consumer may hold given its own limit and its pools' limits
        (a limited pool's amount shared among its children by shares), however idle
        the host is."""
        return self._divided("caps", holding, {"capacity": math.inf})

    def pool_entitlements(self, demand: np.ndarray | Iterable[float]) -> dict[str, float]:
        """Each pool's entitlement for `demand` (what its subtree gets in all)."""
        pool_entitlement = divide(self._flat(), self._demand_array(demand))[1]
        return {name: float(pool_entitlement[i]) for i, name in enumerate(self.tree._pool_names)}

    def _flat(self) -> FlatTree:
        return self.tree._flat_tree(self.unit)

    def _divided(
        self, kind: str, demand: np.ndarray | Iterable[float], options: dict
    ) -> np.ndarray:
        """divide()'s consumer entitlements, reused while the tree and the demand are
        the same as last time (a copy: callers may change what they get)."""
        flat, d = self._flat(), self._demand_array(demand)
        key = d.tobytes()
        last = self._last.get(kind)
        if last is not None and last[0] is flat and last[1] == key:
            return last[2].copy()
        result = divide(flat, d, **options)[0]
        self._last[kind] = (flat, key, result.copy())
        return result

    def _demand_array(self, demand: np.ndarray | Iterable[float]) -> np.ndarray:
        d = np.asarray(demand, dtype=np.float64)
        if d.shape != (len(self),):
            raise InvalidArgument(
                f"demand must have one value per consumer ({len(self)}, in "
                f"consumer_names order), got shape {d.shape}"
            )
        if not (np.all(d >= 0) and np.all(np.isfinite(d))):
            raise InvalidArgument(f"demand must be finite and >= 0 {self.unit}")
        return d


def _steps(
    name: str, source: str, pool: str, reservation: int, allocation: Allocation, unit: Unit
) -> tuple[_Step, ...]:
    """A running VM's change of one resource as two states, each checked: a reservation
    going down is lowered before the move and one going up raised after it, so a
    refusal says which cannot be done (the move itself, or the new reservation in the
    new pool). Neither state holds more anywhere than the end does."""
    set_what = f"cannot set {name!r} to a {allocation.reservation} {unit} reservation"
    move_what = f"cannot move {name!r} into pool {pool!r}"
    if allocation.reservation <= reservation:
        return (
            _Step(allocation.reservation, source, set_what),
            _Step(allocation.reservation, pool, move_what),
        )
    return _Step(reservation, pool, move_what), _Step(allocation.reservation, pool, set_what)


def _admit_what(name: str, allocation: Allocation, unit: Unit) -> str:
    return f"cannot admit {name!r} with a {allocation.reservation} {unit} reservation"


def _effective(allocation: Allocation, used: int) -> int:
    if allocation.expandable_reservation:
        return max(allocation.reservation, used)
    return allocation.reservation


def _checked_capacity(capacity: int, unit: Unit) -> int:
    capacity = whole_number(capacity, "capacity")
    if capacity < 0:
        raise InvalidArgument(f"capacity must be >= 0 {unit}, got {capacity}")
    return capacity


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} must be a non-empty string, got {name!r}")


def _check_allocation(allocation: Allocation) -> None:
    if not isinstance(allocation, Allocation):
        raise InvalidArgument(f"expected an Allocation, got {type(allocation).__name__}")


def _limit_value(allocation: Allocation) -> float:
    return float(allocation.limit) if allocation.limited else math.inf
