"""One seed, one history: a seed run twice, in this process and in another (whose
string hashing is salted differently), gives the same timeline event for event and
the same digest; another seed gives another."""

from __future__ import annotations

from vsim import passwords
from vsim.cluster.simulator.run import Settings, run_seed, run_seeds

SETTINGS = Settings(hosts=4, minutes=1)
SAMPLE = (3, 7, 1059, 424242)
"""Seeds with crashes, vCenter restarts, array restarts and hangs among them."""


def test_a_seed_replays_event_for_event_here_and_in_other_processes():
    first = {seed: run_seed(seed, SETTINGS) for seed in SAMPLE}
    again = {seed: run_seed(seed, SETTINGS) for seed in SAMPLE}
    for seed in SAMPLE:
        assert again[seed].timeline == first[seed].timeline, f"seed {seed} diverged"
        assert again[seed].digest == first[seed].digest
        assert first[seed].events > 50
    elsewhere = {r.seed: r.digest for r in run_seeds(SAMPLE, SETTINGS, jobs=2)}
    assert elsewhere == {seed: r.digest for seed, r in first.items()}
    assert len({r.digest for r in first.values()}) == len(SAMPLE)
    assert passwords.SCRYPT_N == 2**14  # a run's cheap hashing stays inside the run
    kinds = set().union(*(r.faults for r in first.values()))
    assert {"crash", "vcenter-restart", "array-restart", "hang"} <= kinds, kinds
