"""vSphere HA's datastore heartbeating on the in-process engine's hosts (simulated
clock), configured as in test_fdm_failover with the lab's heartbeat datastores: each
agent's files in .vSphere-HA/cluster-01/ (the heartbeat held open exclusive on VMFS,
rewritten every 5 s on NFS; the poweron file), a crashed host found dead at 18 s
after its last heartbeat rather than 15 s, and a host cut from management only found
partitioned and then isolated, never dead, so that nobody tries to start its VMs."""

from __future__ import annotations

import asyncio

import pytest
from test_fdm_failover import HOSTS, configure, fdm_state, running_on, running_vm
from vclab import Lab, host_call

from vsim.faults import InvalidArgument
from vsim.host.fdm.datastore_heartbeat import NFS_REWRITE_S
from vsim.spec import ClusterSpec
from vsim.storage.vmfs_format import LockMode
from vsim.v1 import host_agent_pb2 as hpb

HB_DATASTORES = ("vmfs-01", "nfs-01")
HA_DIR = ".vSphere-HA/cluster-01"
FAILOVER_EVENTS = ("DasHostFailedEvent", "ClusterFailoverActionInitiatedEvent")


@pytest.fixture
async def lab(make_lab) -> Lab:
    return await make_lab(ClusterSpec.default(3), array=True)


def last_heard(lab: Lab, master: str, host: str) -> float:
    """When the master last heard the host's network heartbeat (its shell's record)."""
    return lab.engine.running(master).fdm._heard[host]


async def sleep_until(lab: Lab, when: float) -> None:
    await asyncio.sleep(max(0.0, when - lab.clock.now()))


async def read(lab: Lab, reader: str, datastore: str, path: str) -> bytes:
    """A file as another host reads it: through its datastore files, read-only."""
    fs = lab.engine.running(reader).storage.files[datastore]
    file = await fs.open(path, LockMode.READ_ONLY)
    try:
        return await file.read(0, await file.size())
    finally:
        await file.close()


async def poweron_flags(lab: Lab, host: str) -> dict[str, bytes]:
    """The first line of the host's poweron file on each heartbeat datastore."""
    return {
        ds: (await read(lab, "esxi-02", ds, f"{HA_DIR}/host-{host}-poweron")).split(b"\n")[0]
        for ds in HB_DATASTORES
    }


def event_types(state: hpb.FdmState) -> list[str]:
    return [e.type for e in state.events]


def verdict(state: hpb.FdmState, host: str) -> str:
    return {h.host: h.state for h in state.hosts}.get(host, "")


async def test_each_agent_keeps_its_files_on_the_heartbeat_datastores(lab):
    await running_vm(lab, "vm-a", "vmfs-01")
    await configure(lab, heartbeat_datastores=HB_DATASTORES)
    await asyncio.sleep(20)
    names = sorted(f"host-{h}-{kind}" for h in HOSTS for kind in ("hb", "poweron"))
    for ds in HB_DATASTORES:
        listed = await lab.engine.running("esxi-02").storage.files[ds].listdir(HA_DIR)
        assert sorted(f.path.rsplit("/", 1)[1] for f in listed) == names
        poweron = await read(lab, "esxi-02", ds, f"{HA_DIR}/host-esxi-01-poweron")
        assert poweron == b"0\nvm-a\n"
        assert await read(lab, "esxi-03", ds, f"{HA_DIR}/host-esxi-02-poweron") == b"0\n"
    # VMFS: held open exclusive by its host, whose VMFS heartbeat is its liveness.
    status = await lab.engine.running("esxi-03").storage.query_lock(
        "vmfs-01", f"{HA_DIR}/host-esxi-01-hb"
    )
    owner = lab.engine.running("esxi-01").storage.host
    assert status.mode == "EXCLUSIVE"
    assert [(h.host, h.live) for h in status.holders] == [(str(owner), True)]
    # NFS: rewritten every 5 s, not held open (its lock comes and goes).
    path = f"{HA_DIR}/host-esxi-01-hb"
    before = await read(lab, "esxi-02", "nfs-01", path)
    assert before.startswith(b"esxi-01 ")
    await asyncio.sleep(NFS_REWRITE_S + 0.5)
    after = await read(lab, "esxi-02", "nfs-01", path)
    assert after.startswith(b"esxi-01 ") and after != before
    nfs_lock = await lab.engine.running("esxi-03").storage.query_lock("nfs-01", path)
    assert nfs_lock.mode == "FREE"


