"""A standalone host's resource pools through the vCenter core on the in-process
engine: CreateResourcePool, UpdateResourcePool, ListResourcePools and the
DestroyResourcePool task forwarded to the host, refusals at once (vCenter's checks are
the host's own) or by the host, with nothing changed and no event; a VM's pool at
power-on and on ReconfigureVmResources; the inventory following VMs a destroy moved;
pools kept by the host across a reboot."""

from __future__ import annotations

import pytest
from vclab import ERROR, ON, SUCCESS, Lab

from vsim.faults import (
    DuplicateName,
    HostNotConnected,
    InsufficientResourcesFault,
    InvalidArgument,
    NotFound,
)
from vsim.resource_allocation import ROOT_POOL
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb

QUIET = kpb.GuestMemoryWorkload(working_set_pct=1, boot_touch_pct=1, dirty_rate=0, touch_rate=0)
HOST = "esxi-01"


def alloc(level: str = "", shares: int = 0, reservation: int = 0, limit=None, expandable=None):
    a = kpb.PoolAllocation(shares_level=level, shares=shares, reservation=reservation)
    if limit is not None:
        a.limit = limit
    if expandable is not None:
        a.expandable_reservation = expandable
    return a


def spec(name: str, parent: str = "", cpu=None, memory=None) -> kpb.ResourcePoolSpec:
    return kpb.ResourcePoolSpec(name=name, parent=parent, cpu=cpu, memory=memory)


# The pool specs go as built (the SDK's typed methods take their fields one by one).


async def create_pool(lab: Lab, pool: kpb.ResourcePoolSpec, host: str = HOST):
    request = pb.HostResourcePoolRequest(host=host, pool=pool)
    return await lab.client.call("CreateResourcePool", request)


async def update_pool(lab: Lab, pool: kpb.ResourcePoolSpec, host: str = HOST):
    request = pb.HostResourcePoolRequest(host=host, pool=pool)
    return await lab.client.call("UpdateResourcePool", request)


async def destroy_pool(lab: Lab, name: str, host: str = HOST):
    return await lab.wait(await lab.client.destroy_resource_pool(host, name))


async def pools(lab: Lab, host: str = HOST) -> dict[str, kpb.ResourcePool]:
    listed = await lab.client.resource_pools(host)
    assert listed.host == host
    return {p.name: p for p in listed.pools}


async def create_vm(lab: Lab, name: str, pool: str = "", host: str = HOST, **resources):
    resources = kpb.VmResources(memory_workload=QUIET, resource_pool=pool, **resources)
    return await lab.wait(
        await lab.client.create_vm(name, cpus=1, memory_mb=256, host=host, resources=resources)
    )


async def set_pool(lab: Lab, name: str, pool: str, **resources):
    vm = await lab.client.vm(name)
    wanted = kpb.VmResources()
    wanted.CopyFrom(vm.resources)
    wanted.resource_pool = pool
    for field, value in resources.items():
        getattr(wanted, field).CopyFrom(value)
    return await lab.wait(await lab.client.reconfigure_vm_resources(name, wanted))


def kernel(lab: Lab, host: str = HOST):
    return lab.engine.running(host).kernel


def host_state(lab: Lab, host: str = HOST) -> tuple:
    """The host's pools, in both trees, and its VMs: what a refusal leaves alone."""
    k = kernel(lab, host)
    return (
        [(n, t.parent(n), t.pool(n)) for t in (k.cpu.tree, k.memory.tree) for n in t.pools()],
        k.vms(),
    )


async def test_pools_are_made_on_the_host_and_recorded_as_events(lab: Lab):
    made = await create_pool(lab, spec("prod", cpu=alloc("high", reservation=1000)))
    assert [p.name for p in made.pools] == [ROOT_POOL, "prod"] and made.host == HOST
    await create_pool(lab, spec("web", "prod", memory=alloc(shares=50_000, limit=2048)))
    listed = await pools(lab)
    web = listed["web"]
    assert (web.parent, web.memory.shares_level, web.memory.shares, web.memory.limit) == (
        "prod",
        "custom",
        50_000,
        2048,
    )
    assert web.cpu.shares_level == "normal" and web.cpu.expandable_reservation
    assert listed["prod"].cpu_usage.reserved == 0 and listed[ROOT_POOL].cpu_usage.reserved == 1000
    assert kernel(lab).memory.tree.parent("web") == "prod"
    assert not (await pools(lab, "esxi-02")).keys() - {ROOT_POOL}  # another host's are its own
    updated = await update_pool(lab, spec("prod", cpu=alloc(reservation=1500)))
    prod = {p.name: p for p in updated.pools}["prod"]
    assert (prod.cpu.shares_level, prod.cpu.reservation) == ("normal", 1500)
    assert prod.memory == listed["prod"].memory  # memory was not given: unchanged
    events = [e for e in await lab.events() if e.type.startswith("ResourcePool")]
    assert [e.type for e in events] == [
        "ResourcePoolCreatedEvent",
        "ResourcePoolCreatedEvent",
        "ResourcePoolReconfiguredEvent",
    ]
    assert "high shares (8000), 1000 MHz reserved (expandable)" in events[0].message
    assert all(e.host == HOST and e.user for e in events)


