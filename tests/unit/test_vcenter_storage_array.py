"""The storage array managed through vCenter (in-process engine and array): LUNs and
exports made, listed and masked by host; a host added later mapped and mounting the
datastores; removing a datastore (refused while VMs use it; the volume stays on the
LUN and is found again); a LUN or export mounted twice refused; administrators only."""

from __future__ import annotations

import logging

import pytest
from test_vcenter_datastores import cluster, listed, run  # noqa: F401 - the fixture
from vclab import host_call

from vsim.cluster.client import VCenterClient
from vsim.faults import (
    AlreadyExists,
    HostConnectFault,
    InvalidArgument,
    InvalidState,
    NoPermission,
    NotAuthenticated,
    NotFound,
    ResourceInUse,
    SSLVerifyFault,
    VimFault,
)
from vsim.iscsi import initiator_name
from vsim.passwords import hash_password
from vsim.storage.vmfs_format import SlotState
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.storage_array import StorageArrayManager

OK = common_pb2.TASK_STATE_SUCCESS
MIB = 1024**2
HOSTS = ["esxi-01", "esxi-02", "esxi-03"]


async def luns(client: VCenterClient) -> dict[int, pb.ArrayLun]:
    return {lun.id: lun for lun in await client.array_luns()}


async def add_host(client: VCenterClient, name: str) -> common_pb2.Task:
    """AddHost as a user does it: asked without a thumbprint (the host is provisioned
    and the task fails with its thumbprint), then again with that thumbprint."""
    first = await run(client, await client.add_host(name))
    assert first.error.name == "SSLVerifyFault", first
    return await run(client, await client.add_host(name, first.error.properties["thumbprint"]))


async def test_create_a_lun_then_a_vmfs_datastore_on_it(cluster):  # noqa: F811
    vc, array, _, client = cluster
    before = await luns(client)
    assert (before[0].datastore, before[0].hosts) == ("vmfs-01", HOSTS)

    made = await client.create_array_lun(64 * MIB, lun_id=1)
    assert (made.id, made.size_bytes, list(made.hosts), made.datastore) == (1, 64 * MIB, HOSTS, "")
    assert array.masking[1] == {initiator_name(h) for h in HOSTS}  # every host, by default

    assert (await run(client, await client.create_vmfs_datastore("vmfs-02", 1))).state == OK
    vmfs2 = (await listed(client))["vmfs-02"]
    assert (vmfs2.capacity_bytes, sorted(m.host for m in vmfs2.mounts)) == (64 * MIB, HOSTS)
    assert (await luns(client))[1].datastore == "vmfs-02"
    assert "StorageArrayLunCreatedEvent" in [e.type for e in await client.events(limit=10_000)]


async def test_lun_requests_the_array_or_vcenter_refuses_change_nothing(cluster):  # noqa: F811
    vc, array, _, client = cluster
    masking = {k: set(v) for k, v in array.masking.items()}
    for request, fault, match in [
        (pb.CreateArrayLunRequest(size_bytes=MIB, id=0), InvalidArgument, "LUN 0 exists"),
        (pb.CreateArrayLunRequest(size_bytes=MIB + 1), InvalidArgument, "multiple of 512"),
        (pb.CreateArrayLunRequest(size_bytes=MIB, id=256), InvalidArgument, "id"),
        (pb.CreateArrayLunRequest(size_bytes=MIB, hosts=["esxi-09"]), NotFound, "esxi-09"),
    ]:
        with pytest.raises(fault, match=match):
            await client.call("CreateArrayLun", request)
    for request, fault, match in [
        (pb.ArrayLunMappingRequest(lun=7, hosts=["esxi-01"]), NotFound, "no LUN 7"),
        (pb.ArrayLunMappingRequest(lun=0, hosts=["nobody"]), NotFound, "nobody"),
        (pb.ArrayLunMappingRequest(lun=0), InvalidArgument, "at least one host"),
    ]:
        with pytest.raises(fault, match=match):
            await client.call("MapArrayLun", request)
    assert array.masking == masking and sorted(array.luns) == [0]


