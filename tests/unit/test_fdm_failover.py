"""vSphere HA's agents on the in-process engine's hosts (simulated clock), configured
host by host through hostd's ConfigureFdm as vCenter will: they elect a master over
the management network, a crashed host is found dead at 15 s, and its protected VMs
run again on the survivors once its disk locks are stale (VMFS 16 s, NFS 35 s after
it was last heard), every acknowledged write there, never on two hosts."""

from __future__ import annotations

import asyncio

import pytest
from vclab import Lab, host_call
from vclab import running_on as hosts_running

from vsim.faults import InvalidArgument, NotAuthenticated
from vsim.spec import ClusterSpec
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb

OK = common_pb2.TASK_STATE_SUCCESS
HOSTS = ("esxi-01", "esxi-02", "esxi-03")
SECRET = bytes(range(32))


@pytest.fixture
async def lab(make_lab) -> Lab:
    return await make_lab(ClusterSpec.default(3), array=True)


async def running_vm(lab: Lab, name: str, datastore: str, host: str = "esxi-01") -> None:
    task = await lab.client.create_vm(
        name, memory_mb=256, host=host, datastore=datastore, disk_mb=8, guest_write_iops=20
    )
    assert (await lab.wait(task)).state == OK
    assert (await lab.power_on(name)).state == OK


async def configure(
    lab: Lab,
    response: str = "",
    enabled: bool = True,
    heartbeat_datastores: tuple[str, ...] = (),
    **priorities: str,
):
    """ConfigureFdm on every running host, as vCenter will: the cluster, the VMs with
    where each runs, the heartbeat datastores."""
    vms = []
    for host in HOSTS:
        if lab.engine.running(host) is None:
            continue
        reply = await host_call(lab.engine, host, "ListVms", hpb.ListHostVmsRequest())
        for vm in reply.vms:
            kind = "nfs" if vm.datastore.startswith("nfs") else "vmfs"
            priority = priorities.get(vm.name.replace("-", "_"), "")
            vms.append(
                hpb.FdmProtectedVm(vm=vm, restart_priority=priority, host=host, datastore_kind=kind)
            )
    config = hpb.FdmConfig(
        cluster="cluster-01",
        secret=SECRET,
        hosts=[
            hpb.FdmPeer(host=h, endpoint=f"in-process://{h}", thumbprint=lab.engine.thumbprint(h))
            for h in HOSTS
        ],
        isolation_response=response,
        vms=vms,
        heartbeat_datastores=heartbeat_datastores,
    )
    states = {}
    for host in HOSTS:
        if lab.engine.running(host) is not None:
            request = hpb.ConfigureFdmRequest(enabled=enabled, config=config)
            states[host] = await host_call(lab.engine, host, "ConfigureFdm", request)
    return states


async def fdm_state(lab: Lab, host: str) -> hpb.FdmState:
    return await host_call(lab.engine, host, "GetFdmState", hpb.GetFdmStateRequest())


def running_on(lab: Lab, vm: str) -> list[str]:
    """Where its guest runs: powered on and not stunned (a power-on waiting for its
    disks' locks has not started it)."""
    return [
        host
        for host in hosts_running(lab.engine, vm)
        if lab.engine.running(host).kernel.memory.speed(vm) > 0
    ]


async def test_the_agents_elect_the_lexically_highest_host_at_15_s(lab):
    await running_vm(lab, "vm-a", "vmfs-01")
    began = lab.clock.now()
    await configure(lab)
    await asyncio.sleep(14)
    assert (await fdm_state(lab, "esxi-03")).role == "election"
    await asyncio.sleep(3)
    states = {h: await fdm_state(lab, h) for h in HOSTS}
    assert {h: (s.role, s.master) for h, s in states.items()} == {
        "esxi-01": ("connectedToMaster", "esxi-03"),
        "esxi-02": ("connectedToMaster", "esxi-03"),
        "esxi-03": ("master", "esxi-03"),
    }
    assert states["esxi-03"].protected_vms == ["vm-a"]
    elected = [e for e in states["esxi-03"].events if e.type == "DasAgentRunningEvent"]
    assert len(elected) == 1 and 15 <= elected[0].time - began < 16


async def test_a_crashed_hosts_vms_run_again_elsewhere_once_its_locks_are_stale(lab):
    await running_vm(lab, "vm-v", "vmfs-01")
    await running_vm(lab, "vm-n", "nfs-01")
    await configure(lab, vm_n="high")
    await asyncio.sleep(20)  # elected, heartbeating
    acked = {vm: lab.engine.running("esxi-01").vmx[vm].acked_seq for vm in ("vm-v", "vm-n")}
    crashed = lab.clock.now()
    lab.engine.crash("esxi-01")
    await asyncio.sleep(13)
    master = await fdm_state(lab, "esxi-03")
    assert "DasHostFailedEvent" not in [e.type for e in master.events]
    await asyncio.sleep(3)
    master = await fdm_state(lab, "esxi-03")
    failed = [e for e in master.events if e.type == "DasHostFailedEvent"]
    assert [e.host for e in failed] == ["esxi-01"]
    # 15 s after its last heartbeat, which it sent within the second before the crash
    assert 14 <= failed[0].time - crashed < 16
    assert {h.host: h.state for h in master.hosts}["esxi-01"] == "hostDown"
    initiated = [e for e in master.events if e.type == "ClusterFailoverActionInitiatedEvent"]
    assert "vm-n, vm-v" in initiated[0].message  # high priority first
    assert running_on(lab, "vm-v") == running_on(lab, "vm-n") == []  # locks still live
    await asyncio.sleep(60)
    master = await fdm_state(lab, "esxi-03")
    restarted = {e.vm: e for e in master.events if e.type == "VmRestartedByHAEvent"}
    assert sorted(restarted) == ["vm-n", "vm-v"]
    # Never before the dead host's locks were stale: VMFS 16 s, NFS 35 s from its last
    # heartbeat (within a second before the crash).
    assert restarted["vm-v"].time - crashed >= 16 - 1
    assert restarted["vm-n"].time - crashed >= 35 - 1
    for vm in ("vm-v", "vm-n"):
        hosts = running_on(lab, vm)
        assert hosts == [restarted[vm].host] and hosts[0] in ("esxi-02", "esxi-03")
        hostd = lab.engine.running(hosts[0])
        await asyncio.sleep(2)
        assert hostd.vmx[vm].acked_seq > acked[vm]  # the guest writes on from its disk
        report = await host_call(
            lab.engine,
            hosts[0],
            "VerifyGuestDisk",
            hpb.VerifyGuestDiskRequest(vm=hostd_vm(hostd, vm), acked_seq=acked[vm]),
        )
        assert (report.corrupt, report.missing) == (0, 0)
    completed = [e for e in master.events if e.type == "ClusterFailoverActionCompletedEvent"]
    assert len(completed) == 1 and "2 restarted, 0 given up" in completed[0].message


