"""VMs with disks through the vCenter core on the in-process engine and array: files
on the datastore, exclusive disk locks at power-on, guest writes that survive a host
crash, linked clones that never write their base, the lock hand-off, root_squash."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace

import pytest
from test_vcenter_datastores import cluster, run  # noqa: F401 - the fixture
from vclab import host_call

from vsim.cluster.client import VCenterClient
from vsim.faults import CannotCreateFile, FileLocked, FileNotFound, InvalidArgument, InvalidState
from vsim.host.storage.vmdk import open_disk
from vsim.storage.nfs_export import ExportOptions
from vsim.storage.vmfs_format import LockMode
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb

OK = common_pb2.TASK_STATE_SUCCESS


async def make_vm(
    client: VCenterClient, name, host="esxi-01", datastore="vmfs-01", iops=50
) -> common_pb2.Task:
    task = await client.create_vm(
        name,
        cpus=1,
        memory_mb=256,
        host=host,
        datastore=datastore,
        disk_mb=8,
        guest_write_iops=iops,
    )
    return await run(client, task)


async def connection_state(client: VCenterClient, host: str) -> int:
    return {h.name: h.connection_state for h in await client.hosts()}[host]


def copy_of(vm: pb.Vm) -> hpb.RegisterVmRequest:
    """vm registered again (files as they are), as vMotion's destination would."""
    return hpb.RegisterVmRequest(
        vm=hpb.HostVm(
            name=vm.name,
            uuid=vm.uuid,
            cpus=vm.cpus,
            memory_mb=vm.memory_mb,
            datastore=vm.datastore,
            disks=list(vm.disks),
        )
    )


async def acked(client: VCenterClient, name, at_least: int) -> int:
    for _ in range(200):
        vm = await client.vm(name)
        if vm.guest_writes_acked >= at_least:
            return vm.guest_writes_acked
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}'s guest did not reach {at_least} writes")


@pytest.mark.parametrize("datastore", ["vmfs-01", "nfs-01"])
async def test_vm_files_locks_and_guest_writes(cluster, datastore):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "vm-a", datastore=datastore)).state == OK
    files = engine.running("esxi-02").storage.files[datastore]
    names = {f.path for f in await files.listdir("vm-a")}
    assert names == {"vm-a/vm-a.vmx", "vm-a/vm-a.vmdk", "vm-a/vm-a-flat.vmdk"}

    assert (await run(client, await client.power_on("vm-a"))).state == OK
    # Another host cannot open the running VM's disk.
    with pytest.raises(FileLocked):
        await open_disk(files, "vm-a/vm-a.vmdk", LockMode.READ_ONLY)
    seq = await acked(client, "vm-a", 10)
    assert (await run(client, await client.power_off("vm-a"))).state == OK
    report = await client.verify_disk("vm-a", seq)
    assert report.corrupt == 0 and report.missing == 0 and report.highest_seq >= seq
    # Released at power-off: another host opens it now.
    disk = await open_disk(files, "vm-a/vm-a.vmdk", LockMode.EXCLUSIVE)
    await disk.close()

    assert (await run(client, await client.destroy_vm("vm-a"))).state == OK
    assert not [f for f in await files.listdir("") if f.path == "vm-a"]


async def test_guest_writes_acknowledged_before_a_host_crash_are_intact(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "vm-c", iops=100)).state == OK
    assert (await run(client, await client.power_on("vm-c"))).state == OK
    seq = await acked(client, "vm-c", 300)  # the 256-block area wrapped around
    engine.crash("esxi-01")

    # Another host reads the disk once the dead host's lock has gone stale (16 s).
    refused = 0
    for _ in range(400):
        try:
            report = await client.verify_disk("vm-c", seq)
            break
        except FileLocked:
            refused += 1
            await asyncio.sleep(0.05)
    else:
        raise AssertionError("the dead host's disk lock never went stale")
    assert refused > 0  # not before the timeout
    assert report.missing == 0 and report.corrupt == 0
    assert report.highest_seq >= seq and report.written == report.blocks
    assert report.host != "esxi-01"


