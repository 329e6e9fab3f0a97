"""The storage array over real gRPC+TLS on loopback: SCSI and NFS outcomes in-band,
management only with the array's key, health and reflection, acknowledged data intact
across an array restart; and the array managed through vCenter (real host actors): a
LUN made, a datastore on it, a host added later that is mapped and mounts it."""

from __future__ import annotations

import asyncio
import os

import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_api import reflected_services

from vsim.cluster.array_setup import prepare_array
from vsim.cluster.ray_engine import ray_engines, ray_namespace
from vsim.faults import (
    HostConnectFault,
    InvalidArgument,
    NoPermission,
    NotAuthenticated,
    ResourceInUse,
)
from vsim.rpc import RpcClient, open_channel
from vsim.spec import ClusterSpec
from vsim.storage.lun import SECTOR
from vsim.storage.scsi import MISCOMPARE, RESERVATION_CONFLICT
from vsim.storage.server import SERVICE, start_array
from vsim.v1 import storage_pb2 as pb
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.server import start_vcenter

HOST_A = "iqn.1998-01.com.vmware:esxi-01"
HOST_B = "iqn.1998-01.com.vmware:esxi-02"
HOST_C = "iqn.1998-01.com.vmware:esxi-03"


async def connect(running) -> RpcClient:
    channel, thumbprint = await open_channel(running.endpoint)
    assert thumbprint == running.identity.thumbprint
    return RpcClient(channel, SERVICE, timeout=20)


def block(fill: int) -> bytes:
    return bytes([fill]) * SECTOR


async def test_scsi_over_grpc_reservations_ats_and_masking(tmp_path):
    running = await start_array(tmp_path)
    rpc = await connect(running)
    try:
        lun = await rpc.call(
            "CreateLun",
            pb.CreateLunRequest(size_bytes=8 * 1024**2, initiators=[HOST_A, HOST_B]),
            running.array.management_key,
        )
        scsi = lambda initiator, **kw: pb.ScsiRequest(initiator=initiator, lun=lun.id, **kw)  # noqa: E731

        assert list((await rpc.call("ReportLuns", scsi(HOST_A), None)).luns) == [lun.id]
        assert list((await rpc.call("ReportLuns", scsi(HOST_C), None)).luns) == []
        # A host cannot map itself a LUN: masking is management, which needs the key.
        remask = pb.MapLunRequest(lun=lun.id, initiators=[HOST_C])
        with pytest.raises(NotAuthenticated, match="management key"):
            await rpc.call("MapLun", remask, None)
        with pytest.raises(NoPermission):
            await rpc.call("MapLun", remask, "g" * 43)  # a well-formed, wrong key
        assert list((await rpc.call("ReportLuns", scsi(HOST_C), None)).luns) == []
        hidden = await rpc.call("Read", scsi(HOST_C, lba=0, blocks=1), None)
        assert (hidden.status.sense_key, hidden.status.asc) == (0x05, 0x25)

        capacity = await rpc.call("ReadCapacity", scsi(HOST_A), None)
        assert (capacity.last_lba, capacity.block_length) == (8 * 2048 - 1, SECTOR)
        assert (await rpc.call("Inquiry", scsi(HOST_B), None)).ats is True

        ok = await rpc.call("Write", scsi(HOST_A, lba=10, data=block(7) * 2), None)
        assert ok.status.status == 0
        assert (await rpc.call("Read", scsi(HOST_B, lba=10, blocks=2), None)).data == block(7) * 2

        await rpc.call("Reserve", scsi(HOST_A), None)
        refused = await rpc.call("Write", scsi(HOST_B, lba=10, data=block(9)), None)
        assert refused.status.status == RESERVATION_CONFLICT
        assert (await rpc.call("Read", scsi(HOST_A, lba=10, blocks=1), None)).data == block(7)
        await rpc.call("Release", scsi(HOST_A), None)

        swapped = await rpc.call(
            "CompareAndWrite", scsi(HOST_B, lba=10, verify=block(7), data=block(8)), None
        )
        assert swapped.status.status == 0
        lost = await rpc.call(
            "CompareAndWrite", scsi(HOST_A, lba=10, verify=block(7), data=block(1)), None
        )
        assert lost.status.sense_key == MISCOMPARE and lost.data == block(8)

        beyond = await rpc.call("Write", scsi(HOST_A, lba=8 * 2048, data=block(1)), None)
        assert (beyond.status.sense_key, beyond.status.asc) == (0x05, 0x21)
        assert os.path.getsize(running.array.luns[lun.id].path) == 8 * 1024**2

        stats = await rpc.call("GetStats", pb.GetStatsRequest(), running.array.management_key)
        counters = {(c.initiator, c.lun): dict(c.counters) for c in stats.scsi}
        assert counters[(HOST_B, lun.id)]["reservation_conflicts"] == 1
        assert counters[(HOST_A, lun.id)]["miscompares"] == 1

        with pytest.raises(InvalidArgument):
            await rpc.call(
                "CreateLun", pb.CreateLunRequest(size_bytes=1000), running.array.management_key
            )
        with pytest.raises(InvalidArgument):
            await rpc.call(
                "MapLun",
                pb.MapLunRequest(lun=99, initiators=[HOST_C]),
                running.array.management_key,
            )
    finally:
        await rpc.close()
        await running.stop()