def hostd_vm(hostd, name: str) -> hpb.HostVm:
    from vsim.host.hostd.service import vm_to_proto

    return vm_to_proto(hostd.kernel.vm(name))


async def test_a_disabled_vm_is_left_off_and_a_diskless_one_is_not_protected(lab):
    await running_vm(lab, "vm-off", "vmfs-01")
    task = await lab.client.create_vm("vm-local", memory_mb=64, host="esxi-01")
    assert (await lab.wait(task)).state == OK
    assert (await lab.power_on("vm-local")).state == OK
    states = await configure(lab, vm_off="disabled")
    assert list(states["esxi-01"].protected_vms) == ["vm-off"]
    await asyncio.sleep(20)
    lab.engine.crash("esxi-01")
    await asyncio.sleep(80)
    master = await fdm_state(lab, "esxi-03")
    assert "DasHostFailedEvent" in [e.type for e in master.events]
    assert "VmRestartedByHAEvent" not in [e.type for e in master.events]
    assert running_on(lab, "vm-off") == running_on(lab, "vm-local") == []


async def test_a_host_cut_from_management_keeps_its_vms_and_nobody_starts_them_twice(lab):
    """No heartbeat datastores: the master finds it dead at 15 s and tries, but the
    VM's disk locks are live (it runs on), so every power-on fails; the host itself
    is isolated at 30 s and, with response none, keeps running its VM."""
    await running_vm(lab, "vm-i", "vmfs-01")
    await configure(lab)
    await asyncio.sleep(20)
    lab.engine.set_link_now("esxi-01", "management", False)
    for _ in range(90):
        await asyncio.sleep(1)
        assert running_on(lab, "vm-i") == ["esxi-01"]
    isolated = await fdm_state(lab, "esxi-01")
    assert isolated.role == "networkIsolated"
    assert "DasHostIsolatedEvent" in [e.type for e in isolated.events]
    master = await fdm_state(lab, "esxi-03")
    assert "VmRestartedByHAEvent" not in [e.type for e in master.events]


async def test_isolation_response_power_off_lets_the_master_restart_the_vm(lab):
    await running_vm(lab, "vm-p", "nfs-01")
    await configure(lab, response="power-off")
    await asyncio.sleep(20)
    lab.engine.set_link_now("esxi-01", "management", False)
    await asyncio.sleep(29)
    assert running_on(lab, "vm-p") == ["esxi-01"]
    await asyncio.sleep(2)  # isolated at 30 s: powered off, its locks released
    assert "vm-p" not in [
        v.name for v in lab.engine.running("esxi-01").kernel.vms() if v.powered_on
    ]
    await asyncio.sleep(200)  # the master's next attempt finds the lock free
    hosts = running_on(lab, "vm-p")
    assert len(hosts) == 1 and hosts[0] in ("esxi-02", "esxi-03")


async def test_bad_configurations_and_strangers_are_refused(lab):
    good = hpb.FdmConfig(
        cluster="c",
        secret=SECRET,
        hosts=[hpb.FdmPeer(host="esxi-01", endpoint="in-process://esxi-01")],
    )
    for change, message in (
        ({"secret": b"short"}, "32 bytes"),
        ({"cluster": ""}, "names its cluster"),
        ({"isolation_response": "explode"}, "isolation_response"),
        ({"hosts": [hpb.FdmPeer(host="esxi-02", endpoint="x")]}, "not one of the cluster"),
    ):
        config = hpb.FdmConfig()
        config.CopyFrom(good)
        for field, value in change.items():
            if field == "hosts":
                del config.hosts[:]
                config.hosts.extend(value)
            else:
                setattr(config, field, value)
        request = hpb.ConfigureFdmRequest(enabled=True, config=config)
        with pytest.raises(InvalidArgument, match=message):
            await host_call(lab.engine, "esxi-01", "ConfigureFdm", request)
    assert not (await fdm_state(lab, "esxi-01")).enabled
    await configure(lab)
    from vsim import dispatch

    hostd = lab.engine.running("esxi-01")
    with pytest.raises(NotAuthenticated):
        await dispatch.call(hostd.fdm.table, "Ping", hpb.FdmPingRequest(), "not-the-secret")
    await configure(lab, enabled=False)
    assert not (await fdm_state(lab, "esxi-02")).enabled
