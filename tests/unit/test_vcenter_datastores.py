"""Datastores through the vCenter core on the in-process engine and array: the spec's
VMFS and NFS datastores, creating more, refusals without side effects, and hosts
mounting them again after a reboot."""

from __future__ import annotations

import asyncio
import random

import pytest
from vclab import rpc

from vsim.clock import WallClock
from vsim.cluster.array_setup import prepare_array
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
    array = StorageArray(tmp_path / "array")
    spec = prepare_array(array, ClusterSpec.default(3))
    engine = InProcessEngine(clock, array)
    vc = VCenter(
        tmp_path / "vc",
        Inventory(tmp_path / "vc" / INVENTORY_FILE),
        engine,
        clock,
        random.Random(3),
        array=ArrayRef("", ""),
        storage_provider=LocalStorageProvider(array),
    )
    await vc.start(spec)
    token = (
        await vc.Login(
            pb.LoginRequest(user_name=ADMINISTRATOR, password=vc.sessions.initial_password()), None
        )
    ).session
    session = vc.table.authenticate(token, "ListDatastores")
    yield vc, array, engine, session
    await vc.stop()
    array.close()


async def listed(vc, session) -> dict[str, pb.Datastore]:
    reply = await rpc(vc).ListDatastores(pb.ListDatastoresRequest(), session)
    return {d.name: d for d in reply.datastores}


async def run(vc, task) -> common_pb2.Task:
    return await vc.tasks.wait(task.id, 10)


async def test_the_spec_datastores_are_mounted_on_every_host(cluster):
    vc, array, _, session = cluster
    datastores = await listed(vc, session)
    vmfs, nfs = datastores["vmfs-01"], datastores["nfs-01"]
    assert (vmfs.type, vmfs.lock_mode, vmfs.capacity_bytes) == ("vmfs", "ats+scsi", 4 * 1024**3)
    assert 0 < vmfs.free_bytes < vmfs.capacity_bytes
    assert sorted((m.host, m.accessible) for m in vmfs.mounts) == [(h, True) for h in HOSTS]
    assert len({m.heartbeat_slot for m in vmfs.mounts}) == 3
    assert nfs.type == "nfs" and nfs.capacity_bytes > 0
    assert sorted(m.host for m in nfs.mounts) == HOSTS
    assert array.lun_named("vmfs-01") == vmfs.lun


async def test_create_vmfs_on_a_masked_lun_and_refusals(cluster):
    vc, array, _, session = cluster
    lun = array.create_lun(64 * 1024**2, tuple(initiator_name(h) for h in HOSTS)).id
    request = pb.CreateVmfsDatastoreRequest(name="vmfs-02", lun=lun, lock_mode="ats-only")
    done = await run(vc, rpc(vc).CreateVmfsDatastore(request, session))
    assert done.state == common_pb2.TASK_STATE_SUCCESS
    vmfs2 = (await listed(vc, session))["vmfs-02"]
    assert (vmfs2.lock_mode, vmfs2.capacity_bytes, len(vmfs2.mounts)) == (
        "ats-only",
        64 * 1024**2,
        3,
    )

    before = (await listed(vc, session)).keys(), len(vc.tasks.recent(1000))
    for request, fault in [
        (pb.CreateVmfsDatastoreRequest(name="vmfs-02", lun=lun), DuplicateName),
        (pb.CreateVmfsDatastoreRequest(name="Bad Name", lun=lun), InvalidArgument),
        (pb.CreateVmfsDatastoreRequest(name="vmfs-03", lun=-1), InvalidArgument),
        (pb.CreateVmfsDatastoreRequest(name="vmfs-03", lun=lun, lock_mode="nope"), InvalidArgument),
    ]:
        with pytest.raises(fault):
            rpc(vc).CreateVmfsDatastore(request, session)
    assert ((await listed(vc, session)).keys(), len(vc.tasks.recent(1000))) == before

    in_use = pb.CreateVmfsDatastoreRequest(name="vmfs-04", lun=lun)  # holds vmfs-02 already
    with pytest.raises(AlreadyExists, match="already datastore vmfs-02"):
        rpc(vc).CreateVmfsDatastore(in_use, session)

    hidden = array.create_lun(64 * 1024**2, ()).id  # masked from every host
    done = await run(
        vc,
        rpc(vc).CreateVmfsDatastore(
            pb.CreateVmfsDatastoreRequest(name="vmfs-03", lun=hidden), session
        ),
    )
    assert done.state == common_pb2.TASK_STATE_ERROR and done.error.name == "CannotAccessFile"
    assert "vmfs-03" not in await listed(vc, session)


