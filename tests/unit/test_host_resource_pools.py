"""A host's resource pools through hostd and the VMkernel: one name in the CPU (MHz)
and memory (MB) trees, shares that divide a contended host between pools, limits
that cap, admission control of reservations (fixed and expandable), pools kept in
esx.conf across a reboot, a VM's pool at power-on and on a live move, destroy moving
VMs and child pools to the parent, and refusals that change nothing, also over
random operation sequences."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim import dispatch
from vsim.clock import SimClock
from vsim.faults import (
    DuplicateName,
    InsufficientResourcesFault,
    InvalidArgument,
    NoPermission,
    NotFound,
    VimFault,
)
from vsim.guest_workload import GuestWorkload
from vsim.host.boot import LocalDisk, boot_host
from vsim.host.hostd.accounts import MemoryAccountStore
from vsim.host.hostd.esx_conf import FileConfigStore, MemoryConfigStore, resource_pools_from_config
from vsim.host.kernel.vmkernel import HostKernel, VmConfig
from vsim.passwords import hash_password
from vsim.resource_allocation import ROOT_POOL, Allocation
from vsim.runtime import Runtime
from vsim.spec import HostSpec
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.vm_resources import VmResources

ROOT_PASSWORD = "Root-Pass-0123"
QUIET = kpb.GuestMemoryWorkload(working_set_pct=1, boot_touch_pct=1, dirty_rate=0, touch_rate=0)
CORES, CORE_MHZ, MEMORY_MB = 4, 2000, 8192
CAPACITY_MHZ = CORES * CORE_MHZ  # 8000


class Host:
    """hostd of one host (4 x 2000 MHz, 8192 MB) whose esx.conf is `config`."""

    def __init__(self, clock: SimClock, swap: Path, config=None) -> None:
        spec = HostSpec("esxi-01", cpu_cores=CORES, cpu_mhz=CORE_MHZ, memory_mb=MEMORY_MB)
        self.config = config if config is not None else MemoryConfigStore()
        disk = LocalDisk(MemoryAccountStore(), self.config, swap)
        self.hostd = boot_host(
            spec, disk, hash_password(ROOT_PASSWORD), Runtime.simulated(clock, 0), None
        )
        self.kernel = self.hostd.kernel
        self.session = self.hostd.accounts.login("root", ROOT_PASSWORD)

    async def __call__(self, method: str, request):
        return await dispatch.call(self.hostd.table, method, request, self.session)

    async def register(self, name: str, cpus: int = 1, memory_mb: int = 256, **resources):
        resources.setdefault("memory_workload", QUIET)
        vm = hpb.HostVm(
            name=name,
            uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            cpus=cpus,
            memory_mb=memory_mb,
            resources=kpb.VmResources(**resources),
        )
        await self("RegisterVm", hpb.RegisterVmRequest(vm=vm))

    async def power_on(self, name: str) -> hpb.HostVm:
        return (await self("PowerOnVm", hpb.HostVmRequest(name=name))).vm

    async def move(self, name: str, pool: str, **resources) -> hpb.HostVm:
        """ReconfigureVm with the VM's resources, its pool and `resources` changed."""
        (vm,) = [v for v in (await self("ListVms", hpb.ListHostVmsRequest())).vms if v.name == name]
        vm.resources.resource_pool = pool
        for field, value in resources.items():
            getattr(vm.resources, field).CopyFrom(value)
        return (await self("ReconfigureVm", hpb.ReconfigureVmRequest(vm=vm))).vm

    async def create(self, name: str, parent: str = "", cpu=None, memory=None):
        spec = kpb.ResourcePoolSpec(name=name, parent=parent, cpu=cpu, memory=memory)
        return await self("CreateResourcePool", hpb.CreateResourcePoolRequest(pool=spec))

    async def update(self, name: str, cpu=None, memory=None, parent: str = ""):
        spec = kpb.ResourcePoolSpec(name=name, parent=parent, cpu=cpu, memory=memory)
        return await self("UpdateResourcePool", hpb.UpdateResourcePoolRequest(pool=spec))

    async def destroy(self, name: str) -> kpb.ResourcePools:
        return await self("DestroyResourcePool", hpb.DestroyResourcePoolRequest(name=name))

    async def pools(self) -> dict[str, kpb.ResourcePool]:
        listed = await self("ListResourcePools", hpb.ListResourcePoolsRequest())
        return {p.name: p for p in listed.pools}

    def state(self) -> tuple:
        """Everything a refused pool call must leave as it was."""
        k = self.kernel
        trees = [
            (name, tree.parent(name), tree.pool(name), tree.reserved(name))
            for tree in (k.cpu.tree, k.memory.tree)
            for name in tree.pools()
        ]
        consumers = [
            (vm, tree.consumer_pool(vm), tree.consumer(vm))
            for tree in (k.cpu.tree, k.memory.tree)
            for vm in tree.consumer_names
        ]
        return trees, consumers, k.vms(), self.config.load()


