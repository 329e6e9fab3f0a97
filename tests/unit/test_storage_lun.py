"""One block LUN, called directly: data round trips and durability, range and length
checks (CHECK CONDITION with the right sense, nothing written), SCSI-2 reservations,
COMPARE AND WRITE, exact counters, and two properties over random command histories:
the LUN behaves as a simple model, and ATS used as a lock never grants two owners."""

from __future__ import annotations

import fcntl
import itertools
import os
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsim.storage.lun import MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BLOCKS, SECTOR, Lun
from vsim.storage.scsi import (
    CHECK_CONDITION,
    INVALID_FIELD_IN_CDB,
    LBA_OUT_OF_RANGE,
    MISCOMPARE,
    MISCOMPARE_DURING_VERIFY,
    PARAMETER_LIST_LENGTH_ERROR,
    RESERVATION_CONFLICT,
    ScsiError,
)

A = "iqn.1998-01.com.vmware:esxi-01"
B = "iqn.1998-01.com.vmware:esxi-02"
C = "iqn.1998-01.com.vmware:esxi-03"
INITIATORS = (A, B, C)

BLOCKS = 4096  # 2 MiB, sparse: room for a maximal (2048-block) transfer
SIZE = BLOCKS * SECTOR


def block(fill: int, count: int = 1) -> bytes:
    return bytes([fill]) * (SECTOR * count)


@pytest.fixture
def lun(tmp_path: Path):
    lun = Lun(0, tmp_path / "lun-0.img", SIZE, "SERIAL0000000000")
    yield lun
    lun.close()


def file_bytes(lun: Lun) -> bytes:
    return lun.path.read_bytes()


# data


def test_a_new_lun_reads_zeros_and_its_file_has_the_lun_size(lun: Lun):
    assert lun.read(A, 0, 8) == bytes(8 * SECTOR)
    assert lun.read(A, BLOCKS - 1, 1) == bytes(SECTOR)
    assert os.path.getsize(lun.path) == SIZE


def test_write_then_read_returns_the_data_and_leaves_neighbours_alone(lun: Lun):
    data = block(0x11) + block(0x22) + os.urandom(SECTOR)
    lun.write(A, 10, data)
    assert lun.read(A, 10, 3) == data
    assert lun.read(B, 11, 1) == block(0x22)
    assert lun.read(A, 9, 1) == bytes(SECTOR)
    assert lun.read(A, 13, 1) == bytes(SECTOR)


def test_write_lands_at_lba_times_512_in_the_file(lun: Lun):
    lun.write(A, 7, block(0x5A))
    raw = file_bytes(lun)
    assert raw[7 * SECTOR : 8 * SECTOR] == block(0x5A)
    assert raw[: 7 * SECTOR] == bytes(7 * SECTOR)


def test_writes_are_durable_a_new_lun_on_the_same_file_reads_them_back(tmp_path: Path):
    path = tmp_path / "lun-3.img"
    first = Lun(3, path, SIZE, "S3")
    first.write(A, 0, block(0x01))
    first.write(A, BLOCKS - 2, block(0x02, 2))
    first.close()

    again = Lun(3, path, SIZE, "S3")
    try:
        assert again.read(B, 0, 1) == block(0x01)
        assert again.read(B, BLOCKS - 2, 2) == block(0x02, 2)
        assert again.read(B, 1, 1) == bytes(SECTOR)
        assert os.path.getsize(path) == SIZE
    finally:
        again.close()


def test_data_is_in_the_file_without_closing_the_lun(lun: Lun):
    """An acknowledged write is in the file at once (another reader sees it)."""
    lun.write(A, 1, block(0x77))
    with open(lun.path, "rb") as f:
        f.seek(SECTOR)
        assert f.read(SECTOR) == block(0x77)


def test_the_lun_file_is_opened_o_dsync(lun: Lun):
    assert fcntl.fcntl(lun._fd, fcntl.F_GETFL) & os.O_DSYNC


