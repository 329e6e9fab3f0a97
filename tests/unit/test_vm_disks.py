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
from vclab import rpc

from vsim import dispatch
from vsim.faults import CannotCreateFile, FileLocked, FileNotFound, InvalidArgument, InvalidState
from vsim.host.storage.vmdk import open_disk
from vsim.storage.nfs_export import ExportOptions
from vsim.storage.vmfs_format import LockMode
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb

OK = common_pb2.TASK_STATE_SUCCESS


async def make_vm(vc, session, name, host="esxi-01", datastore="vmfs-01", iops=50):
    request = pb.CreateVmRequest(
        name=name,
        cpus=1,
        memory_mb=256,
        host=host,
        datastore=datastore,
        disk_mb=8,
        guest_write_iops=iops,
    )
    return await run(vc, vc.vms.create(request, session.user_name))


async def host_call(engine, host: str, method: str, request):
    """Calls a host's hostd directly, as root (what vCenter does as vpxuser)."""
    hostd = engine.running(host)
    token = hostd.accounts.login("root", engine.spec(host).root_password)
    return await dispatch.call(hostd.table, method, request, token)


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


async def acked(vc, session, name, at_least: int) -> int:
    for _ in range(200):
        vm = await rpc(vc).GetVm(pb.VmRequest(name=name), session)
        if vm.guest_writes_acked >= at_least:
            return vm.guest_writes_acked
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}'s guest did not reach {at_least} writes")


@pytest.mark.parametrize("datastore", ["vmfs-01", "nfs-01"])
async def test_vm_files_locks_and_guest_writes(cluster, datastore):  # noqa: F811
    vc, _, engine, session = cluster
    assert (await make_vm(vc, session, "vm-a", datastore=datastore)).state == OK
    files = engine.running("esxi-02").storage.files[datastore]
    names = {f.path for f in await files.listdir("vm-a")}
    assert names == {"vm-a/vm-a.vmx", "vm-a/vm-a.vmdk", "vm-a/vm-a-flat.vmdk"}

    assert (await run(vc, vc.vms.power_on("vm-a", session.user_name))).state == OK
    # Another host cannot open the running VM's disk.
    with pytest.raises(FileLocked):
        await open_disk(files, "vm-a/vm-a.vmdk", LockMode.READ_ONLY)
    seq = await acked(vc, session, "vm-a", 10)
    assert (await run(vc, vc.vms.power_off("vm-a", session.user_name))).state == OK
    report = await vc.vms.verify_disk(pb.VerifyVmDiskRequest(name="vm-a", acked_seq=seq))
    assert report.corrupt == 0 and report.missing == 0 and report.highest_seq >= seq
    # Released at power-off: another host opens it now.
    disk = await open_disk(files, "vm-a/vm-a.vmdk", LockMode.EXCLUSIVE)
    await disk.close()

    assert (await run(vc, vc.vms.destroy("vm-a", session.user_name))).state == OK
    assert not [f for f in await files.listdir("") if f.path == "vm-a"]


async def test_guest_writes_acknowledged_before_a_host_crash_are_intact(cluster):  # noqa: F811
    vc, _, engine, session = cluster
    assert (await make_vm(vc, session, "vm-c", iops=100)).state == OK
    assert (await run(vc, vc.vms.power_on("vm-c", session.user_name))).state == OK
    seq = await acked(vc, session, "vm-c", 300)  # the 256-block area wrapped around
    engine.crash("esxi-01")

    # Another host reads the disk once the dead host's lock has gone stale (16 s).
    request = pb.VerifyVmDiskRequest(name="vm-c", acked_seq=seq)
    refused = 0
    for _ in range(400):
        try:
            report = await vc.vms.verify_disk(request)
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
    vc, _, engine, session = cluster
    assert (await make_vm(vc, session, "vm-r", host="esxi-02", datastore=datastore)).state == OK
    assert (await run(vc, vc.vms.power_on("vm-r", session.user_name))).state == OK
    engine.crash("esxi-02")
    await vc.hosts.heartbeat_once()
    assert vc.inventory.host("esxi-02").connection_state == pb.CONNECTION_STATE_NOT_RESPONDING
    await engine.reboot("esxi-02")
    await vc.hosts.heartbeat_once()
    assert vc.inventory.host("esxi-02").connection_state == pb.CONNECTION_STATE_CONNECTED
    listed = await host_call(engine, "esxi-02", "ListVms", hpb.ListHostVmsRequest())
    assert [(v.name, v.powered_on) for v in listed.vms] == [("vm-r", False)]
    vm = await rpc(vc).GetVm(pb.VmRequest(name="vm-r"), session)
    assert vm.power_state == pb.POWER_STATE_POWERED_OFF


