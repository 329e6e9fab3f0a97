"""The cluster as containers: every host in its own container on the management,
storage and vMotion networks; VMs with disks on the array; network cuts, restarts of
vCenter and of the array, a host container killed and started again, the fault
service cutting a host's storage inside its container, and vMotion between host
containers: over the vmotion network, evacuating a host entering maintenance mode,
and failing back to its source when the destination's container is killed.

Marked `docker`: the session's stack is started once (conftest.py) and removed with
its volumes at the end. The tests run in order and build on each other: the VMs of
the first ones are the subjects of the later ones; the kill and the container's
start come in the middle, then the fault service's own cut, on a host they spared;
the vMotions come next, the last of them killing esxi-01 and starting it again;
last, vSphere HA restarts a VM of a killed esxi-01 on another host, and leaves the
VM of an esxi-01 cut from management only where it runs.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from vsim.cluster.client import VCenterClient
from vsim.faults import FileLocked, InvalidState
from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb

pytestmark = pytest.mark.docker
CONNECTED, NOT_RESPONDING = (
    pb.CONNECTION_STATE_CONNECTED,
    pb.CONNECTION_STATE_NOT_RESPONDING,
)
HOSTS = ["esxi-01", "esxi-02", "esxi-03", "esxi-04"]
HA_DETECTION = 18.0
"""Seconds in which HA declares a silent host dead when it has heartbeat datastores:
vCenter must call it not responding within that (+ one poll of ours)."""
POLL_SLACK = 2.0
BIG_MB = 4096
"""A VM whose pre-copy over 1 GbE lasts ~13 s (its guest has touched 1.6 GB): time to
kill its destination in while it runs."""
HA_RESTART_S = 90.0
"""Seconds from a host's kill to its VM running elsewhere by HA: dead at 18 s, the
VMFS lock stale 16 s later as the restarting host watches it, then the power-on."""
ON = pb.POWER_STATE_POWERED_ON


async def not_responding_within_ha_detection(client, host: str, since: float, wait_until):
    """vCenter calls host not responding within HA's detection time from `since`."""

    async def not_responding():
        hosts = {h.name: h.connection_state for h in await client.hosts()}
        return hosts[host] == NOT_RESPONDING

    assert await wait_until(not_responding, 40), f"{host} is still called responding"
    assert time.monotonic() - since <= HA_DETECTION + POLL_SLACK


async def running_vm(client, name: str, host: str, datastore: str, iops: int = 50) -> None:
    """A powered-on VM with a 16 MB disk on datastore whose guest writes iops a second."""
    await client.run(
        await client.create_vm(
            name, memory_mb=256, host=host, datastore=datastore, disk_mb=16, guest_write_iops=iops
        )
    )
    await client.run(await client.power_on(name))


async def started_again(compose, client, wait_until, host: str) -> None:
    """docker start of host's killed container once vCenter calls it not responding;
    returns once vCenter has it connected again (within 120 s)."""

    async def state():
        return {h.name: h.connection_state for h in await client.hosts()}[host]

    async def not_responding():
        return await state() == NOT_RESPONDING

    async def connected():
        return await state() == CONNECTED

    assert await wait_until(not_responding, 60), f"{host} is still called responding"
    compose.docker("start", compose.container(host))
    assert await wait_until(connected, 120), (
        f"{host} did not reconnect within 120 s of its container's start:\n"
        + compose.logs("vcenter", host)
    )


async def read_back_after_array_restart(client, wait_until, vm: str, acked: int):
    """The VM's disk verified against its acknowledged writes once the array answers
    again (within 60 s)."""

    async def read_back():
        try:
            return await client.verify_disk(vm, acked)
        except Exception:  # noqa: BLE001 - the array is still coming back
            return None

    report = await wait_until(read_back, 60)
    assert report is not None, f"{vm}'s disk could not be read after the array restart"
    return report