def test_a_maximal_transfer_is_accepted(lun: Lun):
    data = block(0x3C, MAX_TRANSFER_BLOCKS)
    lun.write(A, 100, data)
    assert lun.read(A, 100, MAX_TRANSFER_BLOCKS) == data


@pytest.mark.parametrize("size", [0, -512, 1000, 513])
def test_a_lun_size_must_be_a_positive_multiple_of_512(tmp_path: Path, size: int):
    with pytest.raises(ValueError):
        Lun(0, tmp_path / "bad.img", size, "S")


def test_inquiry_and_read_capacity(lun: Lun):
    inquiry = lun.inquiry(A)
    assert (inquiry.vendor, inquiry.serial, inquiry.ats) == ("VSIM", "SERIAL0000000000", True)
    assert lun.read_capacity(A) == (BLOCKS - 1, SECTOR)


# refused commands: CHECK CONDITION, the right sense, nothing written


def expect_check(sense, call) -> ScsiError:
    with pytest.raises(ScsiError) as excinfo:
        call()
    assert excinfo.value.status == CHECK_CONDITION
    assert excinfo.value.sense == sense
    return excinfo.value


@pytest.mark.parametrize(
    ("lba", "blocks", "sense"),
    [
        (BLOCKS, 1, LBA_OUT_OF_RANGE),
        (BLOCKS - 1, 2, LBA_OUT_OF_RANGE),
        (-1, 1, LBA_OUT_OF_RANGE),
        (2**62, 1, LBA_OUT_OF_RANGE),
        (0, 0, INVALID_FIELD_IN_CDB),
        (0, -1, INVALID_FIELD_IN_CDB),
        (0, MAX_TRANSFER_BLOCKS + 1, INVALID_FIELD_IN_CDB),
    ],
)
def test_bad_read_is_check_condition_with_sense(lun: Lun, lba: int, blocks: int, sense):
    expect_check(sense, lambda: lun.read(A, lba, blocks))
    assert lun.stats[A]["bytes_read"] == 0


@pytest.mark.parametrize(
    ("lba", "data", "sense"),
    [
        (BLOCKS, block(0xEE), LBA_OUT_OF_RANGE),
        (BLOCKS - 1, block(0xEE, 2), LBA_OUT_OF_RANGE),
        (BLOCKS - 3, block(0xEE, 8), LBA_OUT_OF_RANGE),
        (-1, block(0xEE), LBA_OUT_OF_RANGE),
        (2**62, block(0xEE), LBA_OUT_OF_RANGE),
        (0, block(0xEE, MAX_TRANSFER_BLOCKS + 1), INVALID_FIELD_IN_CDB),
        (0, b"", PARAMETER_LIST_LENGTH_ERROR),
        (0, b"\xee" * 511, PARAMETER_LIST_LENGTH_ERROR),
        (0, b"\xee" * 513, PARAMETER_LIST_LENGTH_ERROR),
        (BLOCKS - 1, b"\xee" * 1000, PARAMETER_LIST_LENGTH_ERROR),
    ],
)
def test_bad_write_is_check_condition_and_writes_nothing(lun: Lun, lba: int, data: bytes, sense):
    lun.write(A, BLOCKS - 1, block(0xAA))  # the last block holds something to protect
    lun.write(A, 0, block(0xBB))
    before = file_bytes(lun)
    written = lun.stats[A]["bytes_written"]

    expect_check(sense, lambda: lun.write(A, lba, data))

    assert file_bytes(lun) == before
    assert os.path.getsize(lun.path) == SIZE
    assert lun.stats[A]["bytes_written"] == written


