"""A datacenter power-down and power-up (`vsim down`, `vsim up`) through the vCenter
core on the in-process engine and array: running VMs are powered off cleanly, their
locks released on VMFS and NFS, and powered on again at the next start with their
guests' acknowledged writes intact; a host that crashed finds its own NFS locks from
the earlier boot and opens its disks at once."""

from __future__ import annotations

import pytest
from test_vcenter_datastores import cluster, run  # noqa: F401 - the fixture
from test_vm_disks import acked, make_vm

from vsim.cluster.client import VCenterClient
from vsim.faults import FileLocked
from vsim.host.storage.vmdk import open_disk
from vsim.runtime import Runtime
from vsim.spec import ClusterSpec
from vsim.storage.vmfs_format import LockMode
from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter import autostart
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.service import INVENTORY_FILE, VCenter
from vsim.vcenter.sessions import ADMINISTRATOR

OK = common_pb2.TASK_STATE_SUCCESS
ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF
HOSTS = ("esxi-01", "esxi-02", "esxi-03")


def lock_files(array) -> list[str]:
    return sorted(p.name for p in array.exports["nfs-01"].root.rglob(".lck-*"))


async def restart_datacenter(vc: VCenter, engine, tmp_path) -> VCenter:
    """Every host goes down with vCenter (Ray shut down under them) and a new vCenter
    starts on the same data dir, booting them again."""
    await vc.stop()
    for host in HOSTS:
        engine.crash(host)
    again = VCenter(
        tmp_path / "vc",
        Inventory(tmp_path / "vc" / INVENTORY_FILE),
        engine,
        Runtime.simulated(vc.clock, 4, "vcenter"),
        array=ArrayRef("", ""),
    )
    await again.start(ClusterSpec.default(3))  # realised already: only re-attached
    return again


async def power_states(client: VCenterClient) -> dict[str, int]:
    return {vm.name: vm.power_state for vm in await client.vms()}


async def login(vc: VCenter) -> VCenterClient:
    client = VCenterClient.in_process(vc.table)
    await client.login(ADMINISTRATOR, vc.sessions.initial_password())
    return client


async def test_power_down_then_up_brings_back_running_vms_with_their_writes(cluster, tmp_path):  # noqa: F811
    vc, array, engine, client = cluster
    for name, host, datastore in (
        ("vm-vmfs", "esxi-01", "vmfs-01"),
        ("vm-nfs", "esxi-02", "nfs-01"),
        ("vm-off", "esxi-03", "nfs-01"),
    ):
        assert (await make_vm(client, name, host=host, datastore=datastore)).state == OK
    for name in ("vm-vmfs", "vm-nfs"):
        assert (await run(client, await client.power_on(name))).state == OK
    seen = {name: await acked(client, name, 5) for name in ("vm-vmfs", "vm-nfs")}
    assert lock_files(array)  # vm-nfs's disk is locked on the export

    outcome = await vc.autostart.power_down()
    assert outcome.done == ["vm-nfs", "vm-vmfs"] and outcome.failed == {}
    assert await power_states(client) == {
        "vm-vmfs": OFF,
        "vm-nfs": OFF,
        "vm-off": OFF,
    }
    assert lock_files(array) == []  # released, not left for 35 s
    # Every write the guest acknowledged is there, and the VMFS lock is free: another
    # host opens the disk for writing at once.
    final = {}
    for name in ("vm-vmfs", "vm-nfs"):
        report = await client.verify_disk(name, seen[name])
        assert report.missing == 0 and report.corrupt == 0
        final[name] = report.highest_seq
    files = engine.running("esxi-03").storage.files["vmfs-01"]
    disk = await open_disk(files, "vm-vmfs/vm-vmfs.vmdk", LockMode.EXCLUSIVE)
    await disk.close()
    assert vc.autostart.pending() == ["vm-nfs", "vm-vmfs"]

    vc = await restart_datacenter(vc, engine, tmp_path)
    client = VCenterClient.in_process(vc.table, client.session)  # the session outlived it
    try:
        assert await power_states(client) == {"vm-vmfs": ON, "vm-nfs": ON, "vm-off": OFF}
        assert vc.autostart.pending() == []
        powered = [
            e
            for e in await client.events()
            if e.type == "VmPoweredOnEvent" and e.user == autostart.USER
        ]
        assert sorted(e.vm for e in powered) == ["vm-nfs", "vm-vmfs"]
        for name in ("vm-vmfs", "vm-nfs"):
            # The guest goes on from where it was: newer writes, none lost.
            await acked(await login(vc), name, final[name] + 3)
            report = await client.verify_disk(name, final[name])
            assert report.missing == 0 and report.corrupt == 0
    finally:
        await vc.stop()


async def test_a_crashed_hosts_own_nfs_lock_does_not_keep_it_from_its_disk(cluster):  # noqa: F811
    vc, array, engine, client = cluster
    assert (await make_vm(client, "vm-n", host="esxi-02", datastore="nfs-01")).state == OK
    assert (await run(client, await client.power_on("vm-n"))).state == OK
    seq = await acked(client, "vm-n", 5)
    engine.crash("esxi-02")  # its lock file stays on the export
    await engine.reboot("esxi-02")
    await vc.hosts.attach("esxi-02", boot=False)
    assert (await power_states(client))["vm-n"] == OFF
    # Another host still may not take the disk: the lock was renewed moments ago.
    other = engine.running("esxi-03").storage.files["nfs-01"]
    with pytest.raises(FileLocked):
        await open_disk(other, "vm-n/vm-n.vmdk", LockMode.EXCLUSIVE)
    # Its own host, booted again, opens it at once: the lock names an earlier boot.
    assert (await run(client, await client.power_on("vm-n"))).state == OK
    report = await client.verify_disk("vm-n", seq)
    assert report.missing == 0 and report.corrupt == 0