async def test_a_vm_a_rebooted_host_cannot_reach_is_registered_once_it_can(cluster):  # noqa: F811
    """A VM whose datastore a reconnecting host cannot mount does not keep the host
    disconnected; it is registered on a later heartbeat, once the mount works."""
    vc, array, engine, session = cluster
    assert (await make_vm(vc, session, "vm-i", host="esxi-02", datastore="nfs-01")).state == OK
    export = array.exports["nfs-01"]
    allowed = export.options
    engine.crash("esxi-02")
    await vc.hosts.heartbeat_once()
    export.options = replace(allowed, clients=("iqn.1998-01.com.vmware:nobody",))
    await engine.reboot("esxi-02")
    await vc.hosts.heartbeat_once()
    assert vc.inventory.host("esxi-02").connection_state == pb.CONNECTION_STATE_CONNECTED

    async def on_host() -> list[str]:
        listed = await host_call(engine, "esxi-02", "ListVms", hpb.ListHostVmsRequest())
        return [v.name for v in listed.vms]

    assert await on_host() == []
    export.options = allowed
    await vc.hosts.heartbeat_once()
    assert await on_host() == ["vm-i"]
    assert (await run(vc, vc.vms.power_on("vm-i", session.user_name))).state == OK


async def test_linked_clones_share_a_base_they_never_write(cluster):  # noqa: F811
    vc, _, engine, session = cluster
    assert (await make_vm(vc, session, "base", iops=100)).state == OK
    assert (await run(vc, vc.vms.power_on("base", session.user_name))).state == OK
    await acked(vc, session, "base", 20)
    assert (await run(vc, vc.vms.power_off("base", session.user_name))).state == OK
    files = engine.running("esxi-03").storage.files["vmfs-01"]
    disk = await open_disk(files, "base/base.vmdk", LockMode.READ_ONLY)
    before = await disk.read(0, 2048)
    await disk.close()

    clone = pb.LinkedCloneVmRequest(source="base", name="clone-1", host="esxi-02")
    assert (await run(vc, vc.vms.linked_clone(clone, session.user_name))).state == OK
    source = vc.vms.get("base")
    assert [d.parent for d in source.disks] == ["base/base.vmdk"]  # moved onto a delta
    assert [d.parent for d in vc.vms.get("clone-1").disks] == ["base/base.vmdk"]

    # Both run at once on two hosts: each holds its own delta, the base is read-only.
    for name in ("base", "clone-1"):
        assert (await run(vc, vc.vms.power_on(name, session.user_name))).state == OK
    await acked(vc, session, "clone-1", 40)
    await acked(vc, session, "base", 40)
    with pytest.raises(FileLocked):
        await open_disk(files, "base/base.vmdk", LockMode.EXCLUSIVE)
    for name in ("base", "clone-1"):
        assert (await run(vc, vc.vms.power_off(name, session.user_name))).state == OK

    disk = await open_disk(files, "base/base.vmdk", LockMode.READ_ONLY)
    assert await disk.read(0, 2048) == before
    await disk.close()
    with pytest.raises(InvalidState):
        vc.vms.destroy("base", session.user_name)  # the clone depends on its disks
    assert (await run(vc, vc.vms.destroy("clone-1", session.user_name))).state == OK
    assert (await run(vc, vc.vms.destroy("base", session.user_name))).state == OK


