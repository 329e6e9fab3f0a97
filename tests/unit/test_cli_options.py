"""The CLI's common options mean the same before and after the subcommand."""

from __future__ import annotations

import pytest

from vsim.cluster.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "output", "server"),
    [
        (["vm", "list"], "table", None),
        (["-o", "json", "vm", "list"], "json", None),
        (["vm", "list", "-o", "json"], "json", None),
        (["--server", "vc:443", "host", "stats", "esxi-01"], "table", "vc:443"),
        (["-o", "json", "network", "vswitch", "list", "esxi-01", "--server", "b:1"], "json", "b:1"),
    ],
)
def test_common_options_anywhere(argv: list[str], output: str, server: str | None):
    args = build_parser().parse_args(argv)
    assert (args.output, args.server) == (output, server)