async def test_every_host_runs_in_its_own_container_on_the_management_network(compose, client):
    hosts = {h.name: h for h in await client.hosts()}
    assert sorted(hosts) == HOSTS
    for i, name in enumerate(HOSTS, start=1):
        assert hosts[name].connection_state == CONNECTED
        assert hosts[name].endpoint.startswith(f"{compose.net}.1.1{i}:")
    datastores = {d.name: d for d in await client.datastores()}
    for name in ("vmfs-01", "nfs-01"):
        assert sorted(m.host for m in datastores[name].mounts if m.accessible) == HOSTS


async def test_a_vm_runs_with_its_disk_on_the_array(client, wait_until):
    await running_vm(client, "c-web", "esxi-02", "vmfs-01")
    lock = await client.lock_owner("vmfs-01", "c-web/c-web-flat.vmdk")
    assert lock.mode == "EXCLUSIVE" and [h.host for h in lock.holders] == ["esxi-02"]

    async def acked():
        return (await client.vm("c-web")).guest_writes_acked >= 20

    assert await wait_until(acked, 30)


async def test_a_vcenter_restart_keeps_its_state_and_reattaches_the_running_hosts(
    compose, client, wait_until
):
    """docker restart vcenter: the hosts and their VMs run on (the Ray head has a
    container of its own); the restarted vCenter presents the same certificate,
    honours a session from before, keeps inventory and task history, and re-attaches
    to the same host actors, whose guests never stopped writing."""
    vms = {v.name: (v.host, v.power_state) for v in await client.vms()}
    tasks = await client.tasks()  # newest first; finished tasks never change
    endpoints = {h.name: h.endpoint for h in await client.hosts()}
    assert vms["c-web"] == ("esxi-02", pb.POWER_STATE_POWERED_ON)
    acked = (await client.vm("c-web")).guest_writes_acked
    compose.docker("restart", compose.container("vcenter"))
    compose.wait_healthy("vcenter")
    # The pinned thumbprint and the old session: `vsim` on this machine works unchanged.
    again = await VCenterClient.connect(compose.endpoint, client.thumbprint, client.session)
    try:

        async def reattached():
            hosts = await again.hosts()
            return all(h.connection_state == CONNECTED for h in hosts) and hosts

        hosts = await wait_until(reattached, 60)
        assert hosts, "the hosts did not re-attach within 60 s"
        assert {h.name: h.endpoint for h in hosts} == endpoints  # the same actors
        assert {v.name: (v.host, v.power_state) for v in await again.vms()} == vms
        assert (await again.tasks())[-len(tasks) :] == tasks
        events = [e.type for e in await again.events()]
        assert events.count("VcenterStartedEvent") == 2
        # A host that had rebooted would have its VMs off: c-web's guest wrote on.
        assert (await again.vm("c-web")).guest_writes_acked > acked
        report = await again.verify_disk("c-web", acked)
        assert (report.corrupt, report.missing) == (0, 0)
    finally:
        await again.close()


async def test_a_host_cut_from_storage_loses_access_within_16_s(compose, client, wait_until):
    """docker network disconnect storage esxi-03: its VMFS heartbeats fail, and it
    marks the volume lost-access within the 16 s a heartbeat may go unrenewed."""
    compose.docker(
        "network", "disconnect", compose.network("storage"), compose.container("esxi-03")
    )
    cut = time.monotonic()

    async def lost():
        datastores = {d.name: d for d in await client.datastores()}
        mounts = {m.host: m.accessible for m in datastores["vmfs-01"].mounts}
        return mounts.get("esxi-03") is False

    assert await wait_until(lost, 30)
    assert time.monotonic() - cut <= 16 + 4  # + one vCenter round trip and a poll
    hosts = {h.name: h.connection_state for h in await client.hosts()}
    assert hosts["esxi-03"] == CONNECTED  # its management network is fine


