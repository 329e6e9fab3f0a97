"""Datastores through the vCenter core on the in-process engine and array: the spec's
VMFS and NFS datastores, creating more, refusals without side effects, and hosts
mounting them again after a reboot."""

from __future__ import annotations

import asyncio

import pytest
from vclab import host_call

from vsim.clock import WallClock
from vsim.cluster.array_setup import prepare_array
from vsim.cluster.client import VCenterClient
from vsim.cluster.inprocess import InProcessEngine
from vsim.faults import (
    AlreadyExists,
    DuplicateName,
    FileLocked,
    InvalidArgument,
    NotFound,
    VimFault,
)
from vsim.iscsi import initiator_name
from vsim.runtime import Runtime
from vsim.spec import ClusterSpec
from vsim.storage.array import StorageArray
from vsim.storage.nfs_export import ExportOptions
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.service import INVENTORY_FILE, VCenter
from vsim.vcenter.sessions import ADMINISTRATOR
from vsim.vcenter.storage_provider import LocalStorageProvider

HOSTS = ["esxi-01", "esxi-02", "esxi-03"]
SPEED = 10.0


@pytest.fixture
async def cluster(tmp_path, fast_scrypt):
    # Reservation backoffs sleep, so real time must move; 10x makes 16 s pass in 1.6 s.
    clock = WallClock(speed=SPEED)
    runtime = Runtime.simulated(clock, 3)
    array = StorageArray(tmp_path / "array", runtime.child("array"))
    spec = prepare_array(array, ClusterSpec.default(3))
    engine = InProcessEngine(runtime.child("hosts"), array)
    vc = VCenter(
        tmp_path / "vc",
        Inventory(tmp_path / "vc" / INVENTORY_FILE),
        engine,
        runtime.child("vcenter"),
        array=ArrayRef("", ""),
        storage_provider=LocalStorageProvider(array),
    )
    await vc.start(spec)
    client = VCenterClient.in_process(vc.table)
    await client.login(ADMINISTRATOR, vc.sessions.initial_password())
    yield vc, array, engine, client
    await vc.stop()
    array.close()


async def listed(client: VCenterClient) -> dict[str, pb.Datastore]:
    return {d.name: d for d in await client.datastores()}


async def run(client: VCenterClient, task: common_pb2.Task) -> common_pb2.Task:
    # WaitForTask's timeout is on vCenter's clock: 10 real seconds at this speed.
    return await client.wait(task, timeout=10 * SPEED)


async def host_stats(engine: InProcessEngine, host: str) -> hpb.HostStats:
    return await host_call(engine, host, "GetHostStats", hpb.GetHostStatsRequest())


async def test_the_spec_datastores_are_mounted_on_every_host(cluster):
    vc, array, _, client = cluster
    datastores = await listed(client)
    vmfs, nfs = datastores["vmfs-01"], datastores["nfs-01"]
    assert (vmfs.type, vmfs.lock_mode, vmfs.capacity_bytes) == ("vmfs", "ats+scsi", 4 * 1024**3)
    assert 0 < vmfs.free_bytes < vmfs.capacity_bytes
    assert sorted((m.host, m.accessible) for m in vmfs.mounts) == [(h, True) for h in HOSTS]
    assert len({m.heartbeat_slot for m in vmfs.mounts}) == 3
    assert nfs.type == "nfs" and nfs.capacity_bytes > 0
    assert sorted(m.host for m in nfs.mounts) == HOSTS
    assert array.lun_named("vmfs-01") == vmfs.lun