async def test_nas_datastores_need_an_export(cluster):
    vc, array, _, session = cluster
    done = await run(
        vc,
        rpc(vc).CreateNasDatastore(
            pb.CreateNasDatastoreRequest(name="nfs-02", export="missing"), session
        ),
    )
    assert done.state == common_pb2.TASK_STATE_ERROR and done.error.name == "CannotAccessFile"
    array.create_export("squashed", ExportOptions(root_squash=True))
    done = await run(
        vc,
        rpc(vc).CreateNasDatastore(
            pb.CreateNasDatastoreRequest(name="nfs-02", export="squashed"), session
        ),
    )
    assert done.state == common_pb2.TASK_STATE_SUCCESS  # mounts, as on ESXi


async def test_a_rebooted_host_mounts_its_datastores_again(cluster):
    vc, _, engine, session = cluster
    engine.crash("esxi-02")
    await vc.hosts.heartbeat_once()
    mounts = {d: sorted(m.host for m in ds.mounts) for d, ds in (await listed(vc, session)).items()}
    assert mounts == {"nfs-01": ["esxi-01", "esxi-03"], "vmfs-01": ["esxi-01", "esxi-03"]}
    await engine.reboot("esxi-02")
    await vc.hosts.heartbeat_once()
    datastores = await listed(vc, session)
    assert sorted(m.host for m in datastores["vmfs-01"].mounts) == HOSTS
    assert all(m.accessible for m in datastores["vmfs-01"].mounts)


async def test_lock_owner_and_breaking_a_stale_lock(cluster):
    vc, array, engine, session = cluster
    files = engine.running("esxi-01").storage.files["vmfs-01"]
    await files.mkdir("vm-001")
    await files.create("vm-001/vm-001-flat.vmdk")
    await files.open("vm-001/vm-001-flat.vmdk")  # held exclusive until esxi-01 dies
    request = pb.LockRequest(datastore="vmfs-01", path="vm-001/vm-001-flat.vmdk")
    info = await rpc(vc).QueryLockOwner(request, session)
    assert (info.mode, [h.host for h in info.holders]) == ("EXCLUSIVE", ["esxi-01"])
    assert info.holders[0].live and info.holders[0].heartbeat_slot >= 0
    with pytest.raises(FileLocked):
        await vc.BreakStaleLock(request, session)

    engine.crash("esxi-01")  # its heartbeats stop
    crashed = vc.clock.now()
    while True:
        try:
            broken = await vc.BreakStaleLock(request, session)
            break
        except FileLocked:
            assert vc.clock.now() - crashed < 60, "never broken"
            await asyncio.sleep(0.02)
    assert vc.clock.now() - crashed >= 16 - 3  # its last heartbeat was at most 3 s before
    assert broken.mode == "EXCLUSIVE" and broken.holders[0].host == "esxi-01" and broken.broken
    assert (await rpc(vc).QueryLockOwner(request, session)).mode == "FREE"
    assert "StaleLockBrokenEvent" in [e.type for e in vc.events.after(0, 10_000)]

    missing = pb.LockRequest(datastore="nope", path="x")
    with pytest.raises(NotFound):
        await rpc(vc).QueryLockOwner(missing, session)


