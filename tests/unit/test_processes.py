"""Finding what a `vsim up` run started by the run id in its environment, and one boot
of a host at a time (the boot lock its shell holds)."""

from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from vsim.clock import SimClock
from vsim.cluster import processes
from vsim.faults import HostConnectFault
from vsim.host import actor


def test_a_runs_processes_are_found_by_the_run_id_in_their_environment():
    ours = subprocess.Popen(["sleep", "30"], env={**os.environ, "VSIM_UP_RUN": "run-a"})
    # The id is an exact entry: another run's id that starts the same is not ours.
    other = subprocess.Popen(["sleep", "30"], env={**os.environ, "VSIM_UP_RUN": "run-ab"})
    try:
        found = processes.with_environment("VSIM_UP_RUN", "run-a")
        assert [pid for pid, _ in found] == [ours.pid]
        processes.kill(found)
        assert processes.wait_gone(found, 5) == []
        assert processes.alive(processes.identity(other.pid))
    finally:
        for child in (ours, other):
            child.kill()
            child.wait()


async def test_a_host_boots_once_at_a_time(tmp_path):
    clock = SimClock()
    first = await actor.hold_boot_lock(tmp_path / "esxi-01", "esxi-01", clock)
    second = asyncio.ensure_future(actor.hold_boot_lock(tmp_path / "esxi-01", "esxi-01", clock))
    await clock.advance(actor.BOOT_LOCK_WAIT - 1)
    assert not second.done()  # it waits for the first boot's process to go
    await clock.advance(2)
    with pytest.raises(HostConnectFault, match="another boot of esxi-01 is running"):
        await second
    other_host = await actor.hold_boot_lock(tmp_path / "esxi-02", "esxi-02", clock)
    os.close(first)  # that boot's process is gone
    again = await actor.hold_boot_lock(tmp_path / "esxi-01", "esxi-01", clock)
    for fd in (other_host, again):
        os.close(fd)


def test_a_runs_retitled_processes_are_found_by_the_files_they_keep_open(tmp_path):
    (tmp_path / "session_1" / "logs").mkdir(parents=True)
    (tmp_path / "session_10").mkdir()
    with open(tmp_path / "session_1" / "logs" / "worker.out", "wb") as log:
        ours = subprocess.Popen(["sleep", "30"], stdout=log)
    with open(tmp_path / "session_10" / "worker.out", "wb") as log:
        other = subprocess.Popen(["sleep", "30"], stdout=log)  # a name that starts alike
    try:
        found = processes.with_open_file_under(str(tmp_path / "session_1"))
        assert [pid for pid, _ in found] == [ours.pid]
    finally:
        for child in (ours, other):
            child.kill()
            child.wait()