def alloc(level: str = "", shares: int = 0, reservation: int = 0, limit=None, expandable=None):
    a = kpb.PoolAllocation(shares_level=level, shares=shares, reservation=reservation)
    if limit is not None:
        a.limit = limit
    if expandable is not None:
        a.expandable_reservation = expandable
    return a


@pytest.fixture
def host(tmp_path: Path) -> tuple[Host, SimClock]:
    clock = SimClock(100.0)
    return Host(clock, tmp_path / "swap"), clock


# shares, limits, entitlements


@pytest.mark.parametrize(
    ("levels", "usage"),
    [
        # 8000 MHz among two pools whose one VM each wants 4 vCPUs x 2000 = 8000 MHz:
        # by the pools' shares, high 8000 : normal 4000 -> 8000 x 8/12 and 8000 x 4/12,
        (("high", "normal"), (8000 * 8000 / 12000, 8000 * 4000 / 12000)),
        # and high 8000 : low 2000 -> 8000 x 8/10 and 8000 x 2/10.
        (("high", "low"), (6400.0, 1600.0)),
    ],
)
async def test_pools_divide_a_contended_host_by_their_shares(host, levels, usage):
    h, clock = host
    for pool, level in zip(("gold", "bronze"), levels, strict=True):
        await h.create(pool, cpu=alloc(level))
    # The VMs' own shares differ the other way: between pools only the pools' count.
    await h.register("a", cpus=4, cpu_load_pct=100, resource_pool="gold")
    await h.register("b", cpus=4, cpu_load_pct=100, resource_pool="bronze",
                     cpu=kpb.ResourceAllocation(shares=20_000))  # fmt: skip
    await h.power_on("a")
    await h.power_on("b")
    await clock.advance(3)
    stats = {v.name: v.cpu for v in (await h("GetHostStats", hpb.GetHostStatsRequest())).vms}
    assert (stats["a"].demand, stats["b"].demand) == (8000, 8000)
    assert (stats["a"].usage, stats["b"].usage) == pytest.approx(usage)
    assert stats["a"].usage / stats["b"].usage == pytest.approx(
        {"normal": 2.0, "low": 4.0}[levels[1]]
    )
    pools = await h.pools()
    assert pools["gold"].cpu_usage.entitlement == pytest.approx(usage[0])
    assert pools["bronze"].cpu_usage.entitlement == pytest.approx(usage[1])
    assert pools[ROOT_POOL].cpu_usage.entitlement == pytest.approx(CAPACITY_MHZ)
    assert [(v.name, v.powered_on) for v in pools["gold"].vms] == [("a", True)]
    assert pools["gold"].cpu.shares_level == levels[0]
    assert pools["gold"].cpu.shares == {"high": 8000}[levels[0]]


async def test_a_pool_limit_caps_its_vms_on_an_idle_host(host):
    h, clock = host
    await h.create("capped", cpu=alloc(limit=1500))
    await h.create("child", parent="capped")
    await h.register("a", cpus=2, cpu_load_pct=100, resource_pool="capped")
    await h.register("b", cpus=2, cpu_load_pct=100, resource_pool="child")
    await h.power_on("a")
    await h.power_on("b")
    await clock.advance(3)
    stats = {v.name: v.cpu for v in (await h("GetHostStats", hpb.GetHostStatsRequest())).vms}
    # 8000 MHz are free, but the pool's subtree gets 1500: a and b split it equally
    # (same shares in the one contended pool: a's 2000 shares vs the child pool's 4000
    # -> a 500, child 1000; the child's only VM takes all 1000).
    assert stats["a"].usage + stats["b"].usage == pytest.approx(1500)
    assert (stats["a"].usage, stats["b"].usage) == pytest.approx((500, 1000))
    assert stats["a"].ready_pct > 0  # held back by the limit, as %MLMTD counts
    pools = await h.pools()
    assert pools["capped"].cpu_usage.entitlement == pytest.approx(1500)


