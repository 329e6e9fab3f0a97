"""`vsim vm migrate` against a vCenter core in this process (the in-process engine
and array; no Ray): the table of what the migration did, the same as one JSON
document, a progress bar on stderr, and refusals as clear faults (exit 1)."""

from __future__ import annotations

import asyncio
import json

from test_cli_faults import vsim  # noqa: F401 - the fixture: `vsim ...` in this process

from vsim.v1 import common_pb2


async def vm_cli(lab) -> None:
    task = await lab.client.create_vm(
        "vm-cli", memory_mb=256, host="esxi-01", datastore="vmfs-01", disk_mb=8,
        guest_write_iops=10,
    )  # fmt: skip
    assert (await lab.wait(task)).state == common_pb2.TASK_STATE_SUCCESS


async def test_migrate_prints_what_the_vmotion_did(vsim):  # noqa: F811
    run, lab = vsim
    await vm_cli(lab)
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


async def test_a_cold_migration_and_the_refusals(vsim):  # noqa: F811
    run, lab = vsim
    await vm_cli(lab)
    status, out, _ = await run("vm", "migrate", "vm-cli", "--host", "esxi-02")
    assert status == 0 and "cold (powered off)" in out
    status, _, err = await run("vm", "migrate", "vm-cli", "--host", "esxi-02")
    assert status == 1 and "InvalidArgument" in err and "already runs on esxi-02" in err
    status, _, err = await run("vm", "migrate", "vm-cli", "--host", "Bad_Host")
    assert status == 1 and "InvalidArgument" in err
    status, _, err = await run("vm", "migrate", "nope", "--host", "esxi-01")
    assert status == 1 and "NotFound" in err


async def test_maintenance_mode_evacuates_and_refuses_from_the_cli(vsim):  # noqa: F811
    run, lab = vsim
    await vm_cli(lab)
    assert (await lab.power_on("vm-cli")).state == common_pb2.TASK_STATE_SUCCESS
    status, _, err = await run("host", "maintenance", "enter", "esxi-01")
    assert status == 1 and "InvalidState" in err and "--evacuate" not in err
    assert "vm-cli" in err and "evacuate" in err
    status, out, err = await run("host", "maintenance", "enter", "esxi-01", "--evacuate")
    assert status == 0, err
    assert "esxi-01 is in maintenance mode; 1 VM(s) moved off it by vMotion" in out
    now_on = (await lab.client.vm("vm-cli")).host
    assert now_on != "esxi-01" and now_on in out
    status, out, _ = await run("host", "list", "-o", "json")
    listed = {h["name"]: h for h in json.loads(out)}
    assert listed["esxi-01"]["in_maintenance_mode"] is True
    status, _, err = await run("vm", "migrate", "vm-cli", "--host", "esxi-01")
    assert status == 1 and "InvalidState" in err and "maintenance mode" in err
    status, out, _ = await run("host", "maintenance", "exit", "esxi-01")
    assert status == 0 and "exited maintenance mode" in out
    status, _, err = await run("host", "maintenance", "exit", "esxi-01")
    assert status == 1 and "not in maintenance mode" in err
    status, out, err = await run(
        "vm", "migrate", "vm-cli", "--host", "esxi-01", "--priority", "high"
    )
    assert status == 0, err


async def test_cluster_evc_shows_sets_and_refuses(vsim):  # noqa: F811
    run, lab = vsim
    status, out, _ = await run("cluster", "evc")
    assert status == 0 and "EVC is off" in out
    status, out, err = await run("cluster", "evc", "intel-broadwell")
    assert status == 0, err
    assert "EVC mode: intel-broadwell" in out
    assert (await lab.client.status()).evc_mode == "intel-broadwell"
    status, _, err = await run("cluster", "evc", "intel-sapphirerapids")
    assert status == 1 and "EVCAdmissionFailed" in err  # newer than every host's CPU
    status, _, err = await run("cluster", "evc", "pentium")
    assert status == 1 and "InvalidArgument" in err and "intel-skylake" in err
    status, out, _ = await run("cluster", "evc", "off")
    assert status == 0 and "EVC is off" in out


async def test_vmknic_list_and_set_from_the_cli(vsim):  # noqa: F811
    run, lab = vsim
    status, out, _ = await run("network", "vmknic", "list", "esxi-01")
    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["vmk0"][1:3] == ["management", "management"]
    assert rows["vmk1"][1:4] == ["vmotion", "vmotion", "10000"]
    status, out, err = await run(
        "network", "vmknic", "set", "esxi-01", "vmk1", "--vmotion", "off", "--link-speed", "1000"
    )
    assert status == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line.strip()}
    assert rows["vmk1"][1:4] == ["vmotion", "-", "1000"]
    status, _, err = await run("network", "vmknic", "set", "esxi-01", "vmk0", "--vmotion", "on")
    assert status == 1 and "InvalidArgument" in err and "only vmk1" in err


async def test_a_host_added_without_vmotion_encryption_refuses_required(vsim):  # noqa: F811
    run, lab = vsim
    status, _, err = await run(
        "host", "add", "esxi-09", "--accept-thumbprint", "--no-vmotion-encryption"
    )
    assert status == 0, err
    status, out, _ = await run("host", "list", "-o", "json")
    capable = {h["name"]: h.get("vmotion_encryption", False) for h in json.loads(out)}
    assert (capable["esxi-01"], capable["esxi-09"]) == (True, False)
    await vm_cli(lab)
    assert (await lab.power_on("vm-cli")).state == common_pb2.TASK_STATE_SUCCESS
    argv = ("vm", "migrate", "vm-cli", "--host", "esxi-09", "--encryption", "required")
    status, _, err = await run(*argv)
    assert status == 1 and "MigrationFault" in err and "esxi-09 cannot encrypt" in err
    status, out, err = await run(*argv[:-1], "opportunistic", "-o", "json")
    assert status == 0, err
    assert (json.loads(out)["destination"], json.loads(out).get("encrypted", False)) == (
        "esxi-09",
        False,
    )
