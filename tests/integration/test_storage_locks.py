"""On-disk locking with real host actors: four ESXi host actors, each with its own
initiator and gRPC line to the array, hammer one lock on an ats-only VMFS volume, an
ats+scsi VMFS volume and an NFS datastore. The history of grants and releases (as
the test saw them, so each interval lies inside the real hold) never overlaps."""

from __future__ import annotations

import asyncio
import random
import time
import uuid

import pytest
import ray

from vsim.cluster.ray_engine import EsxiHostActor
from vsim.host.storage.array_client import ArrayBlockDevice, ArrayConnection
from vsim.host.storage.storage_stack import initiator_name
from vsim.host.storage.vmfs import format_volume
from vsim.passwords import hash_password
from vsim.spec import HostSpec
from vsim.storage.server import start_array
from vsim.storage.vmfs_format import VolumeLockMode
from vsim.v1 import storage_pb2 as pb

HOSTS = [f"esxi-{i:02d}" for i in range(1, 5)]
DATASTORES = {"vmfs-ats": VolumeLockMode.ATS_ONLY, "vmfs-scsi": VolumeLockMode.ATS_SCSI}
ROUNDS = 25


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
    actors = []
    for name in HOSTS:
        spec = HostSpec(name, uuid=str(uuid.uuid4()))
        actor = EsxiHostActor.options(name=name, namespace=namespace, num_cpus=0).remote(
            spec.to_json(), hash_password("root-password"), str(tmp_path / name), 1.0
        )
        for label, lun in luns.items():
            await actor.mount_vmfs.remote(label, array.endpoint, array.identity.thumbprint, lun)
        await actor.mount_nfs.remote("nfs-01", array.endpoint, array.identity.thumbprint, "nfs-01")
        actors.append(actor)
    yield array, connection, actors
    for actor in actors:
        await actor.shutdown.remote()
        ray.kill(actor)
    await connection.close()
    await array.stop()


@pytest.mark.parametrize("label", ["vmfs-ats", "vmfs-scsi", "nfs-01"])
async def test_exclusive_holds_never_overlap(lab, label):
    array, connection, actors = lab
    target = 5 if label.startswith("vmfs") else 0x42  # lock record, or the file's fileid
    history: list[tuple[float, float, int]] = []
    refused = 0

    async def hammer(i: int, actor) -> None:
        nonlocal refused
        rng = random.Random(i)
        for _ in range(ROUNDS):
            holder = await actor.try_lock.remote(label, target, "vm-001/vm-001-flat.vmdk")
            if holder:
                refused += 1
                await asyncio.sleep(rng.uniform(0, 0.01))
                continue
            granted = time.monotonic()
            await asyncio.sleep(rng.uniform(0, 0.005))
            released = time.monotonic()
            history.append((granted, released, i))
            await actor.unlock.remote(label, target)

    await asyncio.gather(*(hammer(i, a) for i, a in enumerate(actors)))
    assert len({who for _, _, who in history}) >= 2, "more than one host got the lock"
    assert refused > 0, "the hosts did contend"
    history.sort()
    for (_, end, who), (start, _, next_who) in zip(history, history[1:], strict=False):
        assert end <= start, f"{who} and {next_who} held the lock at the same time"

    stats = [await a.storage_stats.remote() for a in actors]
    conflicts = sum(s[label].get("reservation_conflicts", 0) for s in stats)
    if label == "vmfs-scsi":
        assert conflicts > 0, "ats+scsi updates contend for the reservation"
    elif label == "vmfs-ats":
        assert conflicts == 0, "ats-only volumes never reserve the LUN"
    else:
        array_stats = await connection.rpc.call(
            "GetStats", pb.GetStatsRequest(), array.array.management_key
        )
        sizes = [w.sizes for w in array_stats.nfs_writes if w.export == "nfs-01"]
        assert sizes and all(set(s) == {84} for s in sizes), "every lock WRITE is 84 bytes"


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
    actors = []
    for name in names:
        actor = EsxiHostActor.options(name=name, namespace=namespace, num_cpus=0).remote(
            HostSpec(name, uuid=str(uuid.uuid4())).to_json(),
            hash_password("root-password"),
            str(tmp_path / name),
            SPEED,
        )
        await actor.mount_vmfs.remote("vmfs", array.endpoint, array.identity.thumbprint, lun.id)
        await actor.mount_nfs.remote("nfs", array.endpoint, array.identity.thumbprint, "nfs")
        actors.append(actor)
    yield actors
    for actor in actors:
        try:
            await actor.shutdown.remote()
        except ray.exceptions.RayActorError:
            pass
        ray.kill(actor)
    await connection.close()
    await array.stop()


@pytest.mark.parametrize("label, timeout", [("vmfs", 16.0), ("nfs", 35.0)])
async def test_a_killed_holders_lock_is_broken_only_after_the_timeout(fast_hosts, label, timeout):
    holder, other = fast_hosts
    target = 11
    assert await holder.try_lock.remote(label, target, "vm-001-flat.vmdk") == ""
    assert await other.try_lock.remote(label, target, "vm-001-flat.vmdk") != ""
    ray.kill(holder)  # the host dies: no more heartbeats or renewals
    killed = time.monotonic()
    while True:
        holder_seen = await other.try_lock.remote(label, target, "vm-001-flat.vmdk")
        waited = (time.monotonic() - killed) * SPEED  # simulated seconds
        if not holder_seen:
            break
        assert waited < timeout + 15, f"the stale lock was never broken ({waited:.0f} s)"
        await asyncio.sleep(0.05)
    # The holder's last heartbeat (renewal) came at most one interval before it died.
    interval = 3.0 if label == "vmfs" else 10.0
    assert waited >= timeout - interval, f"broken after only {waited:.1f} simulated s"
    stats = await other.storage_stats.remote()
    assert stats[label]["locks_broken"] >= 1