@pytest.mark.parametrize(
    ("lba", "verify", "data", "sense"),
    [
        (BLOCKS, bytes(SECTOR), block(0xEE), LBA_OUT_OF_RANGE),
        (BLOCKS - 1, bytes(2 * SECTOR), block(0xEE, 2), LBA_OUT_OF_RANGE),
        (-5, bytes(SECTOR), block(0xEE), LBA_OUT_OF_RANGE),
        (
            0,
            bytes((MAX_COMPARE_AND_WRITE_BLOCKS + 1) * SECTOR),
            block(0xEE, MAX_COMPARE_AND_WRITE_BLOCKS + 1),
            INVALID_FIELD_IN_CDB,
        ),
        (0, bytes(SECTOR), block(0xEE, 2), PARAMETER_LIST_LENGTH_ERROR),
        (0, bytes(2 * SECTOR), block(0xEE), PARAMETER_LIST_LENGTH_ERROR),
        (0, b"", b"", PARAMETER_LIST_LENGTH_ERROR),
        (0, bytes(100), b"\xee" * 100, PARAMETER_LIST_LENGTH_ERROR),
    ],
)
def test_bad_compare_and_write_is_check_condition_and_writes_nothing(
    lun: Lun, lba: int, verify: bytes, data: bytes, sense
):
    lun.write(A, BLOCKS - 1, bytes(SECTOR))
    before = file_bytes(lun)
    expect_check(sense, lambda: lun.compare_and_write(A, lba, verify, data))
    assert file_bytes(lun) == before
    assert os.path.getsize(lun.path) == SIZE
    assert lun.stats[A]["miscompares"] == 0


# COMPARE AND WRITE


def test_compare_and_write_writes_when_the_data_matches(lun: Lun):
    lun.write(A, 5, block(0x01, 2))
    lun.compare_and_write(B, 5, block(0x01, 2), block(0x02, 2))
    assert lun.read(C, 5, 2) == block(0x02, 2)
    assert lun.stats[B]["bytes_written"] == 2 * SECTOR
    assert lun.stats[B]["miscompares"] == 0


def test_a_maximal_compare_and_write_is_accepted(lun: Lun):
    n = MAX_COMPARE_AND_WRITE_BLOCKS
    lun.compare_and_write(A, 0, bytes(n * SECTOR), block(0x09, n))
    assert lun.read(A, 0, n) == block(0x09, n)


def test_miscompare_returns_the_current_data_and_writes_nothing(lun: Lun):
    current = block(0x33) + os.urandom(SECTOR)
    lun.write(A, 20, current)
    error = expect_check(
        MISCOMPARE_DURING_VERIFY,
        lambda: lun.compare_and_write(B, 20, block(0x33, 2), block(0x44, 2)),
    )
    assert error.sense.key == MISCOMPARE
    assert error.data == current
    assert lun.read(A, 20, 2) == current
    assert lun.stats[B]["miscompares"] == 1
    assert lun.stats[B]["bytes_written"] == 0


# SCSI-2 reservations


def test_the_holder_reads_and_writes_while_it_holds_the_reservation(lun: Lun):
    lun.reserve(A)
    lun.write(A, 0, block(0x10))
    assert lun.read(A, 0, 1) == block(0x10)
    lun.compare_and_write(A, 0, block(0x10), block(0x11))
    assert lun.read(A, 0, 1) == block(0x11)
    lun.reserve(A)  # again: still GOOD for the holder
    assert lun.reservation == A


@pytest.mark.parametrize(
    "command",
    [
        lambda lun: lun.read(B, 0, 1),
        lambda lun: lun.write(B, 0, block(0x99)),
        lambda lun: lun.compare_and_write(B, 0, block(0x01), block(0x99)),
        lambda lun: lun.reserve(B),
    ],
    ids=["read", "write", "compare_and_write", "reserve"],
)
def test_another_initiator_gets_reservation_conflict(lun: Lun, command):
    lun.write(A, 0, block(0x01))
    lun.reserve(A)
    before = file_bytes(lun)
    with pytest.raises(ScsiError) as excinfo:
        command(lun)
    assert excinfo.value.status == RESERVATION_CONFLICT
    assert excinfo.value.sense is None
    assert file_bytes(lun) == before
    assert lun.reservation == A
    assert lun.stats[B]["reservation_conflicts"] == 1
    assert lun.stats[B]["bytes_read"] == lun.stats[B]["bytes_written"] == 0


