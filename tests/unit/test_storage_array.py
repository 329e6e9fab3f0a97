"""The storage array core and its service, called directly (no server): LUN sizes and
masking, initiator and export names, what survives a restart (everything but the
volatile reservations), and the service's answers: SCSI and NFS outcomes in-band,
management refusals as InvalidArgument, counters in GetStats."""

from __future__ import annotations

import errno
import inspect
import itertools
import json
import os
from pathlib import Path

import pytest

from vsim.clock import SimClock
from vsim.faults import InvalidArgument
from vsim.runtime import Runtime
from vsim.storage import lun as lun_module
from vsim.storage.array import (
    CONFIG,
    DEFAULT_LUN_BYTES,
    MAX_LUN_BYTES,
    MIN_LUN_BYTES,
    ArrayError,
    StorageArray,
)
from vsim.storage.lun import SECTOR
from vsim.storage.nfs_export import Caller, CreateMode, ExportOptions, NfsError, NfsStatus
from vsim.storage.scsi import (
    CHECK_CONDITION,
    GOOD,
    ILLEGAL_REQUEST,
    LUN_NOT_SUPPORTED,
    MISCOMPARE,
    RESERVATION_CONFLICT,
    ScsiError,
)
from vsim.storage.service import ArrayService
from vsim.v1 import storage_pb2 as pb

A = "iqn.1998-01.com.vmware:esxi-01"
B = "iqn.1998-01.com.vmware:esxi-02"
C = "iqn.1998-01.com.vmware:esxi-03"
ESX = Caller("esxi-01")
MIB = 1024**2


_starts = itertools.count()


def started() -> Runtime:
    """The runtime of one start of an array: a seed of its own each time."""
    return Runtime.simulated(SimClock(), next(_starts), "array")


def block(fill: int, count: int = 1) -> bytes:
    return bytes([fill]) * (SECTOR * count)


@pytest.fixture
def array(tmp_path: Path):
    array = StorageArray(tmp_path / "array", started())
    yield array
    array.close()


def lun_files(array: StorageArray) -> list[str]:
    luns = array.data_dir / "luns"
    return sorted(p.name for p in luns.iterdir()) if luns.exists() else []


def saved(array: StorageArray) -> dict:
    path = array.data_dir / CONFIG
    return json.loads(path.read_text()) if path.exists() else {"luns": [], "exports": []}


# LUN sizes


@pytest.mark.parametrize(
    "size",
    [
        0,
        -SECTOR,
        SECTOR,
        MIN_LUN_BYTES - SECTOR,
        MIN_LUN_BYTES + 1,
        MIN_LUN_BYTES + 100,
        MAX_LUN_BYTES + SECTOR,
        MAX_LUN_BYTES + 1,
        2**63 - 1,
    ],
)
def test_create_lun_refuses_bad_sizes_and_creates_nothing(array: StorageArray, size: int):
    with pytest.raises(ArrayError, match="1 MiB to 64 TiB"):
        array.create_lun(size, (A,))
    assert array.luns == {} and array.masking == {}
    assert lun_files(array) == []
    assert saved(array)["luns"] == []