async def test_map_and_unmap_a_lun_by_host_but_never_under_a_datastore(cluster):  # noqa: F811
    vc, array, _, client = cluster
    lun = await client.create_array_lun(MIB, hosts=["esxi-02"])
    assert list(lun.hosts) == ["esxi-02"]
    mapped = await client.map_array_lun(lun.id, ["esxi-03", "esxi-01"])
    assert list(mapped.hosts) == HOSTS
    unmapped = await client.unmap_array_lun(lun.id, ["esxi-02"])
    assert list(unmapped.hosts) == ["esxi-01", "esxi-03"]
    assert array.report_luns(initiator_name("esxi-02")) == [0]

    with pytest.raises(ResourceInUse, match="backs datastore vmfs-01.*esxi-01"):
        await client.unmap_array_lun(0, ["esxi-01"])
    assert initiator_name("esxi-01") in array.masking[0]
    # An initiator of no host of the inventory may go (a host removed long ago).
    array.map_lun(0, (initiator_name("old-host"),))
    left = await client.unmap_array_lun(0, ["old-host"])
    assert initiator_name("old-host") not in left.initiators


async def test_create_and_list_exports_with_their_options(cluster):  # noqa: F811
    vc, array, _, client = cluster
    made = await client.create_array_export("iso", read_only=True, root_squash=True)
    assert (made.read_only, made.async_writes, made.root_squash, list(made.clients)) == (
        True,
        False,
        True,
        ["*"],
    )
    assert not array.export("iso").options.rw and array.export("iso").options.root_squash
    exports = {e.name: e for e in await client.array_exports()}
    assert (exports["nfs-01"].datastore, exports["iso"].datastore) == ("nfs-01", "")
    with pytest.raises(InvalidArgument, match="exists"):
        await client.create_array_export("iso")
    with pytest.raises(InvalidArgument, match="export name"):
        await client.create_array_export("Bad/Name")