@pytest.mark.parametrize("datastore", ["vmfs-01", "nfs-01"])
async def test_a_rebooted_host_mounts_its_datastores_before_registering_its_vms(
    cluster,  # noqa: F811
    datastore,
):
    """A reboot loses the mounts and the VMs: reconnecting mounts the datastores
    first, so the VMs, whose files live there, can be registered again (powered off)."""
    vc, _, engine, client = cluster
    assert (await make_vm(client, "vm-r", host="esxi-02", datastore=datastore)).state == OK
    assert (await run(client, await client.power_on("vm-r"))).state == OK
    engine.crash("esxi-02")
    await vc.hosts.heartbeat_once()
    assert await connection_state(client, "esxi-02") == pb.CONNECTION_STATE_NOT_RESPONDING
    await engine.reboot("esxi-02")
    await vc.hosts.heartbeat_once()
    assert await connection_state(client, "esxi-02") == pb.CONNECTION_STATE_CONNECTED
    listed = await host_call(engine, "esxi-02", "ListVms", hpb.ListHostVmsRequest())
    assert [(v.name, v.powered_on) for v in listed.vms] == [("vm-r", False)]
    vm = await client.vm("vm-r")
    assert vm.power_state == pb.POWER_STATE_POWERED_OFF


async def test_a_vm_a_rebooted_host_cannot_reach_is_registered_once_it_can(cluster):  # noqa: F811
    """A VM whose datastore a reconnecting host cannot mount does not keep the host
    disconnected; it is registered on a later heartbeat, once the mount works."""
    vc, array, engine, client = cluster
    assert (await make_vm(client, "vm-i", host="esxi-02", datastore="nfs-01")).state == OK
    export = array.exports["nfs-01"]
    allowed = export.options
    engine.crash("esxi-02")
    await vc.hosts.heartbeat_once()
    export.options = replace(allowed, clients=("iqn.1998-01.com.vmware:nobody",))
    await engine.reboot("esxi-02")
    await vc.hosts.heartbeat_once()
    assert await connection_state(client, "esxi-02") == pb.CONNECTION_STATE_CONNECTED

    async def on_host() -> list[str]:
        listed = await host_call(engine, "esxi-02", "ListVms", hpb.ListHostVmsRequest())
        return [v.name for v in listed.vms]

    assert await on_host() == []
    export.options = allowed
    await vc.hosts.heartbeat_once()
    assert await on_host() == ["vm-i"]
    assert (await run(client, await client.power_on("vm-i"))).state == OK


async def test_linked_clones_share_a_base_they_never_write(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "base", iops=100)).state == OK
    assert (await run(client, await client.power_on("base"))).state == OK
    await acked(client, "base", 20)
    assert (await run(client, await client.power_off("base"))).state == OK
    files = engine.running("esxi-03").storage.files["vmfs-01"]
    disk = await open_disk(files, "base/base.vmdk", LockMode.READ_ONLY)
    before = await disk.read(0, 2048)
    await disk.close()

    clone = await client.linked_clone("base", "clone-1", host="esxi-02")
    assert (await run(client, clone)).state == OK
    source = await client.vm("base")
    assert [d.parent for d in source.disks] == ["base/base.vmdk"]  # moved onto a delta
    assert [d.parent for d in (await client.vm("clone-1")).disks] == ["base/base.vmdk"]

    # Both run at once on two hosts: each holds its own delta, the base is read-only.
    for name in ("base", "clone-1"):
        assert (await run(client, await client.power_on(name))).state == OK
    await acked(client, "clone-1", 40)
    await acked(client, "base", 40)
    with pytest.raises(FileLocked):
        await open_disk(files, "base/base.vmdk", LockMode.EXCLUSIVE)
    for name in ("base", "clone-1"):
        assert (await run(client, await client.power_off(name))).state == OK

    disk = await open_disk(files, "base/base.vmdk", LockMode.READ_ONLY)
    assert await disk.read(0, 2048) == before
    await disk.close()
    with pytest.raises(InvalidState):
        await client.destroy_vm("base")  # the clone depends on its disks
    assert (await run(client, await client.destroy_vm("clone-1"))).state == OK
    assert (await run(client, await client.destroy_vm("base"))).state == OK


