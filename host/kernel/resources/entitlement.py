"""Entitlements: how a capacity is divided among siblings (`divvy`), and down a whole
pool tree (`divide`), by shares, reservations, limits and demand.

Owns: the weighted max-min water-filling among siblings and the hierarchical division
over a tree flattened into arrays (`FlatTree`). Works on one resource at a time and
does not know which (MHz or MB).

Must never: know how a tree is kept or changed (pool_tree.py flattens it); loop in
Python over consumers (dividing a pool among 1,024 VMs is one vectorised call); read a
clock (entitlements are a pure function of the tree and the demand).

The rules (vSphere Resource Management Guide, "Resource Allocation Settings"): a
consumer gets at least its reservation while it demands it, never more than its limit
or its demand, and above the reservations capacity goes by shares; whatever a consumer
does not demand goes to its siblings by shares, then up the tree (work conserving): a
host's capacity is idle only when no demand is left uncapped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vsim.faults import InvalidArgument


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


@dataclass(frozen=True)
class FlatTree:
    """One resource of a pool tree flattened into arrays: what one division needs.
    Pools are numbered (the root is 0), consumers are in consumer order."""

    capacity: float
    """What the root divides."""
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
    shares: np.ndarray
    """Per consumer, as are reservation, limit and pool_of."""
    reservation: np.ndarray
    limit: np.ndarray
    """inf = unlimited."""
    pool_of: np.ndarray
    """The pool number each consumer is in."""
    by_pool: np.ndarray
    """Consumer indices sorted by pool (stable: consumer order within a pool)."""
    bounds: np.ndarray
    """by_pool[bounds[p]:bounds[p+1]] are pool p's consumers."""

    def members(self, pool: int) -> np.ndarray:
        return self.by_pool[self.bounds[pool] : self.bounds[pool + 1]]


def divide(
    flat: FlatTree,
    demand: np.ndarray,
    capacity: float | None = None,
    reserved_only: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Each consumer's and each pool's entitlement for `demand` (one value per consumer,
    already checked). Bottom-up, each subtree's demand (capped by limits) and its floor
    (the part of its reservations it demands); top-down, each pool's entitlement
    divvied among its child pools and consumers. `capacity` replaces the root's;
    `reserved_only` divides only what the reservations hold."""
    cap = np.minimum(demand, flat.limit)
    floor = np.minimum(flat.reservation, cap)
    pool_cap, pool_floor = _subtree_totals(flat, cap, floor)
    entitled = np.zeros(len(demand))
    pool_entitled = np.zeros(len(flat.pool_shares))
    if capacity is None and not reserved_only:
        pool_entitled[0] = min(flat.capacity, pool_cap[0])
    else:  # the root's own reservation and limit (the host's capacity) set aside
        kids, members = flat.child_pools[0], flat.members(0)
        under = pool_floor[kids].sum() + floor[members].sum()
        wanted = pool_cap[kids].sum() + cap[members].sum()
        pool_entitled[0] = min(under if reserved_only else capacity, wanted)
    for p in flat.preorder:
        kids = flat.child_pools[p]
        members = flat.members(p)
        given = divvy(
            pool_entitled[p],
            np.concatenate((flat.pool_shares[kids], flat.shares[members])),
            np.concatenate((pool_floor[kids], floor[members])),
            np.concatenate((pool_cap[kids], cap[members])),
        )
        pool_entitled[kids] = given[: len(kids)]
        entitled[members] = given[len(kids) :]
    return entitled, pool_entitled


def _subtree_totals(
    flat: FlatTree, cap: np.ndarray, floor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per pool, its subtree's demand capped by its limit, and its floor:
    min(that demand, max(its reservation, its children's floors)). The children's
    floors exceed the pool's reservation only when it borrowed (expandable)."""
    n = len(flat.pool_shares)
    demand = np.bincount(flat.pool_of, weights=cap, minlength=n).astype(np.float64)
    floors = np.bincount(flat.pool_of, weights=floor, minlength=n).astype(np.float64)
    for p in reversed(flat.preorder):
        demand[p] = min(demand[p], flat.pool_limit[p])
        floors[p] = min(demand[p], max(flat.pool_reservation[p], floors[p]))
        parent = flat.parent[p]
        if parent >= 0:
            demand[parent] += demand[p]
            floors[parent] += floors[p]
    return demand, floors