async def test_a_host_cut_from_management_keeps_its_datastore_heartbeats(
    compose, client, wait_until
):
    """docker network disconnect management esxi-04: vCenter loses it, but its VM's
    disk lock stays live as another host sees it (the basis of HA's isolation
    detection: datastore heartbeats go on)."""
    await running_vm(client, "c-iso", "esxi-04", "vmfs-01", iops=0)
    compose.docker(
        "network", "disconnect", compose.network("management"), compose.container("esxi-04")
    )
    cut = time.monotonic()

    await not_responding_within_ha_detection(client, "esxi-04", cut, wait_until)
    while time.monotonic() - cut < 20:  # past the 16 s a dead host's heartbeat takes
        await asyncio.sleep(1)
    lock = await client.lock_owner("vmfs-01", "c-iso/c-iso-flat.vmdk")
    assert lock.observed_by in HOSTS and lock.observed_by != "esxi-04"
    (holder,) = lock.holders
    assert holder.host == "esxi-04" and holder.live
    assert holder.seconds_since_heartbeat_change < 16
    with pytest.raises(FileLocked):
        await client.break_stale_lock("vmfs-01", "c-iso/c-iso-flat.vmdk")


async def test_acknowledged_writes_survive_an_array_restart(compose, client, wait_until):
    """docker restart array (its data on a volume): every guest write acknowledged
    before the restart reads back intact, and the guest, whose writes were retried
    while the array was away, writes on."""
    await running_vm(client, "c-db", "esxi-01", "nfs-01")

    async def acked():
        return (await client.vm("c-db")).guest_writes_acked >= 50

    assert await wait_until(acked, 30)
    compose.docker("restart", compose.container("array"))
    before = (await client.vm("c-db")).guest_writes_acked

    report = await read_back_after_array_restart(client, wait_until, "c-db", before)
    assert report.corrupt == 0 and report.missing == 0
    assert report.highest_seq >= before

    async def writing_again():
        return (await client.vm("c-db")).guest_writes_acked >= report.highest_seq + 20

    assert await wait_until(writing_again, 30), "the guest did not resume writing"


async def test_a_killed_host_container_is_not_responding_and_its_locks_wait(
    compose, client, wait_until
):
    """docker kill esxi-02: vCenter marks it not responding within HA's detection
    time. Its VMs' disk locks stay until the holder is stale: on VMFS 16 s after its
    last heartbeat (written every 3 s), on NFS 35 s after the last change of its lock
    file (rewritten every 10 s) as another host watched it. Then they break, and every
    write the guests had acknowledged reads back: nobody wrote those disks before."""
    await running_vm(client, "c-nfs", "esxi-02", "nfs-01")
    disks = {
        "c-web": ("vmfs-01", "c-web/c-web-flat.vmdk"),
        "c-nfs": ("nfs-01", "c-nfs/c-nfs-flat.vmdk"),
    }

    async def writing():
        return all([(await client.vm(vm)).guest_writes_acked >= 20 for vm in disks])

    assert await wait_until(writing, 30)
    acked = {vm: (await client.vm(vm)).guest_writes_acked for vm in disks}
    compose.docker("kill", compose.container("esxi-02"))
    killed = time.monotonic()

    await not_responding_within_ha_detection(client, "esxi-02", killed, wait_until)
    # Both locks stay the dead host's, and unbreakable, for at least 12 s.
    while time.monotonic() - killed < 12:
        for datastore, path in disks.values():
            with pytest.raises(FileLocked):
                await client.break_stale_lock(datastore, path)
            lock = await client.lock_owner(datastore, path)
            assert [h.host for h in lock.holders] == ["esxi-02"]
        await asyncio.sleep(1)

    broken_at: dict[str, float] = {}

    async def all_broken():
        for vm, (datastore, path) in disks.items():
            if vm in broken_at:
                continue
            try:
                if (await client.break_stale_lock(datastore, path)).broken:
                    broken_at[vm] = time.monotonic() - killed
            except FileLocked:
                pass
        return len(broken_at) == len(disks)

    assert await wait_until(all_broken, 60), f"only {sorted(broken_at)} broke within 60 s"
    # Stale: 16 s since the last VMFS heartbeat, at most 3 s before the kill; 35 s of
    # an unchanged NFS lock file, last rewritten at most 10 s before the kill.
    assert broken_at["c-web"] >= 16 - 3
    assert broken_at["c-nfs"] >= 35 - 10
    for vm in disks:
        report = await client.verify_disk(vm, acked[vm])
        assert (report.corrupt, report.missing) == (0, 0), vm
        assert report.highest_seq >= acked[vm]