@pytest.mark.parametrize(
    "datastores", [HB_DATASTORES, ("vmfs-01",), ("nfs-01",)], ids=["both", "vmfs", "nfs"]
)
async def test_a_crashed_host_is_dead_at_18_s_after_its_last_heartbeat(lab, datastores):
    await running_vm(lab, "vm-v", "vmfs-01")
    await configure(lab, heartbeat_datastores=datastores)
    await asyncio.sleep(20)
    lab.engine.crash("esxi-01")
    last = last_heard(lab, "esxi-03", "esxi-01")
    await sleep_until(lab, last + 15.5)  # no verdict at 15 s: its datastores are read
    master = await fdm_state(lab, "esxi-03")
    assert verdict(master, "esxi-01") == "connectedToMaster"
    await sleep_until(lab, last + 17.9)
    assert "DasHostFailedEvent" not in event_types(await fdm_state(lab, "esxi-03"))
    await sleep_until(lab, last + 19)
    master = await fdm_state(lab, "esxi-03")
    failed = [e for e in master.events if e.type == "DasHostFailedEvent"]
    assert [e.host for e in failed] == ["esxi-01"]
    assert 18 <= failed[0].time - last < 18.5
    assert verdict(master, "esxi-01") == "hostDown"
    assert "DasHostIsolatedEvent" not in event_types(master)  # straight to dead
    await asyncio.sleep(40)  # its VMFS locks go stale 16 s after its last heartbeat
    master = await fdm_state(lab, "esxi-03")
    restarted = [e for e in master.events if e.type == "VmRestartedByHAEvent"]
    assert [e.vm for e in restarted] == ["vm-v"]
    assert running_on(lab, "vm-v") == [restarted[0].host]


