"""vSphere HA benchmark (issue 15's): how long a crashed host's VMs take to run again.

In the deterministic simulator (the in-process engine on virtual time, the same
vCenter, hosts and array `vsim up` runs): per seed, a datacenter of H hosts with HA
on (vCenter's heartbeat datastore pick), VMs on VMFS and on NFS with guests writing,
spread over the hosts; after the election one host (drawn from the seed) crashes and
the clock runs until each of its VMs runs again on another host. Reports, for 4 and
for 32 hosts, the simulated seconds from the crash to each VM running again (median
and worst, VMFS and NFS apart: VMFS waits 16 s for the locks, NFS 35 s, after the 18 s
verdict) and failures handled per wall second. (The docker-compose figure, wall
seconds from `docker kill` to the VM running again, is not measured yet.)

Prints one JSON object. Run with `python bench/ha.py [--seeds N]`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import time

from harness import reference

from vsim import passwords
from vsim.cluster.simulator.datacenter import T0, SimulatedDatacenter
from vsim.cluster.simulator.run import run_directory
from vsim.cluster.simulator.workload import LIGHT_GUEST
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb
from vsim.virtual_time import run as run_virtual

OK = common_pb2.TASK_STATE_SUCCESS
VMS_PER_HOST = 2
"""One on vmfs-01, one on nfs-01."""
GIVE_UP_S = 600.0


async def one_failover(seed: int, hosts: int, directory) -> dict[str, float]:
    """Simulated seconds from the crash to each of the crashed host's VMs running
    again ("vmfs"/"nfs" by datastore kind, None if it never did)."""
    dc = SimulatedDatacenter(directory, seed, hosts)
    try:
        await dc.start_vcenter()
        client = dc.client()
        await client.configure_ha(host_failures=0)
        for host in dc.host_names:
            for datastore in ("vmfs-01", "nfs-01"):
                name = f"vm-{host[-2:]}-{datastore[:3]}"
                task = await client.create_vm(
                    name,
                    memory_mb=64,
                    host=host,
                    datastore=datastore,
                    disk_mb=4,
                    guest_write_iops=1,
                    resources=kpb.VmResources(memory_workload=LIGHT_GUEST),
                )
                assert (await client.wait(task)).state == OK
                assert (await client.wait(await client.power_on(name))).state == OK
        await dc.clock.sleep(40)  # elected, heartbeating, files kept
        victim = random.Random(seed).choice(dc.host_names)
        lost = {vm.name for vm in dc.engine.running(victim).kernel.vms() if vm.powered_on}
        crashed = dc.clock.now()
        dc.engine.crash(victim)
        back: dict[str, float] = {}
        while len(back) < len(lost) and dc.clock.now() - crashed < GIVE_UP_S:
            await dc.clock.sleep(0.5)
            for hostd in dc.engine.hosts().values():
                for name in lost - set(back):
                    if name in hostd.running_vms() and hostd.kernel.memory.speed(name) > 0:
                        back[name] = dc.clock.now() - crashed
        return {name: back.get(name) for name in sorted(lost)}
    finally:
        await dc.close()


def measure(hosts: int, seeds: int) -> dict:
    times: dict[str, list[float]] = {"vmfs": [], "nfs": []}
    never = 0
    began = time.perf_counter()
    for seed in range(seeds):
        directory = run_directory()
        try:
            result = run_virtual(one_failover(seed, hosts, directory), start=T0, time_limit=3600)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        for name, seconds in result.items():
            if seconds is None:
                never += 1
            else:
                times["vmfs" if name.endswith("vmf") else "nfs"].append(seconds)
    wall = time.perf_counter() - began
    return {
        "hosts": hosts,
        "seeds": seeds,
        "wall_s": round(wall, 2),
        "failovers_per_wall_s": round(seeds / wall, 3),
        "crash_to_running_s": {
            kind: {
                "median": round(statistics.median(values), 2),
                "worst": round(max(values), 2),
                "vms": len(values),
            }
            for kind, values in times.items()
            if values
        },
        "never_restarted": never,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=100, help="seeds per cluster size")
    parser.add_argument("--big-seeds", type=int, default=10, help="seeds for 32 hosts")
    args = parser.parse_args()
    # A simulated run's secrets guard nothing: scrypt's lowest cost, as `vsim sim` does.
    passwords.SCRYPT_N = 2**4
    before = reference()
    runs = [measure(4, args.seeds), measure(32, args.big_seeds)]
    after = reference()
    result = {
        "benchmark": "ha",
        "command": f"bench/ha.py --seeds {args.seeds} --big-seeds {args.big_seeds}",
        "simulator": runs,
    }
    print(json.dumps(result | before | {"reference_after_s": after["reference_s"]}))


if __name__ == "__main__":
    main()
