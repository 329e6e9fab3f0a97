"""A VM's resource settings as vCenter accepts them: shares, reservations and limits
of CPU and memory (vSphere's ResourceAllocationInfo), its disks' shares and IOPS limit
(Storage I/O Control), page sharing, the load of its simulated guest, and the host
resource pool it runs in (a well-formed name; "Resources", the root, is kept as "").

Refuses a bad setting before any task starts, with the host's own checks (the
VMkernel's `VmResources.validated`): vCenter accepts exactly what a host accepts and
keeps no copy of the rules. Whether a reservation fits is the host's admission control
(it knows what else is reserved there), and so is whether the pool exists there
(the host refuses a move into a missing pool, and a power-on in one).
Never does: talk to a host or write the inventory.
"""

from __future__ import annotations

from vsim.resource_messages import resources_from_proto, resources_to_proto
from vsim.v1 import kernel_pb2 as kpb

VCPUS_FOR_CHECK = 1
"""The vCPU count the check runs with. vCPUs only set the default (normal) CPU shares,
1000 per vCPU, which are valid for any count; the count itself is the VM's own check."""


def checked_resources(resources: kpb.VmResources, memory_mb: int, guest_os: str) -> kpb.VmResources:
    """The resources as the host holds them (a limit of -1 comes back unset: unlimited;
    a guest workload comes back whole, its unset fields at this guest OS's defaults),
    if a host takes them for a VM with this much memory and this guest OS;
    InvalidArgument naming the field otherwise."""
    validated = resources_from_proto(resources, guest_os).validated(VCPUS_FOR_CHECK, memory_mb)
    return resources_to_proto(validated)