# admission control


async def test_a_fixed_pool_refuses_a_child_reservation_beyond_its_own(host):
    h, _ = host
    await h.create("fixed", cpu=alloc(reservation=1000, expandable=False))
    before = h.state()
    with pytest.raises(InsufficientResourcesFault, match="not expandable"):
        await h.create("child", parent="fixed", cpu=alloc(reservation=1500))
    assert h.state() == before
    await h.register("vm", cpu=kpb.ResourceAllocation(reservation=1200), resource_pool="fixed")
    before = h.state()
    with pytest.raises(InsufficientResourcesFault):
        await h.power_on("vm")
    assert h.state() == before
    # Within its own reservation it fits; an expandable pool borrows from its parent.
    await h.create("child", parent="fixed", cpu=alloc(reservation=1000))
    await h.create("borrower", cpu=alloc(reservation=0))
    await h.create("grandchild", parent="borrower", cpu=alloc(reservation=3000))
    pools = await h.pools()
    assert pools["fixed"].cpu_usage.reserved == 1000
    assert pools["fixed"].cpu_usage.unreserved == 0
    assert pools["borrower"].cpu_usage.reserved == 3000
    assert pools[ROOT_POOL].cpu_usage.reserved == 4000
    assert pools[ROOT_POOL].cpu_usage.unreserved == CAPACITY_MHZ - 4000


async def test_a_refusal_by_the_memory_tree_undoes_the_cpu_tree(host):
    h, _ = host
    before = h.state()
    with pytest.raises(InsufficientResourcesFault, match="MB"):
        await h.create("big", cpu=alloc(reservation=500), memory=alloc(reservation=9000))
    assert h.state() == before  # the CPU tree, which accepted 500 MHz, has no "big"
    await h.create("p", cpu=alloc(reservation=500))
    before = h.state()
    with pytest.raises(InsufficientResourcesFault, match="MB"):
        await h.update("p", cpu=alloc(reservation=700), memory=alloc(reservation=9000))
    assert h.state() == before
    assert h.kernel.cpu.tree.pool("p").reservation == 500


# a VM's pool


async def test_a_vm_in_a_missing_pool_fails_power_on_and_changes_nothing(host):
    h, _ = host
    await h.register("a", resource_pool="nowhere")
    before = h.state()
    with pytest.raises(NotFound, match=r"no resource pool 'nowhere'.*vsim host pool create"):
        await h.power_on("a")
    assert h.state() == before
    assert h.kernel.memory.powered_on() == [] and h.kernel.memory_used_mb == 0
    await h.create("nowhere")
    assert (await h.power_on("a")).powered_on
    assert h.kernel.cpu.tree.consumer_pool("a") == "nowhere"
    assert h.kernel.memory.tree.consumer_pool("a") == "nowhere"


async def test_a_running_vm_moves_between_pools_all_or_nothing(host):
    h, _ = host
    await h.create("small", cpu=alloc(reservation=200, expandable=False))
    await h.create("other", cpu=alloc(reservation=1000, expandable=False))
    await h.create("roomy")
    await h.register("a", cpu=kpb.ResourceAllocation(reservation=500))
    await h.power_on("a")
    before = h.state()
    with pytest.raises(InsufficientResourcesFault):
        await h.move("a", "small")  # 500 MHz cannot go into a fixed 200
    assert h.state() == before
    with pytest.raises(NotFound, match="vsim host pool create"):
        await h.move("a", "missing")
    assert h.state() == before
    # Lowered to 200 while moving: lowered first, then moved, so it fits.
    vm = await h.move("a", "small", cpu=kpb.ResourceAllocation(reservation=200))
    assert vm.resources.resource_pool == "small"
    k = h.kernel
    assert (k.cpu.tree.consumer_pool("a"), k.memory.tree.consumer_pool("a")) == ("small",) * 2
    # Raised from 200 to 1000 into a fixed 1000: moved first, then raised.
    await h.move("a", "other", cpu=kpb.ResourceAllocation(reservation=1000))
    # Raised to 1500 out of "other" into an expandable pool: raising in place first
    # would not fit "other" (fixed 1000); moved first, it does.
    await h.move("a", "roomy", cpu=kpb.ResourceAllocation(reservation=1500))
    assert k.cpu.tree.consumer_pool("a") == "roomy" and k.cpu.allocation("a").reservation == 1500
    assert k.cpu.tree.reserved("other") == 0 and k.cpu.tree.reserved("roomy") == 1500
    # "Resources" names the root, and is kept as "".
    vm = await h.move("a", ROOT_POOL)
    assert vm.resources.resource_pool == "" and k.cpu.tree.consumer_pool("a") == ROOT_POOL


