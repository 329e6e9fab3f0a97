"""Simulator benchmark: whole seeded runs of `vsim sim run`, one after another on one
core, for a 4-host and a 32-host datacenter.

Each run is what `vsim sim run` does for one seed: vCenter, the hosts and the array
booted, the workload and the fault plan for the given simulated minutes, every fault
mended, the settle period, the liveness checks. Reports seeds per second per core,
simulated seconds per wall second and history events per second, for the 10-minute
schedule of issue 13's bar (>= 2 seeds a second a core for 4 hosts) and for the
1-minute schedule `make test` runs 1,000 of.

Prints one JSON object. Run with `python bench/simulator.py`.
"""

from __future__ import annotations

import argparse
import json
import time

from harness import reference

from vsim.cluster.simulator.run import Settings, run_seed


def measure(hosts: int, minutes: float, seeds: int) -> dict:
    settings = Settings(hosts=hosts, minutes=minutes)
    simulated = events = 0.0
    failing = []
    began = time.perf_counter()
    for seed in range(seeds):
        report = run_seed(seed, settings)
        simulated += report.simulated_s
        events += report.events
        if not report.ok:
            failing.append(seed)
    wall = time.perf_counter() - began
    return {
        "hosts": hosts,
        "minutes": minutes,
        "seeds": seeds,
        "wall_s": round(wall, 2),
        "seeds_per_s_per_core": round(seeds / wall, 3),
        "simulated_s_per_wall_s": round(simulated / wall, 1),
        "history_events_per_s": round(events / wall),
        "failing_seeds": failing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per 4-host schedule")
    args = parser.parse_args()
    before = reference()
    runs = [
        measure(4, 10, args.seeds),
        measure(4, 1, args.seeds * 5),
        measure(32, 10, 1),
    ]
    after = reference()
    result = {"runs": runs, "bar_seeds_per_s_per_core_4_hosts_10_min": 2}
    print(json.dumps(result | before | {"reference_after_s": after["reference_s"]}))


if __name__ == "__main__":
    main()