async def test_disk_lock_hand_off_moves_the_locks(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "vm-h")).state == OK
    assert (await run(client, await client.power_on("vm-h"))).state == OK
    seq = await acked(client, "vm-h", 5)
    vm = await client.vm("vm-h")
    await host_call(engine, "esxi-02", "RegisterVm", copy_of(vm))
    with pytest.raises(FileLocked):
        await host_call(engine, "esxi-02", "OpenVmDisks", hpb.HostVmRequest(name="vm-h"))
    # Powering the copy on there is refused too, and leaves it powered off.
    with pytest.raises(FileLocked):
        await host_call(engine, "esxi-02", "PowerOnVm", hpb.HostVmRequest(name="vm-h"))
    assert not engine.running("esxi-02").kernel.vm("vm-h").powered_on

    await vc.vms.hand_off_disks("vm-h", "esxi-02")
    lock = await client.lock_owner("vmfs-01", "vm-h/vm-h-flat.vmdk")
    assert [h.host for h in lock.holders] == ["esxi-02"]
    request = hpb.VerifyGuestDiskRequest(vm=copy_of(vm).vm, acked_seq=seq)
    report = await host_call(engine, "esxi-02", "VerifyGuestDisk", request)
    assert report.missing == 0 and report.corrupt == 0


async def test_root_squash_export_mounts_but_refuses_vm_create(cluster):  # noqa: F811
    vc, array, _, client = cluster
    array.create_export("squashed", ExportOptions(root_squash=True))
    squashed = await client.create_nas_datastore("squashed", "squashed")
    assert (await run(client, squashed)).state == OK
    task = await make_vm(client, "vm-s", datastore="squashed")
    assert task.state == common_pb2.TASK_STATE_ERROR
    assert task.error.name == CannotCreateFile.name
    assert "no_root_squash" in task.error.message
    assert await client.vms() == [] or "vm-s" not in {v.name for v in await client.vms()}


async def test_clone_chains_keep_every_base_and_verify_clean(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "src", iops=100)).state == OK
    assert (await run(client, await client.power_on("src"))).state == OK
    first = await acked(client, "src", 30)
    assert (await run(client, await client.power_off("src"))).state == OK
    for source, clone, host in (("src", "c1", "esxi-02"), ("c1", "c2", "esxi-03")):
        task = await client.linked_clone(source, clone, host=host)
        assert (await run(client, task)).state == OK
    assert list((await client.vm("c2")).disks[0].ancestors) == ["c1/c1.vmdk", "src/src.vmdk"]

    # The source goes on from its newest write after moving onto a delta.
    assert (await run(client, await client.power_on("src"))).state == OK
    later = await acked(client, "src", first + 10)
    assert (await run(client, await client.power_off("src"))).state == OK
    report = await client.verify_disk("src", later)
    assert report.missing == 0 and report.corrupt == 0 and report.highest_seq >= later
    # A clone sees its source's blocks as inherited, not corrupt, and writes its own.
    assert (await run(client, await client.power_on("c2"))).state == OK
    own = await acked(client, "c2", 5)
    assert (await run(client, await client.power_off("c2"))).state == OK
    report = await client.verify_disk("c2", own)
    assert report.corrupt == 0 and report.missing == 0

    # src's files are the base of c2 too (through c1): not deletable while c2 exists.
    for name in ("src", "c1"):
        with pytest.raises(InvalidState):
            await client.destroy_vm(name)
    for name in ("c2", "c1", "src"):
        assert (await run(client, await client.destroy_vm(name))).state == OK
    files = engine.running("esxi-01").storage.files["vmfs-01"]
    assert [f.path for f in await files.listdir("")] == []


async def test_a_clone_its_host_cannot_hold_leaves_the_source_as_it_was(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "src", iops=0)).state == OK
    before = list((await client.vm("src")).disks)
    await engine.running("esxi-02").storage.close()  # its datastores are gone
    engine.running("esxi-02").storage.vmfs.clear()
    engine.running("esxi-02").storage.files.clear()
    task = await run(client, await client.linked_clone("src", "c1", host="esxi-02"))
    assert task.state == common_pb2.TASK_STATE_ERROR and task.error.name == InvalidState.name
    assert list((await client.vm("src")).disks) == before
    files = engine.running("esxi-01").storage.files["vmfs-01"]
    assert sorted(f.path for f in await files.listdir("src")) == [
        "src/src-flat.vmdk", "src/src.vmdk", "src/src.vmx"
    ]  # fmt: skip