async def test_destroy_moves_vms_and_child_pools_to_the_parent(host):
    h, _ = host
    await h.create("dept", cpu=alloc(reservation=1000))
    await h.create("team", parent="dept", memory=alloc(reservation=512))
    await h.create("sub", parent="team", cpu=alloc("high"))
    await h.register("a", cpu=kpb.ResourceAllocation(reservation=300), resource_pool="team")
    await h.register("idle", resource_pool="team")
    await h.power_on("a")
    pools = await h.destroy("team")  # running or not, its VMs go to the parent
    assert list(pools.moved_vms) == ["a", "idle"]
    listed = {p.name: p for p in pools.pools}
    assert list(listed) == [ROOT_POOL, "dept", "sub"]
    assert listed["sub"].parent == "dept"
    assert [v.name for v in listed["dept"].vms] == ["a", "idle"]
    assert h.kernel.vm("idle").resources.resource_pool == "dept"
    k = h.kernel
    for tree in (k.cpu.tree, k.memory.tree):
        assert tree.pools() == [ROOT_POOL, "dept", "sub"]
        assert tree.consumer_pool("a") == "dept"
    assert k.cpu.tree.reserved("dept") == 300
    assert k.vm("a").resources.resource_pool == "dept"
    assert [p["name"] for p in h.config.load()["resource_pools"]] == ["dept", "sub"]
    await h.destroy("dept")  # into the root: named "" from then on
    assert k.vm("a").resources.resource_pool == ""
    assert k.cpu.tree.consumer_pool("a") == ROOT_POOL


# esx.conf


async def test_pools_survive_a_host_reboot(tmp_path: Path):
    clock = SimClock(100.0)
    config = FileConfigStore(tmp_path / "esx.conf.json")
    h = Host(clock, tmp_path / "swap", config)
    await h.create("prod", cpu=alloc("high", reservation=2000, limit=6000),
                   memory=alloc(shares=100_000, reservation=1024, expandable=False))  # fmt: skip
    await h.create("web", parent="prod", cpu=alloc("low", reservation=500))
    await h.create("batch", memory=alloc(limit=2048))
    listed = await h.pools()
    h.kernel.close()
    rebooted = Host(clock, tmp_path / "swap2", FileConfigStore(tmp_path / "esx.conf.json"))
    again = await rebooted.pools()
    assert again == listed
    assert again["prod"].memory.shares_level == "custom" and again["prod"].memory.shares == 100_000
    assert not again["prod"].memory.expandable_reservation
    assert again["web"].parent == "prod"
    assert rebooted.kernel.resource_pool_configs() == h.kernel.resource_pool_configs()
    await rebooted.register("a", resource_pool="web")
    await rebooted.power_on("a")
    assert rebooted.kernel.memory.tree.consumer_pool("a") == "web"


# bad input


