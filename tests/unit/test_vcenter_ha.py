"""vSphere HA through vCenter's API on the in-process engine (simulated clock):
ConfigureHa configures every host's agent, which elect a master; a crashed host's
protected VMs run again on the survivors, and vCenter follows them there and logs
what the agents did with their own times, also while vCenter itself was down.
Admission control keeps the failover capacity the tolerated host failures need."""

from __future__ import annotations

import asyncio

import pytest
from vclab import Lab
from vclab import running_on as hosts_running

from vsim.faults import InsufficientFailoverResourcesFault, InvalidArgument, NotFound
from vsim.spec import ClusterSpec
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb

OK = common_pb2.TASK_STATE_SUCCESS
ON = pb.POWER_STATE_POWERED_ON


@pytest.fixture
async def lab(make_lab) -> Lab:
    return await make_lab(ClusterSpec.default(3), array=True)


async def running_vm(lab: Lab, name: str, datastore: str, host: str = "esxi-01", **kw) -> None:
    task = await lab.client.create_vm(
        name, memory_mb=256, host=host, datastore=datastore, disk_mb=8, guest_write_iops=20, **kw
    )
    assert (await lab.wait(task)).state == OK
    assert (await lab.power_on(name)).state == OK


def running_on(lab: Lab, vm: str) -> list[str]:
    return [
        h
        for h in hosts_running(lab.engine, vm)
        if lab.engine.running(h).kernel.memory.speed(vm) > 0
    ]


async def test_enabling_ha_configures_every_agent_and_they_elect_a_master(lab):
    await running_vm(lab, "vm-a", "vmfs-01")
    status = await lab.client.configure_ha(host_failures=1)
    assert status.config.enabled and status.config.host_failures == 1
    assert list(status.config.heartbeat_datastores) == ["vmfs-01", "nfs-01"]  # VMFS first
    assert "DasEnabledEvent" in [e.type for e in await lab.events()]
    await asyncio.sleep(20)
    status = await lab.client.ha_status()
    assert status.master == "esxi-03"  # the same datastores each: the highest id wins
    assert {h.host: h.state for h in status.hosts} == {
        "esxi-01": "connectedToMaster",
        "esxi-02": "connectedToMaster",
        "esxi-03": "master",
    }
    assert [(v.name, v.host, v.protected) for v in status.vms] == [("vm-a", "esxi-01", True)]
    # Three equal hosts, one failure tolerated: a third of the cluster stays free.
    assert status.required_cpu_failover_pct == pytest.approx(100 / 3)
    assert status.required_memory_failover_pct == pytest.approx(100 / 3)
    assert status.memory_failover_pct == pytest.approx(100.0)  # no reservations
    status = await lab.client.configure_ha(enabled=False)
    assert not status.config.enabled
    await asyncio.sleep(10)
    assert not lab.engine.running("esxi-01").fdm.state(0).enabled


async def test_a_crashed_hosts_vms_restart_elsewhere_and_vcenter_follows_them(lab):
    await running_vm(lab, "vm-v", "vmfs-01")
    await running_vm(lab, "vm-n", "nfs-01")
    await lab.client.configure_ha()
    await lab.client.set_vm_ha("vm-n", "high")
    await asyncio.sleep(25)
    crashed = lab.clock.now()
    lab.engine.crash("esxi-01")
    await asyncio.sleep(90)
    for name in ("vm-v", "vm-n"):
        hosts = running_on(lab, name)
        assert len(hosts) == 1 and hosts[0] != "esxi-01"
        vm = await lab.client.vm(name)
        assert (vm.host, vm.power_state) == (hosts[0], ON)  # vCenter followed it
        report = await lab.client.verify_disk(name, vm.guest_writes_acked)
        assert (report.corrupt, report.missing) == (0, 0)
    events = {e.type: e for e in await lab.events()}
    for kind in (
        "DasHostFailedEvent",
        "ClusterFailoverActionInitiatedEvent",
        "VmRestartedByHAEvent",
        "ClusterFailoverActionCompletedEvent",
    ):
        assert kind in events, kind
    # The agent's time: 18 s after its last heartbeat (sent within the second before the
    # crash), with heartbeat datastores, which vCenter picked.
    assert 17 <= events["DasHostFailedEvent"].created_time - crashed < 19
    status = await lab.client.ha_status()
    assert {h.host: h.state for h in status.hosts}["esxi-01"] == "hostDown"