async def test_disk_lock_hand_off_moves_the_locks(cluster):  # noqa: F811
    vc, _, engine, session = cluster
    assert (await make_vm(vc, session, "vm-h")).state == OK
    assert (await run(vc, vc.vms.power_on("vm-h", session.user_name))).state == OK
    seq = await acked(vc, session, "vm-h", 5)
    vm = vc.vms.get("vm-h")
    await host_call(engine, "esxi-02", "RegisterVm", copy_of(vm))
    with pytest.raises(FileLocked):
        await host_call(engine, "esxi-02", "OpenVmDisks", hpb.HostVmRequest(name="vm-h"))
    # Powering the copy on there is refused too, and leaves it powered off.
    with pytest.raises(FileLocked):
        await host_call(engine, "esxi-02", "PowerOnVm", hpb.HostVmRequest(name="vm-h"))
    assert not engine.running("esxi-02").kernel.vm("vm-h").powered_on

    await vc.vms.hand_off_disks("vm-h", "esxi-02")
    lock = await vc.datastores.lock(
        pb.LockRequest(datastore="vmfs-01", path="vm-h/vm-h-flat.vmdk"), "QueryLock"
    )
    assert [h.host for h in lock.holders] == ["esxi-02"]
    request = hpb.VerifyGuestDiskRequest(vm=copy_of(vm).vm, acked_seq=seq)
    report = await host_call(engine, "esxi-02", "VerifyGuestDisk", request)
    assert report.missing == 0 and report.corrupt == 0


async def test_root_squash_export_mounts_but_refuses_vm_create(cluster):  # noqa: F811
    vc, array, _, session = cluster
    array.create_export("squashed", ExportOptions(root_squash=True))
    request = pb.CreateNasDatastoreRequest(name="squashed", export="squashed")
    assert (await run(vc, vc.datastores.create_nas(request, session.user_name))).state == OK
    task = await make_vm(vc, session, "vm-s", datastore="squashed")
    assert task.state == common_pb2.TASK_STATE_ERROR
    assert task.error.name == CannotCreateFile.name
    assert "no_root_squash" in task.error.message
    assert vc.vms.list("") == [] or "vm-s" not in {v.name for v in vc.vms.list("")}


async def test_clone_chains_keep_every_base_and_verify_clean(cluster):  # noqa: F811
    vc, _, engine, session = cluster
    user = session.user_name
    assert (await make_vm(vc, session, "src", iops=100)).state == OK
    assert (await run(vc, vc.vms.power_on("src", user))).state == OK
    first = await acked(vc, session, "src", 30)
    assert (await run(vc, vc.vms.power_off("src", user))).state == OK
    for source, clone, host in (("src", "c1", "esxi-02"), ("c1", "c2", "esxi-03")):
        request = pb.LinkedCloneVmRequest(source=source, name=clone, host=host)
        assert (await run(vc, vc.vms.linked_clone(request, user))).state == OK
    assert list(vc.vms.get("c2").disks[0].ancestors) == ["c1/c1.vmdk", "src/src.vmdk"]

    # The source goes on from its newest write after moving onto a delta.
    assert (await run(vc, vc.vms.power_on("src", user))).state == OK
    later = await acked(vc, session, "src", first + 10)
    assert (await run(vc, vc.vms.power_off("src", user))).state == OK
    report = await vc.vms.verify_disk(pb.VerifyVmDiskRequest(name="src", acked_seq=later))
    assert report.missing == 0 and report.corrupt == 0 and report.highest_seq >= later
    # A clone sees its source's blocks as inherited, not corrupt, and writes its own.
    assert (await run(vc, vc.vms.power_on("c2", user))).state == OK
    own = await acked(vc, session, "c2", 5)
    assert (await run(vc, vc.vms.power_off("c2", user))).state == OK
    report = await vc.vms.verify_disk(pb.VerifyVmDiskRequest(name="c2", acked_seq=own))
    assert report.corrupt == 0 and report.missing == 0

    # src's files are the base of c2 too (through c1): not deletable while c2 exists.
    for name in ("src", "c1"):
        with pytest.raises(InvalidState):
            vc.vms.destroy(name, user)
    for name in ("c2", "c1", "src"):
        assert (await run(vc, vc.vms.destroy(name, user))).state == OK
    files = engine.running("esxi-01").storage.files["vmfs-01"]
    assert [f.path for f in await files.listdir("")] == []


