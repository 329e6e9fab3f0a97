"""MigrateVM_Task through vCenter's API on the in-process engine (simulated clock):
a running VM moves live with its memory, disk locks and guest writes; a powered-off
one moves cold; every check refuses before anything moves; a failure leaves the VM
running on its source, with the events vSphere posts."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest
from vclab import Lab, host_call
from vclab import running_on as hosts_running

from vsim.faults import (
    DisallowedMigrationDeviceAttached,
    HostNotConnected,
    InvalidArgument,
    InvalidDatastore,
    MigrationFault,
    NotEnoughCpus,
    NotFound,
)
from vsim.spec import ClusterSpec, HostSpec
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb

OK, ERROR = common_pb2.TASK_STATE_SUCCESS, common_pb2.TASK_STATE_ERROR
ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF


@pytest.fixture
async def lab(make_lab) -> Lab:
    return await make_lab(ClusterSpec.default(3), array=True)


async def vm_on(lab: Lab, name: str, datastore: str = "vmfs-01", power: bool = True, **kw):
    task = await lab.client.create_vm(
        name,
        memory_mb=256,
        host="esxi-01",
        datastore=datastore,
        disk_mb=8 if datastore else 0,
        guest_write_iops=20 if datastore else 0,
        **kw,
    )
    assert (await lab.wait(task)).state == OK
    if power:
        assert (await lab.power_on(name)).state == OK
        await asyncio.sleep(3)  # the guest writes


def running_on(lab: Lab, name: str) -> list[str]:
    return hosts_running(lab.engine, name)


async def migrate(lab: Lab, name: str, host: str) -> common_pb2.Task:
    return await lab.wait(await lab.client.migrate_vm(name, host))


async def event_types(lab: Lab, vm: str) -> list[str]:
    return [e.type for e in await lab.events() if e.vm == vm]


@pytest.mark.parametrize("datastore", ["vmfs-01", "nfs-01"])
async def test_a_running_vm_migrates_live_and_vcenter_follows_it(lab, datastore):
    await vm_on(lab, "vm-live", datastore)
    task = await migrate(lab, "vm-live", "esxi-02")
    assert (task.state, task.name, task.result) == (OK, "MigrateVM_Task", "vm-live")
    m = task.migration
    assert (m.source, m.destination, m.hot) == ("esxi-01", "esxi-02", True)
    assert m.precopy_rounds >= 1 and m.memory_sent_bytes > 0
    assert 0 <= m.downtime_ms < 500 and m.total_s > 0
    vm = await lab.client.vm("vm-live")
    assert (vm.host, vm.power_state) == ("esxi-02", ON)
    assert running_on(lab, "vm-live") == ["esxi-02"]
    hosts = {h.name: h for h in await lab.client.hosts()}
    assert (hosts["esxi-01"].vms, hosts["esxi-02"].vms) == (0, 1)
    lock = await lab.client.lock_owner(datastore, "vm-live/vm-live-flat.vmdk")
    assert [h.host for h in lock.holders] == ["esxi-02"]
    await asyncio.sleep(3)
    acked = (await lab.client.vm("vm-live")).guest_writes_acked
    report = await lab.client.verify_disk("vm-live", acked)
    assert report.missing == 0 and report.corrupt == 0 and report.highest_seq >= acked
    types = await event_types(lab, "vm-live")
    assert types.index("VmBeingHotMigratedEvent") < types.index("VmMigratedEvent")
    # It can go back, and power off where it now is.
    assert (await migrate(lab, "vm-live", "esxi-01")).state == OK
    assert (await lab.power_off("vm-live")).state == OK


async def test_a_powered_off_vm_migrates_cold_and_powers_on_there(lab):
    await vm_on(lab, "vm-cold", power=False)
    task = await migrate(lab, "vm-cold", "esxi-03")
    assert task.state == OK
    assert (task.migration.hot, task.migration.precopy_rounds) == (False, 0)
    assert (await lab.client.vm("vm-cold")).host == "esxi-03"
    assert "vm-cold" not in {v.name for v in lab.engine.running("esxi-01").kernel.vms()}
    assert (await lab.power_on("vm-cold")).state == OK
    assert running_on(lab, "vm-cold") == ["esxi-03"]
    assert "VmMigratedEvent" in await event_types(lab, "vm-cold")


async def test_a_cut_vmotion_link_fails_the_task_and_the_vm_stays_on_its_source(lab):
    await vm_on(lab, "vm-stay")
    lab.engine.set_link_now("esxi-02", "vmotion", False)
    task = await migrate(lab, "vm-stay", "esxi-02")
    assert (task.state, task.error.name) == (ERROR, "MigrationFault")
    assert "goes on running on esxi-01" in task.error.message
    assert (await lab.client.vm("vm-stay")).host == "esxi-01"
    assert running_on(lab, "vm-stay") == ["esxi-01"]
    # The destination's partial copy is gone with the abort.
    assert "vm-stay" not in {v.name for v in lab.engine.running("esxi-02").kernel.vms()}
    types = await event_types(lab, "vm-stay")
    assert "VmFailedMigrateEvent" in types and "VmMigratedEvent" not in types
    lab.engine.set_link_now("esxi-02", "vmotion", True)
    assert (await migrate(lab, "vm-stay", "esxi-02")).state == OK  # mended, it moves


async def test_a_source_without_its_storage_keeps_the_guest_stunned_until_its_disks_open(lab):
    """The switchover fails (the destination dies as it arrives) while the source has
    lost its storage: the VM stays on its source, stunned (its I/O hung) until the
    path is back, then runs on with its disk, every acknowledged write there."""
    await vm_on(lab, "vm-apd")

    def break_both(source: str, destination: str, method: str, moment: str) -> None:
        if (method, moment) == ("Switchover", "arriving"):
            lab.engine.set_link_now(source, "storage", False)
            lab.engine.crash(destination)

    lab.engine.vmotion_tap = break_both
    task = await migrate(lab, "vm-apd", "esxi-02")
    lab.engine.vmotion_tap = None
    assert (task.state, task.error.name) == (ERROR, "MigrationFault")
    source = lab.engine.running("esxi-01")
    assert source.kernel.vm("vm-apd").powered_on
    assert source.kernel.memory.speed("vm-apd") == 0  # waiting for its disks
    await asyncio.sleep(30)
    assert source.kernel.memory.speed("vm-apd") == 0
    lab.engine.set_link_now("esxi-01", "storage", True)
    await asyncio.sleep(30)  # the volume is taken back, the disks open again
    assert source.kernel.memory.speed("vm-apd") == 1.0
    assert running_on(lab, "vm-apd") == ["esxi-01"]
    acked = source.vmx["vm-apd"].acked_seq
    await asyncio.sleep(3)
    assert source.vmx["vm-apd"].acked_seq > acked  # the guest writes again
    report = await lab.client.verify_disk("vm-apd", source.vmx["vm-apd"].acked_seq)
    assert (report.corrupt, report.missing) == (0, 0)


async def test_a_destination_without_the_datastore_is_invalid_datastore(lab):
    await vm_on(lab, "vm-ds")
    await host_call(
        lab.engine, "esxi-03", "UnmountDatastore", hpb.UnmountDatastoreRequest(name="vmfs-01")
    )
    task = await migrate(lab, "vm-ds", "esxi-03")
    assert (task.state, task.error.name) == (ERROR, InvalidDatastore.name)
    assert "vmfs-01" in task.error.message and "not mounted" in task.error.message
    assert running_on(lab, "vm-ds") == ["esxi-01"]
    assert "vm-ds" not in {v.name for v in lab.engine.running("esxi-03").kernel.vms()}


@pytest.mark.parametrize("where, vlan", [("esxi-01", 10), ("both", None)])
async def test_a_port_group_missing_or_on_another_vlan_there_is_a_migration_fault(lab, where, vlan):
    await lab.client.add_port_group("esxi-01", "web", vlan=10)
    if where == "both":
        await lab.client.add_port_group("esxi-02", "web", vlan=20)
    nic = kpb.VmNic(name="ethernet0", port_group="web")
    await vm_on(lab, "vm-net", datastore="", nics=[nic])
    task = await migrate(lab, "vm-net", "esxi-02")
    assert (task.state, task.error.name) == (ERROR, MigrationFault.name)
    assert "ethernet0" in task.error.message and "web" in task.error.message
    if where == "both":
        assert "VLAN 10" in task.error.message and "VLAN 20" in task.error.message
    assert running_on(lab, "vm-net") == ["esxi-01"]


@pytest.mark.parametrize(
    "name, host, fault",
    [
        ("vm-bad", "esxi-01", InvalidArgument),  # where it already is
        ("vm-bad", "esxi-99", NotFound),
        ("vm-bad", "", InvalidArgument),
        ("vm-bad", "ESXI_02", InvalidArgument),
        ("no-such-vm", "esxi-02", NotFound),
    ],
)
async def test_bad_migrations_are_refused_at_once_and_change_nothing(lab, name, host, fault):
    await vm_on(lab, "vm-bad", datastore="", power=False)
    before = await lab.snapshot()
    with pytest.raises(fault):
        await lab.client.migrate_vm(name, host)
    assert await lab.snapshot() == before


async def test_a_disconnected_destination_is_host_not_connected(lab):
    await vm_on(lab, "vm-nc", datastore="", power=False)
    lab.engine.crash("esxi-02")
    await asyncio.sleep(20)  # vCenter notices
    with pytest.raises(HostNotConnected):
        await lab.client.migrate_vm("vm-nc", "esxi-02")


async def test_a_destination_with_fewer_cores_than_the_vms_vcpus_is_not_enough_cpus(make_lab):
    small = ClusterSpec(
        hosts=(HostSpec("esxi-01", cpu_cores=16), HostSpec("esxi-02", cpu_cores=4)),
        datastores=(),
    )
    lab = await make_lab(small)
    assert (
        await lab.wait(await lab.client.create_vm("vm-wide", cpus=8, host="esxi-01"))
    ).state == OK
    for power_on in (False, True):
        if power_on:
            assert (await lab.power_on("vm-wide")).state == OK
        before = await lab.snapshot()
        with pytest.raises(NotEnoughCpus, match="8 virtual CPUs"):
            await lab.client.migrate_vm("vm-wide", "esxi-02")
        assert await lab.snapshot() == before


async def test_a_running_vm_with_a_directpath_device_cannot_move_but_moves_powered_off(lab):
    gpu = (await lab.client.pci_devices("esxi-01"))[0].id
    await lab.client.update_passthru_config("esxi-01", gpu, True)
    reserved = kpb.VmResources(memory=kpb.ResourceAllocation(reservation=256))
    await vm_on(lab, "vm-gpu", datastore="", power=False, resources=reserved)
    assert (await lab.wait(await lab.client.assign_pci_device("vm-gpu", gpu))).state == OK
    assert (await lab.power_on("vm-gpu")).state == OK
    with pytest.raises(DisallowedMigrationDeviceAttached, match=gpu):
        await lab.client.migrate_vm("vm-gpu", "esxi-02")
    assert running_on(lab, "vm-gpu") == ["esxi-01"]


async def test_the_ninth_vmotion_from_one_host_is_queued_not_failed(lab):
    names = [f"vm-q{i}" for i in range(9)]
    for name in names:
        await vm_on(lab, name, datastore="", power=False)
        assert (await lab.power_on(name)).state == OK
    tasks = [await lab.client.migrate_vm(name, "esxi-02") for name in names]
    await asyncio.sleep(0.001)  # all nine under way or waiting
    states = [(await lab.client.task(t.id)).state for t in tasks]
    assert states.count(common_pb2.TASK_STATE_QUEUED) == 1
    assert states.count(common_pb2.TASK_STATE_RUNNING) == 8
    done = [await lab.wait(t) for t in tasks]
    assert all(t.state == OK for t in done)
    queued = done[states.index(common_pb2.TASK_STATE_QUEUED)]
    assert queued.complete_time > min(t.complete_time for t in done)
    assert running_on(lab, "vm-q8") == ["esxi-02"]


async def test_a_frame_sent_to_the_vm_right_after_its_migration_reaches_it_there(lab):
    nic = kpb.VmNic(name="ethernet0", port_group="VM Network")
    await vm_on(lab, "vm-web", datastore="", nics=[nic])
    await vm_on(lab, "vm-client", datastore="", nics=[nic])
    assert (await migrate(lab, "vm-client", "esxi-03")).state == OK
    before = await lab.client.send_test_frame("vm-client", dst_vm="vm-web")
    assert [(r.host, r.vm) for r in before.received] == [("esxi-01", "vm-web")]
    assert (await migrate(lab, "vm-web", "esxi-02")).state == OK
    after = await lab.client.send_test_frame("vm-client", dst_vm="vm-web")
    assert [(r.host, r.vm) for r in after.received] == [("esxi-02", "vm-web")]


async def test_a_host_without_a_vmotion_network_is_vmotion_not_configured(lab):
    await vm_on(lab, "vm-nv", datastore="")
    lab.engine.running("esxi-02").vmotion_endpoint = ""  # a host with no vMotion network
    task = await migrate(lab, "vm-nv", "esxi-02")
    assert (task.state, task.error.name) == (ERROR, "VMotionNotConfigured")
    assert "esxi-02" in task.error.message
    assert running_on(lab, "vm-nv") == ["esxi-01"]
    assert "vm-nv" not in {v.name for v in lab.engine.running("esxi-02").kernel.vms()}


@pytest.mark.parametrize("encryption", ["disabled", "opportunistic", "required"])
async def test_encrypted_vmotion_seals_the_pages_on_the_wire(lab, monkeypatch, encryption):
    from vsim.cluster import inprocess

    await vm_on(lab, "vm-enc", datastore="")
    source = lab.engine.running("esxi-01").kernel.memory
    touched = source.touched_pages("vm-enc")
    content = source.guest_content("vm-enc", touched)
    page = int(next(c for c in content if c)).to_bytes(8, "little")  # one page's content
    wire: list[bytes] = []
    call = inprocess.dispatch.call

    async def on_the_wire(table, method, request, token):
        if method in ("ReceivePages", "Switchover"):
            wire.append(request.SerializeToString())
        return await call(table, method, request, token)

    monkeypatch.setattr(inprocess.dispatch, "call", on_the_wire)
    task = await lab.wait(await lab.client.migrate_vm("vm-enc", "esxi-02", encryption))
    assert task.state == OK
    encrypted = encryption != "disabled"
    assert task.migration.encrypted is encrypted
    sent = b"".join(wire)
    assert (page in sent) is not encrypted  # in the clear only when disabled
    assert (b'"rng"' in sent) is not encrypted  # the checkpoint's guest state likewise
    types = await event_types(lab, "vm-enc")
    assert ("VmHotMigratingWithEncryptionEvent" in types) is encrypted
    assert running_on(lab, "vm-enc") == ["esxi-02"]


@pytest.mark.parametrize(
    ("encryption", "state", "encrypted"),
    [("disabled", OK, False), ("opportunistic", OK, False), ("required", ERROR, False)],
)
async def test_a_host_that_cannot_encrypt_gets_a_clear_stream_or_none(
    make_lab, encryption, state, encrypted
):
    spec = ClusterSpec.default(2)
    old = dataclasses.replace(spec.hosts[1], vmotion_encryption=False)
    lab = await make_lab(dataclasses.replace(spec, hosts=(spec.hosts[0], old)), array=True)
    assert [h.vmotion_encryption for h in await lab.client.hosts()] == [True, False]
    await vm_on(lab, "vm-old", datastore="")
    task = await lab.wait(await lab.client.migrate_vm("vm-old", "esxi-02", encryption))
    assert (task.state, task.migration.encrypted) == (state, encrypted)
    assert "VmHotMigratingWithEncryptionEvent" not in await event_types(lab, "vm-old")
    if state == ERROR:  # refused before anything moved
        assert task.error.name == "MigrationFault"
        assert "esxi-02 cannot encrypt" in task.error.message
        assert running_on(lab, "vm-old") == ["esxi-01"]
        assert "vm-old" not in {v.name for v in lab.engine.running("esxi-02").kernel.vms()}
        assert "VmBeingHotMigratedEvent" not in await event_types(lab, "vm-old")
    else:
        assert running_on(lab, "vm-old") == ["esxi-02"]
    # The host itself refuses a sealed stream, whoever asks.
    ticket = hpb.VmotionTicket(migration_id="m-1", secret=bytes(32), key=bytes(32), nonce=bytes(8))
    vm = hpb.HostVm(name="vm-x", uuid=str(uuid.uuid4()), memory_mb=64, cpus=1)
    with pytest.raises(MigrationFault, match="esxi-02 cannot encrypt a vMotion stream"):
        await host_call(
            lab.engine, "esxi-02", "PrepareVmotion", hpb.PrepareVmotionRequest(ticket=ticket, vm=vm)
        )


async def test_an_unknown_encryption_setting_is_invalid_argument(lab):
    await vm_on(lab, "vm-e2", datastore="", power=False)
    with pytest.raises(InvalidArgument, match="encryption"):
        await lab.client.migrate_vm("vm-e2", "esxi-02", "sometimes")
