"""`vsim fault ...` against a vCenter core in this process with its fault service
(the in-process engine and array; no Ray): each command sends what it says, prints
what is in place, and a bad argument is the fault service's clear fault (exit 1)."""

from __future__ import annotations

import json

import pytest
from vclab import Lab

from vsim.cluster import cli
from vsim.cluster.client import VCenterClient
from vsim.cluster.fault_service import FaultService
from vsim.spec import ClusterSpec


@pytest.fixture
async def vsim(tmp_path, monkeypatch, capsys, fast_scrypt):
    lab = Lab(tmp_path / "vc", array=True)
    await lab.boot(ClusterSpec.default(2))
    faults = FaultService(lab.vc)
    monkeypatch.setenv("VSIM_CONFIG", str(tmp_path / "config"))

    async def client(self) -> VCenterClient:
        return VCenterClient.in_process(lab.vc.table, lab.token, faults.table)

    monkeypatch.setattr(cli.Context, "client", client)

    async def run(*argv: str) -> tuple[int, str, str]:
        args = cli.build_parser().parse_args(list(argv))
        capsys.readouterr()
        try:
            await args.handler(args, cli.Context(args))
            status = 0
        except Exception as fault:  # noqa: BLE001 - what main() reports, exit 1
            cli.report(args, fault)
            status = 1
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    yield run, lab
    await lab.close()


async def test_disk_latency_list_and_clear(vsim):
    run, lab = vsim
    status, out, _ = await run("fault", "disk-latency", "vmfs-01", "--ms", "250")
    assert status == 0
    assert "set to 250 ms" in out and "disk-latency  vmfs-01  250 ms" in out
    assert lab.array.lun_latency(lab.vc.inventory.datastore("vmfs-01").lun) == 0.25
    status, out, _ = await run("fault", "list", "-o", "json")
    document = json.loads(out)
    assert [(f["kind"], f["target"]) for f in document["faults"]] == [("disk-latency", "vmfs-01")]
    status, out, _ = await run("fault", "clear")
    assert (status, out.splitlines()) == (0, ["Cleared 1 fault(s)", "No faults in place."])
    assert lab.array.latency == {}


async def test_array_restart(vsim):
    run, lab = vsim
    lab.array.luns[0].reserve("iqn.x")
    status, out, _ = await run("fault", "array-restart")
    assert status == 0 and "Restarted the storage array" in out
    assert lab.array.luns[0].reservation is None


@pytest.mark.parametrize(
    "argv, fault",
    [
        (["link", "esxi-01", "--network", "backup", "down"], "InvalidArgument"),
        (["link", "esxi-01", "--network", "storage", "sideways"], "InvalidArgument"),
        (["link", "esxi-09", "--network", "storage", "down"], "NotFound"),
        (["host-crash", "esxi-09"], "NotFound"),
        (["host-hang", "esxi-01", "--seconds", "-3"], "InvalidArgument"),
        (["disk-latency", "vmfs-01", "--ms", "-1"], "InvalidArgument"),
        (["disk-latency", "nope", "--ms", "1"], "NotFound"),
    ],
)
async def test_bad_arguments_are_the_services_faults(vsim, argv, fault):
    run, lab = vsim
    status, _, err = await run("fault", *argv)
    assert status == 1
    assert err.startswith(f"Error: {fault}: ")
    assert lab.array.latency == {}


def test_the_commands_parse_to_their_arguments():
    args = cli.build_parser().parse_args(["fault", "host-hang", "esxi-02", "--seconds", "12.5"])
    assert (args.host, args.seconds) == ("esxi-02", 12.5)
    assert cli.build_parser().parse_args(["fault", "host-hang", "esxi-02"]).seconds == 30
    args = cli.build_parser().parse_args(["fault", "link", "esxi-01", "--network", "vmotion", "up"])
    assert (args.host, args.network, args.state) == ("esxi-01", "vmotion", "up")