async def test_a_host_container_started_again_is_booted_and_reconnects(compose, client, wait_until):
    """docker start esxi-02 (killed above): its Ray node joins again, and vCenter's
    monitor boots the host on it, as a rebooted ESXi host reconnects: same
    certificate (its data volume kept it), its VMs registered again, powered off."""
    before = {h.name: h for h in await client.hosts()}["esxi-02"]
    assert before.connection_state == NOT_RESPONDING
    compose.docker("start", compose.container("esxi-02"))

    async def reconnected():
        host = {h.name: h for h in await client.hosts()}["esxi-02"]
        return host if host.connection_state == CONNECTED else None

    host = await wait_until(reconnected, 120)
    assert host, "esxi-02 did not reconnect within 120 s of its container's start:\n" + (
        compose.logs("vcenter", "esxi-02")
    )
    assert host.ssl_thumbprint == before.ssl_thumbprint
    assert host.endpoint.startswith(f"{compose.net}.1.12:")
    vms = {v.name: v.power_state for v in await client.vms(host="esxi-02")}
    assert vms == {"c-web": pb.POWER_STATE_POWERED_OFF, "c-nfs": pb.POWER_STATE_POWERED_OFF}
    events = [(e.type, e.host) for e in await client.events()]
    assert ("HostConnectedEvent", "esxi-02") in events


async def test_the_fault_service_cuts_one_hosts_storage_inside_its_container(client, wait_until):
    """vCenter's fault service in the stack: SetLink cuts esxi-01's storage at the
    host's own ports, inside its container (no docker network change): its VMFS
    volume is lost within 16 s while vCenter still manages it, and comes back once the
    link is up again."""

    async def vmfs_on_esxi_01():
        datastores = {d.name: d for d in await client.datastores()}
        return {m.host: m.accessible for m in datastores["vmfs-01"].mounts}.get("esxi-01")

    assert await vmfs_on_esxi_01()
    state = await client.set_link("esxi-01", "storage", "down")
    cut = time.monotonic()
    assert [(f.kind, f.target, f.detail) for f in state.faults] == [
        ("link", "esxi-01", "storage down")
    ]

    async def lost():
        return await vmfs_on_esxi_01() is False

    assert await wait_until(lost, 30)
    assert time.monotonic() - cut <= 16 + 4
    hosts = {h.name: h.connection_state for h in await client.hosts()}
    assert hosts["esxi-01"] == CONNECTED
    await client.clear_faults()
    assert await wait_until(vmfs_on_esxi_01, 60), "esxi-01 never got vmfs-01 back"
    events = [e.type for e in await client.events()]
    assert "FaultInjectedEvent" in events and "FaultClearedEvent" in events


async def test_the_fault_service_slows_a_datastore_and_restarts_the_array_program(
    client, wait_until
):
    """vCenter manages the stack's array with the array's key, over the management
    network: a disk latency on nfs-01 is set at the array (a guest writing there slows
    to at most a write a second), then mended; the array program restarts inside
    itself, and every write acknowledged before reads back."""
    await running_vm(client, "c-slow", "esxi-01", "nfs-01", iops=20)

    async def writing():
        return (await client.vm("c-slow")).guest_writes_acked >= 20

    assert await wait_until(writing, 30)
    state = await client.set_disk_latency("nfs-01", 1000)
    assert [(f.kind, f.target, f.detail) for f in state.faults] == [
        ("disk-latency", "nfs-01", "1000 ms")
    ]
    await asyncio.sleep(2)  # the write in flight ends
    slowed = (await client.vm("c-slow")).guest_writes_acked
    await asyncio.sleep(6)
    assert (await client.vm("c-slow")).guest_writes_acked - slowed <= 6 + 1
    assert not (await client.clear_faults()).faults

    state = await client.restart_array()
    assert "Restarted the storage array program" in state.message
    acked = (await client.vm("c-slow")).guest_writes_acked

    report = await read_back_after_array_restart(client, wait_until, "c-slow", acked)
    assert report.corrupt == 0 and report.missing == 0
    messages = [e.message for e in await client.events() if e.type == "FaultInjectedEvent"]
    assert any("nfs-01" in m and "1000 ms" in m for m in messages)
    assert any("Restarted the storage array program" in m for m in messages)


