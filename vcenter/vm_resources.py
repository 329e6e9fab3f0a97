"""A VM's resource settings as vCenter accepts them: shares, reservations and limits
of CPU and memory (vSphere's ResourceAllocationInfo), its disks' shares and IOPS limit
(Storage I/O Control), page sharing, and the load of its simulated guest.

Owns the checks that need nothing but the request and the VM's own configuration,
so a bad setting is refused before any task starts. Whether a reservation fits is the
host's admission control (it knows what else is reserved there), never decided here.
Never does: talk to a host or write the inventory.
"""

from __future__ import annotations

import math
from dataclasses import fields, replace

from vsim import validate
from vsim.faults import InvalidArgument
from vsim.host.guest_memory import GUEST_DEFAULTS, GuestWorkload, os_family
from vsim.host.resource_pool import UNLIMITED
from vsim.v1 import kernel_pb2 as kpb

MAX_SHARES = 2**31 - 1
"""SharesInfo.shares is a 32-bit int in the vSphere API."""
MAX_ALLOCATION = 2**40
"""The largest reservation or limit (MHz or MB) vsim takes: far above any host."""
MAX_SALT = 256
"""Characters of sched.mem.pshare.salt."""
WORKLOAD_PCTS = ("working_set_pct", "boot_touch_pct", "zero_pct", "common_pct")
WORKLOAD_RATES = ("dirty_rate", "touch_rate")
MAX_PAGE_RATE = 1e9
"""Pages a second: the guest model's bound."""
MAX_DISK_IOPS_LIMIT = 1_000_000
"""IOPS: the host's bound on a disk's limit."""


def _allocation(allocation: kpb.ResourceAllocation, what: str, unit: str) -> None:
    if allocation.shares < 0:
        raise InvalidArgument(
            f"{what} shares must be > 0 (or 0 for the default, normal), got {allocation.shares}"
        )
    validate.int_range(allocation.shares, 0, MAX_SHARES, f"{what} shares")
    validate.int_range(allocation.reservation, 0, MAX_ALLOCATION, f"{what} reservation", unit)
    if allocation.HasField("limit"):
        if allocation.limit < 0:
            raise InvalidArgument(
                f"{what} limit must be >= 0 {unit}, got {allocation.limit}; leave it unset "
                f"(or {UNLIMITED}) for unlimited"
            )
        validate.int_range(allocation.limit, 0, MAX_ALLOCATION, f"{what} limit", unit)
        if allocation.limit < allocation.reservation:
            raise InvalidArgument(
                f"{what} limit {allocation.limit} {unit} is below its reservation "
                f"{allocation.reservation} {unit}: raise the limit (or leave it unset for "
                "unlimited) or lower the reservation"
            )


def _workload(workload: kpb.GuestMemoryWorkload, guest_os: str) -> None:
    for name in WORKLOAD_PCTS:
        if workload.HasField(name):
            value = getattr(workload, name)
            if not 0 <= value <= 100:
                raise InvalidArgument(f"memory_workload {name} must be 0-100 %, got {value}")
    for name in WORKLOAD_RATES:
        if workload.HasField(name):
            value = getattr(workload, name)
            if not (0 <= value < MAX_PAGE_RATE and math.isfinite(value)):
                raise InvalidArgument(
                    f"memory_workload {name} must be >= 0 pages a second, got {value}"
                )
    # Unset fields take the guest OS's defaults; the whole must still make sense
    # (zero and common pages together cannot pass 100 %).
    given = {f.name: getattr(workload, f.name) for f in fields(GuestWorkload)}
    given = {k: v for k, v in given.items() if workload.HasField(k)}
    try:
        replace(GUEST_DEFAULTS[os_family(guest_os)], **given).validated()
    except InvalidArgument as fault:
        raise InvalidArgument(f"memory_workload: {fault.message}") from None


def _unlimited_as_unset(resources: kpb.VmResources) -> kpb.VmResources:
    """A copy where vSphere's -1 (unlimited) is held as an unset limit."""
    copy = kpb.VmResources.FromString(resources.SerializeToString())
    for allocation in (copy.cpu, copy.memory):
        if allocation.HasField("limit") and allocation.limit == UNLIMITED:
            allocation.ClearField("limit")
    if copy.HasField("disk_iops_limit") and copy.disk_iops_limit == UNLIMITED:
        copy.ClearField("disk_iops_limit")
    return copy


def checked_resources(resources: kpb.VmResources, memory_mb: int, guest_os: str) -> kpb.VmResources:
    """The resources in canonical form (a limit of -1 is held unset: unlimited), if
    they are valid for a VM with this much memory and this guest OS; InvalidArgument
    naming the field otherwise."""
    resources = _unlimited_as_unset(resources)
    _allocation(resources.cpu, "cpu", "MHz")
    _allocation(resources.memory, "memory", "MB")
    if resources.memory.reservation > memory_mb:
        raise InvalidArgument(
            f"memory reservation {resources.memory.reservation} MB is more than the VM's "
            f"{memory_mb} MB of memory; reserve at most {memory_mb} MB"
        )
    validate.int_range(resources.cpu_load_pct, 0, 100, "cpu_load_pct", "%")
    if resources.disk_shares < 0:
        raise InvalidArgument(
            f"disk_shares must be > 0 (or 0 for the default, normal), got {resources.disk_shares}"
        )
    validate.int_range(resources.disk_shares, 0, MAX_SHARES, "disk_shares")
    if resources.HasField("disk_iops_limit"):
        validate.int_range(
            resources.disk_iops_limit, 1, MAX_DISK_IOPS_LIMIT, "disk_iops_limit", "IOPS"
        )
    validate.text(resources.page_sharing_salt, "page_sharing_salt", MAX_SALT)
    _workload(resources.memory_workload, guest_os)
    return resources