async def test_a_host_cut_from_management_only_is_partitioned_then_isolated_never_dead(lab):
    """Its datastore heartbeats go on: partitioned at 18 s, isolated (its poweron file
    says 1 from its isolation at 30 s) at the second re-check 16 s later; the master
    starts no failover, so no host ever tries to power its VMs on."""
    await running_vm(lab, "vm-i", "vmfs-01")
    await running_vm(lab, "vm-j", "nfs-01")
    await configure(lab, heartbeat_datastores=HB_DATASTORES)
    await asyncio.sleep(20)
    lab.engine.set_link_now("esxi-01", "management", False)
    last = last_heard(lab, "esxi-03", "esxi-01")  # the master's times count from here
    lost = last_heard(lab, "esxi-01", "esxi-03")  # and its own isolation from here
    await sleep_until(lab, last + 17.9)
    assert verdict(await fdm_state(lab, "esxi-03"), "esxi-01") == "connectedToMaster"
    await sleep_until(lab, last + 18.5)
    assert verdict(await fdm_state(lab, "esxi-03"), "esxi-01") == "networkPartitionedFromMaster"
    await sleep_until(lab, lost + 29.5)
    assert (await fdm_state(lab, "esxi-01")).role != "networkIsolated"
    assert await poweron_flags(lab, "esxi-01") == {"vmfs-01": b"0", "nfs-01": b"0"}
    await sleep_until(lab, lost + 30.5)
    isolating = [e for e in (await fdm_state(lab, "esxi-01")).events if e.host == "esxi-01"]
    assert [e.type for e in isolating] == ["DasHostIsolatedEvent"]
    assert 30 <= isolating[0].time - lost < 30.5
    assert (await fdm_state(lab, "esxi-01")).role == "networkIsolated"
    assert await poweron_flags(lab, "esxi-01") == {"vmfs-01": b"1", "nfs-01": b"1"}
    await sleep_until(lab, last + 34.5)
    master = await fdm_state(lab, "esxi-03")
    assert verdict(master, "esxi-01") == "networkIsolated"
    isolated = [e for e in master.events if e.type == "DasHostIsolatedEvent"]
    assert [e.host for e in isolated] == ["esxi-01"]
    assert 34 <= isolated[0].time - last < 34.5
    for _ in range(60):
        await asyncio.sleep(1)
        assert verdict(await fdm_state(lab, "esxi-03"), "esxi-01") == "networkIsolated"
        for vm in ("vm-i", "vm-j"):
            assert running_on(lab, vm) == ["esxi-01"]
            for other in ("esxi-02", "esxi-03"):  # never registered there to power on
                kernel = lab.engine.running(other).kernel
                assert vm not in [v.name for v in kernel.vms()]
    master = await fdm_state(lab, "esxi-03")
    assert not set(event_types(master)) & {*FAILOVER_EVENTS, "VmRestartedByHAEvent"}
    # Mended: it rejoins, and its poweron files say so.
    lab.engine.set_link_now("esxi-01", "management", True)
    await asyncio.sleep(20)
    assert (await fdm_state(lab, "esxi-01")).role == "connectedToMaster"
    assert await poweron_flags(lab, "esxi-01") == {"vmfs-01": b"0", "nfs-01": b"0"}
    assert verdict(await fdm_state(lab, "esxi-03"), "esxi-01") == "connectedToMaster"


async def test_a_master_that_loses_its_storage_goes_on_and_finds_a_crashed_host_dead(lab):
    """Its reads of the others' files fail or time out (no heartbeat seen there): the
    agent goes on, and a crashed host is dead at 18 s as when nothing beats."""
    await configure(lab, heartbeat_datastores=HB_DATASTORES)
    await asyncio.sleep(20)
    lab.engine.set_link_now("esxi-03", "storage", False)
    await asyncio.sleep(3)
    lab.engine.crash("esxi-01")
    last = last_heard(lab, "esxi-03", "esxi-01")
    await sleep_until(lab, last + 19)
    master = await fdm_state(lab, "esxi-03")
    assert master.role == "master"
    failed = [e for e in master.events if e.type == "DasHostFailedEvent"]
    assert [e.host for e in failed] == ["esxi-01"] and 18 <= failed[0].time - last < 18.5
    assert verdict(await fdm_state(lab, "esxi-03"), "esxi-02") == "connectedToMaster"


async def test_bad_heartbeat_datastore_lists_are_refused(lab):
    good = hpb.FdmConfig(
        cluster="c",
        secret=bytes(32),
        hosts=[hpb.FdmPeer(host="esxi-01", endpoint="in-process://esxi-01")],
    )
    for datastores, message in (
        (["vmfs-01", "vmfs-01"], "named twice"),
        ([f"ds-{i}" for i in range(6)], "at most 5"),
        ([""], "has a name"),
    ):
        config = hpb.FdmConfig()
        config.CopyFrom(good)
        config.heartbeat_datastores.extend(datastores)
        request = hpb.ConfigureFdmRequest(enabled=True, config=config)
        with pytest.raises(InvalidArgument, match=message):
            await host_call(lab.engine, "esxi-01", "ConfigureFdm", request)
    config = hpb.FdmConfig()
    config.CopyFrom(good)
    config.cluster = ".."
    config.heartbeat_datastores.append("vmfs-01")
    request = hpb.ConfigureFdmRequest(enabled=True, config=config)
    with pytest.raises(InvalidArgument, match="heartbeat files"):
        await host_call(lab.engine, "esxi-01", "ConfigureFdm", request)