async def test_create_vmfs_on_a_masked_lun_and_refusals(cluster):
    vc, array, _, client = cluster
    lun = array.create_lun(64 * 1024**2, tuple(initiator_name(h) for h in HOSTS)).id
    done = await run(client, await client.create_vmfs_datastore("vmfs-02", lun, "ats-only"))
    assert done.state == common_pb2.TASK_STATE_SUCCESS
    vmfs2 = (await listed(client))["vmfs-02"]
    assert (vmfs2.lock_mode, vmfs2.capacity_bytes, len(vmfs2.mounts)) == (
        "ats-only",
        64 * 1024**2,
        3,
    )

    before = (await listed(client)).keys(), len(await client.tasks(1000))
    for request, fault in [
        (pb.CreateVmfsDatastoreRequest(name="vmfs-02", lun=lun), DuplicateName),
        (pb.CreateVmfsDatastoreRequest(name="Bad Name", lun=lun), InvalidArgument),
        (pb.CreateVmfsDatastoreRequest(name="vmfs-03", lun=-1), InvalidArgument),
        (pb.CreateVmfsDatastoreRequest(name="vmfs-03", lun=lun, lock_mode="nope"), InvalidArgument),
    ]:
        with pytest.raises(fault):
            await client.call("CreateVmfsDatastore", request)
    assert ((await listed(client)).keys(), len(await client.tasks(1000))) == before

    with pytest.raises(AlreadyExists, match="already datastore vmfs-02"):
        await client.create_vmfs_datastore("vmfs-04", lun)  # holds vmfs-02 already

    hidden = array.create_lun(64 * 1024**2, ()).id  # masked from every host
    done = await run(client, await client.create_vmfs_datastore("vmfs-03", hidden))
    assert done.state == common_pb2.TASK_STATE_ERROR and done.error.name == "CannotAccessFile"
    assert "vmfs-03" not in await listed(client)


async def test_nas_datastores_need_an_export(cluster):
    vc, array, _, client = cluster
    done = await run(client, await client.create_nas_datastore("nfs-02", "missing"))
    assert done.state == common_pb2.TASK_STATE_ERROR and done.error.name == "CannotAccessFile"
    array.create_export("squashed", ExportOptions(root_squash=True))
    done = await run(client, await client.create_nas_datastore("nfs-02", "squashed"))
    assert done.state == common_pb2.TASK_STATE_SUCCESS  # mounts, as on ESXi


async def test_a_rebooted_host_mounts_its_datastores_again(cluster):
    vc, _, engine, client = cluster
    engine.crash("esxi-02")
    await vc.hosts.heartbeat_once()
    mounts = {d: sorted(m.host for m in ds.mounts) for d, ds in (await listed(client)).items()}
    assert mounts == {"nfs-01": ["esxi-01", "esxi-03"], "vmfs-01": ["esxi-01", "esxi-03"]}
    await engine.reboot("esxi-02")
    await vc.hosts.heartbeat_once()
    datastores = await listed(client)
    assert sorted(m.host for m in datastores["vmfs-01"].mounts) == HOSTS
    assert all(m.accessible for m in datastores["vmfs-01"].mounts)


async def test_lock_owner_and_breaking_a_stale_lock(cluster):
    vc, array, engine, client = cluster
    files = engine.running("esxi-01").storage.files["vmfs-01"]
    await files.mkdir("vm-001")
    await files.create("vm-001/vm-001-flat.vmdk")
    await files.open("vm-001/vm-001-flat.vmdk")  # held exclusive until esxi-01 dies
    path = "vm-001/vm-001-flat.vmdk"
    info = await client.lock_owner("vmfs-01", path)
    assert (info.mode, [h.host for h in info.holders]) == ("EXCLUSIVE", ["esxi-01"])
    assert info.holders[0].live and info.holders[0].heartbeat_slot >= 0
    with pytest.raises(FileLocked):
        await client.break_stale_lock("vmfs-01", path)

    engine.crash("esxi-01")  # its heartbeats stop
    crashed = vc.clock.now()
    while True:
        try:
            broken = await client.break_stale_lock("vmfs-01", path)
            break
        except FileLocked:
            assert vc.clock.now() - crashed < 60, "never broken"
            await asyncio.sleep(0.02)
    assert vc.clock.now() - crashed >= 16 - 3  # its last heartbeat was at most 3 s before
    assert broken.mode == "EXCLUSIVE" and broken.holders[0].host == "esxi-01" and broken.broken
    assert (await client.lock_owner("vmfs-01", path)).mode == "FREE"
    assert "StaleLockBrokenEvent" in [e.type for e in await client.events(limit=10_000)]

    with pytest.raises(NotFound):
        await client.lock_owner("nope", "x")


