"""A host's networks cut one at a time on the in-process engine (`set_link_now`): a cut
storage network loses the host's VMFS volume once its last heartbeat is 16 s old,
while vCenter still manages the host; a cut management network makes the host not
responding while it goes on heartbeating on its datastore and its VM keeps running,
and mended, it is connected again. A hung host holds every message at its ports until
the hang ends; a crash drops them."""

from __future__ import annotations

import asyncio

import pytest
from vclab import CONNECTED, NOT_RESPONDING, ON, SUCCESS, Lab

from vsim.faults import (
    CannotAccessFile,
    FileLocked,
    HostConnectFault,
    HostNotConnected,
    InvalidArgument,
    NotFound,
)
from vsim.host.storage.vmfs import HB_INTERVAL, HB_TIMEOUT, VmfsVolume
from vsim.spec import ClusterSpec
from vsim.storage.vmfs_format import LockMode
from vsim.v1 import host_agent_pb2 as hpb


async def lab_with_a_running_vm(tmp_path) -> Lab:
    """Three hosts and the array; vm-a, with a disk on vmfs-01, running on esxi-01."""
    lab = Lab(tmp_path / "vc", array=True)
    await lab.boot(ClusterSpec.default(3))
    task = await lab.client.create_vm(
        "vm-a", memory_mb=256, host="esxi-01", datastore="vmfs-01", disk_mb=8
    )
    assert (await lab.wait(task)).state == SUCCESS
    assert (await lab.power_on("vm-a")).state == SUCCESS
    return lab


def usable(volume: VmfsVolume) -> bool:
    """Whether the host may still do I/O on the volume (its heartbeat is recent)."""
    try:
        volume.mounted()
    except CannotAccessFile:
        return False
    return True


async def test_a_cut_storage_network_loses_the_volume_but_not_vcenter(tmp_path, fast_scrypt):
    lab = await lab_with_a_running_vm(tmp_path)
    try:
        volume = lab.engine.running("esxi-01").storage.vmfs["vmfs-01"]
        lab.engine.set_link_now("esxi-01", "storage", up=False)
        # Its last good heartbeat was at most HB_INTERVAL before the cut.
        await lab.clock.advance(HB_TIMEOUT - HB_INTERVAL - 1)
        assert usable(volume)  # not yet: a host keeps trying for 16 s
        await lab.clock.advance(HB_INTERVAL + 1)
        assert not usable(volume)
        await lab.vc.hosts.heartbeat_once()
        assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED
    finally:
        await lab.close()


async def test_a_cut_management_network_is_not_responding_but_keeps_its_datastore(
    tmp_path, fast_scrypt
):
    lab = await lab_with_a_running_vm(tmp_path)
    try:
        volume = lab.engine.running("esxi-01").storage.vmfs["vmfs-01"]
        lab.engine.set_link_now("esxi-01", "management", up=False)
        await lab.vc.hosts.heartbeat_once()
        assert (await lab.hosts())["esxi-01"].connection_state == NOT_RESPONDING
        await lab.clock.advance(3 * HB_TIMEOUT)
        assert usable(volume)  # its datastore heartbeats go on
        assert lab.host_power_states()["vm-a"] == ON
        lab.engine.set_link_now("esxi-01", "management", up=True)
        await lab.vc.hosts.heartbeat_once()
        assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED
        assert (await lab.vms())["vm-a"].power_state == ON
    finally:
        await lab.close()


async def test_bad_link_requests_are_refused(tmp_path, fast_scrypt):
    lab = Lab(tmp_path / "vc")
    await lab.boot(ClusterSpec.default(1))
    try:
        with pytest.raises(InvalidArgument, match="management, storage, vmotion"):
            lab.engine.set_link_now("esxi-01", "vmotion-ish", up=False)
        with pytest.raises(NotFound):
            lab.engine.set_link_now("esxi-09", "storage", up=False)
        assert lab.engine.link_up("esxi-01", "storage")
    finally:
        await lab.close()


