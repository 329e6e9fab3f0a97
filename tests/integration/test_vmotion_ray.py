"""vMotion between real host actors (Ray, gRPC+TLS on loopback): a running VM with a
disk on VMFS and a steady guest writer moves with its memory streamed host to host
(HostVMotion, the migration's ticket as the token), its disk lock handed over and its
guest writing on; a destination whose vMotion link is cut refuses the stream, and one
whose actor is killed during the pre-copy loses only the partial copy: the VM goes on
running on its source. A vCenter restarted during the pre-copy finds the task in
error and the VM running on exactly one host, the one its inventory names."""

from __future__ import annotations

import pytest
import ray
from test_fault_service import (  # noqa: F401 - cluster: the fixture
    DISK,
    SPEED,
    acked,
    cluster,
    until,
    writing_vm,
)

from vsim.clock import WallClock
from vsim.cluster.array_setup import prepare_array
from vsim.cluster.fault_service import fault_services
from vsim.cluster.ray_engine import ray_engines, ray_namespace
from vsim.spec import ClusterSpec
from vsim.storage.server import start_array
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.server import start_vcenter

ON = pb.POWER_STATE_POWERED_ON
HOSTS = ("esxi-01", "esxi-02", "esxi-03")
BIG_MB = 4096
"""A VM whose pre-copy over 1 GbE lasts ~13 simulated seconds (its guest has touched
1.6 GB): seconds of real time to act in while it runs."""


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


async def big_writing_vm(client) -> int:
    """db-01 (4 GiB, disk on vmfs-01, its guest writing) on esxi-01, and esxi-02's
    vMotion link at 1 Gb/s: a migration to it pre-copies for seconds."""
    await client.update_vmknic("esxi-02", "vmk1", link_speed_mbps=1000)
    await client.run(
        await client.create_vm(
            "db-01", memory_mb=BIG_MB, host="esxi-01", datastore="vmfs-01", disk_mb=16,
            guest_write_iops=100,
        )
    )  # fmt: skip
    await client.run(await client.power_on("db-01"))
    return await acked(client, 20)


async def precopy_under_way(client, task_id: str) -> None:
    """Until pages have reached esxi-02 (its memory manager holds some of db-01's)
    while the task still runs: the pre-copy is under way."""

    async def receiving() -> bool:
        task = await client.task(task_id)
        assert task.state in (common_pb2.TASK_STATE_QUEUED, common_pb2.TASK_STATE_RUNNING)
        stats = await client.host_stats("esxi-02")
        return any(v.name == "db-01" and v.memory.granted > 0 for v in stats.vms)

    await until(receiving, "db-01's pages arriving on esxi-02", 30)


async def verifies(client, host: str, after: int) -> None:
    vm = await client.vm("db-01")
    assert (vm.host, vm.power_state) == (host, ON)
    acked_now = await acked_past(client, max(after, vm.guest_writes_acked))
    report = await client.verify_disk("db-01", acked_now)
    assert report.missing == 0 and report.corrupt == 0
    lock = await client.lock_owner("vmfs-01", DISK)
    assert [h.host for h in lock.holders] == [host]


async def test_a_destination_killed_during_precopy_leaves_the_vm_on_its_source(cluster):  # noqa: F811
    running, client, _ = cluster
    before = await big_writing_vm(client)
    task = await client.migrate_vm("db-01", "esxi-02")
    await precopy_under_way(client, task.id)
    ray.kill(ray.get_actor("esxi-02", namespace=ray_namespace(running.core.uuid)))
    done = await client.wait(task, timeout=60)
    assert (done.state, done.error.name) == (common_pb2.TASK_STATE_ERROR, "MigrationFault")
    await verifies(client, "esxi-01", before)
    failed = [e for e in await client.events() if e.type == "VmFailedMigrateEvent"]
    assert [(e.vm, e.host) for e in failed] == [("db-01", "esxi-01")]


class Restartable:
    """A vCenter that a test restarts: stopped and started again on its data dir
    while the hosts (detached actors) run on."""

    def __init__(self, start, login) -> None:
        self._start, self._login = start, login

    async def open(self) -> Restartable:
        self.running = await self._start()
        self.client = await self._login(self.running)
        return self

    async def restart(self, crash: bool = False) -> None:
        """Stopped and started again; `crash`: as a vCenter killed would, with every
        task it had under way cut off where it was (a stop waits for them)."""
        await self.client.close()
        if crash:
            self.running.core.runtime.halt()
        await self.running.stop()
        await self.open()


@pytest.fixture
async def restartable(ray_cluster, tmp_path, login):
    """The `cluster` of test_fault_service (array, 3 hosts, vCenter at SPEED), its
    vCenter restartable."""
    array = await start_array(tmp_path / "array")
    spec = prepare_array(array.array, ClusterSpec.default(3))
    ref = ArrayRef(array.endpoint, array.identity.thumbprint, array.array.management_key)

    async def start():
        return await start_vcenter(
            tmp_path / "data", spec, ray_engines(), port=0, clock=WallClock(SPEED),
            array=ref, services=fault_services,
        )  # fmt: skip

    lab = await Restartable(start, login).open()
    yield lab
    await lab.client.close()
    await lab.running.stop()
    for host in HOSTS:
        try:
            ray.kill(ray.get_actor(host, namespace=ray_namespace(lab.running.core.uuid)))
        except ValueError:
            pass
    await array.stop()


async def running_on(lab, name: str) -> list[str]:
    """The hosts whose hostd says `name` runs there (asked through vCenter's own
    lines to them, as vpxuser)."""
    found = []
    for host in HOSTS:
        reply = await lab.running.core.hosts.call(host, "ListVms", hpb.ListHostVmsRequest())
        found += [host for v in reply.vms if v.name == name and v.powered_on]
    return found


async def test_a_vcenter_restart_during_precopy_fails_the_task_and_the_vm_runs_once(
    restartable,
):
    lab = restartable
    before = await big_writing_vm(lab.client)
    task = await lab.client.migrate_vm("db-01", "esxi-02")
    await precopy_under_way(lab.client, task.id)
    await lab.restart(crash=True)
    done = await lab.client.wait(task.id, timeout=60)
    assert (done.state, done.error.name) == (common_pb2.TASK_STATE_ERROR, "SystemError")
    vm = await lab.client.vm("db-01")
    assert await running_on(lab, "db-01") == [vm.host]
    await verifies(lab.client, vm.host, before)

    async def partial_copy_freed() -> bool:  # esxi-02 gives it up, hearing nothing
        stats = await lab.client.host_stats("esxi-02")
        return vm.host == "esxi-02" or all(v.name != "db-01" for v in stats.vms)

    await until(partial_copy_freed, "esxi-02 freeing its partial copy of db-01", 30)
    assert await running_on(lab, "db-01") == [vm.host]
    # The VM can be migrated again (the destination took nothing of it with it).
    await lab.client.update_vmknic("esxi-02", "vmk1", link_speed_mbps=10000)
    other = "esxi-02" if vm.host == "esxi-01" else "esxi-01"
    assert (await lab.client.run(await lab.client.migrate_vm("db-01", other))).migration.hot
