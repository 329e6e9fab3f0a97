"""Maintenance mode, CPU compatibility with EVC, and vMotion priority, through
vCenter's API on the in-process engine (simulated clock).

Entering maintenance mode with evacuate moves every powered-on VM off by vMotion (each
a MigrateVM_Task), placed by free memory; if one cannot move the host stays out of
maintenance mode. A host in maintenance mode powers on nothing and receives no
migration, and keeps the mode across a reboot. A running VM moves only to a host whose
CPU offers every feature it powered on with, unless the cluster's EVC mode masks them.
"""

from __future__ import annotations

import asyncio

import pytest
from vclab import Lab, host_call
from vclab import running_on as hosts_running

from vsim.faults import CpuIncompatible, EVCAdmissionFailed, InvalidArgument, InvalidState
from vsim.spec import ClusterSpec, HostSpec
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb

OK, ERROR = common_pb2.TASK_STATE_SUCCESS, common_pb2.TASK_STATE_ERROR
QUEUED = common_pb2.TASK_STATE_QUEUED
ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF


@pytest.fixture
async def lab(make_lab) -> Lab:
    return await make_lab(ClusterSpec.default(3), array=True)


async def vm(lab: Lab, name: str, host: str = "esxi-01", power: bool = True, **kw) -> None:
    kw.setdefault("memory_mb", 256)
    if "datastore" in kw:
        kw.setdefault("disk_mb", 8)
        kw.setdefault("guest_write_iops", 20)
    assert (await lab.wait(await lab.client.create_vm(name, host=host, **kw))).state == OK
    if power:
        assert (await lab.power_on(name)).state == OK


def running_on(lab: Lab, name: str) -> list[str]:
    return hosts_running(lab.engine, name)


async def hosts(lab: Lab) -> dict[str, pb.Host]:
    return {h.name: h for h in await lab.client.hosts()}


async def host_events(lab: Lab, host: str) -> list[str]:
    return [e.type for e in await lab.events() if e.host == host and not e.vm]


async def test_evacuation_moves_every_running_vm_by_vmotion_then_the_host_is_in_maintenance(lab):
    await vm(lab, "vm-a", datastore="vmfs-01")
    await vm(lab, "vm-b", datastore="nfs-01", memory_mb=512)
    await vm(lab, "vm-c")
    await vm(lab, "vm-off", power=False)
    await asyncio.sleep(3)  # the guests write
    task = await lab.wait(await lab.client.enter_maintenance_mode("esxi-01", evacuate=True))
    assert (task.state, task.name, task.result) == (OK, "EnterMaintenanceMode_Task", "esxi-01")
    assert (await hosts(lab))["esxi-01"].in_maintenance_mode
    assert lab.engine.running("esxi-01").kernel.in_maintenance
    for name in ("vm-a", "vm-b", "vm-c"):
        record = await lab.client.vm(name)
        assert record.host in ("esxi-02", "esxi-03") and record.power_state == ON
        assert running_on(lab, name) == [record.host]
    # Placed by free memory: the biggest first, then each to the emptier host.
    assert (await lab.client.vm("vm-b")).host != (await lab.client.vm("vm-a")).host
    off = await lab.client.vm("vm-off")
    assert (off.host, off.power_state) == ("esxi-01", OFF)  # powered off: it stays
    migrations = [t for t in await lab.client.tasks(50) if t.name == "MigrateVM_Task"]
    assert sorted(t.entity for t in migrations) == ["vm-a", "vm-b", "vm-c"]
    assert all(t.state == OK and t.migration.hot for t in migrations)
    for name in ("vm-a", "vm-b"):
        acked = (await lab.client.vm(name)).guest_writes_acked
        report = await lab.client.verify_disk(name, acked)
        assert (report.missing, report.corrupt) == (0, 0)
    types = await host_events(lab, "esxi-01")
    assert types.index("EnteringMaintenanceModeEvent") < types.index("EnteredMaintenanceModeEvent")

    # In maintenance mode: it powers nothing on, receives no migration, takes no new VM
    # by placement, and vCenter says why.
    with pytest.raises(InvalidState, match="maintenance mode"):
        await lab.client.power_on("vm-off")
    with pytest.raises(InvalidState, match="maintenance mode"):
        await lab.client.migrate_vm("vm-c", "esxi-01")
    assert (await lab.wait(await lab.client.create_vm("vm-new", memory_mb=64))).state == OK
    assert (await lab.client.vm("vm-new")).host != "esxi-01"
    # The host refuses on its own, too (a direct call, vCenter bypassed).
    with pytest.raises(InvalidState, match="maintenance mode"):
        await host_call(lab.engine, "esxi-01", "PowerOnVm", hpb.HostVmRequest(name="vm-off"))

    # The mode outlives a reboot of the host (esx.conf) and a restart of vCenter.
    await lab.engine.reboot("esxi-01")
    await lab.restart()
    assert (await hosts(lab))["esxi-01"].in_maintenance_mode

    task = await lab.wait(await lab.client.exit_maintenance_mode("esxi-01"))
    assert (task.state, task.name) == (OK, "ExitMaintenanceMode_Task")
    assert not (await hosts(lab))["esxi-01"].in_maintenance_mode
    assert (await lab.power_on("vm-off")).state == OK
    assert running_on(lab, "vm-off") == ["esxi-01"]
    assert "ExitMaintenanceModeEvent" in await host_events(lab, "esxi-01")


