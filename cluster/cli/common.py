"""What every `vsim` command shares: the `Context` a handler gets (the user's config,
the chosen server, a client on demand, table or JSON output), showing a task's
outcome, and the value parsers more than one noun uses.

It holds no command of its own and imports no noun module, so each noun module (and
the parser) imports it without a cycle.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vsim.cluster import output
from vsim.cluster.config import UserConfig
from vsim.faults import InvalidArgument, NotAuthenticated, fault_from_proto
from vsim.v1 import common_pb2

if TYPE_CHECKING:
    from vsim.cluster.client import VCenterClient


Handler = Callable[[argparse.Namespace, "Context"], Any]


SUCCESS = common_pb2.TASK_STATE_SUCCESS


class Context:
    """What a command needs: the config, the chosen server, and a client on demand."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = UserConfig()
        self.settings = self.config.settings()
        self.server = args.server or self.settings.server
        self.json = args.output == "json"

    async def client(self) -> VCenterClient:
        from vsim.cluster.client import VCenterClient

        pinned = self.config.pinned(self.server)
        session = self.settings.session if self.server == self.settings.server else ""
        if not session:
            raise NotAuthenticated(f"no session for {self.server}: run `vsim login` first")
        if pinned is None:
            raise NotAuthenticated(f"{self.server} is not pinned yet: run `vsim login` first")
        return await VCenterClient.connect(self.server, pinned, session or None)

    def show(self, value: Any, text: str) -> None:
        if self.json:
            output.emit_json(value)
        else:
            print(text)


def show_task(ctx: Context, task: common_pb2.Task, success: str) -> None:
    if task.state == common_pb2.TASK_STATE_ERROR:
        raise fault_from_proto(task.error)
    ctx.show(task, success)


def show_task_fault(task: common_pb2.Task) -> None:
    if task.state == common_pb2.TASK_STATE_ERROR:
        raise fault_from_proto(task.error)


def whole(text: str, flag: str, allowed: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"{flag} must be {allowed}, got {text!r}") from None
    if not 0 <= value < 2**62:
        raise InvalidArgument(f"{flag} must be {allowed} (>= 0 and < 2^62), got {value}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


# `command(parent, name, handler, help_)` from parser.build_parser: adds one subcommand.
Command = Callable[..., argparse.ArgumentParser]
# What add_subparsers() returns; argparse gives it no public name.
Subcommands = argparse._SubParsersAction
