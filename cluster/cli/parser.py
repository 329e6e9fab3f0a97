"""The whole `vsim` parser: the options every command takes (`--server`, `-o`), and
each noun's commands, registered by its module in the order `vsim --help` lists them.

Building it imports the noun modules and nothing server-side: a noun's handlers
import the servers or the host's rules they need when they run.
"""

from __future__ import annotations

import argparse

from vsim.cluster.cli import (
    array,
    cluster,
    datastore,
    events,
    fault,
    host,
    launch,
    lock,
    network,
    session,
    sim,
    vm,
)
from vsim.cluster.cli.common import Handler


def build_parser() -> argparse.ArgumentParser:
    def options(suppress: bool) -> argparse.ArgumentParser:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument(
            "--server",
            default=argparse.SUPPRESS if suppress else None,
            help="vCenter endpoint HOST:PORT (default: from config)",
        )
        common.add_argument(
            "-o",
            "--output",
            choices=["table", "json"],
            default=argparse.SUPPRESS if suppress else "table",
        )
        return common

    parser = argparse.ArgumentParser(
        prog="vsim",
        description="Run and drive a simulated vSphere cluster.",
        parents=[options(suppress=False)],
    )
    # A subcommand's copy of the options sets them only when given there, so
    # `vsim -o json vm list` and `vsim vm list -o json` both mean JSON.
    common = options(suppress=True)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(parent, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    launch.add_up_down_commands(commands, command)
    array.add_commands(commands, command)
    launch.add_vcenter_commands(commands, command)
    session.add_commands(commands, command)
    host.add_commands(commands, command)
    cluster.add_commands(commands, command)
    vm.add_commands(commands, command)
    network.add_commands(commands, command)
    datastore.add_commands(commands, command)
    lock.add_commands(commands, command)
    fault.add_commands(commands, command)
    events.add_commands(commands, command)
    sim.add_commands(commands, command)
    return parser