BAD = [
    ("custom shares 0", "create", dict(name="p", cpu=alloc("custom", 0)), InvalidArgument),
    ("negative shares", "create", dict(name="p", memory=alloc(shares=-5)), InvalidArgument),
    ("limit < reservation", "create", dict(name="p", cpu=alloc(reservation=900, limit=800)),
     InvalidArgument),
    ("negative reservation", "create", dict(name="p", memory=alloc(reservation=-1)),
     InvalidArgument),
    ("unknown level", "create", dict(name="p", cpu=alloc("huge")), InvalidArgument),
    ("level and another count", "create", dict(name="p", cpu=alloc("high", 5)), InvalidArgument),
    ("unknown parent", "create", dict(name="p", parent="nope"), NotFound),
    ("duplicate name", "create", dict(name="existing"), DuplicateName),
    ("the root", "create", dict(name=ROOT_POOL), DuplicateName),
    ("bad name", "create", dict(name="a/b"), InvalidArgument),
    ("empty name", "create", dict(name=""), InvalidArgument),
    ("over the host", "create", dict(name="p", cpu=alloc(reservation=8001)),
     InsufficientResourcesFault),
    ("update the root", "update", dict(name=ROOT_POOL, cpu=alloc("high")), InvalidArgument),
    ("update unknown", "update", dict(name="nope", cpu=alloc("high")), NotFound),
    ("update nothing", "update", dict(name="existing"), InvalidArgument),
    ("update moves", "update", dict(name="existing", parent="other", cpu=alloc()),
     InvalidArgument),
    ("update bad limit", "update", dict(name="existing", cpu=alloc(reservation=5, limit=1)),
     InvalidArgument),
    ("destroy the root", "destroy", dict(name=ROOT_POOL), InvalidArgument),
    ("destroy unknown", "destroy", dict(name="nope"), NotFound),
]  # fmt: skip


