"""`vsim sim run|replay`: the deterministic simulator from the command line.

`run` runs many seeded schedules (a workload and a fault plan against a whole
datacenter in simulated time) with a progress bar, prints what was run and every
violation with the command that replays it, and exits 1 if any seed broke an
invariant. `replay` runs one seed again and prints its timeline and digest: the same
on every run and every machine.

The simulator itself (Ray-free, but numpy and every host core) is imported only when
a command runs.
"""

from __future__ import annotations

import argparse

from vsim.cluster import output
from vsim.cluster.cli.common import Command, Context, Subcommands, positive_int
from vsim.faults import InvalidArgument

FAULTS_HELP = (
    "fault kinds, comma-separated, or all / none (crash, reboot, hang, partition, "
    "storage-path, slow-disk, array-restart, vcenter-restart, lost-reply, slow-heartbeat)"
)


class SeedsFailed(SystemExit):
    """Exit status 1, once the report is printed."""


def _settings(args: argparse.Namespace):
    from vsim.cluster.simulator.fault_plan import parse_kinds
    from vsim.cluster.simulator.run import Settings

    return Settings(
        hosts=args.hosts, minutes=args.minutes, faults=parse_kinds(args.faults), vms=args.vms
    ).validated()


def _progress(done: int, total: int, failed: int) -> None:
    output.progress(done, total, f"{done}/{total} seeds, {failed} failing", done == total)


def cmd_sim_run(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.cluster.simulator.run import MAX_SEED, run_seeds, summary

    settings = _settings(args)
    if args.seed is not None:
        if not 0 <= args.seed <= MAX_SEED:
            raise InvalidArgument(f"a seed is between 0 and {MAX_SEED}, got {args.seed}")
        seeds = [args.seed]
    else:
        seeds = list(range(args.first, args.first + args.seeds))
    reports = []
    for report in run_seeds(seeds, settings, args.jobs):
        reports.append(report)
        _progress(len(reports), len(seeds), sum(not r.ok for r in reports))
    result = summary(reports, settings)
    failing = [r for r in reports if not r.ok]
    if ctx.json:
        result["failures"] = [
            {
                "seed": r.seed,
                "violations": [v.__dict__ for v in r.violations],
                "error": r.error,
                "replay": r.replay_command(settings),
            }
            for r in failing
        ]
        output.emit_json(result)
    else:
        print(
            output.fields(
                {
                    "seeds run": result["seeds"],
                    "simulated hours": result["simulated_hours"],
                    "operations": result["operations"],
                    "faults injected": ", ".join(f"{k} {v}" for k, v in result["faults"].items())
                    or "none",
                    "seeds with 3+ fault kinds": result["seeds_with_3_fault_kinds"],
                    "violations": result["violations"],
                }
            )
        )
        for r in failing:
            print(f"\nseed {r.seed}:")
            for v in r.violations:
                print(f"  {v.checker}: at {v.at:.3f} s: {v.event}")
            if r.error:
                print("  the run itself failed:\n    " + r.error.strip().replace("\n", "\n    "))
            print(f"  replay: {r.replay_command(settings)}")
    if failing:
        raise SeedsFailed(1)


def cmd_sim_replay(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.cluster.simulator.run import MAX_SEED, run_seed

    if not 0 <= args.seed <= MAX_SEED:
        raise InvalidArgument(f"a seed is between 0 and {MAX_SEED}, got {args.seed}")
    settings = _settings(args)
    report = run_seed(args.seed, settings)
    lines = report.timeline.splitlines()
    if not args.trace:
        lines = [line for line in lines if line[12:].split(" ", 1)[0] != "log"]
    if ctx.json:
        output.emit_json(
            {
                "seed": report.seed,
                "digest": report.digest,
                "simulated_s": report.simulated_s,
                "events": report.events,
                "faults": report.faults,
                "violations": [v.__dict__ for v in report.violations],
                "error": report.error,
                "timeline": lines,
            }
        )
    else:
        print("\n".join(lines))
        print(f"\nseed {report.seed}: {report.events} events, digest {report.digest}")
        for v in report.violations:
            print(f"  VIOLATION {v.checker}: at {v.at:.3f} s: {v.event}")
        if report.error:
            print(report.error)
    if not report.ok:
        raise SeedsFailed(1)


def _schedule_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hosts", type=positive_int, default=4, help="ESXi hosts (default 4)")
    p.add_argument(
        "--minutes", type=float, default=10.0, help="simulated minutes of workload (default 10)"
    )
    p.add_argument("--vms", type=int, default=8, help="VMs the workload starts with (default 8)")
    p.add_argument("--faults", default="all", help=FAULTS_HELP)


def add_commands(commands: Subcommands, command: Command) -> None:
    sim = command(commands, "sim", None, "the deterministic simulator").add_subparsers(
        dest="sub", required=True
    )
    p = command(sim, "run", cmd_sim_run, "run seeded fault schedules; exit 1 on any violation")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=positive_int, default=100, help="how many seeds (100)")
    which.add_argument("--seed", type=int, help="one seed only")
    p.add_argument("--first", type=int, default=0, help="the first of --seeds (default 0)")
    p.add_argument("--jobs", type=positive_int, default=1, help="processes (default 1)")
    _schedule_options(p)
    p = command(sim, "replay", cmd_sim_replay, "run one seed again and print its timeline")
    p.add_argument("seed", type=int)
    p.add_argument("--trace", action="store_true", help="also what components logged")
    _schedule_options(p)