async def test_a_power_on_whose_lock_grant_reply_is_lost_still_runs_the_vm(tmp_path, fast_scrypt):
    """The array grants the disk lock (COMPARE AND WRITE) but its reply is lost: the
    host reads the lock record back and finds the lock its own, so the power-on goes
    on, and the lock is the host's alone (another host is refused)."""
    lab = Lab(tmp_path / "vc", array=True)
    await lab.boot(ClusterSpec.default(2))
    try:
        task = await lab.client.create_vm(
            "vm-a", memory_mb=256, host="esxi-01", datastore="vmfs-01", disk_mb=8
        )
        assert (await lab.wait(task)).state == SUCCESS
        volume = lab.engine.running("esxi-01").storage.vmfs["vmfs-01"]
        lab.engine.lose_next_storage_reply("esxi-01", "compare_and_write")
        assert (await lab.power_on("vm-a")).state == SUCCESS
        assert volume.stats["lost_replies"] == 1
        assert lab.host_power_states()["vm-a"] == ON
        other = lab.engine.running("esxi-02").storage.files["vmfs-01"]
        with pytest.raises(FileLocked):
            await other.open("vm-a/vm-a-flat.vmdk", LockMode.EXCLUSIVE)
    finally:
        await lab.close()


async def test_a_hung_host_answers_only_when_its_hang_ends(tmp_path, fast_scrypt):
    lab = await lab_with_a_running_vm(tmp_path)
    try:
        await lab.engine.hang_host("esxi-01", 30)
        asked = lab.clock.now()
        volume = lab.engine.running("esxi-01").storage.vmfs["vmfs-01"]
        await lab.vc.hosts.heartbeat_once()  # vCenter gives up after its timeout
        assert (await lab.hosts())["esxi-01"].connection_state == NOT_RESPONDING
        assert lab.engine.hung("esxi-01")
        await lab.clock.advance(30 - (lab.clock.now() - asked))
        assert not lab.engine.hung("esxi-01")
        # Its heartbeats were held past HB_TIMEOUT: the volume was lost, nothing written
        # late; then, its slot still its own, the host takes it back.
        assert volume.stats["lost_access"] == 1
        await lab.clock.advance(HB_INTERVAL)
        assert volume.stats["reclaims"] >= 1 and usable(volume)
        await lab.vc.hosts.heartbeat_once()
        assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED
    finally:
        await lab.close()


async def test_a_crash_drops_what_waits_at_a_hung_hosts_ports(tmp_path, fast_scrypt):
    lab = await lab_with_a_running_vm(tmp_path)
    try:
        await lab.engine.hang_host("esxi-01", 60)
        line = await lab.engine.connect("esxi-01")
        request = hpb.GetHostInfoRequest()
        held_line = asyncio.get_running_loop().create_task(line.call("GetHostInfo", request, None))
        held = asyncio.get_running_loop().create_task(
            lab.vc.hosts.call("esxi-01", "GetHostInfo", request)
        )
        await lab.clock.advance(5)
        assert not held.done()
        await lab.engine.crash_host("esxi-01")
        await lab.clock.advance(0)
        with pytest.raises(HostConnectFault, match="crashed while GetHostInfo waited"):
            await held_line
        with pytest.raises(HostNotConnected, match="stopped answering"):
            await held
        assert not lab.engine.hung("esxi-01")
        await lab.engine.power_on_host("esxi-01")
        await lab.vc.hosts.heartbeat_once()
        assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED
    finally:
        await lab.close()


async def test_bad_fault_requests_change_nothing(tmp_path, fast_scrypt):
    lab = Lab(tmp_path / "vc")
    await lab.boot(ClusterSpec.default(1))
    try:
        with pytest.raises(InvalidArgument, match="hang seconds"):
            await lab.engine.hang_host("esxi-01", -1)
        with pytest.raises(NotFound):
            await lab.engine.hang_host("esxi-09", 5)
        with pytest.raises(NotFound):
            await lab.engine.crash_host("esxi-09")
        assert not lab.engine.hung("esxi-01")
        await lab.engine.crash_host("esxi-01")
        with pytest.raises(InvalidArgument, match="not running"):
            await lab.engine.hang_host("esxi-01", 5)
    finally:
        await lab.close()
