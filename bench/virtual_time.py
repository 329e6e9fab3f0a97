"""Virtual-time benchmark: a whole datacenter in one process on the virtual loop.

A vCenter core and its hosts on the in-process engine (no Ray, no sockets), on a
SimClock that is the VirtualEventLoop's time, as the unit tests' Lab builds them. For
4 and for 32 hosts, idle and with 8 small powered-on VMs a host, it runs 10 simulated
minutes and reports simulated seconds per wall second and loop callbacks per second.
The bar (issue 13): >= 2 seeds a second a core for 4 hosts over 10 simulated minutes,
that is >= 1,200 simulated seconds per wall second for the 4-host runs.

Prints one JSON object. Run with `python bench/virtual_time.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from harness import reference

from vsim import passwords
from vsim.clock import SimClock
from vsim.cluster.client import VCenterClient
from vsim.cluster.inprocess import InProcessEngine
from vsim.runtime import Runtime
from vsim.spec import ClusterSpec, HostSpec
from vsim.v1 import common_pb2
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.service import INVENTORY_FILE, VCenter
from vsim.vcenter.sessions import ADMINISTRATOR
from vsim.virtual_time import VirtualEventLoop, running_loop

T0 = 1_700_000_000.0
SEED = 7
VM_MEMORY_MB = 64
"""Small guests: the per-tick work is measured, not the boot of big memories."""


async def datacenter(data_dir: Path, hosts: int, vms_per_host: int, minutes: float) -> dict:
    """Boots vCenter with `hosts` hosts, powers on the VMs, then runs `minutes` of
    simulated time and measures that stretch only."""
    clock = SimClock(T0)
    runtime = Runtime.simulated(clock, SEED, "lab")
    engine = InProcessEngine(runtime.child("hosts"), None)
    spec = ClusterSpec(
        hosts=tuple(
            HostSpec(f"esxi-{i:02d}", cpu_cores=16, memory_mb=32 * 1024)
            for i in range(1, hosts + 1)
        )
    )
    vc = VCenter(data_dir, Inventory(data_dir / INVENTORY_FILE), engine, runtime.child("vc"))
    began = time.perf_counter()
    await vc.start(spec)
    try:
        anonymous = VCenterClient.in_process(vc.table)
        token = await anonymous.login(ADMINISTRATOR, vc.sessions.initial_password())
        client = VCenterClient.in_process(vc.table, token)
        for h in range(1, hosts + 1):
            for v in range(vms_per_host):
                name = f"vm-{h:02d}-{v:02d}"
                task = await client.wait(
                    await client.create_vm(name, 1, VM_MEMORY_MB, f"esxi-{h:02d}"), timeout=60
                )
                assert task.state == common_pb2.TASK_STATE_SUCCESS, task
                task = await client.wait(await client.power_on(name), timeout=60)
                assert task.state == common_pb2.TASK_STATE_SUCCESS, task
        boot_s = time.perf_counter() - began
        loop = running_loop()
        callbacks, start = loop.callbacks_run, clock.now()
        began = time.perf_counter()
        await clock.advance(minutes * 60)
        wall = time.perf_counter() - began
        simulated = clock.now() - start
        events = loop.callbacks_run - callbacks
        return {
            "hosts": hosts,
            "vms": hosts * vms_per_host,
            "simulated_s": round(simulated, 1),
            "wall_s": round(wall, 3),
            "simulated_s_per_wall_s": round(simulated / wall, 1),
            "loop_events": events,
            "loop_events_per_s": round(events / wall),
            "boot_wall_s": round(boot_s, 3),
        }
    finally:
        await vc.stop()
        for name in list(engine.hosts()):
            engine.crash(name)


def run_one(hosts: int, vms_per_host: int, minutes: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        with asyncio.Runner(loop_factory=lambda: VirtualEventLoop(T0)) as runner:
            return runner.run(datacenter(Path(tmp) / "vc", hosts, vms_per_host, minutes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes a run")
    parser.add_argument("--hosts", type=int, nargs="*", default=[4, 32])
    parser.add_argument("--vms", type=int, nargs="*", default=[0, 8], help="VMs a host")
    args = parser.parse_args()
    # Password hashing is not what is measured here (boot is timed apart anyway).
    passwords.SCRYPT_N = 2**4
    before = reference()
    runs = [run_one(h, v, args.minutes) for h in args.hosts for v in args.vms]
    after = reference()
    four = [r for r in runs if r["hosts"] == 4]
    result = {
        "runs": runs,
        "bar_simulated_s_per_wall_s_4_hosts": 1200,
        "seeds_per_s_4_hosts_busy": (
            round(four[-1]["simulated_s_per_wall_s"] / (args.minutes * 60), 2) if four else None
        ),
    }
    print(json.dumps(result | before | {"reference_after_s": after["reference_s"]}))


if __name__ == "__main__":
    main()
