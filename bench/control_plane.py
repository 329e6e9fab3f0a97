"""Control-plane benchmark: cluster start time (3 and 32 hosts) and power-on +
power-off round trips per second through gRPC for 1,000 VMs.

    .venv/bin/python bench/control_plane.py [--vms 1000] [--concurrency 16]

Prints one JSON object. Each host is a real Ray actor serving hostd over TLS; every
operation goes client → vCenter (gRPC+TLS) → host (gRPC+TLS, as vpxuser) → task
finished, as a user's script would drive it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import ray
from harness import report, start_ray

from vsim.cluster.client import VCenterClient
from vsim.cluster.ray_engine import ray_engines
from vsim.spec import ClusterSpec
from vsim.vcenter.server import start_vcenter
from vsim.vcenter.sessions import ADMINISTRATOR


async def start(hosts: int, root: Path):
    began = time.perf_counter()
    running = await start_vcenter(
        root / f"c{hosts}", ClusterSpec.default(hosts), ray_engines(), port=0
    )
    return running, time.perf_counter() - began


async def client_for(running) -> VCenterClient:
    client = await VCenterClient.connect(running.endpoint, running.thumbprint)
    await client.login(ADMINISTRATOR, running.core.sessions.initial_password())
    return client


async def in_parallel(names: list[str], concurrency: int, action) -> float:
    """Runs action(name) over names with `concurrency` workers; returns seconds."""
    queue = list(reversed(names))

    async def worker() -> None:
        while queue:
            await action(queue.pop())

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began


async def power_cycle(client: VCenterClient, names: list[str], concurrency: int) -> float:
    async def cycle(name: str) -> None:
        await client.run(await client.power_on(name))
        await client.run(await client.power_off(name))

    seconds = await in_parallel(names, concurrency, cycle)
    return len(names) / seconds


async def main(args: argparse.Namespace) -> dict:
    began = time.perf_counter()
    start_ray()
    ray_init = time.perf_counter() - began
    result: dict = {
        "benchmark": "control_plane",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "ray_init_s": round(ray_init, 2),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small, t3 = await start(3, root)
        result["start_3_hosts_s"] = round(t3, 2)
        client = await client_for(small)
        names = [f"vm-{i:04d}" for i in range(1, args.vms + 1)]

        async def create(name: str) -> None:
            await client.run(await client.create_vm(name, cpus=1, memory_mb=256))

        seconds = await in_parallel(names, args.concurrency, create)
        result["vms"] = args.vms
        result["create_vms_per_s"] = round(args.vms / seconds, 1)
        result["power_round_trips_per_s"] = {
            "concurrency_1": round(await power_cycle(client, names[:200], 1), 1),
            f"concurrency_{args.concurrency}": round(
                await power_cycle(client, names, args.concurrency), 1
            ),
        }
        await client.close()
        await small.stop()

        if args.big_hosts:
            big, t32 = await start(args.big_hosts, root)
            result[f"start_{args.big_hosts}_hosts_s"] = round(t32, 2)
            await big.stop()
    ray.shutdown()
    result["command"] = "python bench/control_plane.py " + " ".join(sys.argv[1:])
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--big-hosts", type=int, default=32)
    report(main(parser.parse_args()))
