"""On-disk locking with real host actors: four ESXi host actors, each with its own
initiator and gRPC line to the array, hammer one VM's disk lock on an ats-only VMFS
volume, an ats+scsi VMFS volume and an NFS datastore. Each host is driven through
hostd's API as root (log in, mount, register the VM, open and release its disks), as
vCenter drives it as vpxuser. The history of grants and releases (as the test saw
them, so each interval lies inside the real hold) never overlaps."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
import ray

from vsim.cluster.ray_engine import EsxiHostActor
from vsim.faults import FileLocked
from vsim.host.hostd.client import GrpcHostPort
from vsim.host.storage.array_client import ArrayBlockDevice, ArrayConnection
from vsim.host.storage.vmfs import format_volume
from vsim.iscsi import initiator_name
from vsim.passwords import hash_password
from vsim.spec import HostSpec
from vsim.storage.server import start_array
from vsim.storage.vmfs_format import VolumeLockMode
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import storage_pb2 as pb

HOSTS = [f"esxi-{i:02d}" for i in range(1, 5)]
DATASTORES = {"vmfs-ats": VolumeLockMode.ATS_ONLY, "vmfs-scsi": VolumeLockMode.ATS_SCSI}
ROUNDS = 25
ROOT_PASSWORD = "root-password"
VM = "vm-001"


@dataclass
class Host:
    """A host actor and root's session on its hostd."""

    actor: Any
    uuid: str
    port: GrpcHostPort
    session: str

    async def call(self, method: str, request: Any) -> Any:
        return await self.port.call(method, request, self.session)

    async def mount(self, label: str, array, lun: int = 0, export: str = "") -> None:
        target = hpb.ArrayTarget(
            endpoint=array.endpoint, thumbprint=array.identity.thumbprint, lun=lun, export=export
        )
        kind = "nfs" if export else "vmfs"
        await self.call(
            "MountDatastore", hpb.MountDatastoreRequest(name=label, type=kind, target=target)
        )

    async def register(self, datastore: str, create_files: bool) -> None:
        """The VM, with one disk on datastore, registered here (one VM per datastore)."""
        vm = hpb.HostVm(
            name=f"{VM}-{datastore}",
            uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, datastore)),
            cpus=1,
            memory_mb=256,
            datastore=datastore,
            disks=[
                common_pb2.VirtualDisk(path=f"{VM}-{datastore}/{VM}.vmdk", capacity_bytes=1024**2)
            ],
        )
        await self.call("RegisterVm", hpb.RegisterVmRequest(vm=vm, create_files=create_files))

    async def try_lock(self, datastore: str) -> str:
        """Opens the VM's disk (its exclusive lock): "" when granted, else who holds it."""
        try:
            await self.call("OpenVmDisks", hpb.HostVmRequest(name=f"{VM}-{datastore}"))
        except FileLocked as e:
            return e.properties.get("holder") or "unknown"
        return ""

    async def unlock(self, datastore: str) -> None:
        await self.call("ReleaseVmDisks", hpb.HostVmRequest(name=f"{VM}-{datastore}"))

    async def query_lock(self, datastore: str) -> hpb.HostLockInfo:
        request = hpb.HostLockRequest(datastore=datastore, path=f"{VM}-{datastore}/{VM}-flat.vmdk")
        return await self.call("QueryLock", request)


async def boot(namespace: str, name: str, data_dir, speed: float) -> Host:
    """A host actor booted, and root logged in to its hostd with root's password."""
    spec = HostSpec(name, uuid=str(uuid.uuid4()))
    actor = EsxiHostActor.options(name=name, namespace=namespace, num_cpus=0).remote(
        spec.to_json(), hash_password(ROOT_PASSWORD), str(data_dir), speed
    )
    port = await GrpcHostPort.open(name, (await actor.boot.remote())["endpoint"])
    login = await port.call(
        "Login", hpb.HostLoginRequest(user_name="root", password=ROOT_PASSWORD), None
    )
    return Host(actor, spec.uuid, port, login.session)


async def stop(hosts: list[Host]) -> None:
    for host in hosts:
        await host.port.close()
        try:
            await host.actor.shutdown.remote()
        except ray.exceptions.RayActorError:
            pass  # the test killed it
        ray.kill(host.actor)


async def array_stats(array, connection) -> pb.ArrayStats:
    return await connection.rpc.call("GetStats", pb.GetStatsRequest(), array.array.management_key)


def reservation_conflicts(stats: pb.ArrayStats, lun: int) -> int:
    """Commands the array refused on a LUN because another initiator had reserved it."""
    return sum(c.counters.get("reservation_conflicts", 0) for c in stats.scsi if c.lun == lun)


def nfs_writes(stats: pb.ArrayStats, export: str) -> dict[str, Counter[int]]:
    """Per client: WRITE size -> how many, on an export."""
    return {w.client: Counter(dict(w.sizes)) for w in stats.nfs_writes if w.export == export}