async def source_state(client: VCenterClient, engine, name: str) -> tuple:
    """Everything a failed clone must leave as it was: the source's disk chain in the
    inventory and on its host, its .vmx and the files of its folder."""
    vm = await client.vm(name)
    files = engine.running(vm.host).storage.files[vm.datastore]
    vmx = await files.open(f"{name}/{name}.vmx", LockMode.READ_ONLY)
    try:
        vmx_text = await vmx.read(0, await vmx.size())
    finally:
        await vmx.close()
    listing = sorted((f.path, f.size) for f in await files.listdir(name))
    return list(vm.disks), engine.running(vm.host).kernel.vm(name).disks, vmx_text, listing


async def task_count(client: VCenterClient) -> int:
    return len(await client.tasks(limit=10_000))


@pytest.mark.parametrize("name", [".", "..", "c\u202e1", "\ufeffc1"])
async def test_a_clone_with_a_bad_name_changes_nothing(cluster, name):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "src", iops=0)).state == OK
    before, tasks = await source_state(client, engine, "src"), await task_count(client)
    with pytest.raises(InvalidArgument):
        await client.linked_clone("src", name, host="esxi-02")
    assert await source_state(client, engine, "src") == before
    assert await task_count(client) == tasks
    assert {v.name for v in await client.vms()} == {"src"}


async def _clone_folder_taken(vc, engine, monkeypatch) -> None:
    # A folder named like the clone already on the datastore: the clone's host
    # refuses to make its files, after the source has moved onto its deltas.
    await engine.running("esxi-02").storage.files["vmfs-01"].mkdir("c2")


async def _clone_not_recorded(vc, engine, monkeypatch) -> None:
    def fail(vm):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(vc.inventory, "add_vm", fail)


async def _source_not_recorded(vc, engine, monkeypatch) -> None:
    def fail(name, disks):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(vc.inventory, "set_vm_disks", fail)
    monkeypatch.setattr(vc.vms, "_restore_clone_source", restoring(vc, monkeypatch))


async def _source_vmx_not_written(vc, engine, monkeypatch) -> None:
    # The source's host made the deltas but cannot rewrite its .vmx to use them.
    from vsim.faults import NoDiskSpace
    from vsim.host.hostd import service as hostd

    async def full(*args, **kwargs):
        raise NoDiskSpace("vmfs-01 is full")

    monkeypatch.setattr(hostd, "write_vmx", full)


def restoring(vc, monkeypatch):
    """The real restore, with the inventory writable again (the fault was passing)."""
    restore = type(vc.vms)._restore_clone_source.__get__(vc.vms)

    async def restore_after_fault(source, tops):
        monkeypatch.undo()
        await restore(source, tops)

    return restore_after_fault


@pytest.mark.parametrize(
    "inject",
    [_clone_folder_taken, _clone_not_recorded, _source_not_recorded, _source_vmx_not_written],
)
async def test_a_clone_that_fails_after_the_source_moved_puts_it_back(
    cluster,  # noqa: F811
    monkeypatch,
    inject,
):
    vc, _, engine, client = cluster
    assert (await make_vm(client, "src", iops=0)).state == OK
    # src is a clone source already: on a delta, with a parent and an ancestor.
    first = await client.linked_clone("src", "c1", host="esxi-02")
    assert (await run(client, first)).state == OK
    before = await source_state(client, engine, "src")
    assert [d.path for d in before[0]] == ["src/src-000001.vmdk"]

    await inject(vc, engine, monkeypatch)
    task = await run(client, await client.linked_clone("src", "c2", host="esxi-02"))
    assert task.state == common_pb2.TASK_STATE_ERROR
    monkeypatch.undo()
    assert await source_state(client, engine, "src") == before  # no src-000002 left behind
    assert "c2" not in {v.name for v in await client.vms()}
    assert "c2" not in {v.name for v in engine.running("esxi-02").kernel.vms()}

    # A retry moves the source onto the next delta, as a first try would have.
    files = engine.running("esxi-02").storage.files["vmfs-01"]
    with contextlib.suppress(FileNotFound):
        await files.remove("c2")
    retry = await client.linked_clone("src", "c2", host="esxi-02")
    assert (await run(client, retry)).state == OK
    assert [d.path for d in (await client.vm("src")).disks] == ["src/src-000002.vmdk"]
    assert list((await client.vm("src")).disks[0].ancestors) == [
        "src/src-000001.vmdk",
        "src/src.vmdk",
    ]


