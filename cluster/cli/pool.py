"""`vsim host pool create|update|list|destroy`: a host's resource pools (CPU and
memory shares, reservations, limits, expandable reservations).

What the user typed is checked by the host's own rules, which are shared values
(vsim.resource_allocation, vsim.resource_messages) and cheap to import.
"""

from __future__ import annotations

import argparse

from vsim import validate
from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, show_task_fault, whole
from vsim.faults import InvalidArgument, NotFound
from vsim.resource_allocation import ROOT_POOL, SHARE_LEVELS, Unit, pool_name
from vsim.resource_messages import pool_allocation_from_proto
from vsim.v1 import kernel_pb2 as kpb

POOL_OPTIONS = (("cpu", "MHz"), ("mem", "MB"))
"""(option prefix, unit) of the --cpu-* and --mem-* options of `vsim host pool`."""


POOL_OPTION_NAMES = ("shares", "reservation", "limit", "expandable")


def pool_allocation(
    args: argparse.Namespace, prefix: str, unit: str, current: kpb.PoolAllocation
) -> kpb.PoolAllocation | None:
    """`current` with the --PREFIX-* options given applied (None if none was given),
    checked as the host checks it (unit: MHz or MB)."""
    given = [getattr(args, f"{prefix}_{name}") for name in POOL_OPTION_NAMES]
    if given == [None] * len(POOL_OPTION_NAMES):
        return None
    shares, reservation, limit, expandable = given
    a = kpb.PoolAllocation()
    a.CopyFrom(current)
    if shares in SHARE_LEVELS:
        a.shares_level, a.shares = shares, 0
    elif shares is not None:
        flag = f"--{prefix}-shares"
        value = whole(shares, flag, "low, normal, high or a number")
        a.shares_level, a.shares = "custom", validate.int_range(value, 1, 2**31 - 1, flag)
    if reservation is not None:
        a.reservation = validate.int_range(reservation, 0, 2**40, f"--{prefix}-reservation")
    if limit == "unlimited":
        a.ClearField("limit")
    elif limit is not None:
        a.limit = whole(limit, f"--{prefix}-limit", "a number or unlimited")
    if expandable is not None:
        a.expandable_reservation = expandable == "on"
    pool_allocation_from_proto(a, Unit(unit), f"--{prefix}-*")
    return a


async def cmd_host_pool_create(args: argparse.Namespace, ctx: Context) -> None:

    pool_name(args.name)
    parent = "" if args.parent in (None, ROOT_POOL) else pool_name(args.parent, "--parent")
    cpu, memory = (
        pool_allocation(args, prefix, unit, kpb.PoolAllocation()) for prefix, unit in POOL_OPTIONS
    )
    async with await ctx.client() as client:
        pools = await client.create_resource_pool(args.host, args.name, parent, cpu, memory)
    ctx.show(pools, output.resource_pools_table(pools))


async def cmd_host_pool_update(args: argparse.Namespace, ctx: Context) -> None:
    """Reads the pool, changes only the settings given, sends the resources changed."""

    pool_name(args.name)
    async with await ctx.client() as client:
        pools = await client.resource_pools(args.host)
        current = next((p for p in pools.pools if p.name == args.name), None)
        if current is None:
            raise NotFound(
                f"{args.host} has no resource pool {args.name!r}; it has: "
                + ", ".join(p.name for p in pools.pools)
            )
        (cpu_unit, mem_unit) = (unit for _, unit in POOL_OPTIONS)
        cpu = pool_allocation(args, "cpu", cpu_unit, current.cpu)
        memory = pool_allocation(args, "mem", mem_unit, current.memory)
        if cpu is None and memory is None:
            raise InvalidArgument("nothing to change: give a --cpu-* or --mem-* option")
        pools = await client.update_resource_pool(args.host, args.name, cpu, memory)
    ctx.show(pools, output.resource_pools_table(pools))


async def cmd_host_pool_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        pools = await client.resource_pools(args.host)
    ctx.show(pools, output.resource_pools_table(pools))


async def cmd_host_pool_destroy(args: argparse.Namespace, ctx: Context) -> None:

    pool_name(args.name)
    async with await ctx.client() as client:
        task = await client.wait(await client.destroy_resource_pool(args.host, args.name))
    show_task_fault(task)
    ctx.show(task, f"resource pool {args.name} destroyed on {args.host}")


def add_commands(hosts: Subcommands, command: Command) -> None:
    pools = command(hosts, "pool", None, "the host's resource pools").add_subparsers(
        dest="sub2", required=True
    )
    p = command(pools, "create", cmd_host_pool_create, "create a resource pool on a host")
    p.add_argument("host")
    p.add_argument("name")
    p.add_argument("--parent", help=f"default: the root pool, {ROOT_POOL}")
    add_pool_options(p, "unset: normal, 0, unlimited, expandable")
    p = command(pools, "update", cmd_host_pool_update, "change a pool's settings (those given)")
    p.add_argument("host")
    p.add_argument("name")
    add_pool_options(p, "unset: unchanged")
    command(pools, "list", cmd_host_pool_list, "a host's pools, their use and VMs").add_argument(
        "host"
    )
    p = command(
        pools, "destroy", cmd_host_pool_destroy, "destroy a pool (its VMs move to the parent)"
    )
    p.add_argument("host")
    p.add_argument("name")


def add_pool_options(p: argparse.ArgumentParser, unset: str) -> None:
    """--cpu-shares ... --mem-expandable: a pool's allocation of each resource."""
    for prefix, unit in POOL_OPTIONS:
        p.add_argument(f"--{prefix}-shares", help=f"low, normal, high or a number ({unset})")
        p.add_argument(f"--{prefix}-reservation", type=int, metavar=unit.upper())
        p.add_argument(f"--{prefix}-limit", metavar=f"{unit.upper()}|unlimited")
        p.add_argument(
            f"--{prefix}-expandable",
            choices=["on", "off"],
            help="children may reserve more, borrowing from the parent",
        )