async def test_without_evacuate_a_host_running_vms_is_refused_at_once(lab):
    await vm(lab, "vm-r")
    with pytest.raises(InvalidState, match=r"vm-r.*evacuate"):
        await lab.client.enter_maintenance_mode("esxi-01")
    assert not (await hosts(lab))["esxi-01"].in_maintenance_mode
    # A host that runs nothing enters without moving anything.
    task = await lab.wait(await lab.client.enter_maintenance_mode("esxi-02"))
    assert task.state == OK and (await hosts(lab))["esxi-02"].in_maintenance_mode
    with pytest.raises(InvalidState, match="already in maintenance mode"):
        await lab.client.enter_maintenance_mode("esxi-02")
    with pytest.raises(InvalidState, match="not in maintenance mode"):
        await lab.client.exit_maintenance_mode("esxi-03")
    with pytest.raises(InvalidArgument):
        await lab.client.enter_maintenance_mode("bad host!")


async def test_a_vm_that_cannot_move_fails_the_task_and_the_host_stays_out(make_lab):
    spec = ClusterSpec(
        hosts=(HostSpec("esxi-01", cpu_cores=16), HostSpec("esxi-02", cpu_cores=4)),
        datastores=(),
    )
    lab = await make_lab(spec)
    await vm(lab, "vm-small", cpus=2)
    await vm(lab, "vm-wide", cpus=8)  # esxi-02 has too few cores for it
    task = await lab.wait(await lab.client.enter_maintenance_mode("esxi-01", evacuate=True))
    assert (task.state, task.error.name) == (ERROR, "MigrationFault")
    assert "vm-wide" in task.error.message and "NotEnoughCpus" in task.error.message
    assert "vm-small" not in task.error.message
    assert not (await hosts(lab))["esxi-01"].in_maintenance_mode
    assert not lab.engine.running("esxi-01").kernel.in_maintenance
    assert running_on(lab, "vm-wide") == ["esxi-01"]  # untouched, running
    assert running_on(lab, "vm-small") == ["esxi-02"]  # what could move, moved
    # Out of maintenance mode, the host powers on again.
    assert (await lab.power_off("vm-wide")).state == OK
    assert (await lab.power_on("vm-wide")).state == OK


async def test_evacuation_places_a_vm_only_where_its_datastore_is_reached(lab):
    await vm(lab, "vm-roomy", host="esxi-02", memory_mb=2048)  # esxi-03 has more free
    await vm(lab, "vm-ds", datastore="vmfs-01")
    await host_call(
        lab.engine, "esxi-03", "UnmountDatastore", hpb.UnmountDatastoreRequest(name="vmfs-01")
    )
    task = await lab.wait(await lab.client.enter_maintenance_mode("esxi-01", evacuate=True))
    assert task.state == OK
    assert running_on(lab, "vm-ds") == ["esxi-02"]
    migrations = [t for t in await lab.client.tasks(50) if t.name == "MigrateVM_Task"]
    assert [(t.entity, t.state) for t in migrations] == [("vm-ds", OK)]  # no try on esxi-03
    assert (await lab.wait(await lab.client.exit_maintenance_mode("esxi-01"))).state == OK
    # Nowhere else reaches it: refused, naming the datastore.
    await host_call(
        lab.engine, "esxi-01", "UnmountDatastore", hpb.UnmountDatastoreRequest(name="vmfs-01")
    )
    task = await lab.wait(await lab.client.enter_maintenance_mode("esxi-02", evacuate=True))
    assert (task.state, task.error.name) == (ERROR, "MigrationFault")
    assert "vm-ds" in task.error.message and "reaches datastore vmfs-01" in task.error.message
    assert running_on(lab, "vm-ds") == ["esxi-02"]


