"""The VMkernel through the whole stack: real host actors, hostd and vCenter over
gRPC+TLS. VMs with reservations and vNICs on two hosts, memory and CPU statistics
from the actors' kernels, a test frame that crosses the physical switch inside its
VLAN and nowhere else, firewall rules kept by vCenter, and DirectPath exclusivity.
(The guest's view of its SCSI adapters is in test_vm_disks_ray.py, with an array.)"""

from __future__ import annotations

import asyncio

import pytest

from vsim.cluster.client import VCenterClient
from vsim.faults import InvalidArgument, ResourceInUse
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb

ERROR = common_pb2.TASK_STATE_ERROR


@pytest.fixture
async def network(client: VCenterClient):
    """Port groups Prod (VLAN 10) and Dev (VLAN 20) on esxi-01 and esxi-02, and three
    powered-on VMs: web on esxi-01 and db on esxi-02 in Prod, build on esxi-02 in Dev."""
    for host in ("esxi-01", "esxi-02"):
        names = {p.name for p in (await client.host_network(host)).port_groups}
        for name, vlan in (("Prod", 10), ("Dev", 20)):
            if name not in names:
                await client.add_port_group(host, name, vlan=vlan)
    placed = {
        "k-web": ("esxi-01", "Prod"),
        "k-db": ("esxi-02", "Prod"),
        "k-build": ("esxi-02", "Dev"),
    }
    for name, (host, port_group) in placed.items():
        resources = kpb.VmResources(
            cpu=kpb.ResourceAllocation(reservation=500),
            memory=kpb.ResourceAllocation(reservation=128),
            cpu_load_pct=50,
        )
        nic = kpb.VmNic(port_group=port_group)
        await client.run(
            await client.create_vm(name, memory_mb=512, host=host, resources=resources, nics=[nic])
        )
        await client.run(await client.power_on(name))
    yield placed
    for name in placed:
        await client.wait(await client.power_off(name))
        await client.wait(await client.destroy_vm(name))


async def test_frames_stay_inside_their_vlan_across_hosts(client, network):
    trace = await client.send_test_frame(
        "k-web", dst_vm="k-db", frame=kpb.Frame(protocol="tcp", dst_port=5432)
    )
    assert [(r.host, r.vm) for r in trace.received] == [("esxi-02", "k-db")]
    broadcast = await client.send_test_frame("k-web", kpb.Frame(dst_mac="ff:ff:ff:ff:ff:ff"))
    assert {r.vm for r in broadcast.received} == {"k-db"}  # never k-build on VLAN 20
    to_build = await client.send_test_frame("k-web", dst_vm="k-build")
    assert list(to_build.received) == []


async def test_firewall_rules_are_kept_by_vcenter_and_enforced_by_the_host(client, network):
    deny = kpb.FirewallRule(action="deny", direction="in", protocol="tcp", port="5432")
    await client.run(await client.set_vm_firewall("k-db", [deny]))
    assert [r.action for r in (await client.vm("k-db")).nics[0].firewall] == ["deny"]
    trace = await client.send_test_frame(
        "k-web", dst_vm="k-db", frame=kpb.Frame(protocol="tcp", dst_port=5432)
    )
    assert list(trace.received) == []
    assert [d.reason for d in trace.dropped] == ["firewall"]
    with pytest.raises(InvalidArgument):
        await client.set_vm_firewall("k-db", [kpb.FirewallRule(action="drop")])


async def test_statistics_come_from_the_hosts_kernels(client, network):
    await asyncio.sleep(1.5)  # a kernel period or more
    stats = await client.host_stats("esxi-02")
    assert {v.name for v in stats.vms} >= {"k-db", "k-build"}
    assert stats.cpu.reserved >= 1000
    assert stats.memory.granted > 0 and stats.memory.state == "high"
    db = await client.vm_stats("k-db")
    assert db.host == "esxi-02"
    assert db.cpu.demand == pytest.approx(2600 * 0.5)
    assert db.memory.granted > 0
    await client.update_host_memory_settings("esxi-02", share_force_salting=0)
    assert (await client.host_stats("esxi-02")).memory_settings.share_force_salting == 0
    await client.update_host_memory_settings("esxi-02", share_force_salting=2)


async def test_a_reservation_that_does_not_fit_is_refused(client, network):
    too_much = kpb.VmResources(cpu=kpb.ResourceAllocation(reservation=33 * 2600))  # > 32 cores
    done = await client.wait(await client.reconfigure_vm_resources("k-web", too_much))
    assert done.state == ERROR and done.error.name == "InsufficientResourcesFault"
    assert (await client.vm("k-web")).resources.cpu.reservation == 500


async def test_a_directpath_device_goes_to_one_vm(client):
    gpu = (await client.pci_devices("esxi-03"))[0].id
    await client.update_passthru_config("esxi-03", gpu, True)
    for name in ("k-ml-1", "k-ml-2"):
        await client.run(await client.create_vm(name, memory_mb=256, host="esxi-03"))
    try:
        await client.run(await client.assign_pci_device("k-ml-1", gpu))
        done = await client.wait(await client.assign_pci_device("k-ml-2", gpu))
        assert done.state == ERROR and done.error.name == ResourceInUse.name
        assert "k-ml-1" in done.error.message
        assert list((await client.vm("k-ml-1")).pci_devices) == [gpu]
        assert list((await client.vm("k-ml-2")).pci_devices) == []
    finally:
        for name in ("k-ml-1", "k-ml-2"):
            await client.wait(await client.destroy_vm(name))
        await client.update_passthru_config("esxi-03", gpu, False)
