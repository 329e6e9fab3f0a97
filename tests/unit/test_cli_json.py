"""The CLI's JSON, command by command, against a vCenter core in this process (the
in-process engine and array; no Ray, no sockets): one encoding for all of them, with
numbers as numbers, vSphere's enum names, the tables' words and rounded figures."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from test_vcenter_datastores import cluster  # noqa: F401 - the fixture

from vsim.cluster import cli, output
from vsim.cluster.client import VCenterClient
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb

Vsim = Callable[..., Awaitable[Any]]


@pytest.fixture
async def vsim(cluster, tmp_path, monkeypatch, capsys) -> Vsim:  # noqa: F811
    """Runs `vsim ARGS... -o json` here and returns the document it printed (with
    table=True: `vsim ARGS...` and its text)."""
    vc, token = cluster[0], cluster[3].session
    monkeypatch.setenv("VSIM_CONFIG", str(tmp_path / "config"))

    async def client(self) -> VCenterClient:
        return VCenterClient.in_process(vc.table, token)

    monkeypatch.setattr(cli.Context, "client", client)

    async def run(*argv: str, table: bool = False) -> Any:
        args = cli.build_parser().parse_args([*argv, "-o", "table" if table else "json"])
        capsys.readouterr()
        result = args.handler(args, cli.Context(args))
        if inspect.isawaitable(result):
            await result
        out = capsys.readouterr().out
        return out if table else json.loads(out)

    return run


ENUM_NAME = re.compile(r"\b[A-Z]+(_[A-Z]+)*_STATE_[A-Z_]+\b")


def untrusted(value: Any, where: str = "") -> list[str]:
    """Every value in a JSON document a script could not take as it reads: a number
    in a string, a proto enum name, a float with more than three decimals."""
    if isinstance(value, dict):
        return [bad for k, v in value.items() for bad in untrusted(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [bad for i, v in enumerate(value) for bad in untrusted(v, f"{where}[{i}]")]
    if isinstance(value, str) and (value.isdigit() or ENUM_NAME.search(value)):
        return [f"{where} = {value!r}"]
    if isinstance(value, float) and ("e" in repr(value) or len(repr(value).split(".")[1]) > 3):
        return [f"{where} = {value!r}"]
    return []


def test_untrusted_finds_what_it_names():
    document = {"a": [{"memory_mb": "1024"}], "s": "POWER_STATE_POWERED_ON", "f": 751.96874999}
    assert untrusted(document) == [
        ".a[0].memory_mb = '1024'",
        ".s = 'POWER_STATE_POWERED_ON'",
        ".f = 751.96874999",
    ]
    assert untrusted({"n": 1024, "s": "poweredOn", "f": 751.969, "name": "esxi-01"}) == []


def test_messages_are_encoded_as_the_tables_read():
    vm = pb.Vm(
        name="a",
        memory_mb=1024,
        power_state=pb.POWER_STATE_POWERED_ON,
        guest_writes_acked=2**40,
        resources=kpb.VmResources(
            cpu=kpb.ResourceAllocation(reservation=500, limit=2000),
            memory=kpb.ResourceAllocation(),
        ),
    )
    shown = output.to_dict(vm)
    assert (shown["memory_mb"], shown["guest_writes_acked"]) == (1024, 2**40)
    assert shown["power_state"] == "poweredOn"
    cpu, memory = shown["resources"]["cpu"], shown["resources"]["memory"]
    assert (cpu["shares"], cpu["reservation"], cpu["limit"]) == ("normal", 500, 2000)
    assert (memory["shares"], memory["limit"]) == ("normal", "unlimited")
    assert shown["resources"]["disk_iops_limit"] == "unlimited"
    assert shown["resources"]["resource_pool"] == "Resources"
    assert (
        output.to_dict(pb.Host(connection_state=pb.CONNECTION_STATE_NOT_RESPONDING))[
            "connection_state"
        ]
        == "notResponding"
    )
    assert output.to_dict(kpb.PhysicalPort(vlans=[]))["vlans"] == "all"
    assert output.to_dict(kpb.PhysicalPort(vlans=[0, 20]))["vlans"] == [0, 20]
    stats = output.to_dict(kpb.MemoryStats(granted=751.9687499999999))
    assert stats["granted"] == 751.969
    assert output.plain({"x": 0.1 + 0.2, "nan": float("nan")}) == {"x": 0.3, "nan": None}


async def test_every_commands_json_is_numbers_words_and_rounded_figures(vsim: Vsim):
    documents: dict[str, Any] = {}

    async def run(*argv: str) -> Any:
        documents[" ".join(argv)] = document = await vsim(*argv)
        return document

    vm = "db-01"
    create = ("vm", "create", vm, "--memory-mb", "256", "--host", "esxi-01")
    disk = ("--datastore", "vmfs-01", "--disk-gb", "0.01", "--guest-iops", "50")
    task = await run(*create, *disk, "--nic", "VM Network")
    assert task["state"] == "success"
    assert (await run("vm", "power-on", vm))["state"] == "success"
    for _ in range(200):  # the guest's writes are acknowledged as its host serves them
        if (await run("vm", "show", vm))["guest_writes_acked"] > 0:
            break
    shown = await run("vm", "show", vm)
    assert shown["power_state"] == "poweredOn" and shown["memory_mb"] == 256
    (listed,) = await run("vm", "list")
    assert listed["guest_writes_acked"] >= shown["guest_writes_acked"] > 0
    resources = await run("vm", "resources", vm, "--cpu-reservation", "100")
    assert (resources["cpu"]["shares"], resources["cpu"]["limit"]) == ("normal", "unlimited")
    for argv in (
        ("status",),
        ("host", "list"),
        ("datastore", "list"),
        ("datastore", "sioc", "vmfs-01", "--threshold-ms", "25.123456"),
        ("vm", "stats", vm),
        ("vm", "luns", vm),
        ("vm", "nic", "list", vm),
        ("vm", "firewall", "list", vm),
        ("host", "stats", "esxi-01"),
        ("host", "memory", "esxi-01"),
        ("host", "pci", "list", "esxi-01"),
        ("host", "pool", "create", "esxi-01", "web", "--cpu-limit", "4000"),
        ("host", "pool", "list", "esxi-01"),
        ("network", "vswitch", "list", "esxi-01"),
        ("network", "portgroup", "list", "esxi-01"),
        ("network", "pswitch", "set", "esxi-02", "vmnic0", "--vlans", "0,20"),
        ("network", "send-frame", vm, "--dst-mac", "ff:ff:ff:ff:ff:ff"),
        ("lock", "show", f"[vmfs-01] {vm}/{vm}-flat.vmdk"),
        ("vm", "power-off", vm),
        ("vm", "verify-disk", vm),
        ("tasks",),
        ("events",),
    ):
        await run(*argv)
    assert [h["connection_state"] for h in documents["host list"]] == ["connected"] * 3
    ports = await run("network", "pswitch", "list")
    trunks = {p["host"]: p["vlans"] for p in ports if p["uplink"] == "vmnic0"}
    assert trunks == {"esxi-01": "all", "esxi-02": [0, 20], "esxi-03": "all"}
    assert documents["datastore sioc vmfs-01 --threshold-ms 25.123456"]["sioc_threshold_ms"] == (
        25.123
    )
    assert documents["events"]["events"][-1]["type"] == "VmPoweredOffEvent"
    assert [t["state"] for t in documents["tasks"]] == ["success"] * len(documents["tasks"])
    assert len(documents) > 25
    assert untrusted(documents) == []


NEWER_COMMANDS = {
    "array lun create", "array lun list", "array lun map", "array lun unmap",
    "array export create", "array export list", "datastore remove", "vm nic remove",
    "vm pci remove", "network portgroup remove", "network vswitch remove", "vm show", "events",
}  # fmt: skip
"""The commands the test below adds to the one above (by their words, not arguments)."""


async def test_the_array_and_removal_commands_json_is_encoded_alike(vsim: Vsim):
    documents: dict[str, Any] = {}  # "#step command line": the document, each run kept

    async def run(*argv: str) -> Any:
        documents[f"#{len(documents)} {' '.join(argv)}"] = document = await vsim(*argv)
        return document

    mib = 1024**2
    made = await run("array", "lun", "create", "--size-mb", "64", "--id", "1", "--host", "esxi-02")
    assert (made["id"], made["size_bytes"], made["hosts"]) == (1, 64 * mib, ["esxi-02"])
    assert isinstance(made["size_bytes"], int) and made["datastore"] == ""
    mapped = await run("array", "lun", "map", "1", "esxi-03", "esxi-01")
    assert mapped["hosts"] == ["esxi-01", "esxi-02", "esxi-03"]
    unmapped = await run("array", "lun", "unmap", "1", "esxi-02")
    assert unmapped["initiators"] == [f"iqn.1998-01.com.vmware:esxi-0{i}" for i in (1, 3)]
    luns = {lun["id"]: lun for lun in await run("array", "lun", "list")}
    assert (luns[0]["datastore"], luns[0]["size_bytes"]) == ("vmfs-01", 4 * 1024 * mib)
    assert luns[1]["hosts"] == ["esxi-01", "esxi-03"]
    export = await run("array", "export", "create", "iso", "--ro", "--client", "10.0.0.0/24")
    assert (export["read_only"], export["root_squash"], export["clients"]) == (
        True,
        False,
        ["10.0.0.0/24"],
    )
    exports = {e["name"]: e for e in await run("array", "export", "list")}
    assert (exports["nfs-01"]["datastore"], exports["iso"]["datastore"]) == ("nfs-01", "")
    removed = await run("datastore", "remove", "nfs-01")
    assert (removed["state"], removed["result"]) == ("success", "nfs-01")
    assert "nfs-01" not in {e["datastore"] for e in await run("array", "export", "list")}

    gpu = "0000:3b:00.0"
    await run("network", "vswitch", "add", "esxi-01", "vSwitch1", "--uplink", "vmnic1")
    await run("network", "portgroup", "add", "esxi-01", "Prod", "--vswitch", "vSwitch1")
    create = ("vm", "create", "ml", "--memory-mb", "256", "--host", "esxi-01")
    assert (await run(*create, "--nic", "VM Network", "--nic", "Prod"))["state"] == "success"
    await run("vm", "resources", "ml", "--mem-reservation", "256")  # passthrough needs it all
    await run("host", "pci", "passthru", "esxi-01", gpu, "on")
    assert (await run("vm", "pci", "add", "ml", gpu))["state"] == "success"
    assert (await run("vm", "show", "ml"))["pci_devices"] == [gpu]
    vm = await run("vm", "nic", "remove", "ml", "ethernet1")
    assert [n["name"] for n in vm["nics"]] == ["ethernet0"]
    assert vm["power_state"] == "poweredOff" and vm["memory_mb"] == 256
    task = await run("vm", "pci", "remove", "ml", gpu)
    assert (task["state"], task["entity"], task["progress"]) == ("success", "ml", 100)
    shown = await run("vm", "show", "ml")
    assert shown["pci_devices"] == []
    assert [n["port_group"] for n in shown["nics"]] == ["VM Network"]
    network = await run("network", "portgroup", "remove", "esxi-01", "Prod")
    assert "Prod" not in [p["name"] for p in network["port_groups"]]
    network = await run("network", "vswitch", "remove", "esxi-01", "vSwitch1")
    assert [v["name"] for v in network["vswitches"]] == ["vSwitch0"]
    assert [u["vswitch"] for u in network["uplinks"] if u["uplink"] == "vmnic1"] == [""]

    events = (await run("events", "--all"))["events"]
    types = [e["type"] for e in events]
    for kind in ("Created", "Mapped", "Unmapped"):
        assert f"StorageArrayLun{kind}Event" in types
    assert "StorageArrayExportCreatedEvent" in types
    assert all(isinstance(e["key"], int) for e in events)
    after = await run("events", "--after", str(events[-3]["key"]))
    assert [e["key"] for e in after["events"]] == [e["key"] for e in events[-2:]]
    ran = [key.split(" ", 1)[1] + " " for key in documents]
    assert {c for c in NEWER_COMMANDS if not any(r.startswith(c + " ") for r in ran)} == set()
    assert untrusted(documents) == []
