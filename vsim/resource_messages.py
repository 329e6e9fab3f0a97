"""Translation between resource settings and their kernel.proto messages: a VM's
resources (`VmResources`) and a resource pool's allocations.

Shared by hostd (its RPCs), vCenter (which checks a request with the host's own rules
before it forwards it) and the CLI (which checks what the user typed the same way).
Every field is checked on the way in by the value it becomes; nothing here decides
what is allowed.
"""

from __future__ import annotations

from dataclasses import fields, replace

from vsim.faults import InvalidArgument
from vsim.guest_workload import GUEST_DEFAULTS, GuestWorkload, os_family
from vsim.memory_settings import VmMemorySettings
from vsim.resource_allocation import (
    UNLIMITED,
    Allocation,
    Unit,
    pool_allocation,
    pool_share_level,
)
from vsim.v1 import kernel_pb2 as kpb
from vsim.vm_resources import VmResources

WORKLOAD_FIELDS = tuple(f.name for f in fields(GuestWorkload))


def _limit(allocation: kpb.ResourceAllocation | kpb.PoolAllocation) -> int:
    return allocation.limit if allocation.HasField("limit") else UNLIMITED


def resources_from_proto(message: kpb.VmResources, guest_os: str) -> VmResources:
    cpu, memory = message.cpu, message.memory
    workload = None
    if message.HasField("memory_workload"):
        base = GUEST_DEFAULTS[os_family(guest_os)]
        given = {
            name: getattr(message.memory_workload, name)
            for name in WORKLOAD_FIELDS
            if message.memory_workload.HasField(name)
        }
        workload = replace(base, **given)
    return VmResources(
        cpu_shares=cpu.shares,
        cpu_reservation_mhz=cpu.reservation,
        cpu_limit_mhz=_limit(cpu),
        memory=VmMemorySettings(
            reservation_mb=memory.reservation,
            limit_mb=_limit(memory),
            shares=memory.shares,
            page_sharing=not message.page_sharing_disabled,
            salt=message.page_sharing_salt,
            balloon_driver=not message.balloon_driver_missing,
        ),
        cpu_load_pct=message.cpu_load_pct,
        workload=workload,
        disk_shares=message.disk_shares,
        disk_iops_limit=(
            message.disk_iops_limit if message.HasField("disk_iops_limit") else UNLIMITED
        ),
        resource_pool=message.resource_pool,
    )


def _allocation(shares: int, reservation: int, limit: int) -> kpb.ResourceAllocation:
    message = kpb.ResourceAllocation(shares=shares, reservation=reservation)
    if limit != UNLIMITED:
        message.limit = limit
    return message


def resources_to_proto(resources: VmResources) -> kpb.VmResources:
    memory = resources.memory
    message = kpb.VmResources(
        cpu=_allocation(
            resources.cpu_shares, resources.cpu_reservation_mhz, resources.cpu_limit_mhz
        ),
        memory=_allocation(memory.shares, memory.reservation_mb, memory.limit_mb),
        page_sharing_disabled=not memory.page_sharing,
        page_sharing_salt=memory.salt,
        cpu_load_pct=resources.cpu_load_pct,
        balloon_driver_missing=not memory.balloon_driver,
        disk_shares=resources.disk_shares,
        resource_pool=resources.resource_pool,
    )
    if resources.disk_iops_limit != UNLIMITED:
        message.disk_iops_limit = resources.disk_iops_limit
    if resources.workload is not None:
        for name in WORKLOAD_FIELDS:
            setattr(message.memory_workload, name, getattr(resources.workload, name))
    return message


def pool_allocation_from_proto(message: kpb.PoolAllocation, unit: Unit, what: str) -> Allocation:
    """A pool's allocation of one resource: a share level's count (pool_allocation),
    or custom shares; InvalidArgument, prefixed with `what`, if it is not valid."""
    expandable = (
        message.expandable_reservation if message.HasField("expandable_reservation") else True
    )
    level = message.shares_level
    try:
        if level == "custom" or (level == "" and message.shares):
            return Allocation(message.shares, message.reservation, _limit(message), expandable)
        allocation = pool_allocation(
            unit, level or "normal", message.reservation, _limit(message), expandable
        )
    except InvalidArgument as e:
        raise InvalidArgument(f"{what}: {e.message}") from None
    if message.shares not in (0, allocation.shares):
        raise InvalidArgument(
            f"{what}: share level {level} is {allocation.shares} shares, not {message.shares}; "
            "give a level, or a count with level custom"
        )
    return allocation


def pool_allocation_to_proto(allocation: Allocation, unit: Unit) -> kpb.PoolAllocation:
    message = kpb.PoolAllocation(
        shares_level=pool_share_level(unit, allocation.shares),
        shares=allocation.shares,
        reservation=allocation.reservation,
        expandable_reservation=allocation.expandable_reservation,
    )
    if allocation.limited:
        message.limit = allocation.limit
    return message


def pool_allocations_from_proto(
    spec: kpb.ResourcePoolSpec, current: tuple[Allocation, Allocation] | None = None
) -> tuple[Allocation, Allocation]:
    """The CPU (MHz) and memory (MB) allocations a spec gives; one it leaves unset is
    `current`'s (an update) or a new pool's default (normal, 0, unlimited, expandable)."""
    given = []
    for i, (name, unit) in enumerate((("cpu", Unit.MHZ), ("memory", Unit.MB))):
        if spec.HasField(name):
            given.append(pool_allocation_from_proto(getattr(spec, name), unit, name))
        else:
            given.append(current[i] if current is not None else pool_allocation(unit))
    return given[0], given[1]
