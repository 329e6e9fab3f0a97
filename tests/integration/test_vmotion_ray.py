"""vMotion between real host actors (Ray, gRPC+TLS on loopback): a running VM with a
disk on VMFS and a steady guest writer moves with its memory streamed host to host
(HostVMotion, the migration's ticket as the token), its disk lock handed over and its
guest writing on; a destination whose vMotion link is cut refuses the stream and the
VM goes on running on its source."""

from __future__ import annotations

from test_fault_service import DISK, cluster, until, writing_vm  # noqa: F401 - the fixture

from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb

ON = pb.POWER_STATE_POWERED_ON


async def acked_past(client, count: int) -> int:
    async def more():
        acked = (await client.vm("db-01")).guest_writes_acked
        return acked if acked > count else 0

    return await until(more, f"db-01 acknowledging writes past {count}")


async def test_a_running_vm_moves_between_host_actors_and_writes_on(cluster):  # noqa: F811
    _, client, _ = cluster
    before = await writing_vm(client, "esxi-01")
    task = await client.run(await client.migrate_vm("db-01", "esxi-02"))
    m = task.migration
    assert (m.source, m.destination, m.hot) == ("esxi-01", "esxi-02", True)
    assert m.precopy_rounds >= 1 and m.memory_sent_bytes > 0 and m.downtime_ms > 0
    vm = await client.vm("db-01")
    assert (vm.host, vm.power_state) == ("esxi-02", ON)
    lock = await client.lock_owner("vmfs-01", DISK)
    assert [h.host for h in lock.holders] == ["esxi-02"]
    acked = await acked_past(client, max(before, vm.guest_writes_acked))
    report = await client.verify_disk("db-01", acked)
    assert report.missing == 0 and report.corrupt == 0
    events = [e.type for e in await client.events() if e.vm == "db-01"]
    assert "VmBeingHotMigratedEvent" in events and "VmMigratedEvent" in events


async def test_a_cut_vmotion_link_leaves_the_vm_running_on_its_source(cluster):  # noqa: F811
    _, client, _ = cluster
    await writing_vm(client, "esxi-01")
    await client.set_link("esxi-02", "vmotion", "down")
    task = await client.wait(await client.migrate_vm("db-01", "esxi-02"))
    assert (task.state, task.error.name) == (common_pb2.TASK_STATE_ERROR, "MigrationFault")
    vm = await client.vm("db-01")
    assert (vm.host, vm.power_state) == ("esxi-01", ON)
    await acked_past(client, vm.guest_writes_acked)  # its guest writes on, there
    await client.clear_faults()
    assert (await client.run(await client.migrate_vm("db-01", "esxi-02"))).migration.hot