BAD_AT_ONCE = [
    ("unknown host", "create", dict(host="esxi-09", pool=spec("p")), NotFound),
    ("bad host name", "create", dict(host="ESXI 1", pool=spec("p")), InvalidArgument),
    ("the root", "create", dict(pool=spec(ROOT_POOL)), DuplicateName),
    ("bad name", "create", dict(pool=spec("a%b")), InvalidArgument),
    ("bad parent", "create", dict(pool=spec("p", "x" * 81)), InvalidArgument),
    ("custom shares 0", "create", dict(pool=spec("p", cpu=alloc("custom"))), InvalidArgument),
    ("negative shares", "create", dict(pool=spec("p", cpu=alloc(shares=-1))), InvalidArgument),
    ("limit < reservation", "create",
     dict(pool=spec("p", memory=alloc(reservation=10, limit=5))), InvalidArgument),
    ("bad level", "create", dict(pool=spec("p", cpu=alloc("urgent"))), InvalidArgument),
    ("update the root", "update", dict(pool=spec(ROOT_POOL, cpu=alloc())), InvalidArgument),
    ("update nothing", "update", dict(pool=spec("existing")), InvalidArgument),
    ("update bad", "update", dict(pool=spec("existing", cpu=alloc(limit=-7))), InvalidArgument),
]  # fmt: skip
BAD_ON_THE_HOST = [
    ("unknown parent", "create", dict(pool=spec("p", "nope")), NotFound),
    ("duplicate", "create", dict(pool=spec("existing")), DuplicateName),
    ("over the host", "create", dict(pool=spec("p", memory=alloc(reservation=10**8))),
     InsufficientResourcesFault),
    ("fixed parent", "create",
     dict(pool=spec("p", "existing", cpu=alloc(reservation=101))), InsufficientResourcesFault),
    ("update unknown", "update", dict(pool=spec("nope", cpu=alloc())), NotFound),
    ("update moves", "update", dict(pool=spec("existing", "other", cpu=alloc())),
     InvalidArgument),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "fields", "fault"),
    [b[1:] for b in BAD_AT_ONCE + BAD_ON_THE_HOST],
    ids=[b[0] for b in BAD_AT_ONCE + BAD_ON_THE_HOST],
)
async def test_bad_pool_requests_are_refused_and_change_nothing(lab: Lab, call, fields, fault):
    await create_pool(lab, spec("existing", cpu=alloc(reservation=100, expandable=False)))
    await create_pool(lab, spec("other"))
    before, events = host_state(lab), len(await lab.events())
    method = {"create": "CreateResourcePool", "update": "UpdateResourcePool"}[call]
    with pytest.raises(fault):
        await lab.client.call(method, pb.HostResourcePoolRequest(host=fields.get("host", HOST), **{
            k: v for k, v in fields.items() if k != "host"}))  # fmt: skip
    assert host_state(lab) == before
    assert len(await lab.events()) == events


async def test_destroy_refusals_at_once(lab: Lab):
    before, tasks = host_state(lab), len(await lab.tasks())
    for host, name, fault in (
        (HOST, ROOT_POOL, InvalidArgument),
        (HOST, "", InvalidArgument),
        ("esxi-09", "p", NotFound),
    ):
        with pytest.raises(fault):
            await lab.client.destroy_resource_pool(host, name)
    assert host_state(lab) == before and len(await lab.tasks()) == tasks


async def test_a_vm_runs_in_the_pool_its_resources_name(lab: Lab):
    with pytest.raises(InvalidArgument, match="resource_pool"):
        await create_vm(lab, "bad", pool="a/b")  # refused at once: no task, no VM
    assert "bad" not in await lab.vms()
    assert (await create_vm(lab, "web", pool="gold")).state == SUCCESS
    assert (await lab.client.vm("web")).resources.resource_pool == "gold"
    before = host_state(lab)
    failed = await lab.power_on("web")
    assert failed.state == ERROR and failed.error.name == "NotFound"
    assert "vsim host pool create esxi-01 gold" in failed.error.message
    assert host_state(lab) == before and (await lab.client.vm("web")).power_state != ON
    await create_pool(lab, spec("gold", cpu=alloc("high")))
    assert (await lab.power_on("web")).state == SUCCESS
    gold = (await pools(lab))["gold"]
    assert [(v.name, v.powered_on) for v in gold.vms] == [("web", True)]
    k = kernel(lab)
    assert k.cpu.tree.consumer_pool("web") == k.memory.tree.consumer_pool("web") == "gold"
    # "Resources" is the root, stored as "".
    assert (await set_pool(lab, "web", ROOT_POOL)).state == SUCCESS
    assert (await lab.client.vm("web")).resources.resource_pool == ""
    assert k.cpu.tree.consumer_pool("web") == ROOT_POOL


