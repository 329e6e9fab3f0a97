"""Resource pools of a standalone host, as vCenter manages them: create, update,
destroy and list, each checked at once with the host's own rules, then asked of the
host (destroy is a task: it moves running VMs and rewrites their records).
"""

from __future__ import annotations

from vsim import validate
from vsim.faults import DuplicateName, InvalidArgument
from vsim.resource_allocation import ROOT_POOL, check_not_root, pool_name
from vsim.resource_messages import pool_allocations_from_proto
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.tasks import TaskManager


class HostResourcePools:
    """The resource pools of each standalone host, kept by the host."""

    def __init__(
        self, inventory: Inventory, hosts: HostManager, tasks: TaskManager, events: EventLog
    ) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._tasks = tasks
        self._events = events

    def _connected(self, host: str) -> None:
        validate.host_name(host, "host")
        self._hosts.connected(host)

    async def list(self, request: pb.HostRequest) -> kpb.ResourcePools:
        self._connected(request.name)
        return await self._call(request.name, "ListResourcePools", hpb.ListResourcePoolsRequest())

    async def create(self, request: pb.HostResourcePoolRequest, user: str) -> kpb.ResourcePools:
        spec = request.pool
        self._connected(request.host)
        if pool_name(spec.name) == ROOT_POOL:
            raise DuplicateName(
                f"{ROOT_POOL!r} is the root resource pool of every host; pick another name"
            )
        if spec.parent:
            pool_name(spec.parent, "parent")
        pool_allocations_from_proto(spec)  # the host's own check
        forwarded = hpb.CreateResourcePoolRequest(pool=spec)
        pools = await self._call(request.host, "CreateResourcePool", forwarded)
        self._events.post(
            "ResourcePoolCreatedEvent",
            f"Created resource pool {spec.name} in {spec.parent or ROOT_POOL} on "
            f"{request.host}: {pool_words(pools, spec.name)}",
            user=user,
            host=request.host,
        )
        return pools

    async def update(self, request: pb.HostResourcePoolRequest, user: str) -> kpb.ResourcePools:
        spec = request.pool
        self._connected(request.host)
        check_not_root(pool_name(spec.name), "changed")
        if spec.parent:
            pool_name(spec.parent, "parent")
        if not (spec.HasField("cpu") or spec.HasField("memory")):
            raise InvalidArgument(
                f"nothing to change in resource pool {spec.name!r}: give cpu or memory"
            )
        pool_allocations_from_proto(spec)  # the host's own check of what is given
        forwarded = hpb.UpdateResourcePoolRequest(pool=spec)
        pools = await self._call(request.host, "UpdateResourcePool", forwarded)
        self._events.post(
            "ResourcePoolReconfiguredEvent",
            f"Reconfigured resource pool {spec.name} on {request.host}: "
            f"{pool_words(pools, spec.name)}",
            user=user,
            host=request.host,
        )
        return pools

    def destroy(self, request: pb.DestroyHostResourcePoolRequest, user: str) -> common_pb2.Task:
        host, name = request.host, request.name
        self._connected(host)
        check_not_root(pool_name(name), "destroyed")

        async def work(_task: common_pb2.Task) -> str:
            forwarded = hpb.DestroyResourcePoolRequest(name=name)
            pools = await self._call(host, "DestroyResourcePool", forwarded)
            self._record_destroyed(host, name, pools, user)
            return name

        return self._tasks.start("Destroy_Task", host, user, work, kind="host")

    def _record_destroyed(self, host: str, name: str, pools: kpb.ResourcePools, user: str) -> None:
        """The moved VMs' new pool (their parent's) and the event, in one transaction."""
        pool_of = {vm.name: p.name for p in pools.pools for vm in p.vms}
        moved = [vm for vm in pools.moved_vms if vm in pool_of]
        with self._inventory.transaction():
            for vm_name in moved:
                vm = self._inventory.vm(vm_name)
                if vm is None or vm.host != host:
                    continue
                parent = pool_of[vm_name]
                vm.resources.resource_pool = "" if parent == ROOT_POOL else parent
                self._inventory.set_vm_config(vm)
            to = f"; {', '.join(moved)} moved to {pool_of[moved[0]]}" if moved else ""
            self._events.post(
                "ResourcePoolDestroyedEvent",
                f"Destroyed resource pool {name} on {host}{to}",
                user=user,
                host=host,
            )

    async def _call(self, host: str, method: str, request) -> kpb.ResourcePools:
        pools = await self._hosts.call(host, method, request)
        pools.host = pools.host or host
        return pools


POOL_UNITS = (("cpu", "CPU", "MHz"), ("memory", "memory", "MB"))


def pool_words(pools: kpb.ResourcePools, name: str) -> str:
    """A pool's settings as the host now has them, e.g. 'CPU high shares (8000),
    1000 MHz reserved (expandable), no limit; memory normal shares ...'."""
    pool = next((p for p in pools.pools if p.name == name), None)
    if pool is None:
        return "(not listed by the host)"
    return "; ".join(
        allocation_words(getattr(pool, field), what, unit) for field, what, unit in POOL_UNITS
    )


def allocation_words(allocation: kpb.PoolAllocation, what: str, unit: str) -> str:
    level = allocation.shares_level
    shares = f"{allocation.shares} shares"
    if level != "custom":
        shares = f"{level} shares ({allocation.shares})"
    expandable = "expandable" if allocation.expandable_reservation else "fixed"
    limit = f"limit {allocation.limit} {unit}" if allocation.HasField("limit") else "no limit"
    return f"{what} {shares}, {allocation.reservation} {unit} reserved ({expandable}), {limit}"
