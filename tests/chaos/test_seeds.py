"""A thousand seeded schedules against the whole simulated datacenter, on both cores:
a workload and a fault plan each, every invariant checked over each whole run. A
failing seed is printed with what broke, when, and the command that replays it.

The seeds are fixed (0..999), so a red run is a real regression and replays as is;
`vsim sim run --seeds N --first F` explores others."""

from __future__ import annotations

from collections import Counter

import pytest

from vsim.cluster.simulator.fault_plan import FAULT_KINDS
from vsim.cluster.simulator.run import Settings, run_seeds

SEEDS = 1000
SETTINGS = Settings(hosts=3, minutes=1, vms=6)
"""Three hosts, one simulated minute of workload and faults a seed, then the settle
period: what fits 1,000 seeds in about 6 minutes on two cores here (`vsim sim run`
defaults to 4 hosts and 10 minutes)."""


def describe(report, settings: Settings) -> str:
    lines = [f"seed {report.seed}:"]
    lines += [f"  {v.checker} at {v.at:.3f} s: {v.event}" for v in report.violations]
    if report.error:
        lines.append("  the run failed: " + report.error.strip().splitlines()[-1])
    lines.append(f"  replay: {report.replay_command(settings)} --trace")
    return "\n".join(lines)


@pytest.mark.timeout(1200)
def test_a_thousand_seeded_schedules_break_no_invariant():
    reports = list(run_seeds(range(SEEDS), SETTINGS, jobs=2))
    failing = [r for r in reports if not r.ok]
    assert not failing, "\n".join(describe(r, SETTINGS) for r in failing)
    assert sorted(r.seed for r in reports) == list(range(SEEDS))
    # The schedules are rich enough to mean something: many faults of many kinds,
    # and operations in every run.
    assert sum(len(r.faults) >= 3 for r in reports) >= 100
    injected = Counter()
    for report in reports:
        injected.update(report.faults)
    assert set(injected) == set(FAULT_KINDS), injected
    assert min(r.operations for r in reports) > 0