async def test_a_running_vm_needs_its_cpu_features_on_the_destination(make_lab):
    spec = ClusterSpec(
        hosts=(
            HostSpec("esxi-01", cpu_model="intel-icelake"),
            HostSpec("esxi-02", cpu_model="intel-broadwell"),
            HostSpec("esxi-03", cpu_model="amd-zen3"),
        ),
        datastores=(),
    )
    lab = await make_lab(spec)
    assert (await hosts(lab))["esxi-02"].cpu_model == "intel-broadwell"
    await vm(lab, "vm-new-cpu")
    assert (await lab.client.vm("vm-new-cpu")).cpu_features == "intel-icelake"
    before = await lab.snapshot()
    with pytest.raises(CpuIncompatible, match="avx512f"):
        await lab.client.migrate_vm("vm-new-cpu", "esxi-02")
    with pytest.raises(CpuIncompatible, match="an Intel CPU .* is AMD"):
        await lab.client.migrate_vm("vm-new-cpu", "esxi-03")
    assert await lab.snapshot() == before
    # A VM that booted on the older CPU moves up, and keeps its features there.
    await vm(lab, "vm-old-cpu", host="esxi-02")
    assert (await lab.wait(await lab.client.migrate_vm("vm-old-cpu", "esxi-01"))).state == OK
    assert (await lab.client.vm("vm-old-cpu")).cpu_features == "intel-broadwell"
    assert (await lab.wait(await lab.client.migrate_vm("vm-old-cpu", "esxi-02"))).state == OK
    # Powered off, the new-CPU VM moves cold wherever.
    assert (await lab.power_off("vm-new-cpu")).state == OK
    assert (await lab.wait(await lab.client.migrate_vm("vm-new-cpu", "esxi-02"))).state == OK


async def test_an_evc_mode_masks_every_host_down_so_vms_move_between_them(make_lab):
    spec = ClusterSpec(
        hosts=(
            HostSpec("esxi-01", cpu_model="intel-sapphirerapids"),
            HostSpec("esxi-02", cpu_model="intel-skylake"),
        ),
        datastores=(),
    )
    lab = await make_lab(spec)
    with pytest.raises(EVCAdmissionFailed, match="esxi-02.*intel-icelake"):
        await lab.client.configure_evc("intel-icelake")  # esxi-02 is older
    with pytest.raises(InvalidArgument, match="EVC mode"):
        await lab.client.configure_evc("intel-nonesuch")
    await vm(lab, "vm-early")  # powered on with Sapphire Rapids' features
    with pytest.raises(EVCAdmissionFailed, match="vm-early"):
        await lab.client.configure_evc("intel-skylake")
    assert (await lab.power_off("vm-early")).state == OK
    status = await lab.client.configure_evc("intel-skylake")
    assert status.evc_mode == "intel-skylake"
    assert "ClusterReconfiguredEvent" in [e.type for e in await lab.events()]
    assert (await lab.power_on("vm-early")).state == OK
    assert (await lab.client.vm("vm-early")).cpu_features == "intel-skylake"
    assert (await lab.wait(await lab.client.migrate_vm("vm-early", "esxi-02"))).state == OK
    assert running_on(lab, "vm-early") == ["esxi-02"]
    # A host whose CPU is older than the mode cannot join.
    with pytest.raises(EVCAdmissionFailed, match="intel-haswell"):
        await lab.client.add_host("esxi-09", "", cpu_model="intel-haswell")
    assert (await lab.client.configure_evc("")).evc_mode == ""


