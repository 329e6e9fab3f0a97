"""`vsim vm migrate` against a vCenter core in this process (the in-process engine
and array; no Ray): the table of what the migration did, the same as one JSON
document, a progress bar on stderr, and refusals as clear faults (exit 1)."""

from __future__ import annotations

import asyncio
import json

import pytest
from vclab import Lab

from vsim.cluster import cli
from vsim.cluster.client import VCenterClient
from vsim.spec import ClusterSpec
from vsim.v1 import common_pb2


@pytest.fixture
async def vsim(tmp_path, monkeypatch, capsys, fast_scrypt):
    lab = Lab(tmp_path / "vc", array=True)
    await lab.boot(ClusterSpec.default(2))
    monkeypatch.setenv("VSIM_CONFIG", str(tmp_path / "config"))

    async def client(self) -> VCenterClient:
        return VCenterClient.in_process(lab.vc.table, lab.token)

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

    task = await lab.client.create_vm(
        "vm-cli",
        memory_mb=256,
        host="esxi-01",
        datastore="vmfs-01",
        disk_mb=8,
        guest_write_iops=10,
    )
    assert (await lab.wait(task)).state == common_pb2.TASK_STATE_SUCCESS
    yield run, lab
    await lab.close()


async def test_migrate_prints_what_the_vmotion_did(vsim):
    run, lab = vsim
    assert (await lab.power_on("vm-cli")).state == common_pb2.TASK_STATE_SUCCESS
    await asyncio.sleep(2)
    status, out, err = await run("vm", "migrate", "vm-cli", "--host", "esxi-02")
    assert status == 0, err
    lines = dict(line.split(":", 1) for line in out.splitlines())
    assert lines["source"].strip() == "esxi-01" and lines["destination"].strip() == "esxi-02"
    assert lines["kind"].strip() == "vMotion (live)"
    assert int(lines["precopy_rounds"]) >= 1 and float(lines["downtime_ms"]) < 500
    assert "100%" in err  # the progress bar ends full
    status, out, _ = await run("vm", "migrate", "vm-cli", "--host", "esxi-01", "-o", "json")
    document = json.loads(out)
    assert (document["source"], document["destination"], document["hot"]) == (
        "esxi-02",
        "esxi-01",
        True,
    )
    assert (await lab.client.vm("vm-cli")).host == "esxi-01"


async def test_a_cold_migration_and_the_refusals(vsim):
    run, lab = vsim
    status, out, _ = await run("vm", "migrate", "vm-cli", "--host", "esxi-02")
    assert status == 0 and "cold (powered off)" in out
    status, _, err = await run("vm", "migrate", "vm-cli", "--host", "esxi-02")
    assert status == 1 and "InvalidArgument" in err and "already runs on esxi-02" in err
    status, _, err = await run("vm", "migrate", "vm-cli", "--host", "Bad_Host")
    assert status == 1 and "InvalidArgument" in err
    status, _, err = await run("vm", "migrate", "nope", "--host", "esxi-01")
    assert status == 1 and "NotFound" in err
