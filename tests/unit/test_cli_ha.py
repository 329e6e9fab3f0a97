"""`vsim cluster ha enable|disable|status` and `vsim vm ha` against a vCenter core in
this process (the in-process engine and array, two hosts, the simulated clock; no
Ray): the agents' election as the status table shows it, the same as one JSON
document, a VM's restart priority set and read back through the client, and
refusals: argparse's for a bad choice, vCenter's faults printed as every command
prints them (exit 1, no traceback)."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_cli_faults import vsim  # noqa: F401 - the fixture: `vsim ...` in this process

from vsim.cluster import cli, output
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb

OK = common_pb2.TASK_STATE_SUCCESS
ELECTION_S = 20
"""Simulated seconds after which the agents have elected their master (~15 s)."""


async def running_vm(lab, name: str = "vm-ha", host: str = "esxi-01") -> None:
    task = await lab.client.create_vm(
        name, memory_mb=256, host=host, datastore="vmfs-01", disk_mb=8
    )
    assert (await lab.wait(task)).state == OK
    assert (await lab.power_on(name)).state == OK


def section(out: str, header: str) -> dict[str, list[str]]:
    """The rows of the table headed `header` (its first column's words), by first cell."""
    blocks = [b.splitlines() for b in out.split("\n\n")]
    (block,) = [b for b in blocks if b and b[0].split() == header.split()]
    return {line.split()[0]: line.split()[1:] for line in block[1:]}


def settings(out: str) -> dict[str, str]:
    """The 'key: value' lines that head the status."""
    head = out.split("\n\n")[0]
    return {k: v.strip() for k, v in (line.split(":", 1) for line in head.splitlines())}


async def test_enable_shows_the_hosts_and_then_the_master_they_elected(vsim):  # noqa: F811
    run, lab = vsim
    await running_vm(lab)
    status, out, err = await run("cluster", "ha", "enable")
    assert status == 0, err
    shown = settings(out)
    assert shown["vSphere HA"] == "enabled" and shown["host failures tolerated"] == "1"
    assert shown["master"] == "-"  # not elected yet
    assert shown["isolation response"] == "none"
    assert section(out, "HOST STATE") == {"esxi-01": ["election"], "esxi-02": ["election"]}
    assert "DasEnabledEvent" in [e.type for e in await lab.events()]
    await asyncio.sleep(ELECTION_S)
    status, out, _ = await run("cluster", "ha", "status")
    assert status == 0 and settings(out)["master"] == "esxi-02"  # equal hosts: highest id
    assert section(out, "HOST STATE") == {
        "esxi-01": ["connectedToMaster"],
        "esxi-02": ["master"],
    }
    assert section(out, "VM HOST RESTART_PRIORITY") == {"vm-ha": ["esxi-01", "medium"]}
    # Two equal hosts, one failure tolerated: half the cluster must stay unreserved.
    capacity = section(out, "FAILOVER_CAPACITY CURRENT REQUIRED")
    assert capacity["cpu"][2:] == ["50.0", "%"] and capacity["memory"] == [
        "100.0", "%", "50.0", "%"
    ]  # fmt: skip


async def test_status_as_one_json_document(vsim):  # noqa: F811
    run, lab = vsim
    await running_vm(lab)
    await run("cluster", "ha", "enable", "--heartbeat-datastores", "vmfs-01,nfs-01")
    await asyncio.sleep(ELECTION_S)
    status, out, _ = await run("cluster", "ha", "status", "-o", "json")
    assert status == 0
    document = json.loads(out)
    assert document == output.plain(await lab.client.ha_status())
    assert document["config"] == {
        "enabled": True,
        "host_failures": 1,
        "isolation_response": "none",
        "heartbeat_datastores": ["vmfs-01", "nfs-01"],
        "isolation_address": "",
    }
    assert document["master"] == "esxi-02"
    assert {h["host"]: h["state"] for h in document["hosts"]} == {
        "esxi-01": "connectedToMaster",
        "esxi-02": "master",
    }
    assert document["vms"] == [
        {"name": "vm-ha", "host": "esxi-01", "restart_priority": "medium", "protected": True}
    ]
    assert document["required_memory_failover_pct"] == 50.0


async def test_enable_again_changes_only_the_settings_given(vsim):  # noqa: F811
    run, lab = vsim
    argv = ("--isolation-response", "power-off", "--isolation-address", "10.0.0.254")
    status, out, err = await run("cluster", "ha", "enable", *argv, "--host-failures", "1")
    assert status == 0, err
    assert settings(out)["isolation address"] == "10.0.0.254"
    status, out, err = await run("cluster", "ha", "enable", "--host-failures", "0")
    assert status == 0, err
    shown = settings(out)
    assert shown["host failures tolerated"] == "0 (admission control off)"
    assert shown["isolation response"] == "power-off"
    config = (await lab.client.ha_status()).config
    assert (config.host_failures, config.isolation_response, config.isolation_address) == (
        0,
        "power-off",
        "10.0.0.254",
    )


async def test_vm_ha_sets_the_restart_priority(vsim):  # noqa: F811
    run, lab = vsim
    await running_vm(lab)
    await run("cluster", "ha", "enable")
    status, out, err = await run("vm", "ha", "vm-ha", "--restart-priority", "high")
    assert status == 0, err
    assert out.splitlines() == [
        "vm:               vm-ha",
        "host:             esxi-01",
        "restart_priority: high",
        "protected:        yes",
    ]
    assert (await lab.client.vm("vm-ha")).ha_restart_priority == "high"
    status, out, _ = await run("vm", "ha", "vm-ha", "-o", "json")  # shown, not changed
    assert json.loads(out) == {
        "name": "vm-ha", "host": "esxi-01", "restart_priority": "high", "protected": True,
    }  # fmt: skip
    status, out, _ = await run("cluster", "ha", "status")
    assert section(out, "VM HOST RESTART_PRIORITY") == {"vm-ha": ["esxi-01", "high"]}
    status, out, _ = await run("vm", "ha", "vm-ha", "--restart-priority", "disabled")
    assert "protected:        no (restart priority disabled)" in out.splitlines()
    assert (await lab.client.vm("vm-ha")).ha_restart_priority == "disabled"
    status, out, _ = await run("cluster", "ha", "status")
    assert "no protected VMs" in out
    assert "not protected (powered off, no datastore or priority disabled): vm-ha" in out


async def test_disable_stops_the_agents(vsim):  # noqa: F811
    run, lab = vsim
    await running_vm(lab)
    await run("cluster", "ha", "enable")
    await asyncio.sleep(ELECTION_S)
    status, out, err = await run("cluster", "ha", "disable")
    assert (status, out, err) == (0, "vSphere HA is disabled on the cluster\n", "")
    assert not (await lab.client.ha_status()).config.enabled
    assert "DasDisabledEvent" in [e.type for e in await lab.events()]
    assert not lab.engine.running("esxi-01").fdm.state(0).enabled
    status, out, _ = await run("vm", "ha", "vm-ha")
    assert "protected:        no (vSphere HA is disabled)" in out.splitlines()
    status, out, _ = await run("cluster", "ha", "status", "-o", "json")
    assert json.loads(out)["config"]["enabled"] is False


@pytest.mark.parametrize(
    "argv, word",
    [
        (("vm", "ha", "vm-ha", "--restart-priority", "urgent"), "'urgent'"),
        (("cluster", "ha", "enable", "--isolation-response", "panic"), "'panic'"),
        (("cluster", "ha", "enable", "--host-failures", "-1"), "must not be negative"),
    ],
)
def test_bad_choices_are_refused_before_anything_is_sent(argv, word, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(list(argv))
    assert exit_.value.code == 2
    assert word in capsys.readouterr().err


async def test_vcenters_refusals_print_as_faults(vsim):  # noqa: F811
    run, lab = vsim
    status, out, err = await run("cluster", "ha", "enable", "--host-failures", "2")
    assert (status, out) == (1, "")
    assert err == "Error: InvalidArgument: host_failures must be between 0 and 1, got 2\n"
    assert not (await lab.client.ha_status()).config.enabled
    status, out, _ = await run("cluster", "ha", "enable", "--host-failures", "2", "-o", "json")
    assert status == 1 and json.loads(out)["error"]["name"] == "InvalidArgument"
    status, _, err = await run("cluster", "ha", "enable", "--heartbeat-datastores", "vmfs-01,nope")
    assert status == 1
    assert err == "Error: InvalidArgument: heartbeat datastore 'nope' is not a datastore\n"
    status, _, err = await run("vm", "ha", "no-such-vm", "--restart-priority", "high")
    assert status == 1 and err.startswith("Error: NotFound: ")


async def test_admission_control_refuses_a_power_on_from_the_cli(vsim):  # noqa: F811
    run, lab = vsim
    await run("cluster", "ha", "enable", "--host-failures", "1")
    # Each default host has 512 GiB: with one failure tolerated, half must stay free.
    for name, host in (("vm-r1", "esxi-01"), ("vm-r2", "esxi-02")):
        big = kpb.VmResources(memory=kpb.ResourceAllocation(reservation=300 * 1024))
        task = await lab.client.create_vm(name, memory_mb=300 * 1024, host=host, resources=big)
        assert (await lab.wait(task)).state == OK
    status, _, err = await run("vm", "power-on", "vm-r1")
    assert status == 0, err
    status, _, err = await run("vm", "power-on", "vm-r2")
    assert status == 1 and err.startswith("Error: InsufficientFailoverResourcesFault: ")
    assert "tolerating 1 host failure(s) needs" in err and "Traceback" not in err
    status, out, _ = await run("cluster", "ha", "status")
    assert section(out, "FAILOVER_CAPACITY CURRENT REQUIRED")["memory"] == [
        "70.7", "%", "50.0", "%"
    ]  # fmt: skip