def test_a_conflict_comes_before_the_range_check(lun: Lun):
    lun.reserve(A)
    with pytest.raises(ScsiError) as excinfo:
        lun.write(B, BLOCKS, block(0x01))
    assert excinfo.value.status == RESERVATION_CONFLICT


def test_inquiry_read_capacity_and_release_still_work_for_others(lun: Lun):
    lun.reserve(A)
    assert lun.inquiry(B).serial == lun.serial
    assert lun.read_capacity(B) == (BLOCKS - 1, SECTOR)
    lun.release(B)
    assert lun.stats[B]["reservation_conflicts"] == 0


def test_release_by_a_non_holder_is_a_no_op(lun: Lun):
    lun.reserve(A)
    lun.release(B)
    lun.release(C)
    assert lun.reservation == A
    with pytest.raises(ScsiError) as excinfo:
        lun.write(B, 0, block(0x01))
    assert excinfo.value.status == RESERVATION_CONFLICT
    lun.write(A, 0, block(0x02))
    assert lun.read(A, 0, 1) == block(0x02)


def test_release_by_the_holder_lets_others_in(lun: Lun):
    lun.reserve(A)
    lun.release(A)
    assert lun.reservation is None
    lun.write(B, 0, block(0x05))
    lun.reserve(C)
    assert lun.reservation == C


def test_release_without_any_reservation_is_good(lun: Lun):
    lun.release(A)
    assert lun.reservation is None


def test_reset_clears_the_reservation(lun: Lun):
    lun.reserve(A)
    lun.reset()
    lun.write(B, 0, block(0x06))
    assert lun.read(B, 0, 1) == block(0x06)


# counters


def test_counters_are_exact(lun: Lun):
    lun.inquiry(A)
    lun.read_capacity(A)
    lun.write(A, 0, block(0x01, 3))
    lun.read(A, 0, 2)
    lun.compare_and_write(A, 0, block(0x01), block(0x02))
    with pytest.raises(ScsiError):
        lun.compare_and_write(A, 0, block(0x01), block(0x03))  # miscompare
    with pytest.raises(ScsiError):
        lun.read(A, BLOCKS, 1)  # out of range: counted as a read, no bytes
    lun.reserve(A)
    with pytest.raises(ScsiError):
        lun.read(B, 0, 1)
    with pytest.raises(ScsiError):
        lun.write(B, 0, block(0x01))
    with pytest.raises(ScsiError):
        lun.reserve(B)
    lun.release(B)
    lun.release(A)
    lun.read(B, 1, 1)

    assert dict(lun.stats[A]) == {
        "inquiry": 1,
        "read_capacity": 1,
        "write": 1,
        "read": 2,
        "compare_and_write": 2,
        "miscompares": 1,
        "reserve": 1,
        "release": 1,
        "bytes_written": 3 * SECTOR + SECTOR,
        "bytes_read": 2 * SECTOR,
    }
    assert dict(lun.stats[B]) == {
        "read": 2,
        "write": 1,
        "reserve": 1,
        "release": 1,
        "reservation_conflicts": 3,
        "bytes_read": SECTOR,
    }
    assert set(lun.stats) == {A, B}


# properties over random histories

MODEL_BLOCKS = 4
FILLS = (0x00, 0x01, 0x02)

initiator = st.sampled_from(INITIATORS)
lba = st.integers(0, MODEL_BLOCKS - 1)
fill = st.sampled_from(FILLS)
operation = st.one_of(
    st.tuples(st.just("reserve"), initiator),
    st.tuples(st.just("release"), initiator),
    st.tuples(st.just("read"), initiator, lba),
    st.tuples(st.just("write"), initiator, lba, fill),
    st.tuples(st.just("compare_and_write"), initiator, lba, fill, fill),
)
_files = itertools.count()