async def test_a_vmotion_between_host_containers_goes_over_the_vmotion_network(
    compose, client, wait_until
):
    """c-slow (on esxi-01, writing to nfs-01) moves to esxi-02 host to host: with
    esxi-02 off the vmotion network the migration fails and the VM runs on where it
    was, though esxi-02's management is fine; back on it, the VM moves, and every
    write acknowledged before reads back."""
    vmotion, esxi_02 = compose.network("vmotion"), compose.container("esxi-02")
    compose.docker("network", "disconnect", vmotion, esxi_02)
    try:
        task = await client.wait(await client.migrate_vm("c-slow", "esxi-02"), timeout=120)
        assert task.error.name == "MigrationFault", task
        vm = await client.vm("c-slow")
        assert (vm.host, vm.power_state) == ("esxi-01", pb.POWER_STATE_POWERED_ON)
        hosts = {h.name: h.connection_state for h in await client.hosts()}
        assert hosts["esxi-02"] == CONNECTED
    finally:
        compose.docker("network", "connect", "--ip", f"{compose.net}.3.12", vmotion, esxi_02)
    task = await client.run(await client.migrate_vm("c-slow", "esxi-02"), timeout=120)
    assert (task.migration.hot, task.migration.destination) == (True, "esxi-02")
    acked = (await client.vm("c-slow")).guest_writes_acked
    report = await client.verify_disk("c-slow", acked)
    assert report.corrupt == 0 and report.missing == 0


async def test_maintenance_mode_evacuates_a_host_by_vmotion(client):
    """esxi-01 enters maintenance mode with evacuate: c-db moves off by vMotion and
    runs on elsewhere, its disk lock and acknowledged writes with it; a powered-off
    VM stays, refused power-on until the host exits maintenance mode."""
    await client.run(await client.create_vm("c-idle", memory_mb=64, host="esxi-01"))
    assert (await client.vm("c-db")).host == "esxi-01"
    task = await client.run(
        await client.enter_maintenance_mode("esxi-01", evacuate=True), timeout=180
    )
    assert (task.name, task.result) == ("EnterMaintenanceMode_Task", "esxi-01")
    assert {h.name: h for h in await client.hosts()}["esxi-01"].in_maintenance_mode
    vm = await client.vm("c-db")
    assert vm.host != "esxi-01" and vm.power_state == pb.POWER_STATE_POWERED_ON
    moved = [t for t in await client.tasks() if t.name == "MigrateVM_Task"][0]  # newest
    assert moved.entity == "c-db" and moved.migration.hot
    assert moved.migration.destination == vm.host
    lock = await client.lock_owner("nfs-01", "c-db/c-db-flat.vmdk")
    assert [h.host for h in lock.holders] == [vm.host]
    report = await client.verify_disk("c-db", vm.guest_writes_acked)
    assert (report.corrupt, report.missing) == (0, 0)
    idle = await client.vm("c-idle")
    assert (idle.host, idle.power_state) == ("esxi-01", pb.POWER_STATE_POWERED_OFF)
    with pytest.raises(InvalidState, match="maintenance mode"):
        await client.power_on("c-idle")

    await client.run(await client.exit_maintenance_mode("esxi-01"))
    assert not {h.name: h for h in await client.hosts()}["esxi-01"].in_maintenance_mode
    await client.run(await client.power_on("c-idle"))
    await client.run(await client.power_off("c-idle"))
    await client.run(await client.destroy_vm("c-idle"))