async def test_an_nfs_lock_file_names_its_owner(cluster):
    vc, array, engine, session = cluster
    export = array.export("nfs-01")
    from vsim.storage.nfs_export import Caller

    _, attributes = export.create(Caller("setup"), "", "vm-002.vmdk")
    await engine.running("esxi-02").storage.nfs["nfs-01"].lock("", attributes.fileid, "vm-002.vmdk")
    info = await rpc(vc).QueryLockOwner(
        pb.LockRequest(datastore="nfs-01", path="vm-002.vmdk"), session
    )
    assert (info.mode, [h.host for h in info.holders]) == ("EXCLUSIVE", ["esxi-02"])
    assert info.holders[0].live


async def test_an_export_a_host_cannot_reach_shows_as_inaccessible(cluster):
    vc, _, engine, session = cluster

    async def path_down():
        raise ConnectionError("the storage path is down")

    engine.running("esxi-03").storage.nfs["nfs-01"].client.fsstat = path_down
    mounts = {m.host: m.accessible for m in (await listed(vc, session))["nfs-01"].mounts}
    assert mounts == {"esxi-01": True, "esxi-02": True, "esxi-03": False}


async def test_storage_io_control_threshold_reaches_every_host_and_later_mounts(cluster):
    vc, _, engine, session = cluster
    request = pb.ConfigureStorageIoControlRequest(datastore="vmfs-01", threshold_ms=15)
    datastore = await rpc(vc).ConfigureStorageIoControl(request, session)
    assert datastore.sioc_threshold_ms == 15
    for host in HOSTS:
        io = {d.datastore: d for d in engine.running(host).GetHostStats(None, None).datastores}
        assert io["vmfs-01"].threshold_ms == 15
        assert io["nfs-01"].threshold_ms == 30  # SIOC's default
    assert (await listed(vc, session))["vmfs-01"].sioc_threshold_ms == 15
    assert vc.inventory.datastore("vmfs-01").sioc_threshold_ms == 15
    for bad in (4.9, 101.0):
        with pytest.raises(InvalidArgument, match="5-100 ms"):
            await rpc(vc).ConfigureStorageIoControl(
                pb.ConfigureStorageIoControlRequest(datastore="vmfs-01", threshold_ms=bad), session
            )
    with pytest.raises(NotFound):
        await rpc(vc).ConfigureStorageIoControl(
            pb.ConfigureStorageIoControlRequest(datastore="nope", threshold_ms=20), session
        )
    assert vc.inventory.datastore("vmfs-01").sioc_threshold_ms == 15
    # A host that reboots mounts the datastore again with the threshold.
    engine.crash("esxi-02")
    await engine.reboot("esxi-02")
    for _ in range(2):  # noticed gone, then reconnected (which mounts what it lacks)
        await vc.hosts.heartbeat_once()
    io = {d.datastore: d for d in engine.running("esxi-02").GetHostStats(None, None).datastores}
    assert io["vmfs-01"].threshold_ms == 15


async def test_a_host_that_missed_a_sioc_change_gets_it_when_it_is_back(cluster):
    vc, _, engine, session = cluster

    def threshold(host: str) -> float:
        stats = engine.running(host).GetHostStats(None, None)
        return {d.datastore: d.threshold_ms for d in stats.datastores}["vmfs-01"]

    vc.hosts._mark_not_responding("esxi-03")
    request = pb.ConfigureStorageIoControlRequest(datastore="vmfs-01", threshold_ms=20)
    await rpc(vc).ConfigureStorageIoControl(request, session)
    assert (threshold("esxi-01"), threshold("esxi-03")) == (20, 30)
    await vc.hosts.heartbeat_once()  # it answers again: re-attached
    assert threshold("esxi-03") == 20
    # A refused mount (already mounted) changes nothing, threshold included.
    hostd = engine.running("esxi-01")
    mount = hpb.MountDatastoreRequest(name="vmfs-01", type="vmfs", sioc_threshold_ms=90)
    with pytest.raises(VimFault):
        await hostd.MountDatastore(mount, "root")
    assert threshold("esxi-01") == 20