@pytest.mark.parametrize("size", [MIN_LUN_BYTES, MIN_LUN_BYTES + SECTOR, 3 * MIB])
def test_create_lun_accepts_sizes_from_1_mib_in_512_byte_steps(array: StorageArray, size: int):
    lun = array.create_lun(size, (A,))
    assert lun.size_bytes == size
    assert os.path.getsize(lun.path) == size
    assert lun.read_capacity(A) == (size // SECTOR - 1, SECTOR)


def test_luns_get_sequential_ids_and_distinct_serials(array: StorageArray):
    luns = [array.create_lun(MIB) for _ in range(4)]
    assert [lun.id for lun in luns] == [0, 1, 2, 3]
    serials = [lun.serial for lun in luns]
    assert len(set(serials)) == 4
    assert all(len(s) == 16 and s == s.upper() for s in serials)
    assert lun_files(array) == [f"lun-{i}.img" for i in range(4)]


def test_create_lun_with_a_bad_initiator_creates_nothing(array: StorageArray):
    with pytest.raises(ArrayError):
        array.create_lun(MIB, (A, "bad name"))
    assert array.luns == {}
    assert lun_files(array) == []


def test_create_lun_that_the_file_system_cannot_hold_is_an_array_error(
    array: StorageArray, monkeypatch: pytest.MonkeyPatch
):
    def too_large(fd: int, length: int) -> None:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(lun_module.os, "ftruncate", too_large)
    with pytest.raises(ArrayError):
        array.create_lun(MAX_LUN_BYTES, (A,))
    assert array.luns == {}
    assert lun_files(array) == []


# LUN masking


@pytest.fixture
def masked(array: StorageArray) -> StorageArray:
    array.create_lun(MIB, (A,))  # 0: A only
    array.create_lun(MIB, (A, B))  # 1: A and B
    array.create_lun(MIB)  # 2: nobody
    return array


def test_report_luns_shows_each_initiator_only_its_luns(masked: StorageArray):
    assert masked.report_luns(A) == [0, 1]
    assert masked.report_luns(B) == [1]
    assert masked.report_luns(C) == []


@pytest.mark.parametrize(("initiator", "lun_id"), [(B, 0), (C, 1), (A, 2), (A, 99), (A, -1)])
def test_an_unmapped_or_missing_lun_is_not_supported(
    masked: StorageArray, initiator: str, lun_id: int
):
    with pytest.raises(ScsiError) as excinfo:
        masked.lun(initiator, lun_id)
    assert excinfo.value.status == CHECK_CONDITION
    assert excinfo.value.sense == LUN_NOT_SUPPORTED


def test_a_mapped_lun_is_served(masked: StorageArray):
    assert masked.lun(A, 0) is masked.luns[0]
    assert masked.lun(B, 1) is masked.luns[1]


def test_map_lun_adds_initiators(masked: StorageArray):
    masked.map_lun(0, (B, C))
    assert masked.report_luns(B) == [0, 1]
    assert masked.report_luns(C) == [0]
    assert masked.report_luns(A) == [0, 1]
    masked.lun(B, 0).write(B, 0, block(0x42))
    assert masked.lun(A, 0).read(A, 0, 1) == block(0x42)
    assert saved(masked)["luns"][0]["initiators"] == sorted([A, B, C])


def test_map_lun_of_a_missing_lun_is_an_array_error(masked: StorageArray):
    with pytest.raises(ArrayError):
        masked.map_lun(7, (A,))


BAD_INITIATORS = ["", " ", "iqn.1998-01.com.vmware:esxi 01", "x" * 300, "x" * 224, "a\tb", "a\n"]


@pytest.mark.parametrize("name", BAD_INITIATORS, ids=repr)
def test_bad_initiator_names_are_array_errors(masked: StorageArray, name: str):
    with pytest.raises(ArrayError, match="initiator"):
        masked.report_luns(name)
    with pytest.raises(ArrayError, match="initiator"):
        masked.lun(name, 0)
    with pytest.raises(ArrayError, match="initiator"):
        masked.map_lun(0, (C, name))
    assert masked.masking[0] == {A}  # nothing mapped, not even the good one
    assert saved(masked)["luns"][0]["initiators"] == [A]


def test_an_initiator_name_of_223_characters_is_accepted(masked: StorageArray):
    name = "iqn." + "x" * 219
    masked.map_lun(2, (name,))
    assert masked.report_luns(name) == [2]


# exports


@pytest.mark.parametrize("name", ["ds1", "a", "0", "nfs-01.vm_store", "x" * 63])
def test_create_export_accepts_good_names(array: StorageArray, name: str):
    export = array.create_export(name, ExportOptions())
    assert export.root == (array.data_dir / "exports" / name).resolve()
    assert array.export(name) is export


@pytest.mark.parametrize(
    "name",
    ["", "DS1", "-ds", ".ds", "_ds", ".", "..", "a/b", "../x", "a b", "x" * 64, "ds\x00", "é"],
    ids=repr,
)
def test_create_export_refuses_bad_names(array: StorageArray, name: str):
    with pytest.raises(ArrayError, match="export name"):
        array.create_export(name, ExportOptions())
    assert array.exports == {}
    exports = array.data_dir / "exports"
    assert not exports.exists() or list(exports.iterdir()) == []
    # nothing written but the management key the array made when it started
    assert sorted(p.name for p in array.data_dir.iterdir()) == ["management.key"]


def test_create_export_refuses_a_name_with_a_trailing_newline(array: StorageArray):
    with pytest.raises(ArrayError):
        array.create_export("ds1\n", ExportOptions())
    assert array.exports == {}


def test_create_export_twice_is_an_array_error_and_keeps_the_first(array: StorageArray):
    first = array.create_export("ds1", ExportOptions(rw=True))
    with pytest.raises(ArrayError, match="exists"):
        array.create_export("ds1", ExportOptions(rw=False))
    assert array.export("ds1") is first
    assert array.export("ds1").options.rw is True
    assert [e["name"] for e in saved(array)["exports"]] == ["ds1"]


def test_an_unknown_export_is_noent(array: StorageArray):
    with pytest.raises(NfsError) as excinfo:
        array.export("nope")
    assert excinfo.value.status == NfsStatus.NOENT


# restart


def test_a_restarted_array_has_the_same_luns_exports_data_but_no_reservations(tmp_path: Path):
    data_dir = tmp_path / "array"
    first = StorageArray(data_dir, started())
    luns = [first.create_lun(MIB, (A,)), first.create_lun(2 * MIB, (A, B)), first.create_lun(MIB)]
    first.map_lun(2, (C,))
    options = {
        "ds1": ExportOptions(),
        "ro": ExportOptions(rw=False, sync=False, root_squash=True, clients=("esxi-01", "x")),
    }
    for name, o in options.items():
        first.create_export(name, o)
    first.lun(A, 0).write(A, 0, block(0x01))
    first.lun(B, 1).write(B, 2 * MIB // SECTOR - 1, block(0x02))
    first.lun(C, 2).compare_and_write(C, 5, bytes(SECTOR), block(0x03))
    handle, _ = first.export("ds1").create(ESX, "", ".lck-1", CreateMode.GUARDED)
    first.export("ds1").write(ESX, handle, 0, b"L" * 84)
    first.export("ds1").mkdir(ESX, "", "vm1")
    first.lun(A, 1).reserve(A)
    first.lun(C, 2).reserve(C)
    before = [(lun.id, lun.size_bytes, lun.serial) for lun in luns]
    masking = {k: set(v) for k, v in first.masking.items()}
    first.close()

    again = StorageArray(data_dir, started())
    try:
        assert all(not lun.stats for lun in again.luns.values())  # counters start over
        assert [(lun.id, lun.size_bytes, lun.serial) for lun in again.luns.values()] == before
        assert again.masking == masking
        assert again.report_luns(A) == [0, 1]
        assert again.report_luns(B) == [1]
        assert again.report_luns(C) == [2]
        assert {name: e.options for name, e in again.exports.items()} == options
        assert again.lun(A, 0).read(A, 0, 1) == block(0x01)
        assert again.lun(A, 1).read(A, 2 * MIB // SECTOR - 1, 1) == block(0x02)
        assert again.lun(C, 2).read(C, 5, 1) == block(0x03)
        assert again.export("ds1").read(ESX, ".lck-1", 0, 1000) == (b"L" * 84, True)
        assert again.export("ds1").lookup(ESX, "", "vm1")[1].kind == "dir"
        # reservations are volatile: gone, so another initiator gets in
        assert all(lun.reservation is None for lun in again.luns.values())
        again.lun(B, 1).write(B, 0, block(0x04))
        assert again.lun(A, 1).read(A, 0, 1) == block(0x04)
        assert again.create_lun(MIB).id == 3  # new LUNs continue the ids
    finally:
        again.close()


def test_a_restart_of_an_empty_array_is_empty(tmp_path: Path):
    StorageArray(tmp_path / "array", started()).close()
    again = StorageArray(tmp_path / "array", started())
    assert (again.luns, again.masking, again.exports) == ({}, {}, {})
    again.close()


# the service


@pytest.fixture
def service(array: StorageArray) -> ArrayService:
    array.create_lun(MIB, (A, B))
    array.create_export("ds1", ExportOptions())
    return ArrayService(array)


def scsi(initiator: str = A, lun: int = 0, **fields) -> pb.ScsiRequest:
    return pb.ScsiRequest(initiator=initiator, lun=lun, **fields)


def nfs(**fields) -> pb.NfsRequest:
    return pb.NfsRequest(**{"client": "esxi-01", "export": "ds1", **fields})


async def test_service_scsi_write_read_round_trip_is_good(service: ArrayService):
    response = await service.Write(scsi(lba=3, data=block(0x61, 2)), None)
    assert response.status.status == GOOD
    response = await service.Read(scsi(B, lba=3, blocks=2), None)
    assert response.status.status == GOOD
    assert response.data == block(0x61, 2)


async def test_service_report_luns_inquiry_read_capacity(service: ArrayService):
    assert list(service.ReportLuns(scsi(A), None).luns) == [0]
    assert list(service.ReportLuns(scsi(C), None).luns) == []
    inquiry = await service.Inquiry(scsi(), None)
    assert (inquiry.vendor, inquiry.serial, inquiry.ats) == (
        "VSIM",
        service.array.luns[0].serial,
        True,
    )
    capacity = await service.ReadCapacity(scsi(), None)
    assert (capacity.last_lba, capacity.block_length) == (MIB // SECTOR - 1, SECTOR)


async def test_service_reservation_conflict_is_in_band(service: ArrayService):
    assert (await service.Reserve(scsi(A), None)).status.status == GOOD
    for call in (
        await service.Write(scsi(B, data=block(0x01)), None),
        await service.Read(scsi(B, blocks=1), None),
        await service.CompareAndWrite(scsi(B, verify=bytes(SECTOR), data=block(0x01)), None),
        await service.Reserve(scsi(B), None),
    ):
        assert call.status.status == RESERVATION_CONFLICT == 0x18
        assert call.status.sense_key == 0
    assert (await service.Release(scsi(B), None)).status.status == GOOD  # a no-op
    assert service.GetArray(pb.GetArrayRequest(), None).luns[0].reserved_by == A
    assert (await service.Read(scsi(B, blocks=1), None)).data == b""
    assert (await service.Read(scsi(A, blocks=1), None)).data == bytes(SECTOR)
    assert (await service.Release(scsi(A), None)).status.status == GOOD
    assert service.GetArray(pb.GetArrayRequest(), None).luns[0].reserved_by == ""


async def test_service_miscompare_is_in_band_with_the_current_data(service: ArrayService):
    current = block(0x0C)
    await service.Write(scsi(lba=9, data=current), None)
    response = await service.CompareAndWrite(
        scsi(B, lba=9, verify=bytes(SECTOR), data=block(1)), None
    )
    assert response.status.status == CHECK_CONDITION
    assert (response.status.sense_key, response.status.asc, response.status.ascq) == (
        MISCOMPARE,
        0x1D,
        0,
    )
    assert response.status.sense_key == 0x0E
    assert response.data == current
    good = await service.CompareAndWrite(scsi(B, lba=9, verify=current, data=block(0x0D)), None)
    assert good.status.status == GOOD
    assert (await service.Read(scsi(A, lba=9, blocks=1), None)).data == block(0x0D)


async def test_service_check_conditions_are_in_band(service: ArrayService):
    out_of_range = await service.Read(scsi(lba=MIB // SECTOR, blocks=1), None)
    assert (out_of_range.status.status, out_of_range.status.sense_key) == (
        CHECK_CONDITION,
        ILLEGAL_REQUEST,
    )
    assert out_of_range.status.asc == 0x21
    unmapped = await service.Read(scsi(C, blocks=1), None)
    assert (unmapped.status.status, unmapped.status.sense_key, unmapped.status.asc) == (
        CHECK_CONDITION,
        ILLEGAL_REQUEST,
        0x25,
    )
    short = await service.Write(scsi(data=b"x" * 100), None)
    assert (short.status.status, short.status.asc) == (CHECK_CONDITION, 0x1A)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.ReportLuns(scsi(""), None),
        lambda s: s.Read(scsi("bad name", blocks=1), None),
        lambda s: s.Write(scsi("x" * 300, data=block(0)), None),
        lambda s: s.Reserve(scsi("a\nb"), None),
        lambda s: s.CreateLun(pb.CreateLunRequest(size_bytes=MIB - SECTOR), None),
        lambda s: s.CreateLun(pb.CreateLunRequest(size_bytes=MIB + 1), None),
        lambda s: s.CreateLun(pb.CreateLunRequest(size_bytes=MAX_LUN_BYTES + SECTOR), None),
        lambda s: s.CreateLun(pb.CreateLunRequest(size_bytes=-MIB), None),
        lambda s: s.MapLun(pb.MapLunRequest(lun=42, initiators=[A]), None),
        lambda s: s.MapLun(pb.MapLunRequest(lun=0, initiators=["two words"]), None),
        lambda s: s.CreateExport(pb.CreateExportRequest(name="Bad/Name"), None),
        lambda s: s.CreateExport(pb.CreateExportRequest(name="ds1"), None),
        lambda s: s.NfsCreate(nfs(name="f", create_mode=3), None),
        lambda s: s.NfsRead(nfs(client="", handle="f", count=1), None),
        lambda s: s.NfsLookup(nfs(client="esx\n01", name="f"), None),
    ],
)
async def test_service_invalid_requests_raise_invalid_argument(service: ArrayService, call):
    luns, exports = dict(service.array.luns), dict(service.array.exports)
    with pytest.raises(InvalidArgument):
        answer = call(service)
        if inspect.isawaitable(answer):  # SCSI and NFS wait out injected latency first
            await answer
    assert service.array.luns == luns and service.array.exports == exports
    assert service.array.masking[0] == {A, B}


async def test_service_nfs_errors_are_in_band(service: ArrayService):
    missing = await service.NfsLookup(nfs(name="nothing"), None)
    assert missing.status == NfsStatus.NOENT == 2
    assert missing.message
    no_export = await service.NfsGetattr(nfs(export="nope", handle=""), None)
    assert no_export.status == 2
    assert (await service.NfsCreate(nfs(name="f", create_mode=1), None)).status == 0
    assert (await service.NfsCreate(nfs(name="f", create_mode=1), None)).status == NfsStatus.EXIST
    assert (
        await service.NfsRead(nfs(handle="../sentinel", count=1), None)
    ).status == NfsStatus.INVAL
    assert (await service.NfsRemove(nfs(name="nothing"), None)).status == NfsStatus.NOENT


async def test_service_nfs_operations(service: ArrayService):
    created = await service.NfsCreate(nfs(name="vm.vmx", create_mode=0), None)
    assert (created.status, created.handle, created.attributes.type) == (0, "vm.vmx", "file")
    written = await service.NfsWrite(
        nfs(handle="vm.vmx", offset=0, data=b"hello", stable=True), None
    )
    assert (written.status, written.count) == (0, 5)
    read = await service.NfsRead(nfs(handle="vm.vmx", offset=1, count=100), None)
    assert (read.data, read.eof, read.count) == (b"ello", True, 4)
    assert (await service.NfsGetattr(nfs(handle="vm.vmx"), None)).attributes.size == 5
    assert (await service.NfsMkdir(nfs(name="vm1"), None)).attributes.type == "dir"
    assert (
        await service.NfsRename(nfs(name="vm.vmx", to_handle="vm1", to_name="a.vmx"), None)
    ).status == 0
    lookup = await service.NfsLookup(nfs(handle="vm1", name="a.vmx"), None)
    assert (lookup.handle, lookup.attributes.size) == ("vm1/a.vmx", 5)
    entries = (await service.NfsReaddir(nfs(handle="vm1"), None)).entries
    assert [(e.name, e.attributes.type, e.attributes.size) for e in entries] == [
        ("a.vmx", "file", 5)
    ]
    assert (await service.NfsRemove(nfs(handle="vm1", name="a.vmx"), None)).status == 0
    assert list((await service.NfsReaddir(nfs(handle="vm1"), None)).entries) == []


async def test_service_nfs_write_at_an_impossible_offset_is_answered_in_band(service: ArrayService):
    await service.NfsCreate(nfs(name="f"), None)
    response = await service.NfsWrite(nfs(handle="f", offset=2**63 - 1, data=b"x"), None)
    assert response.status == NfsStatus.FBIG


async def test_service_management(service: ArrayService):
    default = service.CreateLun(pb.CreateLunRequest(initiators=[C]), None)
    assert (default.id, default.size_bytes, list(default.initiators)) == (1, DEFAULT_LUN_BYTES, [C])
    mapped = service.MapLun(pb.MapLunRequest(lun=1, initiators=[A]), None)
    assert list(mapped.initiators) == sorted([A, C])
    assert mapped.serial == default.serial
    info = service.CreateExport(
        pb.CreateExportRequest(
            name="ro", read_only=True, async_writes=True, root_squash=True, clients=["h1"]
        ),
        None,
    )
    assert (info.read_only, info.async_writes, info.root_squash, list(info.clients)) == (
        True,
        True,
        True,
        ["h1"],
    )
    assert service.array.export("ro").options == ExportOptions(
        rw=False, sync=False, root_squash=True, clients=("h1",)
    )
    plain = service.CreateExport(pb.CreateExportRequest(name="rw"), None)
    assert list(plain.clients) == ["*"] and not plain.read_only and not plain.async_writes
    state = service.GetArray(pb.GetArrayRequest(), None)
    assert [lun.id for lun in state.luns] == [0, 1]
    assert [e.name for e in state.exports] == ["ds1", "ro", "rw"]
    ro = await service.NfsCreate(nfs(client="h1", export="ro", name="f"), None)
    assert ro.status == NfsStatus.ROFS


async def test_service_get_stats_reflects_counters_and_write_sizes(service: ArrayService):
    await service.Write(scsi(A, data=block(1, 2)), None)
    await service.Read(scsi(A, blocks=1), None)
    await service.CompareAndWrite(scsi(A, verify=block(9), data=block(2)), None)  # miscompare
    await service.Reserve(scsi(A), None)
    await service.Write(scsi(B, data=block(3)), None)  # conflict
    await service.NfsCreate(nfs(name=".lck-1"), None)
    for _ in range(3):
        await service.NfsWrite(nfs(handle=".lck-1", data=b"L" * 84), None)
    await service.NfsWrite(nfs(handle=".lck-1", data=b"D" * 4096), None)
    await service.NfsWrite(nfs(client="esxi-02", handle=".lck-1", data=b"M" * 84), None)

    stats = service.GetStats(pb.GetStatsRequest(), None)
    scsi_counters = {(c.lun, c.initiator): dict(c.counters) for c in stats.scsi}
    assert scsi_counters == {
        (0, A): {
            "write": 1,
            "read": 1,
            "compare_and_write": 1,
            "miscompares": 1,
            "reserve": 1,
            "bytes_written": 2 * SECTOR,
            "bytes_read": SECTOR,
        },
        (0, B): {"write": 1, "reservation_conflicts": 1},
    }
    writes = {(w.export, w.client): dict(w.sizes) for w in stats.nfs_writes}
    assert writes == {("ds1", "esxi-01"): {84: 3, 4096: 1}, ("ds1", "esxi-02"): {84: 1}}


# management: LUN ids, unmapping, and who may manage


def test_create_lun_with_an_id_and_refusals_of_taken_or_impossible_ids(array: StorageArray):
    assert array.create_lun(MIB, (A,), lun_id=5).id == 5
    assert array.create_lun(MIB).id == 6  # after the highest
    for bad in (5, -1, 256):
        with pytest.raises(ArrayError, match="LUN 5 exists|0-255"):
            array.create_lun(MIB, lun_id=bad)
    assert sorted(array.luns) == [5, 6]
    assert sorted(lun["id"] for lun in saved(array)["luns"]) == [5, 6]


def test_unmap_lun_hides_it_from_those_initiators_only_and_is_kept(tmp_path: Path):
    array = StorageArray(tmp_path / "array", started())
    array.create_lun(MIB, (A, B, C))
    array.unmap_lun(0, (B, "iqn.never-mapped"))
    assert (array.report_luns(A), array.report_luns(B)) == ([0], [])
    with pytest.raises(ScsiError) as refused:
        array.lun(B, 0)
    assert refused.value.sense == LUN_NOT_SUPPORTED
    with pytest.raises(ArrayError, match="no LUN 3"):
        array.unmap_lun(3, (A,))
    with pytest.raises(ArrayError, match="initiator name"):
        array.unmap_lun(0, ("two words",))
    assert array.masking[0] == {A, C}
    array.close()
    again = StorageArray(tmp_path / "array", started())
    assert again.masking[0] == {A, C}
    again.close()


def test_the_management_key_is_made_once_private_and_kept(tmp_path: Path):
    first = StorageArray(tmp_path / "array", started())
    key = first.management_key
    first.close()
    path = tmp_path / "array" / "management.key"
    assert len(key) >= 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    again = StorageArray(tmp_path / "array", started())
    assert again.management_key == key and again.is_manager(key)
    assert not again.is_manager("") and not again.is_manager(None) and not again.is_manager("x")
    again.close()
    assert StorageArray(tmp_path / "other", started()).management_key != key


@pytest.mark.parametrize(
    "method", ["CreateLun", "MapLun", "UnmapLun", "CreateExport", "GetArray", "GetStats"]
)
def test_management_calls_need_the_management_key(service: ArrayService, method: str):
    """A host names itself as any initiator it likes, so only the key may re-mask."""
    from vsim.faults import NoPermission, NotAuthenticated

    with pytest.raises(NotAuthenticated, match="management key"):
        service.table.authenticate(None, method)
    with pytest.raises(NoPermission):
        service.table.authenticate("a host's guess", method)
    service.table.authenticate(service.array.management_key, method)


@pytest.mark.parametrize("method", ["ReportLuns", "Read", "Write", "Reserve", "NfsWrite"])
def test_scsi_and_nfs_need_no_key(service: ArrayService, method: str):
    service.table.authenticate(None, method)


def test_service_create_lun_with_id_and_name_and_unmap(service: ArrayService):
    made = service.CreateLun(pb.CreateLunRequest(size_bytes=MIB, id=9, name="scratch"), None)
    assert (made.id, made.name, list(made.initiators)) == (9, "scratch", [])
    zero_taken = pb.CreateLunRequest(size_bytes=MIB, id=0)  # id 0 is set, not "unset"
    with pytest.raises(InvalidArgument, match="LUN 0 exists"):
        service.CreateLun(zero_taken, None)
    left = service.UnmapLun(pb.MapLunRequest(lun=0, initiators=[A]), None)
    assert list(left.initiators) == [B]
    with pytest.raises(InvalidArgument, match="no LUN 42"):
        service.UnmapLun(pb.MapLunRequest(lun=42, initiators=[A]), None)