async def test_a_source_that_was_written_is_not_reverted(cluster):  # noqa: F811
    vc, _, engine, client = cluster
    assert (await make_vm(client, "src", iops=100)).state == OK
    clone = await client.linked_clone("src", "c1", host="esxi-02")
    assert (await run(client, clone)).state == OK
    assert (await run(client, await client.power_on("src"))).state == OK
    await acked(client, "src", 5)  # the source writes to its new delta
    assert (await run(client, await client.power_off("src"))).state == OK
    src = await client.vm("src")
    base = [common_pb2.VirtualDisk(path="src/src.vmdk", capacity_bytes=8 * 1024**2)]
    revert = hpb.RevertVmDisksRequest(name="src", disks=base)
    with pytest.raises(InvalidState, match="would lose those writes"):
        await host_call(engine, src.host, "RevertVmDisks", revert)
    assert engine.running(src.host).kernel.vm("src").disks[0].path == "src/src-000001.vmdk"


async def test_a_failed_create_leaves_no_files_behind(cluster, monkeypatch):  # noqa: F811
    vc, _, engine, client = cluster
    from vsim.faults import NoDiskSpace
    from vsim.host.vm import vm_files

    async def full(*args, **kwargs):
        raise NoDiskSpace("vmfs-01 is full")

    monkeypatch.setattr(vm_files, "create_disk", full)
    task = await make_vm(client, "vm-f")
    assert task.state == common_pb2.TASK_STATE_ERROR and task.error.name == "NoDiskSpace"
    files = engine.running("esxi-02").storage.files["vmfs-01"]
    assert [f.path for f in await files.listdir("")] == []
    monkeypatch.undo()
    assert (await make_vm(client, "vm-f")).state == OK  # a retry succeeds


async def test_lock_show_names_every_read_only_holder_of_an_nfs_base(cluster):  # noqa: F811
    vc, _, _, client = cluster
    assert (await make_vm(client, "src", datastore="nfs-01", iops=0)).state == OK
    clone = await client.linked_clone("src", "c1", host="esxi-02")
    assert (await run(client, clone)).state == OK
    for name in ("src", "c1"):
        assert (await run(client, await client.power_on(name))).state == OK
    lock = await client.lock_owner("nfs-01", "src/src-flat.vmdk")
    assert lock.mode == "READ_ONLY"
    assert sorted(h.host for h in lock.holders) == ["esxi-01", "esxi-02"]
    assert all(h.live for h in lock.holders)


async def test_list_vms_shows_each_running_guests_acknowledged_writes(cluster):  # noqa: F811
    """ListVms reports guest_writes_acked as GetVm does, asking each host once."""
    vc, _, _, client = cluster
    for name in ("vm-a", "vm-b"):
        assert (await make_vm(client, name)).state == OK
        assert (await run(client, await client.power_on(name))).state == OK
    assert (await make_vm(client, "vm-off")).state == OK
    seen = {name: await acked(client, name, 5) for name in ("vm-a", "vm-b")}
    calls: list[tuple[str, str]] = []
    call = vc.hosts.call

    async def counted(host: str, method: str, request):
        calls.append((host, method))
        return await call(host, method, request)

    vc.hosts.call = counted
    listed = {vm.name: vm for vm in await client.vms()}
    assert all(listed[name].guest_writes_acked >= seen[name] for name in seen)
    assert listed["vm-off"].guest_writes_acked == 0
    assert calls == [("esxi-01", "ListVms")]  # one call for the host of both, none per VM
