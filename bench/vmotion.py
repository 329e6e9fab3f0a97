"""vMotion benchmark, in three parts (issue 14's):

(a) in process, the pre-copy of a 64 GiB VM with 16 GiB touched whose guest dirties
    100 MB/s, over a 10 Gb/s link, on the virtual clock: wall seconds (bar: <= 0.25 s)
    with the pages only fingerprinted and handed to a sink, and again with a
    destination host's memory manager receiving them into machine pages; and the
    simulated figures (rounds, stun).
(b) between two real Ray host actors on loopback, through vCenter (MigrateVM_Task
    over gRPC+TLS; the pages stream host to host over HostVMotion): wall seconds to
    migrate a running 4 GiB and a 64 GiB VM (bar: 64 GiB in <= 3 s), the link's own
    share of it (what the migration's bytes take on the simulated vMotion link, at
    the cluster's clock speed), and the stream's fingerprint MB/s (8-byte PPN and
    8-byte fingerprint a page: what crosses the wire for its 4 KiB).
(c) migrations per second of running 256 MB VMs between the same two hosts, one at a
    time and 8 at once, and the ratio to vcsim's ~100/s for its inventory-only
    RelocateVM (pyvmomi, on this machine), which moves no memory at all.

Prints one JSON object, with the reference measured before and after.

    .venv/bin/python bench/vmotion.py [--parts a,b,c] [--link-mbps 100000]

The hosts run on real time (clock speed 1, vSphere's timeouts as they are), so (b)'s
wall time includes the simulated link's: at the default 10 Gb/s the bytes of a
64 GiB VM (its default guest touches 40 %) take 22 s of it, at 100 Gb/s (a vMotion
network vSphere supports) 2.2 s; `link_s` and `beyond_link_s` say which is which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import reference, start_ray

from vsim.clock import SimClock, WallClock
from vsim.cluster.client import VCenterClient
from vsim.cluster.ray_engine import ray_engines
from vsim.guest_workload import GuestWorkload
from vsim.host.kernel.memory.memsched import MemoryManager
from vsim.host.kernel.memory.pmap import PAGES_PER_MB
from vsim.host.vm.vmotion import PreCopySettings, precopy
from vsim.memory_settings import MemorySettings
from vsim.spec import ClusterSpec
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.server import RunningVCenter, start_vcenter
from vsim.vcenter.sessions import ADMINISTRATOR
from vsim.virtual_time import run

VM_MB = 64 * 1024
HOST_MB = 2 * VM_MB
UUID = "4c4c4544-0000-0000-0000-0000000000b1"
HOSTS = ("esxi-01", "esxi-02")
WIRE_BYTES_PER_PAGE = 16
"""What a page costs the stream: its 8-byte PPN and 8-byte fingerprint."""
VCSIM_RELOCATES_PER_S = 100.0
"""vcsim's inventory-only RelocateVM through pyvmomi on this machine (issue 14)."""
SMALL_VM_MB = 256


def source(directory: Path, dirty_mb_s: float) -> MemoryManager:
    memory = MemoryManager(
        HOST_MB, SimClock(), directory / "src", MemorySettings(page_sharing=False)
    )
    workload = GuestWorkload(
        working_set_pct=10, boot_touch_pct=25, dirty_rate=dirty_mb_s * PAGES_PER_MB, touch_rate=0
    )
    memory.power_on("big", UUID, VM_MB, "", None, workload)
    return memory


async def migrate(directory: Path, dirty_mb_s: float, into_destination: bool) -> dict:
    (directory / "src").mkdir()
    memory = source(directory, dirty_mb_s)
    touched_mb = len(memory.touched_pages("big")) / PAGES_PER_MB
    destination = None
    if into_destination:
        (directory / "dst").mkdir()
        destination = MemoryManager(
            HOST_MB, memory.clock, directory / "dst", MemorySettings(page_sharing=False)
        )
        destination.power_on("big", UUID, VM_MB, "", arriving=True)

    async def send(ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        if destination is not None:
            destination.receive("big", ppns, fingerprints)

    began = time.perf_counter()
    result = await precopy(memory, "big", memory.clock, send, PreCopySettings(link_gbps=10))
    wall = time.perf_counter() - began
    return {
        "into": "destination memory manager" if into_destination else "sink",
        "wall_s": round(wall, 4),
        "touched_mb": round(touched_mb),
        "rounds": len(result.rounds),
        "memory_sent_mb": round(result.memory_sent_bytes / 2**20),
        "pages_resent": result.pages_resent,
        "sdps": result.sdps,
        "simulated_precopy_s": round(result.precopy_s, 3),
        "simulated_stun_ms": round(result.stun_send_s * 1000, 2),
    }


def part_a(dirty_mb_s: float) -> dict:
    runs = []
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    for into in (False, True):
        with tempfile.TemporaryDirectory(dir=shm) as d:
            runs.append(run(migrate(Path(d), dirty_mb_s, into)))
    return {"precopy_64_gib_vm": runs, "dirty_mb_s": dirty_mb_s, "bar_wall_s": 0.25}


# -- (b) and (c): two Ray host actors, through vCenter -------------------------------


async def connected(client: VCenterClient) -> None:
    """Until vCenter has every host connected (a long power-on can make a host miss
    a heartbeat; vCenter takes it back at the next)."""
    deadline = time.monotonic() + 60
    while True:
        hosts = await client.hosts()
        if all(h.connection_state == pb.CONNECTION_STATE_CONNECTED for h in hosts):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"hosts not connected: {[(h.name, h.connection_state) for h in hosts]}"
            )
        await asyncio.sleep(0.1)


