"""One seed end to end, and many seeds on several processes.

A run: the datacenter boots (vCenter realises the cluster: hosts added, datastores
made), the workload makes its first VMs, then for the run's length the users work
while the fault plan breaks and mends things; then every fault is mended, the run
settles, and the liveness checks read the result. Everything in it comes from the
seed: the workload's choices, the plan, and every id, secret and backoff of every
component, so `replay(seed)` gives the same timeline and digest on any machine.

The checkers run in every run; `checkers` lets a caller add its own or replace the
list.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import re
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vsim import passwords, validate
from vsim.cluster.simulator.checkers import Checker
from vsim.cluster.simulator.checkers.acked_writes import AckedWritesChecker
from vsim.cluster.simulator.checkers.disk_locks import DiskLockChecker
from vsim.cluster.simulator.checkers.ha import HaChecker
from vsim.cluster.simulator.checkers.inventory import InventoryChecker
from vsim.cluster.simulator.checkers.maintenance import MaintenanceChecker
from vsim.cluster.simulator.checkers.no_crash import NoCrashChecker
from vsim.cluster.simulator.checkers.one_host import OneHostChecker
from vsim.cluster.simulator.checkers.tasks_end import TasksEndChecker
from vsim.cluster.simulator.checkers.vmotion import VMotionChecker
from vsim.cluster.simulator.datacenter import T0, SimulatedDatacenter
from vsim.cluster.simulator.fault_plan import FAULT_KINDS, FaultInjector, FaultPlan
from vsim.cluster.simulator.history import History
from vsim.cluster.simulator.workload import Workload
from vsim.faults import InvalidArgument
from vsim.runtime import derive_seed
from vsim.virtual_time import run as run_virtual

SETTLE = 60.0
"""Simulated seconds after every fault is mended before the liveness checks: hosts
reattach (5 s checks), hangs end (at most 40 s), volumes are taken back (3 s), NFS
locks given up go stale (35 s)."""
SAMPLE_EVERY = 1.0
MAX_SEED = 2**63 - 1

CheckerFactory = Callable[[SimulatedDatacenter, History], Checker]
STANDARD_CHECKERS: tuple[CheckerFactory, ...] = (
    DiskLockChecker,
    OneHostChecker,
    AckedWritesChecker,
    TasksEndChecker,
    InventoryChecker,
    VMotionChecker,
    MaintenanceChecker,
    HaChecker,
)
"""The no-crash checker is always there (the workload reports to it)."""


@dataclass(frozen=True)
class Settings:
    hosts: int = 4
    minutes: float = 10.0
    faults: tuple[str, ...] = FAULT_KINDS
    vms: int = 8
    """VMs the workload starts with (it makes and destroys more as it goes)."""

    def validated(self) -> Settings:
        validate.int_range(self.hosts, 1, 96, "hosts")
        validate.positive_number(self.minutes, "minutes")
        if self.minutes > 24 * 60:
            raise InvalidArgument("a run is at most 1,440 simulated minutes")
        validate.int_range(self.vms, 0, 1000, "vms")
        for kind in self.faults:
            if kind not in FAULT_KINDS:
                raise InvalidArgument(f"unknown fault kind {kind!r}")
        return self


@dataclass(frozen=True)
class Broken:
    checker: str
    at: float
    event: str


@dataclass(frozen=True)
class SeedReport:
    seed: int
    simulated_s: float
    operations: int
    faults: dict[str, int]
    violations: tuple[Broken, ...]
    digest: str
    events: int
    timeline: str = field(default="", repr=False)
    error: str = ""
    """An exception that ended the run early (itself a failure), with its traceback."""

    @property
    def ok(self) -> bool:
        return not self.violations and not self.error

    def replay_command(self, settings: Settings) -> str:
        faults = ",".join(settings.faults) or "none"
        return (
            f"vsim sim replay {self.seed} --hosts {settings.hosts} --minutes "
            f"{settings.minutes:g} --vms {settings.vms} --faults {faults}"
        )


def run_directory() -> Path:
    """A fresh directory for one run's files, in memory where the machine has it
    (/dev/shm): a run writes its LUNs with O_DSYNC, and their durability is not what
    a simulated run is about."""
    base = (
        Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
    )
    return Path(tempfile.mkdtemp(prefix="vsim-sim-", dir=base))


class _LogToHistory(logging.Handler):
    """What components log (warnings and worse) as "log" events: `replay --trace`.
    The run's directory and object addresses are masked, so the lines replay."""

    def __init__(self, history: History, directory: Path) -> None:
        super().__init__(logging.WARNING)
        self.history = history
        self.directory = str(directory)

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().replace(self.directory, "<run>")
        text = re.sub(r"0x[0-9a-f]{6,}", "0x…", text)
        text = re.sub(r"\.lck-[0-9a-f]{16}", ".lck-…", text)  # fileids are inodes
        self.history.record("log", f"{record.name}: {text}"[:300])


