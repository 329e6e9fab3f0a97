"""`vsim up` / `vsim down` as a new user meets them: options refused before anything
starts, one cluster per data dir, nothing listening beyond the bind address, SIGTERM's
orderly stop with VMs (VMFS and NFS) powered off cleanly and back on at the next
start with every acknowledged write, and `vsim down` after a `kill -9` stopping what
the dead cluster left (and only that)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
from pathlib import Path

import pytest
from test_cli import Cli, free_port

from vsim.cluster import processes
from vsim.cluster.client import VCenterClient
from vsim.v1 import common_pb2

SUCCESS = common_pb2.TASK_STATE_SUCCESS


def listening(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every listening TCP socket of these processes."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # /proc prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.append((str(ipaddress.ip_address(raw)), int(hex_port, 16), inodes[fields[9]]))
    return found


@pytest.fixture
def cli(tmp_path) -> Cli:
    return Cli(tmp_path / "config")


def loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def cluster_pids(info: dict) -> set[int]:
    return {p[0] for p in processes.in_session(info["pid"])}


async def start_vms(info: dict) -> dict[str, int]:
    """vm-vmfs and vm-nfs running with guests writing; each one's acknowledged seq."""
    async with await VCenterClient.connect(info["endpoint"], info["thumbprint"]) as client:
        await client.login("administrator@vsphere.local", info["password"])
        for name, datastore in (("vm-vmfs", "vmfs-01"), ("vm-nfs", "nfs-01")):
            task = await client.create_vm(
                name, memory_mb=256, datastore=datastore, disk_mb=16, guest_write_iops=20
            )
            assert (await client.wait(task)).state == SUCCESS, task
            assert (await client.wait(await client.power_on(name))).state == SUCCESS
        return await acked_at_least(client, 5)


async def verify(info: dict, acked: dict[str, int], at_least: int) -> dict[str, int]:
    """Waits for the guests to pass at_least; checks every write acknowledged up to
    acked[name] reads back; returns their acknowledged seqs now."""
    async with await VCenterClient.connect(info["endpoint"], info["thumbprint"]) as client:
        await client.login("administrator@vsphere.local", info["password"])
        now = await acked_at_least(client, at_least, tuple(acked))
        for name, seq in acked.items():
            report = await client.verify_disk(name, seq)
            assert report.missing == 0 and report.corrupt == 0, report
        return now


async def acked_at_least(client: VCenterClient, count: int, names=("vm-vmfs", "vm-nfs")):
    acked = {}
    for _ in range(600):
        acked = {n: (await client.vm(n)).guest_writes_acked for n in names}
        if min(acked.values()) >= count:
            return acked
        await asyncio.sleep(0.1)
    raise AssertionError(f"the guests did not reach {count} acknowledged writes: {acked}")


def test_bad_up_options_are_refused_before_anything_starts(cli: Cli, tmp_path: Path):
    data = tmp_path / "data"
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        for args, words in (
            (["--hosts", "0"], "between 1 and 96"),
            (["--hosts", "100000"], "between 1 and 96"),
            (["--bind", "999.1.1.1"], "must be an IP address"),
            (["--bind", "192.0.2.254"], "not an address of this machine"),
            (["--port", str(busy.getsockname()[1])], "is in use"),
        ):
            for detach in ([], ["--detach"]):
                error, done = cli.json("up", *detach, *args, "--data-dir", str(data), ok=False)
                assert done.returncode == 1
                assert error["error"]["name"] == "InvalidArgument", done.stdout
                assert words in error["error"]["message"]
    finally:
        busy.close()
    # Nothing was started or written: no array, no inventory, no log.
    assert not (data / "array").exists() and not (data / "vcenter").exists()
    assert not (data / "vsim-up.log").exists()


