"""vCenter as a service of its own, for docker-compose: it joins a Ray cluster that
is already running (its container's head node, with the hosts' containers as
workers) and a storage array in another container, instead of starting both as
`vsim up` does.

Each host's actor is placed on the Ray node that offers a resource named after the
host, listens on all of its container's addresses and gives the address Ray knows
the node by (the management network). The array's thumbprint and LUN ids come from
the file the array container wrote when it prepared the cluster's storage.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import replace
from pathlib import Path

from vsim.clock import WallClock
from vsim.spec import ClusterSpec

ARRAY_INFO_WAIT = 120.0
"""Real seconds to wait for the array's info file (the array starts alongside)."""


def read_array_info(path: Path, wait: float = ARRAY_INFO_WAIT) -> dict:
    deadline = time.monotonic() + wait
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no array info at {path} after {wait:.0f} s: is the array up?")
        time.sleep(0.5)
    return json.loads(path.read_text())


def cluster_spec(hosts: int, luns: dict[str, int]) -> ClusterSpec:
    spec = ClusterSpec.default(hosts)
    datastores = tuple(
        replace(d, lun=luns[d.name]) if d.type == "vmfs" else d for d in spec.datastores
    )
    return replace(spec, datastores=datastores)


async def serve_vcenter(
    data_dir: Path,
    port: int,
    bind: str,
    hosts: int,
    ray_address: str,
    array_endpoint: str,
    array_info: Path,
    clock_speed: float = 1.0,
    array_management: str = "",
) -> None:
    """Runs vCenter until SIGINT/SIGTERM; the hosts' actors keep running after it."""
    import ray

    from vsim.cluster.fault_service import fault_services
    from vsim.cluster.ray_engine import ray_engines
    from vsim.vcenter.datastore import ArrayRef
    from vsim.vcenter.server import start_vcenter

    info = await asyncio.to_thread(read_array_info, array_info)
    ray.init(address=ray_address, logging_level="ERROR", log_to_driver=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running = await start_vcenter(
        data_dir,
        cluster_spec(hosts, info["luns"]),
        ray_engines(hosts_bind="0.0.0.0", hosts_advertise="node"),
        port=port,
        bind=bind,
        clock=WallClock(clock_speed),
        array=ArrayRef(
            array_endpoint,
            info["thumbprint"],
            info.get("management_key", ""),
            management_endpoint=array_management,
        ),
        services=fault_services,
    )
    print(json.dumps({"endpoint": running.endpoint, "thumbprint": running.thumbprint}), flush=True)
    try:
        await stop.wait()
    finally:
        await running.stop()
        ray.shutdown()
