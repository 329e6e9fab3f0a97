"""VMs with disks on real host actors, a real array over gRPC and a vCenter on its
clock at 4x: a running VM's disk is locked where it runs; its host is killed; the
disk's lock is refused to everyone until it has gone stale, and then every guest
write acknowledged before the kill is read back intact from another host."""

from __future__ import annotations

import asyncio
import time

import pytest
import ray

from vsim.clock import WallClock
from vsim.cluster.array_setup import prepare_array
from vsim.cluster.ray_engine import ray_engines, ray_namespace
from vsim.faults import FileLocked, InvalidPowerState
from vsim.host.storage.vmfs import HB_TIMEOUT
from vsim.spec import ClusterSpec
from vsim.storage.server import start_array
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.server import start_vcenter

SPEED = 4.0
HOSTS = ("esxi-01", "esxi-02", "esxi-03")


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
        array=ArrayRef(array.endpoint, array.identity.thumbprint),
    )
    client = await login(running)
    yield running, client
    await client.close()
    await running.stop()
    namespace = ray_namespace(running.core.uuid)
    for host in HOSTS:
        try:
            ray.kill(ray.get_actor(host, namespace=namespace))
        except ValueError:
            pass
    await array.stop()


async def acked(client, name: str, at_least: int) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        vm = await client.vm(name)
        if vm.guest_writes_acked >= at_least:
            return vm.guest_writes_acked
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}'s guest did not reach {at_least} acknowledged writes")


async def test_vm_disk_lock_and_guest_data_survive_a_killed_host(cluster):
    running, client = cluster
    await client.run(
        await client.create_vm(
            "db-01", memory_mb=256, host="esxi-01", datastore="vmfs-01", disk_mb=16,
            guest_write_iops=100,
        )
    )  # fmt: skip
    await client.run(await client.power_on("db-01"))

    lock = await client.lock_owner("vmfs-01", "db-01/db-01-flat.vmdk")
    assert lock.mode == "EXCLUSIVE" and [h.host for h in lock.holders] == ["esxi-01"]
    assert lock.holders[0].live
    with pytest.raises(InvalidPowerState):
        await client.destroy_vm("db-01")  # powered on
    seq = await acked(client, "db-01", 50)

    ray.kill(ray.get_actor("esxi-01", namespace=ray_namespace(running.core.uuid)))
    killed = time.monotonic()
    refusals = 0
    while True:
        try:
            report = await client.verify_disk("db-01", seq)
            break
        except FileLocked:
            refusals += 1
            assert time.monotonic() - killed < 120, "the dead host's lock never went stale"
            await asyncio.sleep(0.25)
    waited = (time.monotonic() - killed) * SPEED
    assert refusals > 0
    assert waited >= HB_TIMEOUT  # never broken before 16 s (of the hosts' clock)
    assert report.host in ("esxi-02", "esxi-03")
    assert report.missing == 0 and report.corrupt == 0
    assert report.highest_seq >= seq and report.written == min(report.blocks, report.highest_seq)


async def test_a_guest_sees_only_its_own_disks(cluster):
    """Two VMs with disks on one host: each guest's REPORT LUNS scan finds one disk,
    its own (by its size), and none of the host's LUNs."""
    _, client = cluster
    sizes = {"luns-01": ("vmfs-01", 12), "luns-02": ("nfs-01", 20)}
    for name, (datastore, mb) in sizes.items():
        await client.run(
            await client.create_vm(
                name, memory_mb=256, host="esxi-02", datastore=datastore, disk_mb=mb
            )
        )
        await client.run(await client.power_on(name))
    for name, (_, mb) in sizes.items():
        luns = (await client.guest_report_luns(name)).luns
        assert [(lun.address, lun.lun, lun.vendor, lun.product) for lun in luns] == [
            ("scsi0:0", 0, "VMware", "Virtual disk")
        ]
        assert luns[0].capacity_bytes == mb * 1024 * 1024