def test_restart_keeps_running_vms_and_down_is_graceful_then_kill_9(cli: Cli, tmp_path: Path):
    data = tmp_path / "data"
    up = ["up", "--detach", "--hosts", "2", "--port", str(free_port()), "--data-dir", str(data)]
    info, started = cli.json(*up)
    pids = []
    try:
        pids.append(info["pid"])
        assert "vsim up: vCenter serving on" in started.stderr  # progress, as it starts
        assert "vsim up: Ray started" in started.stderr
        # Ray and every other server of the cluster listen on loopback only.
        sockets = listening(cluster_pids(info))
        assert len(sockets) > 4, sockets
        assert [s for s in sockets if not loopback(s[0])] == []
        # One cluster per data dir, whatever the config.
        other = Cli(tmp_path / "other-config")
        error, _ = other.json(*up[:-3], str(free_port()), "--data-dir", str(data), ok=False)
        assert "in use by another vsim up" in error["error"]["message"]

        acked = asyncio.run(start_vms(info))
        lock_files = list((data / "array").rglob(".lck-*"))
        assert lock_files, "vm-nfs holds its disk's NFS lock"

        down, _ = cli.json("down")
        assert down["graceful"] is True, down
        assert down["vms_powered_off"] == ["vm-nfs", "vm-vmfs"]
        log = (data / "vsim-up.log").read_text()
        assert "Stopping: powering off the VMs" in log and "SIGTERM received" not in log
        assert list((data / "array").rglob(".lck-*")) == []  # released, not left behind

        # Bound wider, only vCenter listens beyond loopback: Ray, the hosts' hostd and
        # the array stay on it.
        port = free_port()
        wide = [*up[:4], "--port", str(port), "--bind", "0.0.0.0", "--data-dir", str(data)]
        info, _ = cli.json(*wide)
        pids.append(info["pid"])
        sockets = listening(cluster_pids(info))
        # (gRPC takes 0.0.0.0 as the dual-stack "::")
        assert {p for a, p, _ in sockets if not loopback(a)} == {port}, sockets
        # Each VM is back in the power state it had: both were running.
        vms = {vm["name"]: vm for vm in cli.json("vm", "list")[0]}
        for name in ("vm-vmfs", "vm-nfs"):
            assert vms[name]["power_state"] == "poweredOn", vms
        # The guests write on from where they stopped; nothing acknowledged is lost.
        acked = asyncio.run(verify(info, acked, max(acked.values()) + 3))

        # kill -9: nothing of vsim's stop runs; vm-nfs's lock file stays on the export.
        run = json.loads((tmp_path / "config" / "up.json").read_text())["run"]
        assert len(processes.with_environment("VSIM_UP_RUN", run)) > 3
        os.kill(info["pid"], signal.SIGKILL)
        processes.wait_gone([processes.identity(info["pid"]) or (info["pid"], 0)], 10)
        down, done = cli.json("down")
        assert down["stopped"] is True and down["graceful"] is False, done.stdout
        assert down["killed"] > 0 and down["remaining"] == 0
        # Every process of that run is gone: Ray's, the host actors', whatever their names.
        assert processes.with_environment("VSIM_UP_RUN", run) == []
        assert processes.in_session(info["pid"]) == []
        assert list((data / "array").rglob(".lck-*")) != []

        # Started again, the killed VMs are off; vm-nfs's host finds its own lock from
        # the killed boot and opens the disk at once (no 35 s wait, no FileLocked).
        info, _ = cli.json(*up)
        pids.append(info["pid"])
        vms = {vm["name"]: vm for vm in cli.json("vm", "list")[0]}
        assert vms["vm-nfs"]["power_state"] == "poweredOff", vms
        assert cli.json("vm", "power-on", "vm-nfs")[0]["state"] == "success"
        asyncio.run(verify(info, {"vm-nfs": acked["vm-nfs"]}, acked["vm-nfs"] + 3))
        down, _ = cli.json("down")
        assert down["graceful"] is True and down["vms_powered_off"] == ["vm-nfs"], down
    finally:
        for pid in pids:
            processes.kill(processes.in_session(pid))