async def test_a_destination_container_killed_during_precopy_leaves_the_vm_on_its_source(
    compose, client, wait_until
):
    """docker kill esxi-01 while c-big (4 GiB, writing to nfs-01) pre-copies to it
    from esxi-02 over a 1 Gb/s vMotion link: the task fails with MigrationFault,
    VmFailedMigrateEvent is posted, and c-big goes on running on esxi-02, every
    acknowledged write reading back. esxi-01 is started again and reconnects."""
    esxi_01 = compose.container("esxi-01")
    await client.update_vmknic("esxi-01", "vmk1", link_speed_mbps=1000)
    await client.run(
        await client.create_vm(
            "c-big", memory_mb=BIG_MB, host="esxi-02", datastore="nfs-01", disk_mb=16,
            guest_write_iops=100,
        )
    )  # fmt: skip
    await client.run(await client.power_on("c-big"))

    async def writing():
        return (await client.vm("c-big")).guest_writes_acked >= 20

    assert await wait_until(writing, 30)
    task = await client.migrate_vm("c-big", "esxi-01")

    async def precopying():
        """Past PrepareVmotion (progress 20) and c-big's pages arriving on esxi-01."""
        now = await client.task(task.id)
        assert now.state in (common_pb2.TASK_STATE_QUEUED, common_pb2.TASK_STATE_RUNNING), now
        stats = await client.host_stats("esxi-01")
        arriving = any(v.name == "c-big" and v.memory.granted > 0 for v in stats.vms)
        return now.progress >= 20 and arriving

    assert await wait_until(precopying, 60, step=0.2), "c-big's pre-copy never got under way"
    compose.docker("kill", esxi_01)
    try:
        done = await client.wait(task, timeout=180)
        assert (done.state, done.error.name) == (common_pb2.TASK_STATE_ERROR, "MigrationFault")
        vm = await client.vm("c-big")
        assert (vm.host, vm.power_state) == ("esxi-02", pb.POWER_STATE_POWERED_ON)
        failed = [(e.vm, e.host) for e in await client.events() if e.type == "VmFailedMigrateEvent"]
        assert ("c-big", "esxi-02") in failed

        async def writing_on():  # its guest was never stopped
            return (await client.vm("c-big")).guest_writes_acked >= vm.guest_writes_acked + 20

        assert await wait_until(writing_on, 30), "c-big's guest stopped writing"
        acked = (await client.vm("c-big")).guest_writes_acked
        report = await client.verify_disk("c-big", acked)
        assert (report.corrupt, report.missing) == (0, 0)
        lock = await client.lock_owner("nfs-01", "c-big/c-big-flat.vmdk")
        assert [h.host for h in lock.holders] == ["esxi-02"]
    finally:
        await started_again(compose, client, wait_until, "esxi-01")
    await client.update_vmknic("esxi-01", "vmk1", link_speed_mbps=10000)


async def ha_ready(client, host: str, vm: str) -> bool:
    """An HA master elected, host its slave (not the master: a master's death would
    add an election), and vm protected."""
    status = await client.ha_status()
    states = {h.host: h.state for h in status.hosts}
    protected = {v.name for v in status.vms if v.protected}
    return bool(status.master) and states.get(host) == "connectedToMaster" and vm in protected