async def test_reconfigure_moves_a_running_vm_or_changes_nothing(lab: Lab):
    await create_pool(lab, spec("fixed", memory=alloc(reservation=128, expandable=False)))
    assert (await create_vm(lab, "a", memory=kpb.ResourceAllocation(reservation=200))).state == (
        SUCCESS
    )
    assert (await lab.power_on("a")).state == SUCCESS
    before, vm = host_state(lab), await lab.client.vm("a")
    refused = await set_pool(lab, "a", "fixed")  # 200 MB into a fixed 128
    assert refused.error.name == "InsufficientResourcesFault"
    missing = await set_pool(lab, "a", "nope")
    assert missing.error.name == "NotFound"
    assert host_state(lab) == before and await lab.client.vm("a") == vm
    moved = await set_pool(lab, "a", "fixed", memory=kpb.ResourceAllocation(reservation=128))
    assert moved.state == SUCCESS
    assert kernel(lab).memory.tree.consumer_pool("a") == "fixed"
    assert (await lab.client.vm("a")).resources.resource_pool == "fixed"
    assert (await lab.events())[-1].type == "VmReconfiguredEvent"


async def test_destroy_moves_its_vms_to_the_parent_in_the_inventory_too(lab: Lab):
    await create_pool(lab, spec("dept"))
    await create_pool(lab, spec("team", "dept"))
    await create_pool(lab, spec("sub", "team"))
    for name in ("a", "idle"):
        assert (await create_vm(lab, name, pool="team")).state == SUCCESS
    assert (await lab.power_on("a")).state == SUCCESS
    done = await destroy_pool(lab, "team")
    assert done.state == SUCCESS and done.name == "Destroy_Task"
    listed = await pools(lab)
    assert list(listed) == [ROOT_POOL, "dept", "sub"] and listed["sub"].parent == "dept"
    assert [(v.name, v.powered_on) for v in listed["dept"].vms] == [("a", True), ("idle", False)]
    assert (await lab.client.vm("a")).resources.resource_pool == "dept"
    assert (await lab.client.vm("idle")).resources.resource_pool == "dept"
    assert kernel(lab).vm("a").resources.resource_pool == "dept"
    event = (await lab.events())[-1]
    assert event.type == "ResourcePoolDestroyedEvent" and "a, idle moved to dept" in event.message
    await lab.restart()  # the inventory keeps it: a re-registration will name "dept"
    assert (await lab.client.vm("a")).resources.resource_pool == "dept"


async def test_pools_survive_a_host_reboot_and_its_vms_power_on_in_them(lab: Lab):
    await create_pool(lab, spec("prod", cpu=alloc("high", reservation=1000, limit=4000)))
    await create_pool(lab, spec("web", "prod", memory=alloc("low", reservation=512)))
    assert (await create_vm(lab, "w", pool="web")).state == SUCCESS
    assert (await lab.power_on("w")).state == SUCCESS
    listed = {n: (p.parent, p.cpu, p.memory) for n, p in (await pools(lab)).items()}
    lab.engine.crash(HOST)
    lab.drop_connection(HOST)
    with pytest.raises(HostNotConnected):
        await pools(lab)
    await lab.engine.reboot(HOST)
    await lab.vc.hosts.heartbeat_once()
    await lab.vc.hosts.heartbeat_once()
    again = {n: (p.parent, p.cpu, p.memory) for n, p in (await pools(lab)).items()}
    assert again == listed
    assert (await lab.power_on("w")).state == SUCCESS  # re-registered, in its pool
    assert kernel(lab).cpu.tree.consumer_pool("w") == "web"


async def test_vcenter_adopts_the_pool_the_host_moved_a_vm_to(lab: Lab):
    """A pool destroyed where vCenter did not see it (directly on the host): when
    vCenter reconnects, it records the VM in the pool the host moved it to."""
    await create_pool(lab, spec("gold"))
    assert (await create_vm(lab, "web", pool="gold")).state == SUCCESS
    assert (await lab.power_on("web")).state == SUCCESS
    kernel(lab).destroy_resource_pool("gold")
    await lab.restart()
    assert (await lab.client.vm("web")).resources.resource_pool == ""
    load = kpb.VmResources(cpu_load_pct=20)
    done = await lab.wait(await lab.client.reconfigure_vm_resources("web", load))
    assert done.state == SUCCESS