@pytest.mark.parametrize(("call", "fields", "fault"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
async def test_bad_pool_requests_are_refused_and_change_nothing(host, call, fields, fault):
    h, _ = host
    await h.create("existing", cpu=alloc(reservation=100))
    await h.create("other")
    before = h.state()
    with pytest.raises(fault):
        await getattr(h, call)(**fields)
    assert h.state() == before


async def test_only_an_admin_changes_pools(host):
    h, _ = host
    h.hostd.accounts.set_account("viewer", "Viewer-Pass-01", "ReadOnly")
    login = hpb.HostLoginRequest(user_name="viewer", password="Viewer-Pass-01")
    viewer = (await dispatch.call(h.hostd.table, "Login", login, None)).session
    spec = kpb.ResourcePoolSpec(name="p")
    with pytest.raises(NoPermission):
        request = hpb.CreateResourcePoolRequest(pool=spec)
        await dispatch.call(h.hostd.table, "CreateResourcePool", request, viewer)
    listed = await dispatch.call(
        h.hostd.table, "ListResourcePools", hpb.ListResourcePoolsRequest(), viewer
    )
    assert [p.name for p in listed.pools] == [ROOT_POOL]


# the rules over random operation sequences

POOLS = ("p1", "p2", "p3")
VMS = ("v1", "v2", "v3")
WORKLOAD = GuestWorkload(working_set_pct=1, boot_touch_pct=1, dirty_rate=0, touch_rate=0)

allocations = st.builds(
    lambda shares, reservation, limit, expandable: (shares, reservation, limit, expandable),
    st.sampled_from((2000, 4000, 8000)),
    st.sampled_from((0, 300, 1000, 3000)),
    st.sampled_from((-1, 500, 4000)),
    st.booleans(),
)
creates = st.tuples(st.just("create"), st.sampled_from(POOLS[1:]), st.sampled_from(("", *POOLS)),
                    allocations, allocations)  # fmt: skip
operations = st.one_of(
    creates,
    creates,
    st.tuples(st.just("update"), st.sampled_from((ROOT_POOL, *POOLS)), allocations, allocations),
    st.tuples(st.just("destroy"), st.sampled_from((ROOT_POOL, *POOLS))),
    st.tuples(st.just("power_on"), st.sampled_from(VMS)),
    st.tuples(st.just("power_off"), st.sampled_from(VMS)),
    st.tuples(st.just("move"), st.sampled_from(VMS), st.sampled_from(("", *POOLS)),
              st.sampled_from((0, 200, 600)), st.sampled_from((0, 64, 256))),
)  # fmt: skip


def allocation(shares: int, reservation: int, limit: int, expandable: bool) -> Allocation:
    """Scaled for memory by the caller; a limit below the reservation is lifted."""
    if limit != -1 and limit < reservation:
        limit = reservation
    return Allocation(shares, reservation, limit, expandable)


def memory_allocation(shares: int, reservation: int, limit: int, expandable: bool) -> Allocation:
    """The CPU numbers made memory's: 40x the shares, half the MHz as MB."""
    return allocation(
        shares * 40, reservation // 2, limit if limit == -1 else limit // 2, expandable
    )


def apply(kernel: HostKernel, op: tuple) -> None:
    match op:
        case ("create", name, parent, cpu, memory):
            kernel.create_resource_pool(name, parent, allocation(*cpu), memory_allocation(*memory))
        case ("update", name, cpu, memory):
            kernel.update_resource_pool(name, allocation(*cpu), memory_allocation(*memory))
        case ("destroy", name):
            kernel.destroy_resource_pool(name)
        case ("power_on", vm):
            kernel.power_on(vm)
        case ("power_off", vm):
            kernel.power_off(vm)
        case ("move", vm, pool, cpu_reservation, memory_reservation):
            r = kernel.vm(vm).resources
            memory = dataclasses.replace(r.memory, reservation_mb=memory_reservation)
            wanted = VmResources(cpu_reservation_mhz=cpu_reservation, memory=memory,
                                 workload=r.workload, resource_pool=pool)  # fmt: skip
            kernel.reconfigure(vm, wanted, (), ())


def snapshot(kernel: HostKernel, config: MemoryConfigStore) -> tuple:
    trees = tuple(
        (
            [(n, t.parent(n), t.pool(n), t.reserved(n)) for n in t.pools()],
            [(v, t.consumer_pool(v), t.consumer(v)) for v in t.consumer_names],
        )
        for t in (kernel.cpu.tree, kernel.memory.tree)
    )
    return trees, kernel.vms(), config.load()


def check_invariants(kernel: HostKernel, config: MemoryConfigStore) -> None:
    cpu, memory = kernel.cpu.tree, kernel.memory.tree
    assert cpu.pools() == memory.pools()  # one set of pools, in both trees
    assert all(cpu.parent(p) == memory.parent(p) for p in cpu.pools())
    assert set(cpu.consumer_names) == set(memory.consumer_names)
    for vm in kernel.vms():
        if vm.powered_on:  # a running VM draws on the pool its configuration names
            assert cpu.consumer_pool(vm.name) == memory.consumer_pool(vm.name) == vm.resources.pool
        else:
            assert vm.name not in cpu
    saved = resource_pools_from_config(config.load().get("resource_pools", []))
    assert saved == kernel.resource_pool_configs()  # esx.conf is always up to date
    listed = kernel.resource_pools()
    assert [p.name for p in listed] == cpu.pools()
    assert sorted(v for p in listed for v in p.powered_on) == sorted(cpu.consumer_names)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(operations, min_size=5, max_size=30),
    st.lists(st.sampled_from(("", *POOLS)), min_size=3, max_size=3),
)
def test_every_pool_operation_keeps_both_trees_and_esx_conf_in_step(tmp_path_factory, ops, homes):
    """`homes`: the pools the three VMs are registered in (they may not exist yet)."""
    config = MemoryConfigStore()
    spec = HostSpec("esxi-01", cpu_cores=CORES, cpu_mhz=CORE_MHZ, memory_mb=1024)
    swap = tmp_path_factory.mktemp("swap")
    kernel = HostKernel(spec, SimClock(100.0), swap, config)
    kernel.create_resource_pool("p1", "", Allocation(4000), Allocation(163840))
    for name, home in zip(VMS, homes, strict=True):
        resources = VmResources(workload=WORKLOAD, resource_pool=home)
        kernel.register_vm(VmConfig(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), 1, 256,
                                    resources=resources))  # fmt: skip
    for op in ops:
        before = snapshot(kernel, config)
        try:
            apply(kernel, op)
        except VimFault:
            assert snapshot(kernel, config) == before, op  # a refusal changes nothing
        check_invariants(kernel, config)
    rebooted = HostKernel(spec, SimClock(100.0), tmp_path_factory.mktemp("swap"), config)
    # A reboot makes the same pools again from esx.conf, parents before children.
    assert rebooted.resource_pool_configs() == kernel.resource_pool_configs()
