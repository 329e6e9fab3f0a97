"""The `vsim` CLI end to end: `vsim up --detach`, every command with -o json and as
a table, failures, thumbprint pinning, and `vsim down` leaving no process behind.
This follows the README's quick start."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vsim.cluster import processes

VSIM = str(Path(sys.executable).parent / "vsim")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cli:
    def __init__(self, config: Path) -> None:
        self.env = {**os.environ, "VSIM_CONFIG": str(config)}

    def run(self, *args: str, ok: bool = True, env: dict | None = None):
        done = subprocess.run(
            [VSIM, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
            timeout=600, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        if ok:
            assert done.returncode == 0, done.stderr + done.stdout
        return done

    def json(self, *args: str, ok: bool = True):
        done = self.run(*args, "-o", "json", ok=ok)
        return json.loads(done.stdout), done


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path / "config")


def test_up_drive_and_down(cli: Cli, tmp_path: Path):
    port = free_port()
    info, _ = cli.json(
        "up", "--detach", "--hosts", "2", "--port", str(port), "--data-dir", str(tmp_path / "data")
    )
    pid = info["pid"]
    try:
        assert info["endpoint"] == f"127.0.0.1:{port}"
        assert info["hosts"] == ["esxi-01", "esxi-02"]
        assert info["datastores"] == ["nfs-01", "vmfs-01"]
        assert len(info["thumbprint"]) == 95 and info["password"]
        ray_procs = processes.in_session(pid)
        assert len(ray_procs) > 3, "the daemon and the Ray processes it started"
        drive(cli, info)  # ends logged out
        cli.json("login", "--password", info["password"])
        follow = subprocess.Popen(
            [VSIM, "events", "--follow", "--limit", "2"], env=cli.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        header = first_lines(follow.stdout, 3, timeout=60)
    finally:
        done = cli.run("down", "-o", "json", ok=False)
        leftovers = processes.in_session(pid)
        processes.kill(leftovers)  # whatever happens, this test leaves nothing running
    assert done.returncode == 0, done.stderr
    # A follower of the events is told vCenter went away (exit 1), not a gRPC status.
    _, err = follow.communicate(timeout=60)
    assert follow.returncode == 1 and "vCenter went away" in err, err
    assert header[0].split() == ["KEY", "TIME", "TYPE", "MESSAGE"]
    down = json.loads(done.stdout)
    assert down["stopped"] is True and down["remaining"] == 0
    assert leftovers == []
    assert processes.in_session(pid) == []
    assert [p for p in ray_procs if processes.alive(p)] == []
    assert not (tmp_path / "config" / "up.json").exists()
    again, _ = cli.json("down")
    assert again["stopped"] is False


def follow_events(cli: Cli, after: int) -> None:
    """`vsim events --follow -o json` prints each new event as one JSON line."""
    follow = subprocess.Popen(
        [VSIM, "events", "--follow", "--after", str(after), "-o", "json"],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in follow.stdout], daemon=True
    ).start()
    try:
        cli.json("vm", "create", "follow-01", "--memory-mb", "256")
        seen = []
        deadline = time.monotonic() + 60
        while not any(e["type"] == "VmCreatedEvent" and e["vm"] == "follow-01" for e in seen):
            left = deadline - time.monotonic()
            assert left > 0, f"no VmCreatedEvent for follow-01 in {seen}"
            try:
                seen.append(json.loads(lines.get(timeout=left)))
            except queue.Empty:
                pass
        assert all(e["key"] > after for e in seen)
    finally:
        follow.terminate()
        follow.wait(10)
    cli.json("vm", "destroy", "follow-01")


def guest_writes_acked(cli: Cli, vm: str) -> int:
    """`vsim vm show` once the running guest has had some writes acknowledged."""
    deadline = time.monotonic() + 60
    while (acked := cli.json("vm", "show", vm)[0]["guest_writes_acked"]) < 5:
        assert time.monotonic() < deadline, f"{vm}'s guest has {acked} writes acknowledged"
        time.sleep(0.5)
    return acked


def drive_disks(cli: Cli) -> None:
    """VMs with disks: create, lock show while running, verify-disk, linked clone."""
    task, _ = cli.json(
        "vm", "create", "db-01", "--memory-mb", "256", "--datastore", "vmfs-01",
        "--disk-gb", "0.02", "--guest-iops", "50", "--host", "esxi-01",
    )  # fmt: skip
    assert task["state"] == "success"
    vm, _ = cli.json("vm", "list")
    assert [(v["name"], v["datastore"], v["disks"][0]["path"]) for v in vm] == [
        ("db-01", "vmfs-01", "db-01/db-01.vmdk")
    ]
    assert cli.json("vm", "power-on", "db-01")[0]["state"] == "success"
    lock, _ = cli.json("lock", "show", "[vmfs-01] db-01/db-01-flat.vmdk")
    assert lock["mode"] == "EXCLUSIVE" and [h["host"] for h in lock["holders"]] == ["esxi-01"]
    error, _ = cli.json("vm", "clone", "db-01", "db-02", ok=False)
    assert error["error"]["name"] == "InvalidPowerState"
    acked = guest_writes_acked(cli, "db-01")
    (listed,) = cli.json("vm", "list")[0]
    assert listed["guest_writes_acked"] >= acked
    assert "guest_writes_acked:" in cli.run("vm", "show", "db-01").stdout
    assert cli.json("vm", "power-off", "db-01")[0]["state"] == "success"
    report, _ = cli.json("vm", "verify-disk", "db-01", "--acked", str(acked))
    assert report["written"] > 0 and report["corrupt"] == report["missing"] == 0
    assert report["acked_seq"] == acked and report["highest_seq"] >= acked
    assert "0 corrupt, 0 missing" in cli.run("vm", "verify-disk", "db-01").stdout
    task, _ = cli.json("vm", "clone", "db-01", "db-02", "--host", "esxi-02")
    assert task["state"] == "success"
    error, _ = cli.json("vm", "destroy", "db-01", ok=False)
    assert error["error"]["name"] == "InvalidState"  # db-02's disk is a delta over it
    error, _ = cli.json("vm", "create", "bad", "--disk-gb", "1", ok=False)
    assert error["error"]["name"] == "InvalidArgument"  # no datastore
    for name in ("db-02", "db-01"):
        assert cli.json("vm", "destroy", name)[0]["state"] == "success"


def send_frame(cli: Cli, *args: str) -> dict:
    trace, _ = cli.json("network", "send-frame", "net-a", "--to-vm", "net-b", *args)
    return trace


def drive_network(cli: Cli) -> None:
    """The VMkernel from the CLI: a VLAN port group on both hosts, VMs with NICs, test
    frames across the physical switch, a vNIC firewall rule, a switch port that does
    not trunk the VLAN, statistics; a NIC hot-removed and the port groups removed."""
    for host in ("esxi-01", "esxi-02"):
        network, _ = cli.json("network", "portgroup", "add", host, "Prod", "--vlan", "10")
        assert ("Prod", 10) in [(p["name"], p["vlan"]) for p in network["port_groups"]]
    for name, host in (("net-a", "esxi-01"), ("net-b", "esxi-02")):
        task, _ = cli.json(
            "vm", "create", name, "--memory-mb", "256", "--host", host, "--nic", "Prod"
        )
        assert task["state"] == "success"
        assert cli.json("vm", "power-on", name)[0]["state"] == "success"
    ssh = ("--protocol", "tcp", "--src-ip", "10.1.1.1", "--dst-port", "22")
    trace = send_frame(cli, *ssh)
    assert [(r["host"], r["vm"]) for r in trace["received"]] == [("esxi-02", "net-b")]
    nics, _ = cli.json("vm", "firewall", "set", "net-b", "--rule", "deny in tcp 10.0.0.0/8 22")
    assert [r["address"] for r in nics[0]["firewall"]] == ["10.0.0.0/8"]
    trace = send_frame(cli, *ssh)
    assert trace["received"] == []
    assert "firewall" in [d["reason"] for d in trace["dropped"]]
    text = cli.run("network", "send-frame", "net-a", "--to-vm", "net-b", *ssh).stdout
    assert "received by none" in text and "firewall" in text
    port, _ = cli.json("network", "pswitch", "set", "esxi-02", "vmnic0", "--vlans", "0,20")
    assert port["vlans"] == [0, 20]
    trace = send_frame(cli)
    assert trace["received"] == [] and "vlan" in [d["reason"] for d in trace["dropped"]]
    cli.json("network", "pswitch", "set", "esxi-02", "vmnic0")
    assert send_frame(cli)["received"] != []
    stats, _ = cli.json("vm", "stats", "net-a")
    assert (stats["name"], stats["host"]) == ("net-a", "esxi-01")
    host_stats, _ = cli.json("host", "stats", "esxi-01")
    assert "net-a" in [v["name"] for v in host_stats["vms"]]
    error, _ = cli.json("network", "portgroup", "add", "esxi-01", "X", "--vlan", "5000", ok=False)
    assert error["error"]["name"] == "InvalidArgument"
    error, _ = cli.json("network", "portgroup", "remove", "esxi-02", "Prod", ok=False)
    assert error["error"]["name"] == "ResourceInUse" and "net-b" in error["error"]["message"]
    (ethernet0,), _ = cli.json("vm", "nic", "list", "net-b")
    to_it = ("network", "send-frame", "net-a", "--dst-mac", ethernet0["mac"])
    assert cli.json(*to_it)[0]["received"] != []
    vm, _ = cli.json("vm", "nic", "remove", "net-b", "ethernet0")  # hot-removed
    assert vm["nics"] == [] and vm["power_state"] == "poweredOn"
    assert cli.json(*to_it)[0]["received"] == []
    network, _ = cli.json("network", "portgroup", "remove", "esxi-02", "Prod")
    assert "Prod" not in [p["name"] for p in network["port_groups"]]
    for name in ("net-a", "net-b"):
        assert cli.json("vm", "power-off", name)[0]["state"] == "success"
        assert cli.json("vm", "destroy", name)[0]["state"] == "success"
    cli.json("network", "portgroup", "remove", "esxi-01", "Prod")


def drive(cli: Cli, info: dict) -> None:
    hosts, _ = cli.json("host", "list")
    assert [(h["name"], h["connection_state"]) for h in hosts] == [
        ("esxi-01", "connected"),
        ("esxi-02", "connected"),
    ]
    datastores, _ = cli.json("datastore", "list")
    assert [(d["name"], d["type"]) for d in datastores] == [("nfs-01", "nfs"), ("vmfs-01", "vmfs")]
    for d in datastores:
        assert sorted((m["host"], m["accessible"]) for m in d["mounts"]) == [
            ("esxi-01", True),
            ("esxi-02", True),
        ]
    assert (
        datastores[1]["lock_mode"] == "ats+scsi" and datastores[1]["capacity_bytes"] == 4 * 1024**3
    )
    table = cli.run("datastore", "list").stdout
    assert "vmfs-01" in table and "lun 0" in table and "export nfs-01" in table
    error, _ = cli.json("datastore", "create", "vmfs-01", "--type", "vmfs", "--lun", "0", ok=False)
    assert error["error"]["name"] == "DuplicateName"
    lock, _ = cli.json("lock", "show", "[vmfs-01] vm-001/vm-001-flat.vmdk")
    assert (lock["mode"], lock["holders"]) == ("FREE", [])
    assert cli.run("lock", "show", "[vmfs-01] vm-001/vm-001-flat.vmdk").stdout.startswith(
        "[vmfs-01] vm-001/vm-001-flat.vmdk: free"
    )
    for path, fault in (("vmfs-01 x.vmdk", "InvalidArgument"), ("[nfs-01] none.vmdk", "NotFound")):
        error, _ = cli.json("lock", "show", path, ok=False)
        assert error["error"]["name"] == fault

    task, _ = cli.json("vm", "create", "web-01", "--cpus", "2", "--memory-mb", "2048")
    assert (task["name"], task["state"]) == ("CreateVM_Task", "success")
    task, _ = cli.json("vm", "power-on", "web-01")
    assert task["state"] == "success"
    vms, _ = cli.json("vm", "list")
    assert [(v["name"], v["power_state"]) for v in vms] == [("web-01", "poweredOn")]
    table = cli.run("vm", "list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "HOST", "POWER_STATE"]
    assert table[1].split()[:3] == ["web-01", vms[0]["host"], "poweredOn"]
    status, _ = cli.json("status")
    assert (status["hosts_connected"], status["vms_powered_on"]) == (2, 1)
    events = cli.json("events")[0]["events"]
    assert "VmPoweredOnEvent" in [e["type"] for e in events]
    table = cli.run("events", "--limit", "3").stdout.splitlines()
    assert table[-4].split() == ["KEY", "TIME", "TYPE", "MESSAGE"] and len(table) >= 4

    # Failures: non-zero exit, the fault as the one JSON document, a message on stderr.
    for args, fault in (
        (("vm", "create", "web-01"), "DuplicateName"),
        (("vm", "power-on", "nope"), "NotFound"),
        (("vm", "create", "neg", "--memory-mb", "-4"), "InvalidArgument"),
        (("host", "remove", "esxi-01"), "InvalidState"),
    ):
        error, done = cli.json(*args, ok=False)
        assert done.returncode == 1
        assert error["error"]["name"] == fault
        assert fault in done.stderr

    # host add: with no terminal to ask on, the thumbprint must be given or accepted.
    error, _ = cli.json("host", "add", "esxi-03", "--memory-mb", "65536", ok=False)
    assert error["error"]["name"] == "SSLVerifyFault"
    presented = error["error"]["properties"]["thumbprint"]
    task, _ = cli.json("host", "add", "esxi-03", "--accept-thumbprint")
    assert task["state"] == "success"
    hosts, _ = cli.json("host", "list")
    assert [h["ssl_thumbprint"] for h in hosts if h["name"] == "esxi-03"] == [presented]
    error, _ = cli.json("host", "add", "esxi-04", "--thumbprint", ":".join(["AB"] * 32), ok=False)
    assert error["error"]["name"] == "SSLVerifyFault"
    assert error["error"]["properties"]["thumbprint"] != ":".join(["AB"] * 32)
    cli.json("host", "remove", "esxi-03")

    for args in (("vm", "power-off", "web-01"), ("vm", "destroy", "web-01")):
        assert cli.json(*args)[0]["state"] == "success"
    tasks, _ = cli.json("tasks", "--limit", "2")
    assert [(t["name"], t["entity"]) for t in tasks] == [
        ("Destroy_Task", "web-01"),
        ("PowerOffVM_Task", "web-01"),
    ]
    follow_events(cli, events[-1]["key"])
    drive_disks(cli)
    drive_network(cli)

    # Login again (the password from `vsim up`), then a pinned thumbprint that changed.
    login, _ = cli.json("login", "--password", info["password"])
    assert login["pinned"] is False and login["thumbprint"] == info["thumbprint"]
    # Another user's config: the first login pins the thumbprint (trust on first use).
    other = Cli(Path(cli.env["VSIM_CONFIG"] + "-other"))
    error, _ = other.json("host", "list", "--server", info["endpoint"], ok=False)
    assert error["error"]["name"] == "NotAuthenticated"
    login, _ = other.json("login", "--server", info["endpoint"], "--password", info["password"])
    assert login["pinned"] is True and login["thumbprint"] == info["thumbprint"]
    assert len(other.json("host", "list")[0]) == 2
    error, _ = other.json("login", "--password", "wrong", ok=False)
    assert error["error"]["name"] == "InvalidLogin"
    known = Path(cli.env["VSIM_CONFIG"]) / "known_hosts"
    saved = known.read_text()
    known.write_text(saved.replace(info["thumbprint"], ":".join(["00"] * 32)))
    error, done = cli.json("status", ok=False)
    assert error["error"]["name"] == "SSLVerifyFault" and "changed" in done.stderr
    known.write_text(saved)

    error, _ = cli.json("up", "--detach", "--port", str(free_port()), ok=False)
    assert "already running" in error["error"]["message"]
    assert cli.json("logout")[0]["logged_out"] is True
    error, _ = cli.json("status", ok=False)
    assert error["error"]["name"] == "NotAuthenticated"


def test_ctrl_c_stops_a_foreground_cluster_and_leaves_nothing(cli: Cli, tmp_path: Path):
    """`make run` is `vsim up` in the foreground; Ctrl-C (SIGINT to the terminal's whole
    process group) stops it with no process left behind."""
    up = subprocess.Popen(
        [VSIM, "up", "--hosts", "1", "--port", str(free_port()), "-o", "json",
         "--data-dir", str(tmp_path / "data")],
        env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        info = json.loads(read_document(up.stdout, timeout=300))
        assert info["hosts"] == ["esxi-01"]
        started = processes.descendants(up.pid)
        assert len(started) > 3, "vsim up and the Ray processes it started"
        os.killpg(up.pid, signal.SIGINT)
        assert up.wait(120) == 0
        assert "Stopped." in up.stderr.read()
        assert processes.wait_gone(started, 30) == []
        assert processes.in_session(up.pid) == []
    finally:
        processes.kill(processes.in_session(up.pid))
        if up.poll() is None:
            up.kill()
            up.wait()


def first_lines(stream, count: int, timeout: float) -> list[str]:
    """The first count lines of a stream that stays open after them."""
    lines: queue.Queue[str] = queue.Queue()
    read = lambda: [lines.put(stream.readline()) for _ in range(count)]  # noqa: E731
    threading.Thread(target=read, daemon=True).start()
    return [lines.get(timeout=timeout) for _ in range(count)]


def read_document(stream, timeout: float) -> str:
    """One JSON document from a stream that stays open after it."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    text = ""
    deadline = time.monotonic() + timeout
    while True:
        text += lines.get(timeout=max(0.1, deadline - time.monotonic()))
        try:
            json.loads(text)
            return text
        except json.JSONDecodeError:
            continue
