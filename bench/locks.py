"""On-disk lock benchmark: lock acquire + release per second with 1, 4 and 16
contending host actors on ats+scsi and ats-only VMFS volumes and an NFS datastore,
with reservation conflicts per 1,000 operations.

    .venv/bin/python bench/locks.py [--seconds 5] [--hosts 1,4,16]

Prints one JSON object. Every host's storage stack runs in its own Ray actor with its
own initiator and gRPC+TLS line to the array; all hosts hammer the same lock at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from pathlib import Path

import ray
from harness import report, start_ray

from vsim.clock import WallClock
from vsim.faults import FileLocked
from vsim.host.storage.array_client import ArrayBlockDevice, ArrayConnection, GrpcStoragePorts
from vsim.host.storage.storage_stack import StorageStack
from vsim.host.storage.vmfs import format_volume
from vsim.iscsi import initiator_name
from vsim.runtime import Runtime
from vsim.spec import HostSpec, host_name
from vsim.storage.server import start_array
from vsim.storage.vmfs_format import LockMode, VolumeLockMode
from vsim.v1 import storage_pb2 as pb

VOLUMES = {"ats+scsi": VolumeLockMode.ATS_SCSI, "ats-only": VolumeLockMode.ATS_ONLY}


class LockInitiator:
    """One host's storage stack on its own, in its own Ray worker: what a host's
    hostd locks through, without hostd. The benchmark measures the on-disk lock
    protocol; hosts themselves are driven through hostd's API (see
    tests/integration/test_storage_locks.py)."""

    def __init__(self, spec_json: str) -> None:
        spec = HostSpec(**json.loads(spec_json))
        runtime = Runtime.live(WallClock(1.0), spec.name)
        self.storage = StorageStack(spec.host_uuid, spec.name, runtime, GrpcStoragePorts())

    async def mount(
        self, label: str, kind: str, endpoint: str, thumbprint: str, where: int | str
    ) -> None:
        lun, export = (where, "") if kind == "vmfs" else (0, where)
        await self.storage.mount(label, kind, endpoint, thumbprint, lun, export)

    async def try_lock(self, label: str, target: int, path: str) -> str:
        """Takes a lock (a VMFS lock record index, or an NFS file's fileid); returns
        "" when granted, else who holds it."""
        try:
            if label in self.storage.vmfs:
                await self.storage.vmfs[label].lock(target, path, LockMode.EXCLUSIVE)
            else:
                await self.storage.nfs_mount(label).lock("", target, path)
        except FileLocked as e:
            return e.properties.get("holder") or "unknown"
        return ""

    async def unlock(self, label: str, target: int) -> None:
        if label in self.storage.vmfs:
            await self.storage.vmfs[label].unlock(target)
        else:
            await self.storage.nfs_mount(label).unlock("", target)

    async def lock_load(self, label: str, target: int, seconds: float) -> dict[str, int]:
        """Takes and releases one lock as fast as it can for `seconds`."""
        deadline = self.storage.clock.now() + seconds
        counts = {"acquired": 0, "refused": 0}
        while self.storage.clock.now() < deadline:
            if await self.try_lock(label, target, f"load-{target}"):
                counts["refused"] += 1
                await asyncio.sleep(0)
                continue
            counts["acquired"] += 1
            await self.unlock(label, target)
        return counts

    async def stats(self) -> dict[str, dict[str, int]]:
        """Each mounted datastore's lock counters (reservations, conflicts, ...)."""
        out: dict[str, dict[str, int]] = {}
        for label, volume in self.storage.vmfs.items():
            out[label] = dict(volume.stats) | {"lost_access": int(volume.lost_access)}
        for label, manager in self.storage.nfs.items():
            out[label] = dict(manager.stats)
        return out

    async def close(self) -> None:
        await self.storage.close()


LockInitiatorActor = ray.remote(LockInitiator)


async def setup(root: Path, hosts: int):
    array = await start_array(root / "array")
    connection = await ArrayConnection.open(array.endpoint, array.identity.thumbprint)
    names = [host_name(i) for i in range(1, hosts + 1)]
    initiators = [initiator_name(n) for n in names] + ["iqn.format"]
    luns = {}
    for label, mode in VOLUMES.items():
        lun = await connection.rpc.call(
            "CreateLun",
            pb.CreateLunRequest(size_bytes=16 * 1024**2, initiators=initiators),
            array.array.management_key,
        )
        await format_volume(
            ArrayBlockDevice(connection, "iqn.format", lun.id), label, mode, uuid.uuid4()
        )
        luns[label] = lun.id
    await connection.rpc.call(
        "CreateExport", pb.CreateExportRequest(name="nfs"), array.array.management_key
    )
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    actors = [
        LockInitiatorActor.options(name=n, namespace=namespace, num_cpus=0).remote(
            HostSpec(n, uuid=str(uuid.uuid4())).to_json()
        )
        for n in names
    ]
    pin = (array.endpoint, array.identity.thumbprint)
    for actor in actors:
        for label, lun in luns.items():
            await actor.mount.remote(label, "vmfs", *pin, lun)
        await actor.mount.remote("nfs", "nfs", *pin, "nfs")
    return array, connection, actors


async def measure(actors, label: str, seconds: float) -> dict:
    before = [await a.stats.remote() for a in actors]
    results = await asyncio.gather(*(a.lock_load.remote(label, 7, seconds) for a in actors))
    after = [await a.stats.remote() for a in actors]
    acquired = sum(r["acquired"] for r in results)
    refused = sum(r["refused"] for r in results)
    conflicts = sum(
        a[label].get("reservation_conflicts", 0) - b[label].get("reservation_conflicts", 0)
        for a, b in zip(after, before, strict=True)
    )
    operations = acquired * 2 + refused  # acquire + release, and refused attempts
    return {
        "lock_release_per_s": round(acquired / seconds, 1),
        "refused_per_s": round(refused / seconds, 1),
        "reservation_conflicts_per_1000_ops": round(1000 * conflicts / max(operations, 1), 1),
    }


async def main(args: argparse.Namespace) -> dict:
    start_ray()
    result: dict = {"benchmark": "locks", "seconds_per_run": args.seconds, "runs": {}}
    for hosts in args.hosts:
        with tempfile.TemporaryDirectory() as tmp:
            array, connection, actors = await setup(Path(tmp), hosts)
            for label in [*VOLUMES, "nfs"]:
                result["runs"][f"{label}/{hosts}_hosts"] = await measure(
                    actors, label, args.seconds
                )
            for actor in actors:
                await actor.close.remote()
                ray.kill(actor)
            await connection.close()
            await array.stop()
    ray.shutdown()
    result["command"] = "python bench/locks.py " + " ".join(sys.argv[1:])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--hosts", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16]
    )
    report(main(parser.parse_args()))