async def test_a_high_priority_vmotion_starts_before_queued_default_ones(lab):
    names = [f"vm-p{i}" for i in range(11)]
    for name in names:
        await vm(lab, name, memory_mb=64)
    tasks = [await lab.client.migrate_vm(n, "esxi-02") for n in names[:10]]  # 2 queue
    urgent = await lab.client.migrate_vm(names[10], "esxi-02", priority="high")
    await asyncio.sleep(0.001)
    assert [(await lab.client.task(t.id)).state for t in tasks[8:]] == [QUEUED, QUEUED]
    done = [await lab.wait(t) for t in [*tasks, urgent]]
    assert all(t.state == OK for t in done)
    began = [e.vm for e in await lab.events() if e.type == "VmBeingHotMigratedEvent"]
    assert began.index("vm-p10") < min(began.index("vm-p8"), began.index("vm-p9"))
    with pytest.raises(InvalidArgument, match="priority"):
        await lab.client.migrate_vm("vm-p0", "esxi-03", priority="urgent")


async def test_vmk1_untagged_is_vmotion_not_configured_and_its_link_sets_speed_and_limits(lab):
    network = await lab.client.host_network("esxi-02")
    nics = {n.device: n for n in network.vmknics}
    assert list(nics["vmk0"].services) == ["management"]
    assert (list(nics["vmk1"].services), nics["vmk1"].link_speed_mbps) == (["vmotion"], 10000)
    await vm(lab, "vm-t", memory_mb=1024)
    network = await lab.client.update_vmknic("esxi-02", "vmk1", vmotion=False)
    assert list({n.device: n for n in network.vmknics}["vmk1"].services) == []
    task = await lab.wait(await lab.client.migrate_vm("vm-t", "esxi-02"))
    assert (task.state, task.error.name) == (ERROR, "VMotionNotConfigured")
    assert "vmk1" in task.error.message and running_on(lab, "vm-t") == ["esxi-01"]
    # Kept in esx.conf: still untagged after a reboot; tagged again, it moves.
    await lab.engine.reboot("esxi-02")
    for _ in range(2):  # found rebooted (not responding), then attached again
        await lab.vc.hosts.heartbeat("esxi-02")
    network = await lab.client.host_network("esxi-02")
    assert list({n.device: n for n in network.vmknics}["vmk1"].services) == []
    await lab.client.update_vmknic("esxi-02", "vmk1", vmotion=True)
    fast = await lab.wait(await lab.client.migrate_vm("vm-t", "esxi-02"))
    assert fast.state == OK
    # At 1 Gb/s the same VM takes longer to pre-copy, and the host takes 4 at once.
    await lab.client.update_vmknic("esxi-01", "vmk1", link_speed_mbps=1000)
    slow = await lab.wait(await lab.client.migrate_vm("vm-t", "esxi-01"))
    assert slow.state == OK and slow.migration.total_s > 5 * fast.migration.total_s
    names = [f"vm-s{i}" for i in range(5)]
    for name in names:
        await vm(lab, name, memory_mb=64)
    tasks = [await lab.client.migrate_vm(n, "esxi-03") for n in names]
    await asyncio.sleep(0.001)
    states = [(await lab.client.task(t.id)).state for t in tasks]
    assert states.count(QUEUED) == 1
    assert all(t.state == OK for t in [await lab.wait(t) for t in tasks])
    events = [e.type for e in await lab.events() if e.host == "esxi-01"]
    assert "HostVmknicReconfiguredEvent" in events


@pytest.mark.parametrize(
    "device, vmotion, speed, match",
    [
        ("vmk0", False, 0, "only vmk1"),
        ("vmk1", None, 1234, "link_speed_mbps is one of"),
        ("vmk1", None, 0, "nothing to change"),
    ],
)
async def test_bad_vmknic_changes_are_refused(lab, device, vmotion, speed, match):
    with pytest.raises(InvalidArgument, match=match):
        await lab.client.update_vmknic("esxi-01", device, vmotion, speed)
    nics = {n.device: n for n in (await lab.client.host_network("esxi-01")).vmknics}
    assert (list(nics["vmk1"].services), nics["vmk1"].link_speed_mbps) == (["vmotion"], 10000)