async def test_a_clone_its_host_cannot_hold_leaves_the_source_as_it_was(cluster):  # noqa: F811
    vc, _, engine, session = cluster
    assert (await make_vm(vc, session, "src", iops=0)).state == OK
    before = list(vc.vms.get("src").disks)
    await engine.running("esxi-02").storage.close()  # its datastores are gone
    engine.running("esxi-02").storage.vmfs.clear()
    engine.running("esxi-02").storage.files.clear()
    request = pb.LinkedCloneVmRequest(source="src", name="c1", host="esxi-02")
    task = await run(vc, vc.vms.linked_clone(request, session.user_name))
    assert task.state == common_pb2.TASK_STATE_ERROR and task.error.name == InvalidState.name
    assert list(vc.vms.get("src").disks) == before
    files = engine.running("esxi-01").storage.files["vmfs-01"]
    assert sorted(f.path for f in await files.listdir("src")) == [
        "src/src-flat.vmdk", "src/src.vmdk", "src/src.vmx"
    ]  # fmt: skip


async def source_state(vc, engine, name: str) -> tuple:
    """Everything a failed clone must leave as it was: the source's disk chain in the
    inventory and on its host, its .vmx and the files of its folder."""
    vm = vc.vms.get(name)
    files = engine.running(vm.host).storage.files[vm.datastore]
    vmx = await files.open(f"{name}/{name}.vmx", LockMode.READ_ONLY)
    try:
        vmx_text = await vmx.read(0, await vmx.size())
    finally:
        await vmx.close()
    listing = sorted((f.path, f.size) for f in await files.listdir(name))
    return list(vm.disks), engine.running(vm.host).kernel.vm(name).disks, vmx_text, listing


def task_count(vc, session) -> int:
    return len(vc.ListTasks(pb.ListTasksRequest(limit=10_000), session).tasks)


@pytest.mark.parametrize("name", [".", "..", "c\u202e1", "\ufeffc1"])
async def test_a_clone_with_a_bad_name_changes_nothing(cluster, name):  # noqa: F811
    vc, _, engine, session = cluster
    assert (await make_vm(vc, session, "src", iops=0)).state == OK
    before, tasks = await source_state(vc, engine, "src"), task_count(vc, session)
    request = pb.LinkedCloneVmRequest(source="src", name=name, host="esxi-02")
    with pytest.raises(InvalidArgument):
        vc.vms.linked_clone(request, session.user_name)
    assert await source_state(vc, engine, "src") == before
    assert task_count(vc, session) == tasks
    assert {v.name for v in vc.vms.list("")} == {"src"}


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
    vc, _, engine, session = cluster
    user = session.user_name
    assert (await make_vm(vc, session, "src", iops=0)).state == OK
    # src is a clone source already: on a delta, with a parent and an ancestor.
    first = pb.LinkedCloneVmRequest(source="src", name="c1", host="esxi-02")
    assert (await run(vc, vc.vms.linked_clone(first, user))).state == OK
    before = await source_state(vc, engine, "src")
    assert [d.path for d in before[0]] == ["src/src-000001.vmdk"]

    await inject(vc, engine, monkeypatch)
    request = pb.LinkedCloneVmRequest(source="src", name="c2", host="esxi-02")
    task = await run(vc, vc.vms.linked_clone(request, user))
    assert task.state == common_pb2.TASK_STATE_ERROR
    monkeypatch.undo()
    assert await source_state(vc, engine, "src") == before  # no src-000002 left behind
    assert "c2" not in {v.name for v in vc.vms.list("")}
    assert "c2" not in {v.name for v in engine.running("esxi-02").kernel.vms()}

    # A retry moves the source onto the next delta, as a first try would have.
    files = engine.running("esxi-02").storage.files["vmfs-01"]
    with contextlib.suppress(FileNotFound):
        await files.remove("c2")
    assert (await run(vc, vc.vms.linked_clone(request, user))).state == OK
    assert [d.path for d in vc.vms.get("src").disks] == ["src/src-000002.vmdk"]
    assert list(vc.vms.get("src").disks[0].ancestors) == ["src/src-000001.vmdk", "src/src.vmdk"]