def run(lun: Lun, op: tuple) -> tuple[str, bytes]:
    """('good' | 'conflict' | 'miscompare', data read or returned)."""
    kind, who, *args = op
    try:
        if kind == "reserve":
            lun.reserve(who)
        elif kind == "release":
            lun.release(who)
        elif kind == "read":
            return "good", lun.read(who, args[0], 1)
        elif kind == "write":
            lun.write(who, args[0], block(args[1]))
        else:
            lun.compare_and_write(who, args[0], block(args[1]), block(args[2]))
    except ScsiError as e:
        if e.status == RESERVATION_CONFLICT:
            return "conflict", b""
        assert e.status == CHECK_CONDITION and e.sense == MISCOMPARE_DURING_VERIFY, e
        return "miscompare", e.data
    return "good", b""


class Model:
    def __init__(self) -> None:
        self.blocks = {i: bytes(SECTOR) for i in range(MODEL_BLOCKS)}
        self.holder: str | None = None
        self.stats: dict[str, Counter[str]] = {}

    def run(self, op: tuple) -> tuple[str, bytes]:
        kind, who, *args = op
        counters = self.stats.setdefault(who, Counter())
        counters[kind] += 1
        if kind == "release":
            if self.holder == who:
                self.holder = None
            return "good", b""
        if self.holder not in (None, who):
            counters["reservation_conflicts"] += 1
            return "conflict", b""
        if kind == "reserve":
            self.holder = who
        elif kind == "read":
            counters["bytes_read"] += SECTOR
            return "good", self.blocks[args[0]]
        elif kind == "write":
            self.blocks[args[0]] = block(args[1])
            counters["bytes_written"] += SECTOR
        else:
            where, expected, new = args
            if self.blocks[where] != block(expected):
                counters["miscompares"] += 1
                return "miscompare", self.blocks[where]
            self.blocks[where] = block(new)
            counters["bytes_written"] += SECTOR
        return "good", b""


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(operation, max_size=40))
def test_random_histories_match_the_model(tmp_path: Path, ops: list[tuple]):
    lun = Lun(0, tmp_path / f"model-{next(_files)}.img", MODEL_BLOCKS * SECTOR, "M")
    model = Model()
    try:
        for step, op in enumerate(ops):
            assert run(lun, op) == model.run(op), f"step {step}: {op}"
            assert lun.reservation == model.holder
        assert lun.read_capacity("checker") == (MODEL_BLOCKS - 1, SECTOR)
        lun.reset()
        for i in range(MODEL_BLOCKS):
            assert lun.read("checker", i, 1) == model.blocks[i]
        raw = lun.path.read_bytes()
        assert raw == b"".join(model.blocks[i] for i in range(MODEL_BLOCKS))
        for who in INITIATORS:
            assert +lun.stats[who] == +model.stats.get(who, Counter()), who
    finally:
        lun.close()


FREE = bytes(SECTOR)


def owner_sector(who: str) -> bytes:
    return who.encode().ljust(SECTOR, b"\0")


lock_step = st.tuples(st.sampled_from(INITIATORS), st.sampled_from(["acquire", "release"]))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(steps=st.lists(lock_step, max_size=60))
def test_compare_and_write_as_a_lock_never_grants_two_owners(tmp_path: Path, steps):
    """acquire = CAW(verify=free, data=me); release = CAW(verify=me, data=free)."""
    lun = Lun(0, tmp_path / f"lock-{next(_files)}.img", 8 * SECTOR, "L")
    owners: set[str] = set()
    try:
        for who, action in steps:
            before = next(iter(owners), None)
            verify, data = (
                (FREE, owner_sector(who)) if action == "acquire" else (owner_sector(who), FREE)
            )
            try:
                lun.compare_and_write(who, 3, verify, data)
                granted = True
            except ScsiError as e:
                assert e.sense == MISCOMPARE_DURING_VERIFY
                granted = False
                assert e.data == (owner_sector(before) if before else FREE)
            if granted and action == "acquire":
                owners.add(who)
            elif granted:
                owners.discard(who)
            assert len(owners) <= 1, f"two owners at once: {owners}"
            # and the lock is live: free -> acquired; only the owner releases it
            assert granted == (before is None if action == "acquire" else before == who)
            on_disk = lun.read("observer", 3, 1)
            assert on_disk == (owner_sector(next(iter(owners))) if owners else FREE)
    finally:
        lun.close()