@pytest.fixture
async def lab(ray_cluster, tmp_path):
    array = await start_array(tmp_path / "array")
    connection = await ArrayConnection.open(array.endpoint, array.identity.thumbprint)
    initiators = [initiator_name(h) for h in HOSTS] + ["iqn.format"]
    luns = {}
    for label, mode in DATASTORES.items():
        lun = await connection.rpc.call(
            "CreateLun",
            pb.CreateLunRequest(size_bytes=16 * 1024**2, initiators=initiators),
            array.array.management_key,
        )
        device = ArrayBlockDevice(connection, "iqn.format", lun.id)
        await format_volume(device, label, mode, uuid.uuid4())
        luns[label] = lun.id
    await connection.rpc.call(
        "CreateExport", pb.CreateExportRequest(name="nfs-01"), array.array.management_key
    )
    namespace = f"locks-{uuid.uuid4().hex[:8]}"
    hosts = []
    for i, name in enumerate(HOSTS):
        host = await boot(namespace, name, tmp_path / name, 1.0)
        hosts.append(host)
        for label, lun in luns.items():
            await host.mount(label, array, lun=lun)
        await host.mount("nfs-01", array, export="nfs-01")
        for datastore in [*luns, "nfs-01"]:
            await host.register(datastore, create_files=i == 0)
    yield array, connection, luns, hosts
    await stop(hosts)
    await connection.close()
    await array.stop()


@pytest.mark.parametrize("label", ["vmfs-ats", "vmfs-scsi", "nfs-01"])
async def test_exclusive_holds_never_overlap(lab, label):
    array, connection, luns, hosts = lab
    history: list[tuple[float, float, int]] = []
    refused = 0
    before = await array_stats(array, connection)

    async def hammer(i: int, host: Host) -> None:
        nonlocal refused
        rng = random.Random(i)
        for _ in range(ROUNDS):
            holder = await host.try_lock(label)
            if holder:
                refused += 1
                await asyncio.sleep(rng.uniform(0, 0.01))
                continue
            granted = time.monotonic()
            await asyncio.sleep(rng.uniform(0, 0.005))
            released = time.monotonic()
            history.append((granted, released, i))
            await host.unlock(label)

    await asyncio.gather(*(hammer(i, h) for i, h in enumerate(hosts)))
    assert len({who for _, _, who in history}) >= 2, "more than one host got the lock"
    assert refused > 0, "the hosts did contend"
    history.sort()
    for (_, end, who), (start, _, next_who) in zip(history, history[1:], strict=False):
        assert end <= start, f"{who} and {next_who} held the lock at the same time"

    after = await array_stats(array, connection)
    if label.startswith("vmfs"):
        lun = luns[label]
        conflicts = reservation_conflicts(after, lun) - reservation_conflicts(before, lun)
        if label == "vmfs-scsi":
            assert conflicts > 0, "ats+scsi updates contend for the reservation"
        else:
            assert conflicts == 0, "ats-only volumes never reserve the LUN"
    else:
        earlier = nfs_writes(before, "nfs-01")
        sizes = [
            set(+(written - earlier.get(client, Counter())))
            for client, written in nfs_writes(after, "nfs-01").items()
        ]
        sizes = [s for s in sizes if s]
        assert sizes and all(s == {84} for s in sizes), "every lock WRITE is 84 bytes"


SPEED = 10.0  # simulated seconds per real second, so the timeouts pass in a few seconds


@pytest.fixture
async def fast_hosts(ray_cluster, tmp_path):
    """Two host actors on a clock 10x real time, with the VMFS and NFS datastores."""
    array = await start_array(tmp_path / "array")
    connection = await ArrayConnection.open(array.endpoint, array.identity.thumbprint)
    names = HOSTS[:2]
    lun = await connection.rpc.call(
        "CreateLun",
        pb.CreateLunRequest(
            size_bytes=16 * 1024**2, initiators=[initiator_name(n) for n in names] + ["iqn.format"]
        ),
        array.array.management_key,
    )
    await format_volume(
        ArrayBlockDevice(connection, "iqn.format", lun.id),
        "vmfs",
        VolumeLockMode.ATS_SCSI,
        uuid.uuid4(),
    )
    await connection.rpc.call(
        "CreateExport", pb.CreateExportRequest(name="nfs"), array.array.management_key
    )
    namespace = f"kill-{uuid.uuid4().hex[:8]}"
    hosts = []
    for i, name in enumerate(names):
        host = await boot(namespace, name, tmp_path / name, SPEED)
        hosts.append(host)
        await host.mount("vmfs", array, lun=lun.id)
        await host.mount("nfs", array, export="nfs")
        for datastore in ("vmfs", "nfs"):
            await host.register(datastore, create_files=i == 0)
    yield hosts
    await stop(hosts)
    await connection.close()
    await array.stop()


@pytest.mark.parametrize("label, timeout", [("vmfs", 16.0), ("nfs", 35.0)])
async def test_a_killed_holders_lock_is_broken_only_after_the_timeout(fast_hosts, label, timeout):
    holder, other = fast_hosts
    assert await holder.try_lock(label) == ""
    assert await other.try_lock(label) != ""
    ray.kill(holder.actor)  # the host dies: no more heartbeats or renewals
    killed = time.monotonic()
    while True:
        holder_seen = await other.try_lock(label)
        waited = (time.monotonic() - killed) * SPEED  # simulated seconds
        if not holder_seen:
            break
        assert waited < timeout + 15, f"the stale lock was never broken ({waited:.0f} s)"
        await asyncio.sleep(0.05)
    # The holder's last heartbeat (renewal) came at most one interval before it died.
    interval = 3.0 if label == "vmfs" else 10.0
    assert waited >= timeout - interval, f"broken after only {waited:.1f} simulated s"
    lock = await other.query_lock(label)  # the dead holder's lock was broken, not released
    assert [(h.host_uuid, h.live) for h in lock.holders] == [(other.uuid, True)]
