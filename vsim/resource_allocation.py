"""Shares, reservations and limits: the values vSphere's resource allocation is made of,
for one resource (CPU in MHz, or memory in MB) at a time.

Owns: `Allocation` (vSphere's ResourceAllocationInfo) and its validation; the share
levels of VMs and pools; `PoolConfig`, a host pool's settings as a value; the rule that
the root pool is not changed, and what a pool may be named. Shared by the host (its
pool tree), vCenter (checking a request with the host's own rules) and the CLI.

Must never: know about a tree or hold state (host/kernel/resources/: pool_tree.py
keeps the hierarchy and admits, entitlement.py divides); everything here is a value or
a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from numbers import Integral

from vsim import validate
from vsim.faults import InvalidArgument


class Unit(StrEnum):
    """What a tree divides: its numbers are in this unit."""

    MHZ = "MHz"
    MB = "MB"


UNLIMITED = -1
"""`limit` of an allocation with no limit (vSphere's -1)."""
MAX_SHARES = 2**31 - 1
"""vSphere's SharesInfo.shares is a 32-bit integer."""
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


def whole_number(value: int, field_name: str) -> int:
    """`value` as a plain int; InvalidArgument unless it is a whole number."""
    if isinstance(value, bool) or not isinstance(value, Integral):
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
        shares = whole_number(self.shares, "shares")
        reservation = whole_number(self.reservation, "reservation")
        limit = whole_number(self.limit, "limit")
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
    vcpus = whole_number(vcpus, "vcpus")
    if vcpus < 1:
        raise InvalidArgument(f"vcpus must be >= 1, got {vcpus}")
    return Allocation(VM_CPU_SHARES_PER_VCPU[share_level(level)] * vcpus, reservation, limit)


def vm_memory_allocation(
    level: str, memory_mb: int, reservation: int = 0, limit: int = UNLIMITED
) -> Allocation:
    """A VM's memory allocation at a share level: 5/10/20 shares per configured MB."""
    memory_mb = whole_number(memory_mb, "memory_mb")
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
    shares = POOL_SHARES[unit_of(unit)][share_level(level)]
    return Allocation(shares, reservation, limit, expandable_reservation)


def pool_share_level(unit: Unit | str, shares: int) -> str:
    """The level a pool's share count is (SharesInfo.level), "custom" if none."""
    levels = POOL_SHARES[unit_of(unit)]
    return next((level for level in SHARE_LEVELS if levels[level] == shares), "custom")


@dataclass(frozen=True)
class PoolConfig:
    """A host resource pool's settings: its place in the hierarchy and its allocation of
    each resource (vSphere's ResourceConfigSpec)."""

    name: str
    parent: str
    """The parent pool's name (ROOT_POOL for a child of the root)."""
    cpu: Allocation
    """In MHz."""
    memory: Allocation
    """In MB."""

    @property
    def allocations(self) -> dict[Unit, Allocation]:
        """Its allocations by resource, as a pool tree takes them."""
        return {Unit.MHZ: self.cpu, Unit.MB: self.memory}


def unit_of(unit: Unit | str) -> Unit:
    try:
        return Unit(unit)
    except ValueError:
        raise InvalidArgument(
            f"unit {unit!r} is not one of {', '.join(u.value for u in Unit)}"
        ) from None


def check_not_root(name: str, verb: str) -> None:
    """InvalidArgument for the root pool, which is the host's whole capacity."""
    if name == ROOT_POOL:
        raise InvalidArgument(
            f"the root resource pool {ROOT_POOL!r} cannot be {verb}: it is the host's "
            "whole capacity"
        )


def pool_name(name: str, field_name: str = "resource pool name") -> str:
    """A resource pool's name: vSphere's inventory name rules (1-80 characters, no
    '/', '\\' or '%')."""
    if not isinstance(name, str):
        raise InvalidArgument(f"{field_name} must be a string, got {name!r}")
    return validate.vm_name(name, field_name)
