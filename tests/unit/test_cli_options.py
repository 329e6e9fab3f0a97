"""The CLI's options: common ones mean the same before and after the subcommand; sizes
are checked in the unit the user typed; faults tell the flags the user can type."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vsim.cluster.cli import build_parser
from vsim.cluster.cli.host import cmd_host_add
from vsim.cluster.cli.vm import disk_mb
from vsim.faults import InvalidArgument, VimFault
from vsim.v1 import common_pb2
from vsim.vcenter.host_system import PASS_THUMBPRINT
from vsim.vcenter.virtual_machine import MAX_DISK_MB


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


@pytest.mark.parametrize("gb", [100_000, 2048.5, 0, -1, float("nan"), float("inf")])
def test_disk_gb_out_of_range_is_refused_in_gb(gb: float):
    with pytest.raises(InvalidArgument) as excinfo:
        disk_mb(gb)
    message = excinfo.value.message
    assert message.startswith("--disk-gb must be more than 0 and at most 2048 GB, got ")
    assert "MB" not in message and "  " not in message


@pytest.mark.parametrize(("gb", "mb"), [(2048, MAX_DISK_MB), (1, 1024), (0.5, 512), (1e-6, 1)])
def test_disk_gb_in_range_is_whole_mb(gb: float, mb: int):
    assert disk_mb(gb) == mb


class FakeClient:
    """An SDK client whose AddHost fails as vCenter's does for an unverified host."""

    def __init__(self, fault: common_pb2.Fault) -> None:
        self.fault = fault
        self.calls: list[tuple[str, str, dict]] = []

    async def __aenter__(self) -> FakeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def add_host(self, name: str, thumbprint: str, **sizes: int) -> common_pb2.Task:
        self.calls.append((name, thumbprint, sizes))
        return common_pb2.Task(state=common_pb2.TASK_STATE_ERROR, error=self.fault)

    async def wait(self, task: common_pb2.Task) -> common_pb2.Task:
        return task


async def host_add(argv: list[str], fault: common_pb2.Fault) -> tuple[VimFault, FakeClient]:
    args = build_parser().parse_args(argv)
    client = FakeClient(fault)

    async def connect() -> FakeClient:
        return client

    ctx = SimpleNamespace(client=connect, show=lambda value, text: None)
    with pytest.raises(VimFault) as excinfo:
        await cmd_host_add(args, ctx)
    return excinfo.value, client


THUMBPRINT = ":".join(["AB"] * 32)


async def test_host_add_of_an_unverified_host_tells_the_cli_flag():
    fault = common_pb2.Fault(
        name="SSLVerifyFault",
        message=f"the certificate of esxi-04 (in-process://esxi-04) has thumbprint "
        f"{THUMBPRINT}; {PASS_THUMBPRINT}",
        properties={"thumbprint": THUMBPRINT},
    )
    raised, client = await host_add(["host", "add", "esxi-04", "--cpu-cores", "8"], fault)
    assert raised.name == "SSLVerifyFault" and raised.properties == {"thumbprint": THUMBPRINT}
    assert "ssl_thumbprint" not in raised.message
    assert f"`vsim host add esxi-04 --thumbprint {THUMBPRINT}`" in raised.message
    assert "--accept-thumbprint" in raised.message
    assert raised.message.startswith("the certificate of esxi-04 (in-process://esxi-04) has")
    assert client.calls == [("esxi-04", "", {"cpu_cores": 8})]


async def test_host_add_does_not_offer_to_trust_an_impostor():
    message = "esxi-04 reports thumbprint AA but in-process://esxi-04 presents BB: something else"
    fault = common_pb2.Fault(
        name="SSLVerifyFault", message=message, properties={"thumbprint": "BB"}
    )
    raised, _ = await host_add(["host", "add", "esxi-04"], fault)
    assert raised.message == message  # no advice to accept what is presented