async def running_vm(client: VCenterClient, name: str, memory_mb: int) -> None:
    await client.run(await client.create_vm(name, memory_mb=memory_mb, host=HOSTS[0]))
    await client.run(await client.power_on(name))
    await connected(client)


async def gone(client: VCenterClient, name: str) -> None:
    await client.run(await client.power_off(name))
    await client.run(await client.destroy_vm(name))


async def part_b(
    client: VCenterClient, sizes_gib: list[int], link_mbps: int, encryption: str
) -> dict:
    runs = []
    for gib in sizes_gib:
        name = f"big-{gib}g"
        await running_vm(client, name, gib * 1024)
        began = time.perf_counter()
        task = await client.run(await client.migrate_vm(name, HOSTS[1], encryption=encryption))
        wall = time.perf_counter() - began
        m = task.migration
        pages = m.memory_sent_bytes // 4096
        link_s = m.memory_sent_bytes * 8 / (link_mbps * 1e6)
        runs.append({
            "vm_gib": gib,
            "wall_s": round(wall, 3),
            "link_s": round(link_s, 3),
            "beyond_link_s": round(wall - link_s, 3),
            "memory_sent_mb": round(m.memory_sent_bytes / 2**20),
            "fingerprint_mb_s": round(pages * WIRE_BYTES_PER_PAGE / 2**20 / wall, 1),
            "pages_per_s": round(pages / wall),
            "rounds": m.precopy_rounds,
            "simulated_total_s": round(m.total_s, 3),
            "downtime_ms": round(m.downtime_ms, 2),
            "encrypted": m.encrypted,
        })  # fmt: skip
        await gone(client, name)
    return {"migrations": runs, "link_mbps": link_mbps, "bar_64_gib_wall_s": 3.0}


async def part_c(client: VCenterClient, vms: int) -> dict:
    names = [f"vm-{i:03d}" for i in range(vms)]
    for name in names:
        await running_vm(client, name, SMALL_VM_MB)

    async def migrate_all(destination: str, at_once: int) -> float:
        queue = list(reversed(names))

        async def worker() -> None:
            while queue:
                await client.run(await client.migrate_vm(queue.pop(), destination))

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(at_once)))
        return vms / (time.perf_counter() - began)

    one = await migrate_all(HOSTS[1], 1)
    eight = await migrate_all(HOSTS[0], 8)
    for name in names:
        await gone(client, name)
    return {
        "vm_mb": SMALL_VM_MB,
        "vms": vms,
        "one_at_a_time_per_s": round(one, 2),
        "eight_at_once_per_s": round(eight, 2),
        "vcsim_relocate_per_s": VCSIM_RELOCATES_PER_S,
        "ratio_one_at_a_time": round(one / VCSIM_RELOCATES_PER_S, 3),
        "ratio_eight_at_once": round(eight / VCSIM_RELOCATES_PER_S, 3),
    }


async def two_hosts(args: argparse.Namespace, parts: set[str]) -> dict:
    start_ray()
    result: dict = {}
    with tempfile.TemporaryDirectory() as d:
        running: RunningVCenter = await start_vcenter(
            Path(d), ClusterSpec.default(len(HOSTS)), ray_engines(), port=0, clock=WallClock(1.0)
        )
        client = await VCenterClient.connect(running.endpoint, running.thumbprint)
        try:
            await client.login(ADMINISTRATOR, running.core.sessions.initial_password())
            for host in HOSTS:
                await client.update_vmknic(host, "vmk1", link_speed_mbps=args.link_mbps)
            if "b" in parts:
                sizes = [int(g) for g in args.sizes_gib.split(",")]
                result["b_ray_hosts"] = await part_b(client, sizes, args.link_mbps, args.encryption)
            if "c" in parts:
                result["c_migrations_per_s"] = await part_c(client, args.vms) | {
                    "link_mbps": args.link_mbps
                }
        finally:
            await client.close()
            await running.stop()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c", help="which parts, comma-separated")
    parser.add_argument("--dirty-mb-s", type=float, default=100.0, help="(a) the guest's")
    parser.add_argument("--sizes-gib", default="4,64", help="(b) the VMs, GiB")
    parser.add_argument(
        "--link-mbps", type=int, default=100000, help="(b, c) vmk1's link on both hosts"
    )
    parser.add_argument("--encryption", default="", help="(b) disabled/opportunistic/required")
    parser.add_argument("--vms", type=int, default=32, help="(c) how many 256 MB VMs")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    before = reference()
    result: dict = {
        "benchmark": "vmotion",
        "command": " ".join(["bench/vmotion.py", *sys.argv[1:]]),
    }
    if "a" in parts:
        result["a_in_process"] = part_a(args.dirty_mb_s)
    if parts & {"b", "c"}:
        with contextlib.redirect_stdout(sys.stderr):  # Ray's own prints
            result |= asyncio.run(two_hosts(args, parts))
    after = reference()
    print(json.dumps(result | before | {"reference_after_s": after["reference_s"]}))


if __name__ == "__main__":
    main()