async def test_a_source_that_was_written_is_not_reverted(cluster):  # noqa: F811
    vc, _, engine, session = cluster
    user = session.user_name
    assert (await make_vm(vc, session, "src", iops=100)).state == OK
    request = pb.LinkedCloneVmRequest(source="src", name="c1", host="esxi-02")
    assert (await run(vc, vc.vms.linked_clone(request, user))).state == OK
    assert (await run(vc, vc.vms.power_on("src", user))).state == OK
    await acked(vc, session, "src", 5)  # the source writes to its new delta
    assert (await run(vc, vc.vms.power_off("src", user))).state == OK
    src = vc.vms.get("src")
    base = [common_pb2.VirtualDisk(path="src/src.vmdk", capacity_bytes=8 * 1024**2)]
    revert = hpb.RevertVmDisksRequest(name="src", disks=base)
    with pytest.raises(InvalidState, match="would lose those writes"):
        await host_call(engine, src.host, "RevertVmDisks", revert)
    assert engine.running(src.host).kernel.vm("src").disks[0].path == "src/src-000001.vmdk"


async def test_a_failed_create_leaves_no_files_behind(cluster, monkeypatch):  # noqa: F811
    vc, _, engine, session = cluster
    from vsim.faults import NoDiskSpace
    from vsim.host.vm import vm_files

    async def full(*args, **kwargs):
        raise NoDiskSpace("vmfs-01 is full")

    monkeypatch.setattr(vm_files, "create_disk", full)
    task = await make_vm(vc, session, "vm-f")
    assert task.state == common_pb2.TASK_STATE_ERROR and task.error.name == "NoDiskSpace"
    files = engine.running("esxi-02").storage.files["vmfs-01"]
    assert [f.path for f in await files.listdir("")] == []
    monkeypatch.undo()
    assert (await make_vm(vc, session, "vm-f")).state == OK  # a retry succeeds


async def test_lock_show_names_every_read_only_holder_of_an_nfs_base(cluster):  # noqa: F811
    vc, _, _, session = cluster
    user = session.user_name
    assert (await make_vm(vc, session, "src", datastore="nfs-01", iops=0)).state == OK
    request = pb.LinkedCloneVmRequest(source="src", name="c1", host="esxi-02")
    assert (await run(vc, vc.vms.linked_clone(request, user))).state == OK
    for name in ("src", "c1"):
        assert (await run(vc, vc.vms.power_on(name, user))).state == OK
    lock = await vc.datastores.lock(
        pb.LockRequest(datastore="nfs-01", path="src/src-flat.vmdk"), "QueryLock"
    )
    assert lock.mode == "READ_ONLY"
    assert sorted(h.host for h in lock.holders) == ["esxi-01", "esxi-02"]
    assert all(h.live for h in lock.holders)


async def test_list_vms_shows_each_running_guests_acknowledged_writes(cluster):  # noqa: F811
    """ListVms reports guest_writes_acked as GetVm does, asking each host once."""
    vc, _, _, session = cluster
    user = session.user_name
    for name in ("vm-a", "vm-b"):
        assert (await make_vm(vc, session, name)).state == OK
        assert (await run(vc, vc.vms.power_on(name, user))).state == OK
    assert (await make_vm(vc, session, "vm-off")).state == OK
    seen = {name: await acked(vc, session, name, 5) for name in ("vm-a", "vm-b")}
    calls: list[tuple[str, str]] = []
    call = vc.hosts.call

    async def counted(host: str, method: str, request):
        calls.append((host, method))
        return await call(host, method, request)

    vc.hosts.call = counted
    listed = {vm.name: vm for vm in (await rpc(vc).ListVms(pb.ListVmsRequest(), session)).vms}
    assert all(listed[name].guest_writes_acked >= seen[name] for name in seen)
    assert listed["vm-off"].guest_writes_acked == 0
    assert calls == [("esxi-01", "ListVms")]  # one call for the host of both, none per VM
