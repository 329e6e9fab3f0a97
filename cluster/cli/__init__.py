"""The `vsim` command: a thin layer over the SDK client (`vsim.cluster.client`).

Each command is a few lines: parse, call the client, print a table (default) or one
JSON document (`-o json`). Failures print the vSphere fault name and message and
exit 1 (with `-o json`, the fault is the JSON document).

One module per noun, each owning its commands' handlers, option parsing and
registration: `session` (login, logout, status), `launch` (up, down, vcenter serve),
`array` (array serve, LUNs, exports), `host`, `pool` (a host's resource pools),
`cluster` (EVC), `ha` (vSphere HA: `cluster ha`, `vm ha`), `vm`, `nic` (a VM's
adapters and firewall), `network`, `datastore`, `lock`, `fault` (the live fault
service), `events` (events and tasks), `sim` (the deterministic simulator).
`common` holds what they share (the `Context`), `parser` builds the whole parser, and
this module is the entry point (`main`; `python -m vsim.cluster.cli` runs it too).

Every command starts a process, so the package imports only what parsing and the
client commands need: the SDK client (gRPC, TLS) is imported when a command connects,
and the servers (`vsim up`, `vsim array serve`, `vsim vcenter serve`: Ray, numpy, the
hosts' kernels) only inside their handlers. A unit test holds it to that.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from vsim.cluster import output
from vsim.cluster.cli.common import Context
from vsim.cluster.cli.parser import build_parser
from vsim.faults import InvalidArgument, SystemError_, VimFault

__all__ = ["Context", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args, Context(args))
        if asyncio.iscoroutine(result):
            asyncio.run(result)
        return 0
    except VimFault as fault:
        report(args, fault)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # a config file or option that does not parse
        report(args, InvalidArgument(str(exc)))
    except (OSError, RuntimeError) as exc:
        report(args, SystemError_(str(exc)))
    return 1


def report(args: argparse.Namespace, fault: VimFault) -> None:
    if args.output == "json":
        output.emit_json({"error": output.to_dict(fault.to_proto())})
    print(f"Error: {fault.name}: {fault.message}", file=sys.stderr)
