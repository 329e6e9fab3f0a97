"""The fault service on a real Ray cluster: host actors, the array over gRPC, and a
vCenter on its clock at 4x serving the Faults service beside VCenter, driven through
the SDK as a user's chaos suite would. A crashed host's disk lock goes stale and is
broken only then; one host's cut storage link loses its VMFS volume within 16 s
while its management stays connected; a cut management link leaves its datastore
heartbeats going; after each is mended, every acknowledged guest write reads back."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from vsim.clock import WallClock
from vsim.cluster.array_setup import prepare_array
from vsim.cluster.fault_service import fault_services
from vsim.cluster.ray_engine import ray_engines, ray_namespace
from vsim.faults import FileLocked
from vsim.host.storage.vmfs import HB_TIMEOUT
from vsim.spec import ClusterSpec
from vsim.storage.server import start_array
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.server import start_vcenter

SPEED = 4.0
HOSTS = ("esxi-01", "esxi-02", "esxi-03")
CONNECTED = pb.CONNECTION_STATE_CONNECTED
DISK = "db-01/db-01-flat.vmdk"


@pytest.fixture
async def cluster(ray_cluster, tmp_path, login):
    array = await start_array(tmp_path / "array")
    spec = prepare_array(array.array, ClusterSpec.default(3))
    running = await start_vcenter(
        tmp_path / "data",
        spec,
        ray_engines(),
        port=0,
        clock=WallClock(SPEED),
        array=ArrayRef(array.endpoint, array.identity.thumbprint, array.array.management_key),
        services=fault_services,
    )
    client = await login(running)
    yield running, client, array
    await client.close()
    await running.stop()
    namespace = ray_namespace(running.core.uuid)
    for host in HOSTS:
        try:
            ray.kill(ray.get_actor(host, namespace=namespace))
        except ValueError:
            pass
    await array.stop()


async def until(check, what: str, seconds: float = 60):
    """check()'s first truthy answer, polled; fails after `seconds` real seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = await check()
        if answer:
            return answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def writing_vm(client, host: str) -> int:
    """db-01, on vmfs-01, running on host with its guest writing; returns a count of
    writes it has had acknowledged."""
    await client.run(
        await client.create_vm(
            "db-01", memory_mb=256, host=host, datastore="vmfs-01", disk_mb=16,
            guest_write_iops=100,
        )
    )  # fmt: skip
    await client.run(await client.power_on("db-01"))
    return await acked(client, 20)


async def acked(client, at_least: int) -> int:
    async def count():
        n = (await client.vm("db-01")).guest_writes_acked
        return n if n >= at_least else 0

    return await until(count, f"db-01's guest acknowledged {at_least} writes")


async def state(client, host: str) -> int:
    return next(h.connection_state for h in await client.hosts() if h.name == host)


async def vmfs_accessible(client, host: str) -> bool:
    vmfs = next(d for d in await client.datastores() if d.name == "vmfs-01")
    return next(m.accessible for m in vmfs.mounts if m.host == host)


async def verified(client, seq: int) -> None:
    report = await client.verify_disk("db-01", seq)
    assert report.missing == 0 and report.corrupt == 0
    assert report.highest_seq >= seq


async def test_a_crashed_hosts_lock_is_broken_only_once_stale(cluster):
    running, client, _ = cluster
    seq = await writing_vm(client, "esxi-01")
    state_ = await client.crash_host("esxi-01")
    crashed = time.monotonic()
    assert [(f.kind, f.target) for f in state_.faults] == [("host-crash", "esxi-01")]
    refusals = 0
    while True:
        try:
            lock = await client.break_stale_lock("vmfs-01", DISK)
        except FileLocked:  # its holder still looks live
            refusals += 1
            assert time.monotonic() - crashed < 60, "the crashed host's lock never went stale"
            await asyncio.sleep(0.25)
            continue
        if lock.broken:
            break
        await asyncio.sleep(0.25)
    waited = (time.monotonic() - crashed) * SPEED
    assert refusals > 0 and waited >= HB_TIMEOUT - 3  # its last heartbeat: <= 3 s before
    assert [h.host for h in lock.holders] == ["esxi-01"] and not lock.holders[0].live
    await verified(client, seq)

    await client.power_on_host("esxi-01")
    await until(lambda: _connected(client, "esxi-01"), "esxi-01 reattached after power-on")
    assert list((await client.faults()).faults) == []
    events = [e.type for e in await client.events()]
    assert events.count("FaultInjectedEvent") == 2  # the crash and the power-on


async def _connected(client, host: str) -> bool:
    return await state(client, host) == CONNECTED


async def test_a_cut_storage_link_loses_the_volume_not_management(cluster):
    _, client, _ = cluster
    seq = await writing_vm(client, "esxi-01")
    await client.set_link("esxi-02", "storage", "down")
    cut = time.monotonic()

    async def lost() -> bool:
        return not await vmfs_accessible(client, "esxi-02")

    await until(lost, "esxi-02 lost vmfs-01")
    assert (time.monotonic() - cut) * SPEED <= HB_TIMEOUT + 3  # 16 s, and one poll
    assert await state(client, "esxi-02") == CONNECTED  # management still up
    assert await vmfs_accessible(client, "esxi-01")  # the other hosts keep theirs
    await client.set_link("esxi-02", "storage", "up")
    await until(lambda: vmfs_accessible(client, "esxi-02"), "esxi-02 got vmfs-01 back")
    await verified(client, await acked(client, seq + 20))


async def test_a_cut_management_link_leaves_the_heartbeats_going(cluster):
    _, client, _ = cluster
    seq = await writing_vm(client, "esxi-03")
    await client.set_link("esxi-03", "management", "down")

    async def not_responding() -> bool:
        return await state(client, "esxi-03") != CONNECTED

    await until(not_responding, "vCenter saw esxi-03 stop answering")
    # Seen from another host, esxi-03's heartbeat keeps changing: its lock stays live.
    for _ in range(3):
        lock = await client.lock_owner("vmfs-01", DISK)
        assert lock.observed_by != "esxi-03"
        (holder,) = lock.holders
        assert holder.host == "esxi-03" and holder.live
        assert 0 <= holder.seconds_since_heartbeat_change < HB_TIMEOUT / 2
        await asyncio.sleep(3 / SPEED * 2)  # two heartbeat intervals
    with pytest.raises(FileLocked):
        await client.break_stale_lock("vmfs-01", DISK)
    await client.set_link("esxi-03", "management", "up")
    await until(lambda: _connected(client, "esxi-03"), "esxi-03 reattached")
    await verified(client, await acked(client, seq + 20))