async def _run(
    seed: int, settings: Settings, directory: Path, checkers: Iterable[CheckerFactory]
) -> SeedReport:
    taps: list[Checker] = []

    def tap(host, device, command, args) -> None:
        for checker in taps:
            checker.storage(host, device, command, args)

    dc = SimulatedDatacenter(directory, seed, settings.hosts, tap)
    vmotion_taps: list = []

    def vmotion_tap(source: str, destination: str, method: str, moment: str) -> None:
        for hook in vmotion_taps:  # the checkers look before a fault breaks it
            hook(source, destination, method, moment)

    dc.engine.vmotion_tap = vmotion_tap
    history = History(dc.clock, T0)
    crashes = NoCrashChecker(dc, history)
    watching = [crashes] + [make(dc, history) for make in checkers]
    taps.extend(watching)
    vmotion_taps.extend(checker.vmotion for checker in watching)
    rng = random.Random(derive_seed(seed, "workload"))
    plan = FaultPlan.draw(
        random.Random(derive_seed(seed, "faults")),
        dc.host_names,
        settings.faults,
        settings.minutes * 60,
    )
    injector = FaultInjector(dc, history)
    vmotion_taps.append(injector.vmotion)
    workload = Workload(dc, history, rng, crashes, settings.vms)

    def sample(_host: str = "") -> None:
        for checker in watching:
            checker.sample()

    def before_crash(host: str) -> None:
        sample()
        for checker in watching:
            checker.crashing(host)

    injector.before_crash.append(before_crash)
    logs = _LogToHistory(history, directory)
    logging.getLogger("vsim").addHandler(logs)
    error = ""
    try:
        history.record("run", f"seed {seed}: {settings.hosts} hosts, {settings.minutes:g} min")
        await dc.start_vcenter()
        await workload.setup()

        async def sampler() -> None:
            while True:
                await dc.clock.sleep(SAMPLE_EVERY)
                sample()

        sampling = dc.runtime.spawn(sampler(), "sampler")
        faults = dc.runtime.spawn(injector.run(plan), "faults")
        await workload.run(settings.minutes * 60)
        faults.cancel()
        await injector.heal()
        await dc.clock.sleep(SETTLE)
        sampling.cancel()
        sample()
        history.record("run", "settled: liveness checks")
        for checker in watching:
            await checker.final()
    except Exception:  # noqa: BLE001 - a run that dies is reported, with where
        error = traceback.format_exc(limit=12)
        history.record("run", f"ended by {error.strip().splitlines()[-1]}")
    finally:
        logging.getLogger("vsim").removeHandler(logs)
        for checker in watching:
            close = getattr(checker, "close", None)
            if close is not None:
                close()
        await dc.close()
    return SeedReport(
        seed=seed,
        simulated_s=round(history.now(), 3),
        operations=sum(workload.operations.values()),
        faults=dict(sorted(injector.injected.items())),
        violations=tuple(Broken(v.checker, v.event.at, v.event.detail) for v in history.violations),
        digest=history.digest(),
        events=len(history.events),
        timeline=history.timeline(),
        error=error,
    )


def run_seed(
    seed: int,
    settings: Settings = Settings(),
    checkers: Iterable[CheckerFactory] = STANDARD_CHECKERS,
) -> SeedReport:
    """One seed on a fresh virtual loop, in a fresh directory (removed after)."""
    validate.int_range(seed, 0, MAX_SEED, "seed")
    settings = settings.validated()
    # A simulated run's secrets come from its seed and guard nothing: its password
    # hashes take scrypt's lowest cost, not the 16 MiB a real login pays (for the run
    # only: the process's own hashes keep theirs).
    cost, passwords.SCRYPT_N = passwords.SCRYPT_N, 2**4
    directory = run_directory()
    try:
        limit = settings.minutes * 60 + SETTLE + 6 * 3600
        return run_virtual(_run(seed, settings, directory, checkers), start=T0, time_limit=limit)
    finally:
        passwords.SCRYPT_N = cost
        shutil.rmtree(directory, ignore_errors=True)


def run_seeds(seeds: Iterable[int], settings: Settings, jobs: int = 1) -> Iterator[SeedReport]:
    """Each seed's report as it finishes (in seed order), on `jobs` processes. Good
    runs come back without their timeline (replay gives it)."""
    validate.int_range(jobs, 1, 64, "jobs")
    seeds = list(seeds)
    if jobs == 1:
        for seed in seeds:
            yield _slim(run_seed(seed, settings))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        yield from pool.map(_run_slim, [(seed, settings) for seed in seeds], chunksize=4)


def _run_slim(args: tuple[int, Settings]) -> SeedReport:
    return _slim(run_seed(*args))


def _slim(report: SeedReport) -> SeedReport:
    if report.ok:
        return SeedReport(**{**report.__dict__, "timeline": ""})
    return report


def summary(reports: list[SeedReport], settings: Settings) -> dict:
    faults: Counter[str] = Counter()
    for report in reports:
        faults.update(report.faults)
    return {
        "seeds": len(reports),
        "simulated_hours": round(sum(r.simulated_s for r in reports) / 3600, 2),
        "operations": sum(r.operations for r in reports),
        "faults": dict(sorted(faults.items())),
        "seeds_with_3_fault_kinds": sum(1 for r in reports if len(r.faults) >= 3),
        "violations": sum(len(r.violations) + bool(r.error) for r in reports),
        "failing_seeds": [r.seed for r in reports if not r.ok],
    }
