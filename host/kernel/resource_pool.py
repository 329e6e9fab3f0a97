"""Shares, reservations, limits and the resource-pool tree: how one resource of a host
(CPU in MHz, or memory in MB) is promised and divided among its VMs.

Owns: `Allocation` (vSphere's ResourceAllocationInfo) and its share levels; admission
control of reservations through the pool tree (expandable reservations borrow from the
parent); and the division of a capacity into entitlements by shares, reservations,
limits and demand. The same code serves the CPU scheduler (MHz) and the memory
manager (MB): nothing here knows which resource it divides, beyond the unit's name.

Must never: change anything on a refused call (every change is planned and checked
first, then applied); keep a Python object per VM on the hot path (consumers live in
numpy arrays so that dividing a pool among 1,024 VMs is one vectorised call); read a
clock (entitlements are a pure function of the tree and the demand).

The rules (vSphere Resource Management Guide, "Resource Allocation Settings" and
"Admission Control"):
- A reservation is a guarantee, not an addition: a consumer's entitlement is the larger
  of its reservation and its share of what is left, so reservations count towards
  shares. It is honoured only while demanded (an idle VM's reserved CPU runs others).
- A limit always caps, even with the host idle.
- Whatever a consumer does not demand goes to its siblings by shares, then up the tree
  (work conserving): a host's capacity is idle only when no demand is left uncapped.
- Admission: the reservations of a pool's children may not exceed the pool's
  reservation, unless the reservation is expandable, in which case the pool borrows
  the rest from its parent (and so on up to the root, whose reservation is the
  capacity); an expandable pool with a limit cannot hold more than its limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

import numpy as np

from vsim.faults import (
    AlreadyExists,
    DuplicateName,
    InsufficientResourcesFault,
    InvalidArgument,
    NotFound,
)


class Unit(StrEnum):
    """What a tree divides: its numbers are in this unit."""

    MHZ = "MHz"
    MB = "MB"


UNLIMITED = -1
MAX_SHARES = 2**31 - 1
"""vSphere's SharesInfo.shares is a 32-bit integer."""
"""`limit` of an allocation with no limit (vSphere's -1)."""
ROOT_POOL = "Resources"
"""The root resource pool, named as vSphere names a host's or cluster's root pool."""

SHARE_LEVELS = ("low", "normal", "high")
"""SharesInfo.level values with fixed share counts ("custom" is any other count)."""
VM_CPU_SHARES_PER_VCPU = {"low": 500, "normal": 1000, "high": 2000}
VM_MEMORY_SHARES_PER_MB = {"low": 5, "normal": 10, "high": 20}
"""Per MB of the VM's configured memory."""
POOL_CPU_SHARES = {"low": 2000, "normal": 4000, "high": 8000}
POOL_MEMORY_SHARES = {"low": 81920, "normal": 163840, "high": 327680}
POOL_SHARES = {Unit.MHZ: POOL_CPU_SHARES, Unit.MB: POOL_MEMORY_SHARES}


