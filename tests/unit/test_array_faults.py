"""The array's own faults, on both paths hosts reach it by (the gRPC service's
handlers and the in-process devices of LocalStoragePorts): an injected latency per
LUN or export, waited on the array's clock, and a restart of the array program that
drops reservations and commands in flight, reloads its files and keeps the data."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from vsim import dispatch
from vsim.clock import SimClock
from vsim.faults import (
    CannotAccessFile,
    HostConnectFault,
    InvalidArgument,
    NoPermission,
    NotAuthenticated,
)
from vsim.host.storage.storage_stack import LocalStoragePorts
from vsim.runtime import Runtime
from vsim.storage.array import MAX_LATENCY, ArrayError, StorageArray
from vsim.storage.lun import SECTOR
from vsim.storage.nfs_export import ExportOptions
from vsim.storage.scsi import GOOD, RESERVATION_CONFLICT, ScsiError
from vsim.storage.service import ArrayService
from vsim.v1 import storage_pb2 as pb

A = "iqn.1998-01.com.vmware:esxi-01"
B = "iqn.1998-01.com.vmware:esxi-02"
MIB = 1024**2


@pytest.fixture
def array(tmp_path: Path):
    array = StorageArray(tmp_path / "array", Runtime.simulated(SimClock(), 1, "array"))
    array.create_lun(MIB, (A, B), "vmfs-01")
    array.create_lun(MIB, (A, B), "vmfs-02")
    array.create_export("nfs-01", ExportOptions())
    yield array
    array.close()


def state(array: StorageArray) -> tuple:
    return (
        dict(array.latency),
        {i: set(m) for i, m in array.masking.items()},
        dict(array.lun_names),
        {i: lun.reservation for i, lun in array.luns.items()},
        array.generation,
    )


def scsi(initiator: str = A, lun: int = 0, **fields) -> pb.ScsiRequest:
    return pb.ScsiRequest(initiator=initiator, lun=lun, **fields)


async def timed(array: StorageArray, awaitable) -> float:
    start = array.runtime.now()
    await awaitable
    return array.runtime.now() - start


# latency


async def test_lun_latency_delays_every_command_on_both_paths_and_only_that_lun(array):
    array.set_latency("vmfs-01", 0.25)
    service = ArrayService(array)
    ports = LocalStoragePorts(array)
    slow = await ports.block_device("", "", 0, A)
    fast = await ports.block_device("", "", 1, A)
    assert await timed(array, slow.write(0, b"x" * SECTOR)) == pytest.approx(0.25)
    assert await timed(array, slow.read(0, 1)) == pytest.approx(0.25)
    assert await timed(array, fast.read(0, 1)) == 0
    assert await timed(array, service.Read(scsi(B, blocks=1), None)) == pytest.approx(0.25)
    assert await timed(array, service.Read(scsi(B, lun=1, blocks=1), None)) == 0
    array.set_latency("vmfs-01", 0)  # mended
    assert await timed(array, slow.read(0, 1)) == 0
    assert array.latency == {}


async def test_export_latency_delays_every_nfs_operation_on_both_paths(array):
    array.set_latency("nfs-01", 0.5)
    client = await LocalStoragePorts(array).nfs_client("", "", "nfs-01", "esxi-01")
    assert await timed(array, client.fsstat()) == pytest.approx(0.5)
    service = ArrayService(array)
    request = pb.NfsRequest(client="esxi-02", export="nfs-01")
    assert await timed(array, service.NfsFsstat(request, None)) == pytest.approx(0.5)
    assert array.lun_latency(0) == array.lun_latency(1) == 0


@pytest.mark.parametrize(
    "name, seconds",
    [
        ("nothing", 1.0),
        ("vmfs-01", -0.001),
        ("vmfs-01", MAX_LATENCY + 1),
        ("vmfs-01", math.nan),
        ("nfs-01", math.inf),
    ],
)
def test_bad_latency_is_refused_and_changes_nothing(array, name, seconds):
    array.set_latency("vmfs-02", 2.0)
    before = state(array)
    with pytest.raises(ArrayError):
        array.set_latency(name, seconds)
    assert state(array) == before


@pytest.mark.parametrize(
    "request_",
    [
        pb.SetLatencyRequest(seconds=1),  # no target
        pb.SetLatencyRequest(lun=0, export="nfs-01", seconds=1),  # two
        pb.SetLatencyRequest(lun=9, seconds=1),
        pb.SetLatencyRequest(export="nope", seconds=1),
        pb.SetLatencyRequest(lun=0, seconds=-1),
        pb.SetLatencyRequest(export="nfs-01", seconds=61),
    ],
)
async def test_set_latency_rpc_bad_input_is_invalid_argument(array, request_):
    table = ArrayService(array).table
    before = state(array)
    with pytest.raises(InvalidArgument):
        await dispatch.call(table, "SetLatency", request_, array.management_key)
    assert state(array) == before


async def test_set_latency_rpc_reports_it_in_the_array(array):
    table = ArrayService(array).table
    key = array.management_key
    info = await dispatch.call(table, "SetLatency", pb.SetLatencyRequest(lun=1, seconds=0.2), key)
    assert [lun.latency_seconds for lun in info.luns] == [0, 0.2]
    info = await dispatch.call(
        table, "SetLatency", pb.SetLatencyRequest(export="nfs-01", seconds=3), key
    )
    assert [e.latency_seconds for e in info.exports] == [3]


@pytest.mark.parametrize(
    "method, request_",
    [
        ("SetLatency", pb.SetLatencyRequest(lun=0, seconds=1)),
        ("RestartArray", pb.RestartArrayRequest()),
    ],
)
async def test_fault_rpcs_need_the_management_key(array, method, request_):
    table = ArrayService(array).table
    array.luns[0].reserve(A)
    before = state(array)
    with pytest.raises(NotAuthenticated):
        await dispatch.call(table, method, request_, None)
    with pytest.raises(NoPermission):
        await dispatch.call(table, method, request_, "x" * 43)
    assert state(array) == before


# restart


async def test_restart_drops_reservations_keeps_data_and_reloads_the_files(array):
    device = await LocalStoragePorts(array).block_device("", "", 0, A)
    other = await LocalStoragePorts(array).block_device("", "", 0, B)
    await device.write(5, b"d" * SECTOR)
    await device.reserve()
    with pytest.raises(ScsiError) as conflict:
        await other.read(5, 1)
    assert conflict.value.status == RESERVATION_CONFLICT
    array.masking[0].discard(B)  # in memory only: the restart reads array.json again
    array.set_latency("vmfs-02", 1.0)
    table = ArrayService(array).table
    answer = await dispatch.call(
        table, "RestartArray", pb.RestartArrayRequest(), array.management_key
    )
    assert (answer.generation, list(answer.reservations_dropped)) == (1, [0])
    assert array.luns[0].reservation is None
    assert array.masking[0] == {A, B}
    assert array.lun_latency(1) == 1.0  # the disk is still slow: a fault, not program state
    assert array.luns[0].stats == {}
    # The same device objects go on, on the reopened file: the data is there.
    assert await other.read(5, 1) == b"d" * SECTOR
    assert await device.read(5, 1) == b"d" * SECTOR


async def test_a_command_waiting_across_a_restart_is_dropped_not_run(array):
    array.set_latency("vmfs-01", 1.0)
    device = await LocalStoragePorts(array).block_device("", "", 0, A)
    service = ArrayService(array)
    local = asyncio.ensure_future(device.write(0, b"L" * SECTOR))
    remote = asyncio.ensure_future(service.Write(scsi(B, lba=1, data=b"R" * SECTOR), None))
    await array.runtime.sleep(0.5)
    array.restart()
    # The host sees a lost path, as over gRPC (where array_client maps it so).
    with pytest.raises(CannotAccessFile, match="the array restarted"):
        await local
    with pytest.raises(HostConnectFault):
        await remote
    array.set_latency("vmfs-01", 0)
    assert await device.read(0, 2) == bytes(2 * SECTOR)  # neither write ran
    # A command that starts after the restart runs as usual.
    assert (await service.Write(scsi(B, lba=1, data=b"R" * SECTOR), None)).status.status == GOOD
