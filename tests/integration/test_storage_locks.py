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
from vsim.cluster.spec import HostSpec
from vsim.host.array_client import ArrayBlockDevice, ArrayConnection
from vsim.host.storage_stack import initiator_name
from vsim.host.vmfs import format_volume
from vsim.passwords import hash_password
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
        lun = await connection.call(
            "CreateLun", pb.CreateLunRequest(size_bytes=16 * 1024**2, initiators=initiators)
        )
        device = ArrayBlockDevice(connection, "iqn.format", lun.id)
        await format_volume(device, label, mode, uuid.uuid4())
        luns[label] = lun.id
    await connection.call("CreateExport", pb.CreateExportRequest(name="nfs-01"))
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
        array_stats = await connection.call("GetStats", pb.GetStatsRequest())
        sizes = [w.sizes for w in array_stats.nfs_writes if w.export == "nfs-01"]
        assert sizes and all(set(s) == {84} for s in sizes), "every lock WRITE is 84 bytes"
