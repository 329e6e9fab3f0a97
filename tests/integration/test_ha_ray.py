"""vSphere HA between real host actors (Ray, gRPC+TLS on loopback, vCenter's clock at
4x): with HA on, the agents elect a master over their HostFdm services, and a host
actor killed (`ray.kill`, its process gone) has its VM restarted on a survivor once
the dead host's VMFS lock is stale, every acknowledged write on its disk; with
vCenter stopped as well, the agents still do it, and vCenter, back, shows the VM
where it runs now and the events it missed."""

from __future__ import annotations

import asyncio

import ray
from test_fault_service import (  # noqa: F401 - cluster: the fixture
    DISK,
    acked,
    cluster,
    until,
    writing_vm,
)
from test_vmotion_ray import Restartable, restartable  # noqa: F401 - the fixture

from vsim.cluster.ray_engine import ray_namespace
from vsim.host.actor import answers
from vsim.v1 import vcenter_pb2 as pb

ON = pb.POWER_STATE_POWERED_ON


async def elected(client) -> str:
    async def master() -> str:
        return (await client.ha_status()).master

    return await until(master, "a vSphere HA master elected", 30)


async def restarted_elsewhere(client, dead: str) -> pb.Vm:
    async def moved():
        vm = await client.vm("db-01")
        return vm if vm.host != dead and vm.power_state == ON else None

    return await until(moved, f"db-01 restarted off {dead}", 90)


async def test_a_killed_host_actors_vm_is_restarted_by_ha_on_a_survivor(cluster):  # noqa: F811
    running, client, _ = cluster
    await client.configure_ha(host_failures=1)
    await writing_vm(client, "esxi-01")
    master = await elected(client)
    assert master in ("esxi-02", "esxi-03")  # the lexically highest with most datastores
    before = (await client.vm("db-01")).guest_writes_acked
    ray.kill(ray.get_actor("esxi-01", namespace=ray_namespace(running.core.uuid)))
    vm = await restarted_elsewhere(client, "esxi-01")
    seq = await acked(client, before + 1)
    report = await client.verify_disk("db-01", before)
    assert (report.missing, report.corrupt) == (0, 0) and report.highest_seq >= seq - 1
    lock = await client.lock_owner("vmfs-01", DISK)
    assert [h.host for h in lock.holders] == [vm.host]
    kinds = [e.type for e in await client.events()]
    for kind in ("DasHostFailedEvent", "VmRestartedByHAEvent"):
        assert kind in kinds
    status = await client.ha_status()
    assert {h.host: h.state for h in status.hosts}["esxi-01"] == "hostDown"


async def test_with_vcenter_stopped_the_agents_still_restart_the_vm(restartable):  # noqa: F811
    lab = restartable
    await lab.client.configure_ha()
    await writing_vm(lab.client, "esxi-01")
    await elected(lab.client)
    await lab.client.close()
    await lab.running.stop()
    ray.kill(ray.get_actor("esxi-01", namespace=ray_namespace(lab.running.core.uuid)))
    await asyncio.sleep(15)  # 60 s of the hosts' time: dead at 15, restarted by ~35
    await lab.open()
    vm = await restarted_elsewhere(lab.client, "esxi-01")
    assert vm.host in ("esxi-02", "esxi-03")

    async def collected():  # the agents' events, from vCenter's next HA round
        events = await lab.client.events()
        return [(e.vm, e.host) for e in events if e.type == "VmRestartedByHAEvent"]

    assert await until(collected, "the restart's event in vCenter's log") == [("db-01", vm.host)]


async def test_an_address_answers_when_it_accepts_or_refuses_and_not_when_unreachable():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await answers(f"127.0.0.1:{port}")  # accepted
    finally:
        server.close()
        await server.wait_closed()
    assert await answers(f"127.0.0.1:{port}")  # refused now: something answered
    assert not await answers("gateway.invalid:7", 0.3)  # no such address: no route