async def test_ha_restarts_a_killed_host_containers_vm_on_another_host(compose, client, wait_until):
    """vSphere HA on, docker kill esxi-01 while c-ha (its disk on vmfs-01) runs there:
    the master's agent finds esxi-01 dead (18 s: its network and datastore heartbeats
    stopped), and c-ha runs again on a survivor once esxi-01's VMFS lock is stale
    (16 s), within HA_RESTART_S; every write acknowledged before the kill reads back,
    and vCenter's log has VmRestartedByHAEvent. esxi-01 is started again and
    reconnects; HA is turned off again."""
    await running_vm(client, "c-ha", "esxi-01", "vmfs-01")
    await client.configure_ha()
    try:
        assert await wait_until(lambda: ha_ready(client, "esxi-01", "c-ha"), 60), (
            f"HA not ready: {await client.ha_status()}"
        )

        async def writing():
            return (await client.vm("c-ha")).guest_writes_acked >= 20

        assert await wait_until(writing, 30)
        acked = (await client.vm("c-ha")).guest_writes_acked
        compose.docker("kill", compose.container("esxi-01"))
        killed = time.monotonic()
        try:

            async def restarted():
                vm = await client.vm("c-ha")
                return vm if vm.host != "esxi-01" and vm.power_state == ON else None

            vm = await wait_until(restarted, HA_RESTART_S, step=1)
            assert vm, f"c-ha was not restarted within {HA_RESTART_S:.0f} s:\n" + (
                compose.logs("vcenter", "esxi-02", "esxi-03")
            )
            took = time.monotonic() - killed
            assert took >= 16, took  # never before the dead host's VMFS lock was stale
            report = await client.verify_disk("c-ha", acked)
            assert (report.corrupt, report.missing) == (0, 0)
            assert report.highest_seq >= acked
            lock = await client.lock_owner("vmfs-01", "c-ha/c-ha-flat.vmdk")
            assert [h.host for h in lock.holders] == [vm.host]

            async def event():
                events = await client.events()
                return [(e.vm, e.host) for e in events if e.type == "VmRestartedByHAEvent"]

            assert ("c-ha", vm.host) in await wait_until(event, 30)
        finally:
            await started_again(compose, client, wait_until, "esxi-01")
    finally:
        await client.configure_ha(enabled=False)


async def test_an_isolated_host_keeps_its_vm_and_nobody_else_starts_it(compose, client, wait_until):
    """vSphere HA on (isolation response none), docker network disconnect management
    esxi-01 while c-island (vmfs-01) runs there: for 60 s vCenter has it on esxi-01,
    powered on, no VmRestartedByHAEvent for it, its disk lock live and esxi-01's as
    another host sees it; reconnected, esxi-01 (its Ray node alive throughout) is
    connected again and c-island's guest wrote on."""
    await running_vm(client, "c-island", "esxi-01", "vmfs-01")
    await client.configure_ha()
    management, esxi_01 = compose.network("management"), compose.container("esxi-01")
    try:
        assert await wait_until(lambda: ha_ready(client, "esxi-01", "c-island"), 60), (
            f"HA not ready: {await client.ha_status()}"
        )
        acked = (await client.vm("c-island")).guest_writes_acked
        compose.docker("network", "disconnect", management, esxi_01)
        cut = time.monotonic()
        try:
            while time.monotonic() - cut < 60:
                vm = await client.vm("c-island")
                assert (vm.host, vm.power_state) == ("esxi-01", ON)
                events = await client.events()
                assert not [
                    e for e in events if e.type == "VmRestartedByHAEvent" and e.vm == "c-island"
                ]
                await asyncio.sleep(2)
            lock = await client.lock_owner("vmfs-01", "c-island/c-island-flat.vmdk")
            (holder,) = lock.holders
            assert lock.observed_by != "esxi-01" and holder.host == "esxi-01" and holder.live
        finally:
            compose.docker("network", "connect", "--ip", f"{compose.net}.1.11", management, esxi_01)

        async def connected():
            hosts = {h.name: h.connection_state for h in await client.hosts()}
            return hosts["esxi-01"] == CONNECTED

        assert await wait_until(connected, 60), compose.logs("vcenter", "esxi-01")

        async def wrote_on():
            vm = await client.vm("c-island")
            return vm.host == "esxi-01" and vm.power_state == ON and vm.guest_writes_acked > acked

        assert await wait_until(wrote_on, 30), f"{await client.vm('c-island')}"
        report = await client.verify_disk("c-island", acked)
        assert (report.corrupt, report.missing) == (0, 0)
    finally:
        await client.configure_ha(enabled=False)
