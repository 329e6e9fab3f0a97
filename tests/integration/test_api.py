"""The VCenter API over real gRPC+TLS on loopback, with hosts as real Ray actors."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import ray
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from vsim.cluster.client import SERVICE, VCenterClient
from vsim.cluster.ray_engine import ray_namespace
from vsim.faults import (
    DuplicateName,
    InsufficientResourcesFault,
    InvalidArgument,
    InvalidPowerState,
    NotAuthenticated,
    NotFound,
    SSLVerifyFault,
    VimFault,
)
from vsim.rpc import RpcClient, open_channel
from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb

ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF
SUCCESS, ERROR = common_pb2.TASK_STATE_SUCCESS, common_pb2.TASK_STATE_ERROR


async def test_default_cluster_has_three_connected_hosts(client):
    hosts = await client.hosts()
    assert [h.name for h in hosts][:3] == ["esxi-01", "esxi-02", "esxi-03"]
    assert all(h.connection_state == pb.CONNECTION_STATE_CONNECTED for h in hosts)
    status = await client.status()
    assert (status.datacenter, status.cluster, status.engine) == ("dc-01", "cluster-01", "ray")


async def test_every_call_but_login_needs_a_valid_session(vcenter):
    channel, _ = await open_channel(vcenter.endpoint)
    rpc = RpcClient(channel, SERVICE, timeout=10)
    try:
        for method in SERVICE.methods:
            if method.name == "Login":
                continue
            request = message_factory.GetMessageClass(method.input_type)
            for token in (None, "not-a-session"):
                with pytest.raises(NotAuthenticated):
                    if method.server_streaming:
                        async for _ in rpc.stream(method.name, request(), token):
                            pass
                    else:
                        await rpc.call(method.name, request(), token)
    finally:
        await rpc.close()


async def test_wrong_password_is_invalid_login(vcenter):
    async with await VCenterClient.connect(vcenter.endpoint, vcenter.thumbprint) as c:
        with pytest.raises(VimFault) as info:
            await c.login("administrator@vsphere.local", "wrong")
        assert info.value.name == "InvalidLogin"


async def test_logout_ends_the_session(vcenter, client):
    other = await VCenterClient.connect(vcenter.endpoint, vcenter.thumbprint)
    await other.login("administrator@vsphere.local", vcenter.core.sessions.initial_password())
    await other.status()
    token = other.session
    await other.logout()
    other.session = token  # replay the old token
    with pytest.raises(NotAuthenticated):
        await other.status()
    await other.close()
    assert (await client.status()).hosts >= 3  # other sessions are untouched


async def test_vm_lifecycle_reaches_the_host(vcenter, client):
    task = await client.create_vm("life-01", cpus=2, memory_mb=2048, host="esxi-02")
    assert task.state in (common_pb2.TASK_STATE_QUEUED, common_pb2.TASK_STATE_RUNNING, SUCCESS)
    assert (await client.run(task)).result == "life-01"
    host_vms = await host_view(vcenter, "esxi-02")
    assert host_vms["life-01"] is False

    await client.run(await client.power_on("life-01"))
    assert (await vm(client, "life-01")).power_state == ON
    assert (await host_view(vcenter, "esxi-02"))["life-01"] is True
    with pytest.raises(InvalidPowerState):
        await client.power_on("life-01")
    with pytest.raises(InvalidPowerState):
        await client.destroy_vm("life-01")

    await client.run(await client.power_off("life-01"))
    assert (await host_view(vcenter, "esxi-02"))["life-01"] is False
    await client.run(await client.destroy_vm("life-01"))
    assert "life-01" not in await host_view(vcenter, "esxi-02")
    assert "life-01" not in [v.name for v in await client.vms()]

    kinds = [(e.type, e.vm) for e in await client.events() if e.vm == "life-01"]
    assert [k for k, _ in kinds] == [
        "VmCreatedEvent",
        "VmPoweredOnEvent",
        "VmPoweredOffEvent",
        "VmRemovedEvent",
    ]


async def test_admission_control_refuses_a_vm_that_does_not_fit(client):
    await client.run(
        await client.create_vm("huge-01", cpus=4, memory_mb=600 * 1024, host="esxi-03")
    )
    done = await client.wait(await client.power_on("huge-01"))
    assert done.state == ERROR
    assert done.error.name == InsufficientResourcesFault.name
    assert "esxi-03" in done.error.message
    assert (await vm(client, "huge-01")).power_state == OFF
    await client.run(await client.destroy_vm("huge-01"))


async def test_bad_inputs_are_rejected_without_side_effects(client):
    await client.run(await client.create_vm("dup-01", memory_mb=512))
    before = await snapshot(client)
    cases = [
        (InvalidArgument, client.create_vm("x" * (10 * 1024 * 1024))),
        (InvalidArgument, client.create_vm("neg-01", memory_mb=-1024)),
        (InvalidArgument, client.create_vm("odd-01", memory_mb=1023)),
        (InvalidArgument, client.create_vm("cpu-01", cpus=0)),
        (InvalidArgument, client.create_vm("bad/name")),
        (DuplicateName, client.create_vm("dup-01", memory_mb=512)),
        (NotFound, client.create_vm("nohost-01", host="esxi-99")),
        (NotFound, client.power_on("no-such-vm")),
        (NotFound, client.destroy_vm("no-such-vm")),
        (NotFound, client.task("task-999999")),
        (NotFound, client.task("garbage")),
        (InvalidArgument, client.add_host("Bad_Name")),
        (InvalidArgument, client.add_host("esxi-50", "not-a-thumbprint")),
        (DuplicateName, client.add_host("esxi-01")),
        (NotFound, client.remove_host("esxi-99")),
        (NotFound, client.vms(host="esxi-99")),
        (InvalidArgument, client.events(limit=-1)),
    ]
    for fault, call in cases:
        with pytest.raises(fault) as info:
            await call
        assert len(info.value.message) < 400, info.value.message
    assert await snapshot(client) == before
    await client.run(await client.destroy_vm("dup-01"))


async def test_add_host_needs_the_right_thumbprint(vcenter, client):
    wrong = ":".join(["AB"] * 32)
    done = await client.wait(await client.add_host("esxi-07", wrong))
    assert done.state == ERROR and done.error.name == SSLVerifyFault.name
    actual = done.error.properties["thumbprint"]
    assert actual != wrong and len(actual) == 95
    assert "esxi-07" not in [h.name for h in await client.hosts()]

    missing = await client.wait(await client.add_host("esxi-07"))
    assert missing.error.name == SSLVerifyFault.name
    assert missing.error.properties["thumbprint"] == actual

    await client.run(await client.add_host("esxi-07", actual.lower().replace(":", "")))
    host = next(h for h in await client.hosts() if h.name == "esxi-07")
    assert host.ssl_thumbprint == actual
    assert host.connection_state == pb.CONNECTION_STATE_CONNECTED
    namespace = ray_namespace(vcenter.core.uuid)
    assert ray.get_actor("esxi-07", namespace=namespace) is not None

    await client.run(await client.remove_host("esxi-07"))
    assert "esxi-07" not in [h.name for h in await client.hosts()]
    await asyncio.sleep(0.5)
    with pytest.raises(ValueError):
        ray.get_actor("esxi-07", namespace=namespace)


async def test_watch_events_streams_new_events(client):
    last = (await client.events())[-1].key
    seen: list[common_pb2.Event] = []

    async def watch():
        async for event in client.watch_events(last):
            seen.append(event)
            if event.type == "VmCreatedEvent" and event.vm == "watch-01":
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    await client.run(await client.create_vm("watch-01", memory_mb=256))
    await asyncio.wait_for(watcher, 10)
    assert all(e.key > last for e in seen)
    assert seen[-1].vm == "watch-01"
    await client.run(await client.destroy_vm("watch-01"))


async def test_client_refuses_a_changed_thumbprint(vcenter):
    with pytest.raises(SSLVerifyFault) as info:
        await VCenterClient.connect(vcenter.endpoint, ":".join(["00"] * 32))
    assert info.value.properties["thumbprint"] == vcenter.thumbprint


@pytest.mark.parametrize("which", ["vcenter", "host"])
async def test_health_and_reflection(vcenter, client, which):
    if which == "vcenter":
        endpoint, service = vcenter.endpoint, "vsim.v1.VCenter"
    else:
        endpoint, service = (await client.hosts())[0].endpoint, "vsim.v1.HostAgent"
    channel, _ = await open_channel(endpoint)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", service):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()
    services = await asyncio.to_thread(reflected_services, endpoint)
    assert service in services and "grpc.health.v1.Health" in services


def reflected_services(endpoint: str) -> list[str]:
    from vsim.tls import common_name_of, fetch_server_certificate, split_endpoint

    pem = fetch_server_certificate(*split_endpoint(endpoint))
    creds = grpc.ssl_channel_credentials(root_certificates=pem)
    options = [("grpc.ssl_target_name_override", common_name_of(pem))]
    with grpc.secure_channel(endpoint, creds, options=options) as channel:
        return list(ProtoReflectionDescriptorDatabase(channel).get_services())


# helpers


async def vm(client: VCenterClient, name: str) -> pb.Vm:
    return next(v for v in await client.vms() if v.name == name)


async def host_view(vcenter, host: str) -> dict[str, bool]:
    """What the host itself runs, asked through hostd as vpxuser (vCenter's line)."""
    from vsim.v1 import host_agent_pb2 as hpb

    reply = await vcenter.core.hosts.call(host, "ListVms", hpb.ListHostVmsRequest())
    return {v.name: v.powered_on for v in reply.vms}


async def snapshot(client: VCenterClient):
    vms = [(v.name, v.host, v.power_state) for v in await client.vms()]
    hosts = [(h.name, h.connection_state) for h in await client.hosts()]
    tasks = [t.id for t in await client.tasks(10_000)]
    events = [e.key for e in await client.events(limit=10_000)]
    return vms, hosts, tasks, events