async def test_an_nfs_lock_file_names_its_owner(cluster):
    vc, array, engine, client = cluster
    export = array.export("nfs-01")
    from vsim.storage.nfs_export import Caller

    _, attributes = export.create(Caller("setup"), "", "vm-002.vmdk")
    await engine.running("esxi-02").storage.nfs["nfs-01"].lock("", attributes.fileid, "vm-002.vmdk")
    info = await client.lock_owner("nfs-01", "vm-002.vmdk")
    assert (info.mode, [h.host for h in info.holders]) == ("EXCLUSIVE", ["esxi-02"])
    assert info.holders[0].live


async def test_an_export_a_host_cannot_reach_shows_as_inaccessible(cluster):
    vc, _, engine, client = cluster

    async def path_down():
        raise ConnectionError("the storage path is down")

    engine.running("esxi-03").storage.nfs["nfs-01"].client.fsstat = path_down
    mounts = {m.host: m.accessible for m in (await listed(client))["nfs-01"].mounts}
    assert mounts == {"esxi-01": True, "esxi-02": True, "esxi-03": False}


async def test_storage_io_control_threshold_reaches_every_host_and_later_mounts(cluster):
    vc, _, engine, client = cluster
    datastore = await client.configure_storage_io_control("vmfs-01", 15)
    assert datastore.sioc_threshold_ms == 15
    for host in HOSTS:
        io = {d.datastore: d for d in (await host_stats(engine, host)).datastores}
        assert io["vmfs-01"].threshold_ms == 15
        assert io["nfs-01"].threshold_ms == 30  # SIOC's default
    assert (await listed(client))["vmfs-01"].sioc_threshold_ms == 15
    assert vc.inventory.datastore("vmfs-01").sioc_threshold_ms == 15
    for bad in (4.9, 101.0):
        with pytest.raises(InvalidArgument, match="5-100 ms"):
            await client.configure_storage_io_control("vmfs-01", bad)
    with pytest.raises(NotFound):
        await client.configure_storage_io_control("nope", 20)
    assert (await listed(client))["vmfs-01"].sioc_threshold_ms == 15
    # A host that reboots mounts the datastore again with the threshold.
    engine.crash("esxi-02")
    await engine.reboot("esxi-02")
    for _ in range(2):  # noticed gone, then reconnected (which mounts what it lacks)
        await vc.hosts.heartbeat_once()
    io = {d.datastore: d for d in (await host_stats(engine, "esxi-02")).datastores}
    assert io["vmfs-01"].threshold_ms == 15


async def test_a_host_that_missed_a_sioc_change_gets_it_when_it_is_back(cluster):
    vc, _, engine, client = cluster

    async def threshold(host: str) -> float:
        stats = await host_stats(engine, host)
        return {d.datastore: d.threshold_ms for d in stats.datastores}["vmfs-01"]

    engine.drop_connections("esxi-03")  # vCenter loses its line to the host
    await client.configure_storage_io_control("vmfs-01", 20)
    assert (await threshold("esxi-01"), await threshold("esxi-03")) == (20, 30)
    await vc.hosts.heartbeat_once()  # it answers again: re-attached
    assert await threshold("esxi-03") == 20
    # A refused mount (already mounted) changes nothing, threshold included.
    mount = hpb.MountDatastoreRequest(name="vmfs-01", type="vmfs", sioc_threshold_ms=90)
    with pytest.raises(VimFault):
        await host_call(engine, "esxi-01", "MountDatastore", mount)
    assert await threshold("esxi-01") == 20