def _whole(value: int, field_name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidArgument(f"{field_name} must be a whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Allocation:
    """A consumer's or pool's resource settings (vSphere's ResourceAllocationInfo).

    Constructing one validates it: a bad allocation cannot exist, so it cannot reach
    a tree.
    """

    shares: int
    """Relative weight against siblings under contention (> 0)."""
    reservation: int = 0
    """Guaranteed amount (MHz or MB) while demanded; admission-controlled."""
    limit: int = UNLIMITED
    """Most it may ever get (MHz or MB), even with the host idle; -1 = unlimited."""
    expandable_reservation: bool = True
    """Pools only: the children may reserve more than `reservation`, borrowing from
    the parent. Ignored for VMs."""

    def __post_init__(self) -> None:
        shares = _whole(self.shares, "shares")
        reservation = _whole(self.reservation, "reservation")
        limit = _whole(self.limit, "limit")
        for name, value in (("shares", shares), ("reservation", reservation), ("limit", limit)):
            object.__setattr__(self, name, value)  # numpy integers become plain ints
        if not 0 < shares <= MAX_SHARES:
            raise InvalidArgument(f"shares must be 1..{MAX_SHARES}, got {shares}")
        if reservation < 0:
            raise InvalidArgument(f"reservation must be >= 0, got {reservation}")
        if limit != UNLIMITED and limit < reservation:
            raise InvalidArgument(
                f"limit {limit} is below the reservation {reservation}: "
                f"use a limit >= {reservation}, or {UNLIMITED} for unlimited"
            )
        if not isinstance(self.expandable_reservation, bool):
            raise InvalidArgument(
                f"expandable_reservation must be true or false, got {self.expandable_reservation!r}"
            )

    @property
    def limited(self) -> bool:
        return self.limit != UNLIMITED


def share_level(level: str) -> str:
    """`level` if it is a vSphere share level; InvalidArgument otherwise."""
    if level not in SHARE_LEVELS:
        raise InvalidArgument(
            f"share level {level!r} is not one of {', '.join(SHARE_LEVELS)} "
            "(give a share count for custom shares)"
        )
    return level


def vm_cpu_allocation(
    level: str, vcpus: int, reservation: int = 0, limit: int = UNLIMITED
) -> Allocation:
    """A VM's CPU allocation at a share level: 500/1000/2000 shares per vCPU."""
    vcpus = _whole(vcpus, "vcpus")
    if vcpus < 1:
        raise InvalidArgument(f"vcpus must be >= 1, got {vcpus}")
    return Allocation(VM_CPU_SHARES_PER_VCPU[share_level(level)] * vcpus, reservation, limit)


def vm_memory_allocation(
    level: str, memory_mb: int, reservation: int = 0, limit: int = UNLIMITED
) -> Allocation:
    """A VM's memory allocation at a share level: 5/10/20 shares per configured MB."""
    memory_mb = _whole(memory_mb, "memory_mb")
    if memory_mb < 1:
        raise InvalidArgument(f"memory_mb must be >= 1, got {memory_mb}")
    return Allocation(VM_MEMORY_SHARES_PER_MB[share_level(level)] * memory_mb, reservation, limit)


def pool_allocation(
    unit: Unit | str,
    level: str = "normal",
    reservation: int = 0,
    limit: int = UNLIMITED,
    expandable_reservation: bool = True,
) -> Allocation:
    """A resource pool's allocation at a share level (CPU 2000/4000/8000, memory
    81920/163840/327680), expandable by default as in vSphere."""
    shares = POOL_SHARES[_unit(unit)][share_level(level)]
    return Allocation(shares, reservation, limit, expandable_reservation)


def pool_share_level(unit: Unit | str, shares: int) -> str:
    """The level a pool's share count is (SharesInfo.level), "custom" if none."""
    levels = POOL_SHARES[_unit(unit)]
    return next((level for level in SHARE_LEVELS if levels[level] == shares), "custom")


@dataclass(frozen=True)
class PoolConfig:
    """A host resource pool: one name in the CPU tree and the memory tree, with its
    settings for each (vSphere's ResourceConfigSpec)."""

    name: str
    parent: str
    """The parent pool's name (ROOT_POOL for a child of the root)."""
    cpu: Allocation
    """In MHz."""
    memory: Allocation
    """In MB."""


def _unit(unit: Unit | str) -> Unit:
    try:
        return Unit(unit)
    except ValueError:
        raise InvalidArgument(
            f"unit {unit!r} is not one of {', '.join(u.value for u in Unit)}"
        ) from None


# -- dividing a capacity among siblings ------------------------------------------------


def check_not_root(name: str, verb: str) -> None:
    """InvalidArgument for the root pool, which is the host's whole capacity."""
    if name == ROOT_POOL:
        raise InvalidArgument(
            f"the root resource pool {ROOT_POOL!r} cannot be {verb}: it is the host's "
            "whole capacity"
        )


def divvy(
    capacity: float,
    shares: np.ndarray | Iterable[float],
    floor: np.ndarray | Iterable[float],
    cap: np.ndarray | Iterable[float],
) -> np.ndarray:
    """Divides `capacity` among siblings: each gets at least its floor and never more
    than its cap; above the floors they fill by shares (weighted max-min water-filling).

    The answer is x_i = clip(t * shares_i, floor_i, cap_i) for the one water level t at
    which the x sum to `capacity`: a sibling whose floor is above its share keeps its
    floor (a reservation is not added to the share), and what a capped sibling cannot
    take goes to the others by shares. t is found exactly in one vectorised pass (sort
    the 2n breakpoints where a sibling leaves its floor or reaches its cap, evaluate the
    piecewise-linear total at each, interpolate), with no per-sibling Python loop.

    If the capacity covers every cap, everyone gets its cap (what is left stays
    undivided). If it does not cover the floors (reservations over-committed), the
    floors are scaled down in proportion. `cap` may hold `inf`.
    """
    s, f, c = _sibling_arrays(shares, floor, cap)
    capacity = float(capacity)
    if not (capacity >= 0 and math.isfinite(capacity)):
        raise InvalidArgument(f"capacity to divide must be a finite number >= 0, got {capacity}")
    if s.size == 0:
        return np.zeros(0)
    if capacity >= c.sum():
        return c.copy()
    floors = f.sum()
    if capacity <= floors:
        return f * (capacity / floors) if floors > 0 else np.zeros_like(f)
    level = _water_level(capacity, s, f, c)
    return np.clip(level * s, f, c)


def _sibling_arrays(
    shares: np.ndarray | Iterable[float],
    floor: np.ndarray | Iterable[float],
    cap: np.ndarray | Iterable[float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, f, c = (np.asarray(a, dtype=np.float64) for a in (shares, floor, cap))
    if not (s.ndim == 1 and s.shape == f.shape == c.shape):
        raise InvalidArgument(
            f"shares, floor and cap must be 1-D arrays of one length, got shapes "
            f"{s.shape}, {f.shape}, {c.shape}"
        )
    if not (np.all(s > 0) and np.all(np.isfinite(s))):
        raise InvalidArgument("every share count must be a finite number > 0")
    if not (np.all(f >= 0) and np.all(np.isfinite(f))):
        raise InvalidArgument("every floor must be a finite number >= 0")
    if not np.all(c >= f):  # also refuses NaN caps
        raise InvalidArgument("every cap must be >= its floor")
    return s, f, c


def _water_level(capacity: float, s: np.ndarray, f: np.ndarray, c: np.ndarray) -> float:
    """The t at which sum(clip(t*s, f, c)) == capacity, given sum(f) < capacity < sum(c).

    Between two consecutive breakpoints the total is linear in t, so it is evaluated at
    every breakpoint and interpolated inside the bracket that crosses `capacity`.
    """
    low = f / s  # at or below this level a sibling sits on its floor
    high = c / s  # above this level it sits on its cap (inf for no cap)
    by_low, by_high = np.argsort(low), np.argsort(high)
    low_sorted, high_sorted = low[by_low], high[by_high]
    floor_sum = np.concatenate(([0.0], np.cumsum(f[by_low])))
    floor_shares = np.concatenate(([0.0], np.cumsum(s[by_low])))
    cap_sum = np.concatenate(([0.0], np.cumsum(np.where(np.isfinite(c), c, 0.0)[by_high])))
    cap_shares = np.concatenate(([0.0], np.cumsum(s[by_high])))
    total_shares = floor_shares[-1]

    def totals(t: np.ndarray) -> np.ndarray:
        """The total at each level in t."""
        floored = np.searchsorted(low_sorted, t, side="left")  # low[i] >= t from here on
        capped = np.searchsorted(high_sorted, t, side="left")  # high[i] < t before here
        at_floor = floor_sum[-1] - floor_sum[floored]
        at_cap = cap_sum[capped]
        growing = total_shares - (floor_shares[-1] - floor_shares[floored]) - cap_shares[capped]
        return at_floor + at_cap + t * growing

    levels = np.unique(np.concatenate(([0.0], low, high[np.isfinite(high)])))
    total = totals(levels)
    above = int(np.searchsorted(total, capacity, side="left"))  # total is non-decreasing
    if above == len(levels):  # past the last finite cap: only the uncapped grow
        uncapped = s[np.isinf(c)].sum()
        return float(levels[-1] + (capacity - total[-1]) / uncapped)
    a, b = levels[above - 1], levels[above]
    ta, tb = total[above - 1], total[above]
    return float(a + (capacity - ta) * (b - a) / (tb - ta))


# -- the tree --------------------------------------------------------------------------


@dataclass
class _Pool:
    allocation: Allocation
    parent: str | None
    depth: int
    children: list[str] = field(default_factory=list)
    """Child pools, in the order they were made."""
    consumer_reservations: int = 0
    """Sum of the reservations of the consumers directly in this pool."""
    used: int = 0
    """Reservation held by the children: consumer_reservations plus each child pool's
    effective reservation (vSphere's ResourcePoolResourceUsage.reservationUsed)."""
    effective: int = 0
    """What this pool reserves from its parent: its reservation, or more when its
    children borrowed through an expandable reservation."""


@dataclass(frozen=True)
class _Step:
    """One pool's state after a planned change."""

    allocation: Allocation
    used: int
    effective: int


def _effective(allocation: Allocation, used: int) -> int:
    if allocation.expandable_reservation:
        return max(allocation.reservation, used)
    return allocation.reservation


class ResourceTree:
    """A root pool of `capacity` (MHz or MB), child pools, and consumers (VMs) in pools.

    Pool names are unique in the tree (a parent is given by name); consumer names are
    unique in the tree. The root pool, `ROOT_POOL`, has the whole capacity as its fixed,
    non-expandable reservation and cannot be changed or removed.

    Consumer order: consumers are numbered in the order they were added;
    removing one closes the gap (the later ones move down by one, keeping their order).
    `consumer_names` lists them in that order, `index(name)` gives one's position, and
    the demand given to `entitlements` and the array it returns follow that order. A
    caller keeping per-consumer arrays of its own appends on `add_consumer` and deletes
    at `index(name)` (read before `remove_consumer`) to stay aligned.
    """

    def __init__(self, capacity: int, unit: Unit | str) -> None:
        self.unit = _unit(unit)
        self._capacity = self._checked_capacity(capacity)
        root = Allocation(POOL_SHARES[self.unit]["normal"], self._capacity, self._capacity, False)
        self._pools: dict[str, _Pool] = {ROOT_POOL: _Pool(root, None, 0, effective=self._capacity)}
        self._pool_names: list[str] = [ROOT_POOL]
        """Pool number -> name (consumers record their pool by number)."""
        self._names: list[str] = []
        self._index: dict[str, int] = {}
        self._shares = np.zeros(0)
        self._reservation = np.zeros(0)
        self._limit = np.zeros(0)  # inf = unlimited
        self._pool_of = np.zeros(0, dtype=np.int64)
        self._layout: _Layout | None = None

    # -- reading -----------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def consumer_names(self) -> tuple[str, ...]:
        """Consumers in the order that demand and entitlement arrays follow."""
        return tuple(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index(self, name: str) -> int:
        """A consumer's position in `consumer_names` (and in entitlement arrays)."""
        try:
            return self._index[name]
        except KeyError:
            raise NotFound(f"no VM named {name!r} draws on this {self.unit} tree") from None

    def consumer(self, name: str) -> Allocation:
        i = self.index(name)
        limit = self._limit[i]
        return Allocation(
            int(self._shares[i]),
            int(self._reservation[i]),
            UNLIMITED if math.isinf(limit) else int(limit),
        )

    def consumer_pool(self, name: str) -> str:
        return self._pool_names[int(self._pool_of[self.index(name)])]

    def pools(self) -> list[str]:
        """Pool names, parents before their children (the root first)."""
        return list(self._preorder())

    def pool(self, name: str) -> Allocation:
        return self._pool(name).allocation

    def parent(self, pool: str) -> str | None:
        """The parent pool's name; None for the root."""
        return self._pool(pool).parent

    def reserved(self, pool: str = ROOT_POOL) -> int:
        """The reservation held by a pool's children (reservationUsed)."""
        return self._pool(pool).used

    def unreserved(self, pool: str = ROOT_POOL) -> int:
        """How much a new child of `pool` could reserve now (unreservedForVm): the
        pool's unreserved part, plus what it may borrow from its parent when its
        reservation is expandable, never past its limit."""
        p = self._pool(pool)
        alloc = p.allocation
        free = max(0, alloc.reservation - p.used)
        if alloc.expandable_reservation and p.parent is not None:
            free += self.unreserved(p.parent)
        if alloc.limited:
            free = min(free, max(0, alloc.limit - p.used))
        return free

    # -- pools -------------------------------------------------------------------------

    def add_pool(self, name: str, allocation: Allocation, parent: str = ROOT_POOL) -> None:
        """Creates a child pool of `parent` (CreateResourcePool)."""
        _check_name(name, "resource pool name")
        if name in self._pools:
            raise DuplicateName(f"a resource pool named {name!r} already exists")
        parent_pool = self._pool(parent)
        _check_allocation(allocation)
        plan = self._plan(
            {parent: allocation.reservation}, {}, f"cannot create resource pool {name!r}"
        )
        self._apply(plan)
        self._pools[name] = _Pool(
            allocation, parent, parent_pool.depth + 1, effective=allocation.reservation
        )
        parent_pool.children.append(name)
        self._pool_names.append(name)
        self._layout = None

    def set_pool(self, name: str, allocation: Allocation) -> None:
        """Changes a pool's shares, reservation, limit or expandability (UpdateConfig)."""
        self._not_root(name, "changed")
        self._pool(name)
        _check_allocation(allocation)
        plan = self._plan({}, {name: allocation}, f"cannot change resource pool {name!r}")
        self._apply(plan)

    def remove_pool(self, name: str) -> None:
        """Removes a pool; its child pools and consumers move to its parent, as
        vSphere's ResourcePool.Destroy does. This never needs more reservation: the
        parent now holds what the children held, which the pool's own effective
        reservation already covered."""
        self._not_root(name, "removed")
        pool = self._pool(name)
        parent_name = pool.parent
        assert parent_name is not None
        parent = self._pools[parent_name]
        plan = self._plan(
            {parent_name: pool.used - pool.effective}, {}, f"cannot remove pool {name!r}"
        )
        self._apply(plan)
        at = parent.children.index(name)
        parent.children[at : at + 1] = pool.children
        parent.consumer_reservations += pool.consumer_reservations
        for child in pool.children:
            self._pools[child].parent = parent_name
            self._shift_depth(child, -1)
        number = self._pool_names.index(name)
        self._pool_of[self._pool_of == number] = self._pool_names.index(parent_name)
        self._pool_of[self._pool_of > number] -= 1
        del self._pool_names[number]
        del self._pools[name]
        self._layout = None

    def set_capacity(self, capacity: int) -> None:
        """Changes what the root divides (e.g. a host's memory less the VMkernel's).
        Refused while the reservations would not fit."""
        capacity = self._checked_capacity(capacity)
        root = self._pools[ROOT_POOL]
        if root.used > capacity:
            raise InsufficientResourcesFault(
                f"cannot lower the capacity to {capacity} {self.unit}: reservations of "
                f"{root.used} {self.unit} are held; lower them first",
                requested=capacity,
                reserved=root.used,
            )
        self._capacity = capacity
        root.allocation = replace(root.allocation, reservation=capacity, limit=capacity)
        root.effective = capacity

    # -- consumers ---------------------------------------------------------------------

    def add_consumer(self, name: str, allocation: Allocation, pool: str = ROOT_POOL) -> int:
        """Admits a consumer (a VM powering on) into `pool`; returns its index.
        InsufficientResourcesFault if its reservation does not fit."""
        _check_name(name, "VM name")
        if name in self._index:
            raise AlreadyExists(f"{name!r} already draws on this {self.unit} tree")
        self._pool(pool)
        _check_allocation(allocation)
        what = f"cannot admit {name!r} with a {allocation.reservation} {self.unit} reservation"
        plan = self._plan({pool: allocation.reservation}, {}, what)
        self._apply(plan)
        self._pools[pool].consumer_reservations += allocation.reservation
        index = len(self._names)
        self._names.append(name)
        self._index[name] = index
        self._shares = np.append(self._shares, float(allocation.shares))
        self._reservation = np.append(self._reservation, float(allocation.reservation))
        self._limit = np.append(self._limit, _limit_value(allocation))
        self._pool_of = np.append(self._pool_of, self._pool_names.index(pool))
        self._layout = None
        return index

    def set_consumer(self, name: str, allocation: Allocation) -> None:
        """Changes a consumer's shares, reservation or limit (admission-controlled)."""
        i = self.index(name)
        _check_allocation(allocation)
        pool = self.consumer_pool(name)
        delta = allocation.reservation - int(self._reservation[i])
        what = f"cannot set {name!r} to a {allocation.reservation} {self.unit} reservation"
        self._apply(self._plan({pool: delta}, {}, what))
        self._pools[pool].consumer_reservations += delta
        self._shares[i] = allocation.shares
        self._reservation[i] = allocation.reservation
        self._limit[i] = _limit_value(allocation)

    def move_consumer(self, name: str, pool: str) -> None:
        """Moves a consumer into another pool (MoveIntoResourcePool)."""
        i = self.index(name)
        self._pool(pool)
        source = self.consumer_pool(name)
        reservation = int(self._reservation[i])
        deltas = {source: -reservation}
        deltas[pool] = deltas.get(pool, 0) + reservation
        self._apply(self._plan(deltas, {}, f"cannot move {name!r} into pool {pool!r}"))
        self._pools[source].consumer_reservations -= reservation
        self._pools[pool].consumer_reservations += reservation
        self._pool_of[i] = self._pool_names.index(pool)
        self._layout = None

    def remove_consumer(self, name: str) -> Allocation:
        """Removes a consumer (a VM powering off) and releases its reservation; the
        consumers after it move down one index."""
        allocation = self.consumer(name)
        i = self._index[name]
        pool = self.consumer_pool(name)
        self._apply(self._plan({pool: -allocation.reservation}, {}, f"cannot remove {name!r}"))
        self._pools[pool].consumer_reservations -= allocation.reservation
        del self._names[i]
        del self._index[name]
        for later in self._names[i:]:
            self._index[later] -= 1
        self._shares = np.delete(self._shares, i)
        self._reservation = np.delete(self._reservation, i)
        self._limit = np.delete(self._limit, i)
        self._pool_of = np.delete(self._pool_of, i)
        self._layout = None
        return allocation

    # -- entitlements ------------------------------------------------------------------

    def entitlements(self, demand: np.ndarray | Iterable[float]) -> np.ndarray:
        """Each consumer's entitlement (MHz or MB) for `demand`, in consumer order.

        `demand` is what each consumer would use if nothing held it back, already
        capped by what its hardware can use (a VM's vCPUs, its configured memory).
        """
        return self._divide(demand)[0]

    def guarantees(self, demand: np.ndarray | Iterable[float]) -> np.ndarray:
        """What the reservations (a consumer's own and its pools') guarantee each
        consumer for `demand`: the reserved capacity alone divided down the tree, each
        pool's reservation shared among its children by shares."""
        return self._divide(demand, reserved_only=True)[0]

    def caps(self, holding: np.ndarray | Iterable[float]) -> np.ndarray:
        """The most each consumer may hold given its own limit and its pools' limits
        (a limited pool's amount shared among its children by shares), however idle
        the host is."""
        return self._divide(holding, capacity=float("inf"))[0]

    def pool_entitlements(self, demand: np.ndarray | Iterable[float]) -> dict[str, float]:
        """Each pool's entitlement for `demand` (what its subtree gets in all)."""
        pool_entitlement = self._divide(demand)[1]
        return {name: float(pool_entitlement[i]) for i, name in enumerate(self._pool_names)}

    def _divide(
        self,
        demand: np.ndarray | Iterable[float],
        capacity: float | None = None,
        reserved_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bottom-up, each subtree's demand (capped by limits) and its floor (the part
        of its reservations it demands); top-down, each pool's entitlement divvied
        among its child pools and consumers. `capacity` replaces the root's;
        `reserved_only` divides only what the reservations hold."""
        d = self._demand_array(demand)
        layout = self._layout_now()
        cap = np.minimum(d, self._limit)
        floor = np.minimum(self._reservation, cap)
        pool_cap, pool_floor = self._subtree_totals(layout, cap, floor)
        entitled = np.zeros(len(self._names))
        pool_entitled = np.zeros(len(self._pool_names))
        if capacity is None and not reserved_only:
            pool_entitled[0] = min(float(self._capacity), pool_cap[0])
        else:  # the root's own reservation and limit (the host's capacity) set aside
            kids, members = layout.child_pools[0], layout.members(0)
            under = pool_floor[kids].sum() + floor[members].sum()
            wanted = pool_cap[kids].sum() + cap[members].sum()
            pool_entitled[0] = min(under if reserved_only else capacity, wanted)
        for p in layout.preorder:
            kids = layout.child_pools[p]
            members = layout.members(p)
            given = divvy(
                pool_entitled[p],
                np.concatenate((layout.pool_shares[kids], self._shares[members])),
                np.concatenate((pool_floor[kids], floor[members])),
                np.concatenate((pool_cap[kids], cap[members])),
            )
            pool_entitled[kids] = given[: len(kids)]
            entitled[members] = given[len(kids) :]
        return entitled, pool_entitled

    def _demand_array(self, demand: np.ndarray | Iterable[float]) -> np.ndarray:
        d = np.asarray(demand, dtype=np.float64)
        if d.shape != (len(self._names),):
            raise InvalidArgument(
                f"demand must have one value per consumer ({len(self._names)}, in "
                f"consumer_names order), got shape {d.shape}"
            )
        if not (np.all(d >= 0) and np.all(np.isfinite(d))):
            raise InvalidArgument(f"demand must be finite and >= 0 {self.unit}")
        return d

    def _subtree_totals(
        self, layout: _Layout, cap: np.ndarray, floor: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per pool, its subtree's demand capped by its limit, and its floor:
        min(that demand, max(its reservation, its children's floors)). The children's
        floors exceed the pool's reservation only when it borrowed (expandable)."""
        n = len(self._pool_names)
        demand = np.bincount(self._pool_of, weights=cap, minlength=n).astype(np.float64)
        floors = np.bincount(self._pool_of, weights=floor, minlength=n).astype(np.float64)
        for p in reversed(layout.preorder):
            demand[p] = min(demand[p], layout.pool_limit[p])
            floors[p] = min(demand[p], max(layout.pool_reservation[p], floors[p]))
            parent = layout.parent[p]
            if parent >= 0:
                demand[parent] += demand[p]
                floors[parent] += floors[p]
        return demand, floors

    # -- admission ---------------------------------------------------------------------

    def _plan(
        self, used_delta: Mapping[str, int], allocations: Mapping[str, Allocation], what: str
    ) -> dict[str, _Step]:
        """Each touched pool's state after a change, checked from the changed pools up
        to the root; raises InsufficientResourcesFault, changing nothing, if a pool
        cannot hold its children's reservations."""
        pending = dict(used_delta)
        touched: set[str] = set()
        for name in (*used_delta, *allocations):
            while name is not None and name not in touched:
                touched.add(name)
                name = self._pools[name].parent
        plan: dict[str, _Step] = {}
        for name in sorted(touched, key=lambda n: -self._pools[n].depth):
            pool = self._pools[name]
            allocation = allocations.get(name, pool.allocation)
            used = pool.used + pending.get(name, 0)
            self._check_fits(name, allocation, used, what)
            step = plan[name] = _Step(allocation, used, _effective(allocation, used))
            if pool.parent is not None:
                pending[pool.parent] = pending.get(pool.parent, 0) + step.effective - pool.effective
        return plan

    def _check_fits(self, name: str, allocation: Allocation, used: int, what: str) -> None:
        unit = self.unit
        if name == ROOT_POOL and used > self._capacity:
            reason = f"the host has {self._capacity} {unit} to reserve"
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

    def _apply(self, plan: Mapping[str, _Step]) -> None:
        for name, step in plan.items():
            pool = self._pools[name]
            pool.allocation, pool.used, pool.effective = step.allocation, step.used, step.effective
        self._layout = None

    # -- helpers -----------------------------------------------------------------------

    def _pool(self, name: str) -> _Pool:
        try:
            return self._pools[name]
        except KeyError:
            raise NotFound(f"no resource pool named {name!r}") from None

    def _not_root(self, name: str, verb: str) -> None:
        check_not_root(name, verb)

    def _checked_capacity(self, capacity: int) -> int:
        capacity = _whole(capacity, "capacity")
        if capacity < 0:
            raise InvalidArgument(f"capacity must be >= 0 {self.unit}, got {capacity}")
        return capacity

    def _shift_depth(self, name: str, by: int) -> None:
        pool = self._pools[name]
        pool.depth += by
        for child in pool.children:
            self._shift_depth(child, by)

    def _preorder(self) -> list[str]:
        order, stack = [], [ROOT_POOL]
        while stack:
            name = stack.pop()
            order.append(name)
            stack.extend(reversed(self._pools[name].children))
        return order

    def _layout_now(self) -> _Layout:
        if self._layout is None:
            self._layout = _Layout.of(self)
        return self._layout


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} must be a non-empty string, got {name!r}")


def _check_allocation(allocation: Allocation) -> None:
    if not isinstance(allocation, Allocation):
        raise InvalidArgument(f"expected an Allocation, got {type(allocation).__name__}")


def _limit_value(allocation: Allocation) -> float:
    return float(allocation.limit) if allocation.limited else math.inf


@dataclass(frozen=True)
class _Layout:
    """The tree flattened into arrays for one division; rebuilt after any change."""

    preorder: tuple[int, ...]
    """Pool numbers, parents before children."""
    parent: np.ndarray
    """Parent pool number per pool (-1 for the root)."""
    child_pools: tuple[np.ndarray, ...]
    """Child pool numbers per pool."""
    pool_shares: np.ndarray
    pool_reservation: np.ndarray
    pool_limit: np.ndarray
    """inf = unlimited."""
    by_pool: np.ndarray
    """Consumer indices sorted by pool (stable: consumer order within a pool)."""
    bounds: np.ndarray
    """by_pool[bounds[p]:bounds[p+1]] are pool p's consumers."""

    @classmethod
    def of(cls, tree: ResourceTree) -> _Layout:
        names = tree._pool_names
        number = {name: i for i, name in enumerate(names)}
        pools = [tree._pools[name] for name in names]
        by_pool = np.argsort(tree._pool_of, kind="stable")
        bounds = np.searchsorted(tree._pool_of[by_pool], np.arange(len(names) + 1))
        return cls(
            preorder=tuple(number[name] for name in tree._preorder()),
            parent=np.array([number[p.parent] if p.parent else -1 for p in pools]),
            child_pools=tuple(
                np.array([number[c] for c in p.children], dtype=np.int64) for p in pools
            ),
            pool_shares=np.array([p.allocation.shares for p in pools], dtype=np.float64),
            pool_reservation=np.array([p.allocation.reservation for p in pools], np.float64),
            pool_limit=np.array([_limit_value(p.allocation) for p in pools]),
            by_pool=by_pool,
            bounds=bounds,
        )

    def members(self, pool: int) -> np.ndarray:
        return self.by_pool[self.bounds[pool] : self.bounds[pool + 1]]
