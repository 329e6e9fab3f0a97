"""`vsim host pool ...` and `vsim vm resources --pool`: options parsed into the
messages the SDK sends (only the settings given change; bad values refused before
anything is sent), and the pool table."""

from __future__ import annotations

import pytest

from vsim.cluster import output
from vsim.cluster.cli import build_parser, pool
from vsim.cluster.cli import vm as cli_vm
from vsim.faults import InvalidArgument
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb


def parsed(*argv: str):
    return build_parser().parse_args(list(argv))


def allocations(args, current=None):
    current = current or (kpb.PoolAllocation(), kpb.PoolAllocation())
    return tuple(
        pool.pool_allocation(args, prefix, unit, base)
        for (prefix, unit), base in zip(pool.POOL_OPTIONS, current, strict=True)
    )


def test_create_options_become_the_pool_allocations():
    args = parsed(
        "host", "pool", "create", "esxi-01", "web", "--parent", "prod",
        "--cpu-shares", "high", "--cpu-reservation", "1000", "--cpu-limit", "4000",
        "--mem-shares", "90000", "--mem-expandable", "off",
    )  # fmt: skip
    assert args.handler is pool.cmd_host_pool_create and args.parent == "prod"
    cpu, memory = allocations(args)
    assert (cpu.shares_level, cpu.shares, cpu.reservation, cpu.limit) == ("high", 0, 1000, 4000)
    assert not cpu.HasField("expandable_reservation")  # unset: the host's default, true
    assert (memory.shares_level, memory.shares) == ("custom", 90_000)
    assert memory.HasField("expandable_reservation") and not memory.expandable_reservation
    assert allocations(parsed("host", "pool", "create", "esxi-01", "x")) == (None, None)


def test_update_changes_only_the_settings_given():
    current = kpb.PoolAllocation(shares_level="low", shares=2000, reservation=300, limit=900)
    args = parsed("host", "pool", "update", "esxi-01", "web", "--cpu-limit", "unlimited")
    cpu, memory = allocations(args, (current, kpb.PoolAllocation()))
    assert memory is None  # not given: not sent, the host keeps it
    assert (cpu.shares_level, cpu.shares, cpu.reservation) == ("low", 2000, 300)
    assert not cpu.HasField("limit")
    args = parsed("host", "pool", "update", "esxi-01", "web", "--cpu-shares", "normal")
    (cpu, _) = allocations(args, (current, kpb.PoolAllocation()))
    assert (cpu.shares_level, cpu.shares) == ("normal", 0)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (("--cpu-shares", "0"), "--cpu-shares"),
        (("--mem-shares", "lots"), "--mem-shares"),
        (("--cpu-reservation", "-1"), "--cpu-reservation"),
        (("--mem-limit", "-3"), "--mem-limit"),
        (("--cpu-reservation", "500", "--cpu-limit", "400"), "below the reservation"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(options, words):
    args = parsed("host", "pool", "create", "esxi-01", "web", *options)
    with pytest.raises(InvalidArgument, match=words):
        allocations(args)


def test_vm_resources_pool():
    vm = pb.Vm(name="a", cpus=1, memory_mb=256, resources=kpb.VmResources(resource_pool="x"))
    args = parsed("vm", "resources", "a", "--pool", "gold")
    assert cli_vm.changed_resources(args, vm).resource_pool == "gold"
    args = parsed("vm", "resources", "a", "--pool", "Resources")
    assert cli_vm.changed_resources(args, vm).resource_pool == ""
    assert cli_vm.changed_resources(parsed("vm", "resources", "a"), vm).resource_pool == "x"
    with pytest.raises(InvalidArgument, match="--pool"):
        cli_vm.changed_resources(parsed("vm", "resources", "a", "--pool", "a/b"), vm)
    assert "resource pool: x" in output.resources_text(vm)


def test_the_pool_table():
    pools = kpb.ResourcePools(
        host="esxi-01",
        pools=[
            kpb.ResourcePool(
                name="Resources",
                cpu=kpb.PoolAllocation(shares_level="normal", shares=4000, reservation=8000,
                                       limit=8000),
                memory=kpb.PoolAllocation(shares_level="normal", shares=163840),
                cpu_usage=kpb.PoolUsage(entitlement=8000),
            ),
            kpb.ResourcePool(
                name="web",
                parent="Resources",
                cpu=kpb.PoolAllocation(shares_level="custom", shares=5000, reservation=100,
                                       expandable_reservation=True),
                memory=kpb.PoolAllocation(shares_level="high", shares=327680),
                cpu_usage=kpb.PoolUsage(entitlement=1234.4),
                vms=[kpb.PoolVm(name="a", powered_on=True), kpb.PoolVm(name="b")],
            ),
        ],
    )  # fmt: skip
    lines = output.resource_pools_table(pools).splitlines()
    assert lines[0] == "esxi-01: CPU in MHz, memory in MB"
    assert lines[1].split()[:4] == ["NAME", "PARENT", "CPU_SHARES", "CPU_RESERVATION"]
    web = lines[3]
    for cell in ("5000", "100 exp", "unlimited", "1234", "high (327680)", "a (on), b"):
        assert cell in web
    assert "8000 fixed" in lines[2]