async def test_nfs_over_grpc_and_84_byte_writes_are_counted(tmp_path):
    running = await start_array(tmp_path)
    rpc = await connect(running)
    try:
        await rpc.call(
            "CreateExport", pb.CreateExportRequest(name="nfs-01"), running.array.management_key
        )
        await rpc.call(
            "CreateExport",
            pb.CreateExportRequest(name="squash", root_squash=True),
            running.array.management_key,
        )
        nfs = lambda **kw: pb.NfsRequest(client="esxi-01", export="nfs-01", **kw)  # noqa: E731

        made = await rpc.call("NfsMkdir", nfs(handle="", name="vm-001"), None)
        assert made.status == 0 and made.attributes.type == "dir"
        lock = await rpc.call(
            "NfsCreate", nfs(handle="vm-001", name=".lck-42", create_mode=1), None
        )
        again = await rpc.call(
            "NfsCreate", nfs(handle="vm-001", name=".lck-42", create_mode=1), None
        )
        assert (lock.status, again.status) == (0, 17)  # NFS3_OK, then NFS3ERR_EXIST
        for sequence in range(3):
            wrote = await rpc.call(
                "NfsWrite",
                nfs(handle=lock.handle, offset=0, data=bytes([sequence]) * 84, stable=True),
                None,
            )
            assert wrote.count == 84
        read = await rpc.call("NfsRead", nfs(handle=lock.handle, offset=0, count=1000), None)
        assert read.data == bytes([2]) * 84 and read.eof

        escape = await rpc.call("NfsLookup", nfs(handle="", name=".."), None)
        assert escape.status == 22  # NFS3ERR_INVAL
        traversal = await rpc.call("NfsRead", nfs(handle="../array.json", count=10), None)
        assert traversal.status == 22 and not traversal.data

        squashed = await rpc.call(
            "NfsCreate",
            pb.NfsRequest(
                client="esxi-01", export="squash", handle="", name="vm.vmx", create_mode=1
            ),
            None,
        )
        assert squashed.status == 13  # NFS3ERR_ACCES

        stats = await rpc.call("GetStats", pb.GetStatsRequest(), running.array.management_key)
        sizes = {(w.export, w.client): dict(w.sizes) for w in stats.nfs_writes}
        assert sizes[("nfs-01", "esxi-01")] == {84: 3}
    finally:
        await rpc.close()
        await running.stop()


async def test_acknowledged_data_survives_an_array_restart(tmp_path):
    running = await start_array(tmp_path)
    rpc = await connect(running)
    lun = await rpc.call(
        "CreateLun",
        pb.CreateLunRequest(size_bytes=4 * 1024**2, initiators=[HOST_A]),
        running.array.management_key,
    )
    await rpc.call(
        "CreateExport", pb.CreateExportRequest(name="nfs-01"), running.array.management_key
    )
    acknowledged = {}
    for lba in range(0, 64, 7):
        data = os.urandom(SECTOR)
        reply = await rpc.call(
            "Write", pb.ScsiRequest(initiator=HOST_A, lun=lun.id, lba=lba, data=data), None
        )
        assert reply.status.status == 0  # GOOD: acknowledged, so it must survive
        acknowledged[lba] = data
    created = await rpc.call(
        "NfsCreate", pb.NfsRequest(client="c", export="nfs-01", name="f"), None
    )
    await rpc.call(
        "NfsWrite",
        pb.NfsRequest(
            client="c", export="nfs-01", handle=created.handle, data=b"kept", stable=True
        ),
        None,
    )
    await rpc.call("Reserve", pb.ScsiRequest(initiator=HOST_A, lun=lun.id), None)
    thumbprint = running.identity.thumbprint
    await rpc.close()
    await running.stop()

    running = await start_array(tmp_path)
    rpc = await connect(running)
    try:
        assert running.identity.thumbprint == thumbprint
        for lba, data in acknowledged.items():
            reply = await rpc.call(
                "Read", pb.ScsiRequest(initiator=HOST_A, lun=lun.id, lba=lba, blocks=1), None
            )
            assert reply.data == data
        read = await rpc.call(
            "NfsRead",
            pb.NfsRequest(client="c", export="nfs-01", handle=created.handle, count=10),
            None,
        )
        assert read.data == b"kept"
        info = await rpc.call("GetArray", pb.GetArrayRequest(), running.array.management_key)
        assert [lun_info.reserved_by for lun_info in info.luns] == [""]  # reservations are volatile
    finally:
        await rpc.close()
        await running.stop()


