"""The simulator's parts on their own: a fault plan is a function of its seed and
keeps to its kinds and times; bad settings and bad `vsim sim` input get a clear
fault and run nothing; a history's digest covers every event."""

from __future__ import annotations

import random

import pytest

from vsim.clock import SimClock
from vsim.cluster.cli import main
from vsim.cluster.simulator.fault_plan import FAULT_KINDS, MIGRATION_PHASES, FaultPlan, parse_kinds
from vsim.cluster.simulator.history import History
from vsim.cluster.simulator.run import Settings
from vsim.faults import InvalidArgument

HOSTS = ["esxi-01", "esxi-02", "esxi-03"]
ONE_OF_A_KIND = ("slow-disk", "array-restart", "vcenter-restart", "migration")
"""Faults on the array, a datastore, vCenter or the next vMotion rather than a host."""


def test_a_fault_plan_is_a_function_of_its_seed():
    plans = [FaultPlan.draw(random.Random(s), HOSTS, FAULT_KINDS, 600) for s in range(200)]
    again = [FaultPlan.draw(random.Random(s), HOSTS, FAULT_KINDS, 600) for s in range(200)]
    assert plans == again
    assert len({p.faults for p in plans}) > 150
    faults = [f for p in plans for f in p.faults]
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    assert all(5 <= f.at <= 0.8 * 600 for f in faults)
    assert all(f.target in HOSTS for f in faults if f.kind not in ONE_OF_A_KIND)
    assert {f.target for f in faults if f.kind == "slow-disk"} == {"vmfs-01", "vmfs-02", "nfs-01"}
    assert all(list(p.faults) == sorted(p.faults) for p in plans)
    storage = [f.length for f in faults if f.kind == "storage-path"]
    assert any(x < 140 for x in storage) and any(x > 140 for x in storage)  # both sides of APD
    phases = {f.detail for f in faults if f.kind == "migration"}
    assert phases == set(MIGRATION_PHASES) and all(
        f.target == "" for f in faults if f.kind == "migration"
    )
    assert sum(1 for p in plans if not p.faults) >= 5
    assert sum(1 for p in plans if len(p.kinds()) >= 3) >= 40


def test_a_plan_keeps_to_the_kinds_asked_for():
    plans = [FaultPlan.draw(random.Random(s), HOSTS, ("crash",), 60) for s in range(50)]
    assert {f.kind for p in plans for f in p.faults} == {"crash"}
    assert FaultPlan.draw(random.Random(1), HOSTS, (), 60).faults == ()


def test_fault_kinds_parse_or_are_refused():
    assert parse_kinds("all") == FAULT_KINDS
    assert parse_kinds("none") == ()
    assert parse_kinds("crash,hang") == ("crash", "hang")
    with pytest.raises(InvalidArgument, match="unknown fault kind 'meteor'.*the kinds are crash"):
        parse_kinds("crash,meteor")


@pytest.mark.parametrize(
    "settings",
    [Settings(hosts=0), Settings(hosts=97), Settings(minutes=-1), Settings(vms=-2)],
)
def test_bad_settings_are_refused(settings):
    with pytest.raises(InvalidArgument):
        settings.validated()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sim", "run", "--faults", "meteor"], "unknown fault kind"),
        (["sim", "run", "--seed", "-1"], "a seed is between 0"),
        (["sim", "run", "--seeds", "1", "--minutes", "-3"], "minutes"),
        (["sim", "replay", "5", "--hosts", "200"], "hosts"),
    ],
)
def test_bad_sim_input_gets_a_clear_fault(argv, message, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Error: InvalidArgument" in err and message in err


def test_a_history_digest_covers_every_event():
    clock = SimClock(100.0)
    one, two = History(clock, 100.0), History(clock, 100.0)
    for history in (one, two):
        history.record("fault", "crash esxi-01 for 10.0 s")
        history.record("task", "task-1 power-on vm-001 -> SUCCESS")
    assert one.digest() == two.digest()
    two.record("vm-start", "vm-001 on esxi-02")
    assert one.digest() != two.digest()
    one.violate("one host per VM", "vm-001 runs on esxi-01 and esxi-02 at once")
    assert one.violations[0].event.kind == "VIOLATION"
    assert "VIOLATION" in one.timeline().splitlines()[-1]
