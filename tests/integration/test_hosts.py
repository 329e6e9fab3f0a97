"""Hosts as real Ray actors: vpxuser enforcement at hostd, and vCenter restarts that
re-attach to running hosts or boot them again when Ray lost them."""

from __future__ import annotations

import asyncio

import pytest
import ray

from vsim.cluster.ray_engine import ray_engines, ray_namespace
from vsim.faults import HostNotConnected, InvalidLogin, NotAuthenticated
from vsim.host.hostd.client import GrpcHostPort
from vsim.spec import ClusterSpec
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.host_system import VPXUSER
from vsim.vcenter.server import start_vcenter

ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF


async def test_hostd_refuses_calls_without_vpxuser(vcenter, client):
    host = (await client.hosts())[0]
    port = await GrpcHostPort.open(host.name, host.endpoint)
    try:
        assert port.thumbprint == host.ssl_thumbprint
        vm = hpb.HostVm(name="intruder", uuid="u", cpus=1, memory_mb=64)
        for session in (None, "forged-session"):
            with pytest.raises(NotAuthenticated):
                await port.call("RegisterVm", hpb.RegisterVmRequest(vm=vm), session)
            with pytest.raises(NotAuthenticated):
                await port.call("ListVms", hpb.ListHostVmsRequest(), session)
            with pytest.raises(NotAuthenticated):
                request = hpb.CreateUserRequest(user_name="evil", password="x" * 12, role="Admin")
                await port.call("CreateUser", request, session)
        with pytest.raises(InvalidLogin):
            await port.call(
                "Login", hpb.HostLoginRequest(user_name=VPXUSER, password="guess"), None
            )

        # vCenter's own password for vpxuser is the one that works.
        password = vcenter.core.hosts._vpx_password(host.name)
        assert len(password) == 32
        reply = await port.call(
            "Login", hpb.HostLoginRequest(user_name=VPXUSER, password=password), None
        )
        listed = await port.call("ListVms", hpb.ListHostVmsRequest(), reply.session)
        assert "intruder" not in [v.name for v in listed.vms]
    finally:
        await port.close()


async def test_vcenter_restart_keeps_inventory_and_reattaches_running_hosts(
    ray_cluster, tmp_path, login
):
    first = await start_vcenter(tmp_path, ClusterSpec.default(2), ray_engines(), port=0)
    client = await login(first)
    for name, host in (("keep-01", "esxi-01"), ("keep-02", "esxi-02")):
        await client.run(await client.create_vm(name, cpus=2, memory_mb=1024, host=host))
    await client.run(await client.power_on("keep-01"))
    endpoints = {h.name: h.endpoint for h in await client.hosts()}
    tasks_before = [t.id for t in await client.tasks()]
    session = client.session
    await client.close()
    await first.stop()

    second = await start_vcenter(tmp_path, ClusterSpec.default(2), ray_engines(), port=0)
    try:
        assert second.thumbprint == first.thumbprint
        client = await login(second)
        vms = {v.name: v.power_state for v in await client.vms()}
        assert vms == {"keep-01": ON, "keep-02": OFF}
        hosts = await client.hosts()
        assert {h.name: h.endpoint for h in hosts} == endpoints  # the same actors
        assert all(h.connection_state == pb.CONNECTION_STATE_CONNECTED for h in hosts)
        assert [t.id for t in await client.tasks()][-len(tasks_before) :] == tasks_before
        client.session = session  # a session from before the restart still works
        await client.status()
        await client.run(await client.power_off("keep-01"))
        await client.close()
    finally:
        await second.stop()
        await kill_hosts(second)


async def test_vcenter_boots_hosts_again_when_ray_lost_them(ray_cluster, tmp_path, login):
    first = await start_vcenter(tmp_path, ClusterSpec.default(2), ray_engines(), port=0)
    client = await login(first)
    await client.run(await client.create_vm("lost-01", memory_mb=1024, host="esxi-01"))
    await client.run(await client.power_on("lost-01"))
    thumbprints = {h.name: h.ssl_thumbprint for h in await client.hosts()}
    await client.close()
    await first.stop()
    await kill_hosts(first)  # as if Ray itself had restarted

    second = await start_vcenter(tmp_path, ClusterSpec.default(2), ray_engines(), port=0)
    try:
        client = await login(second)
        hosts = await client.hosts()
        assert {h.name: h.ssl_thumbprint for h in hosts} == thumbprints
        assert all(h.connection_state == pb.CONNECTION_STATE_CONNECTED for h in hosts)
        # The host rebooted, so the VM is off; it is registered again and can start.
        assert (await client.vms())[0].power_state == OFF
        events = [e for e in await client.events() if e.vm == "lost-01"]
        assert events[-1].type == "VmPoweredOffEvent"
        await client.run(await client.power_on("lost-01"))
        await client.close()
    finally:
        await second.stop()
        await kill_hosts(second)


async def test_crashed_host_is_marked_not_responding(ray_cluster, tmp_path, login):
    running = await start_vcenter(tmp_path, ClusterSpec.default(2), ray_engines(), port=0)
    try:
        client = await login(running)
        await client.run(await client.create_vm("crash-01", memory_mb=1024, host="esxi-02"))
        ray.kill(ray.get_actor("esxi-02", namespace=ray_namespace(running.core.uuid)))
        await asyncio.sleep(0.5)
        await running.core.hosts.heartbeat_once()
        states = {h.name: h.connection_state for h in await client.hosts()}
        assert states == {
            "esxi-01": pb.CONNECTION_STATE_CONNECTED,
            "esxi-02": pb.CONNECTION_STATE_NOT_RESPONDING,
        }
        assert "HostNotRespondingEvent" in [e.type for e in await client.events() if e.host]
        with pytest.raises(HostNotConnected):
            await client.power_on("crash-01")
        await client.close()
    finally:
        await running.stop()
        await kill_hosts(running)


async def kill_hosts(running) -> None:
    namespace = ray_namespace(running.core.uuid)
    for host in ("esxi-01", "esxi-02", "esxi-03"):
        try:
            ray.kill(ray.get_actor(host, namespace=namespace))
        except ValueError:
            pass
    await asyncio.sleep(0.5)