async def test_restart_array_drops_every_connection_and_listens_again(tmp_path):
    """RestartArray over gRPC restarts the program as the network sees it too: a
    command waiting at the array is cut off with its connection (not carried out),
    and the same channel carries calls again once the server listens anew."""
    running = await start_array(tmp_path)
    rpc = await connect(running)
    key = running.array.management_key
    try:
        lun = await rpc.call(
            "CreateLun", pb.CreateLunRequest(size_bytes=4 * 1024**2, initiators=[HOST_A]), key
        )
        await rpc.call("SetLatency", pb.SetLatencyRequest(lun=lun.id, seconds=30), key)
        waiting = asyncio.create_task(
            rpc.call(
                "Write",
                pb.ScsiRequest(initiator=HOST_A, lun=lun.id, lba=3, data=block(0x5A)),
                None,
            )
        )
        await asyncio.sleep(0.5)
        answer = await rpc.call("RestartArray", pb.RestartArrayRequest(), key)
        assert answer.generation == 1
        with pytest.raises(HostConnectFault):
            await asyncio.wait_for(waiting, 10)  # cut off, not left for the 30 s
        for _ in range(100):  # the server is listening again within moments
            try:
                await rpc.call("SetLatency", pb.SetLatencyRequest(lun=lun.id, seconds=0), key)
                break
            except HostConnectFault:
                await asyncio.sleep(0.1)
        reply = await rpc.call(
            "Read", pb.ScsiRequest(initiator=HOST_A, lun=lun.id, lba=3, blocks=1), None
        )
        assert reply.data == bytes(SECTOR)  # the write that was cut off never landed
        assert running.endpoint.endswith(f":{running.port}")
    finally:
        await rpc.close()
        await running.stop()


async def test_array_serves_health_and_reflection(tmp_path):
    running = await start_array(tmp_path)
    channel, _ = await open_channel(running.endpoint)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="vsim.v1.StorageArray"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = await asyncio.to_thread(reflected_services, running.endpoint)
        assert "vsim.v1.StorageArray" in services and "grpc.health.v1.Health" in services
    finally:
        await channel.close()
        await running.stop()


async def test_a_lun_made_through_vcenter_a_datastore_on_it_and_a_host_added_later(
    ray_cluster, tmp_path, login
):
    array = await start_array(tmp_path / "array")
    spec = prepare_array(array.array, ClusterSpec.default(2))
    running = await start_vcenter(
        tmp_path / "data",
        spec,
        ray_engines(),
        port=0,
        array=ArrayRef(array.endpoint, array.identity.thumbprint, array.array.management_key),
    )
    client = await login(running)
    try:
        lun = await client.create_array_lun(64 * 1024**2, lun_id=1)
        assert (lun.id, list(lun.hosts)) == (1, ["esxi-01", "esxi-02"])
        await client.run(await client.create_vmfs_datastore("vmfs-02", 1))
        assert (await client.array_luns())[1].datastore == "vmfs-02"

        thumbprint = (await client.wait(await client.add_host("esxi-03"))).error.properties[
            "thumbprint"
        ]
        await client.run(await client.add_host("esxi-03", thumbprint))
        datastores = {d.name: d for d in await client.datastores()}
        for name in ("vmfs-01", "vmfs-02", "nfs-01"):
            mounts = {m.host: m.accessible for m in datastores[name].mounts}
            assert mounts == {"esxi-01": True, "esxi-02": True, "esxi-03": True}, name
        assert array.array.report_luns(HOST_C) == [0, 1]  # mapped as it joined
        await client.run(
            await client.create_vm(
                "late-01", memory_mb=256, host="esxi-03", datastore="vmfs-02", disk_mb=8
            )
        )
        with pytest.raises(ResourceInUse, match="late-01"):
            await client.remove_datastore("vmfs-02")
    finally:
        await client.close()
        await running.stop()
        namespace = ray_namespace(running.core.uuid)
        for host in ("esxi-01", "esxi-02", "esxi-03"):
            try:
                ray.kill(ray.get_actor(host, namespace=namespace))
            except ValueError:
                pass
        await array.stop()