async def test_an_export_or_lun_already_a_datastore_is_not_mounted_again(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    with pytest.raises(AlreadyExists, match="already mounted as datastore nfs-01") as refused:
        await client.create_nas_datastore("nfs-again", "nfs-01")
    assert refused.value.properties == {"datastore": "nfs-01"}
    with pytest.raises(AlreadyExists, match="already datastore vmfs-01"):
        await client.create_vmfs_datastore("vmfs-again", 0)
    assert sorted(await listed(client)) == ["nfs-01", "vmfs-01"]
    # The host refuses it too: a second mount would take its heartbeat slot again.
    mount = hpb.MountDatastoreRequest(name="twice", type="vmfs", target=hpb.ArrayTarget(lun=0))
    with pytest.raises(
        AlreadyExists, match="LUN 0 is already mounted on esxi-01 as datastore vmfs-01"
    ):
        await host_call(engine, "esxi-01", "MountDatastore", mount)
    assert "twice" not in engine.running("esxi-01").storage.files


async def test_a_host_added_later_is_mapped_and_mounts_every_datastore(cluster):  # noqa: F811
    vc, array, engine, client = cluster
    assert initiator_name("esxi-04") not in array.masking[0]
    assert (await add_host(client, "esxi-04")).state == OK
    assert initiator_name("esxi-04") in array.masking[0]
    datastores = await listed(client)
    for name in ("vmfs-01", "nfs-01"):
        mounts = {m.host: m.accessible for m in datastores[name].mounts}
        assert mounts.get("esxi-04") is True, f"{name} is not mounted on esxi-04"
    late = await client.create_vm(
        "late", cpus=1, memory_mb=256, host="esxi-04", datastore="vmfs-01", disk_mb=8
    )
    assert (await run(client, late)).state == OK
    assert (await luns(client))[0].hosts == [*HOSTS, "esxi-04"]
    mapped = [
        e for e in await client.events(limit=10_000) if e.type == "StorageArrayLunMappedEvent"
    ]
    assert [(e.host, "vmfs-01" in e.message) for e in mapped] == [("esxi-04", True)]


async def test_a_reconnecting_host_the_lun_was_masked_from_is_mapped_again(cluster, caplog):  # noqa: F811
    """A host added before vCenter kept masking right: its next connect fixes it."""
    vc, array, engine, client = cluster
    await run(client, await client.remove_datastore("vmfs-01"))
    array.unmap_lun(0, (initiator_name("esxi-02"),))
    task = await client.create_vmfs_datastore("vmfs-01", 0)
    assert (await run(client, task)).state == OK  # mounted on the two hosts that see it
    assert "vmfs-01" not in engine.running("esxi-02").storage.files
    engine.crash("esxi-02")
    await engine.reboot("esxi-02")
    for _ in range(2):  # noticed gone, then reconnected (which maps and mounts)
        await vc.hosts.heartbeat_once()
    assert "vmfs-01" in engine.running("esxi-02").storage.files
    assert initiator_name("esxi-02") in array.masking[0]


class RefusingProvider:
    """A storage provider the array turns away: every call raises `fault`."""

    def __init__(self, fault: VimFault) -> None:
        self.fault = fault
        self.calls: list[str] = []

    async def call(self, method: str, request: object) -> object:
        self.calls.append(method)
        raise self.fault

    async def close(self) -> None:
        pass


async def test_a_host_connects_though_the_array_refuses_to_map_it(cluster, caplog):  # noqa: F811
    """Mapping the datastores' LUNs to a joining host only logs the array's fault: the
    host connects and mounts every datastore that does not need the mapping."""
    vc, array, engine, client = cluster
    refusing = RefusingProvider(NoPermission("the management key is not the array's"))
    vc.storage_array.provider = refusing
    with caplog.at_level(logging.WARNING, logger="vsim.vcenter.storage_array"):
        assert (await add_host(client, "esxi-04")).state == OK
    assert "GetArray" in refusing.calls
    hosts = {h.name: h for h in await client.hosts()}
    assert hosts["esxi-04"].connection_state == pb.CONNECTION_STATE_CONNECTED
    assert initiator_name("esxi-04") not in array.masking[0]
    # The datastores the array need not be asked for are mounted all the same.
    mounts = {n: {m.host for m in d.mounts} for n, d in (await listed(client)).items()}
    assert ("esxi-04" in mounts["nfs-01"], "esxi-04" in mounts["vmfs-01"]) == (True, False)
    warnings = [r.getMessage() for r in caplog.records if r.name == "vsim.vcenter.storage_array"]
    assert warnings == [
        "cannot map the datastores' LUNs to esxi-04: NoPermission: the management key is not "
        "the array's"
    ]
    for fault in (
        NotAuthenticated("session expired"),
        SSLVerifyFault("thumbprint changed", thumbprint="AA:BB"),
        HostConnectFault("cannot reach the array"),
    ):
        vc.storage_array.provider = RefusingProvider(fault)
        with caplog.at_level(logging.WARNING, logger="vsim.vcenter.storage_array"):
            assert await vc.storage_array.map_datastore_luns("esxi-04") is None
        assert caplog.records[-1].getMessage().endswith(str(fault))


async def test_a_failed_mount_is_logged_once_with_its_reason(cluster, caplog):  # noqa: F811
    vc, array, engine, client = cluster
    vc.storage_array.provider = None  # vCenter cannot map: the mount fails
    array.unmap_lun(0, (initiator_name("esxi-02"),))
    engine.crash("esxi-02")
    await engine.reboot("esxi-02")
    with caplog.at_level(logging.WARNING, logger="vsim.vcenter.datastores"):
        for _ in range(2):
            await vc.hosts.heartbeat_once()
    lines = [r.getMessage() for r in caplog.records if "vmfs-01" in r.getMessage()]
    assert lines, "the failed mount was not logged"
    assert all(line.count("cannot mount vmfs-01 on esxi-02") == 1 for line in lines), lines
    assert "LOGICAL UNIT NOT SUPPORTED" in lines[0]


async def test_remove_a_datastore_refused_while_vms_use_it(cluster):  # noqa: F811
    vc, array, engine, client = cluster
    db = await client.create_vm(
        "db", cpus=1, memory_mb=256, host="esxi-01", datastore="vmfs-01", disk_mb=8
    )
    assert (await run(client, db)).state == OK
    with pytest.raises(ResourceInUse, match="db") as refused:
        await client.remove_datastore("vmfs-01")
    assert refused.value.properties == {"vms": "db"}
    assert all("vmfs-01" in engine.running(h).storage.files for h in HOSTS)
    with pytest.raises(NotFound):
        await client.remove_datastore("nope")

    assert (await run(client, await client.destroy_vm("db"))).state == OK
    slot = engine.running("esxi-01").storage.vmfs["vmfs-01"].slot
    done = await run(client, await client.remove_datastore("vmfs-01"))
    assert done.state == OK, done.error.message
    assert "vmfs-01" not in await listed(client)
    assert all("vmfs-01" not in engine.running(h).storage.files for h in HOSTS)
    assert (await luns(client))[0].datastore == ""
    # The heartbeat slot is given back, not left to go stale.
    from vsim.storage.vmfs_format import HeartbeatSlot, Superblock

    lun = array.luns[0]
    sb = Superblock.unpack(lun.read("check", 0, 1))
    assert (
        HeartbeatSlot.unpack(lun.read("check", sb.heartbeat_lba(slot), 1)).state == SlotState.FREE
    )


async def test_a_removed_vmfs_datastore_is_found_again_with_its_files(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    files = engine.running("esxi-01").storage.files["vmfs-01"]
    await files.mkdir("kept")
    uuid_before = vc.inventory.datastore("vmfs-01").uuid
    await run(client, await client.remove_datastore("vmfs-01"))
    back = await client.create_vmfs_datastore("vmfs-back", 0, lock_mode="ats-only")
    assert (await run(client, back)).state == OK
    again = engine.running("esxi-02").storage.files["vmfs-back"]
    assert "kept" in {f.path for f in await again.listdir("")}
    record = vc.inventory.datastore("vmfs-back")
    assert (record.uuid, record.lock_mode) == (uuid_before, "ats+scsi")  # the volume's own
    events = await client.events(limit=10_000)
    created = [e.message for e in events if e.type == "VmfsDatastoreCreatedEvent"]
    assert "existing VMFS volume vmfs-01" in created[-1]


async def test_a_removed_nfs_datastore_can_be_mounted_again(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    await run(client, await client.remove_datastore("nfs-01"))
    assert all("nfs-01" not in engine.running(h).storage.files for h in HOSTS)
    back = await client.create_nas_datastore("nfs-back", "nfs-01")
    assert (await run(client, back)).state == OK


async def test_a_host_away_during_the_removal_unmounts_it_when_back(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    engine.drop_connections("esxi-03")  # vCenter loses its line to the host
    done = await run(client, await client.remove_datastore("nfs-01"))
    assert done.state == OK
    assert "nfs-01" in engine.running("esxi-03").storage.files
    await vc.hosts.heartbeat_once()  # it answers again: re-attached
    assert "nfs-01" not in engine.running("esxi-03").storage.files


async def test_array_management_is_for_administrators_only(cluster):  # noqa: F811
    vc, array, _, _ = cluster
    vc.inventory.set_account("reader@vsphere.local", hash_password("reader-password"), "ReadOnly")
    reader = VCenterClient.in_process(vc.table)
    await reader.login("reader@vsphere.local", "reader-password")
    for call in (
        lambda: reader.create_array_lun(MIB),
        reader.array_luns,
        lambda: reader.map_array_lun(0, ["esxi-01"]),
        lambda: reader.create_array_export("iso"),
    ):
        with pytest.raises(NoPermission, match="administrators only"):
            await call()
    assert sorted(array.luns) == [0] and "iso" not in array.exports
    await reader.datastores()  # other calls are not affected


async def test_without_the_management_key_vcenter_says_so(tmp_path):
    manager = StorageArrayManager(None, None, None)
    with pytest.raises(InvalidState, match="no management access"):
        await manager.list_luns()