async def test_with_vcenter_down_a_crashed_hosts_vms_still_restart(lab):
    await running_vm(lab, "vm-d", "vmfs-01")
    await lab.client.configure_ha()
    await asyncio.sleep(25)
    await lab.stop()
    lab.engine.crash("esxi-01")
    await asyncio.sleep(60)
    assert running_on(lab, "vm-d") in (["esxi-02"], ["esxi-03"])
    await lab.restart()
    await asyncio.sleep(15)
    vm = await lab.client.vm("vm-d")
    assert [vm.host] == running_on(lab, "vm-d") and vm.power_state == ON
    restarted = [e for e in await lab.events() if e.type == "VmRestartedByHAEvent"]
    assert len(restarted) == 1 and restarted[0].vm == "vm-d"
    assert restarted[0].created_time < lab.clock.now() - 15  # when it happened, vCenter away


async def test_admission_control_refuses_a_power_on_that_eats_the_failover_capacity(lab):
    await lab.client.configure_ha(host_failures=1)
    # Each default host has 512 GiB; a third (512 GiB of 1.5 TiB) must stay unreserved.
    big = kpb.VmResources(memory=kpb.ResourceAllocation(reservation=400 * 1024))
    for name, host in (("vm-r1", "esxi-01"), ("vm-r2", "esxi-02")):
        task = await lab.client.create_vm(name, memory_mb=400 * 1024, host=host, resources=big)
        assert (await lab.wait(task)).state == OK
    assert (await lab.power_on("vm-r1")).state == OK
    assert (await lab.power_on("vm-r2")).state == OK
    task = await lab.client.create_vm("vm-r3", memory_mb=400 * 1024, host="esxi-03", resources=big)
    assert (await lab.wait(task)).state == OK
    with pytest.raises(InsufficientFailoverResourcesFault, match="1 host failure"):
        await lab.client.power_on("vm-r3")
    await lab.client.configure_ha(host_failures=0)  # admission control off
    assert (await lab.power_on("vm-r3")).state == OK


async def test_a_vm_with_restart_priority_disabled_is_left_off(lab):
    await running_vm(lab, "vm-x", "vmfs-01")
    await lab.client.configure_ha()
    vm = await lab.client.set_vm_ha("vm-x", "disabled")
    assert vm.ha_restart_priority == "disabled"
    await asyncio.sleep(25)
    lab.engine.crash("esxi-01")
    await asyncio.sleep(90)
    assert running_on(lab, "vm-x") == []
    assert "VmRestartedByHAEvent" not in [e.type for e in await lab.events()]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"host_failures": 3}, "host_failures"),
        ({"isolation_response": "panic"}, "isolation_response"),
        ({"heartbeat_datastores": ("nope",)}, "heartbeat datastore"),
    ],
)
async def test_bad_ha_settings_are_refused(lab, kw, message):
    with pytest.raises(InvalidArgument, match=message):
        await lab.client.configure_ha(**kw)
    assert not (await lab.client.ha_status()).config.enabled


async def test_bad_vm_ha_settings_are_refused(lab):
    await running_vm(lab, "vm-b", "vmfs-01")
    with pytest.raises(InvalidArgument, match="restart_priority"):
        await lab.client.set_vm_ha("vm-b", "urgent")
    with pytest.raises(NotFound):
        await lab.client.set_vm_ha("no-such-vm", "high")
    assert (await lab.client.vm("vm-b")).ha_restart_priority == ""


async def test_an_isolated_hosts_powered_off_vm_is_restarted_elsewhere(lab):
    """Response power-off, heartbeat datastores (vCenter's pick): the host cut from
    management isolates itself at 30 s and powers its VM off (its lock released);
    the master, reading its poweron file, finds the VM running nowhere and restarts
    it on another host."""
    await running_vm(lab, "vm-iso", "vmfs-01")
    await lab.client.configure_ha(isolation_response="power-off")
    await asyncio.sleep(25)
    lab.engine.set_link_now("esxi-01", "management", False)
    await asyncio.sleep(25)
    assert running_on(lab, "vm-iso") == ["esxi-01"]  # not isolated yet: it runs on
    await asyncio.sleep(100)
    hosts = running_on(lab, "vm-iso")
    assert len(hosts) == 1 and hosts[0] in ("esxi-02", "esxi-03")


async def test_a_host_that_reboots_before_it_is_found_dead_has_its_vms_restarted(lab):
    await running_vm(lab, "vm-rb", "nfs-01")
    await lab.client.configure_ha()
    await asyncio.sleep(25)
    lab.engine.crash("esxi-01")
    await lab.engine.power_on_host("esxi-01")  # back at once, its VM lost with its memory
    await asyncio.sleep(120)
    hosts = running_on(lab, "vm-rb")
    assert len(hosts) == 1
    vm = await lab.client.vm("vm-rb")
    assert (vm.host, vm.power_state) == (hosts[0], ON)
