"""One block LUN: a sparse file of 512-byte sectors, with SCSI-2 reservations and
COMPARE AND WRITE (ATS).

Writes are acknowledged only once durable (the file is opened O_DSYNC). While one
initiator holds the reservation, every other initiator's media access and RESERVE
gets RESERVATION CONFLICT; INQUIRY, READ CAPACITY and RELEASE stay allowed, as SPC-2
lists them. COMPARE AND WRITE is atomic: the array serves one command at a time per
LUN, and a miscompare returns the data that is there. Reservations are volatile: an
array restart clears them, as a power cycle of a real target does.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from vsim.storage.scsi import (
    INVALID_FIELD_IN_CDB,
    LBA_OUT_OF_RANGE,
    MISCOMPARE_DURING_VERIFY,
    PARAMETER_LIST_LENGTH_ERROR,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    check_condition,
    reservation_conflict,
)

SECTOR = 512
MAX_TRANSFER_BLOCKS = 2048
"""The most blocks one READ or WRITE moves (1 MiB), as the target's block limits page says."""
MAX_COMPARE_AND_WRITE_BLOCKS = 255


@dataclass(frozen=True)
class Inquiry:
    vendor: str
    product: str
    serial: str
    ats: bool
    """The target supports COMPARE AND WRITE (VAAI ATS)."""


class Lun:
    def __init__(self, lun_id: int, path: Path, size_bytes: int, serial: str) -> None:
        if size_bytes <= 0 or size_bytes % SECTOR:
            raise ValueError(f"a LUN's size must be a positive multiple of {SECTOR} bytes")
        self.id = lun_id
        self.path = path
        self.size_bytes = size_bytes
        self.serial = serial
        self.reservation: str | None = None
        self.stats: defaultdict[str, Counter[str]] = defaultdict(Counter)
        """initiator -> counters: one per command, reservation_conflicts, miscompares,
        bytes_read, bytes_written."""
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_DSYNC, 0o600)
        try:
            if new or os.fstat(self._fd).st_size < size_bytes:
                os.ftruncate(self._fd, size_bytes)  # sparse: blocks appear as written
        except OSError:
            self.close()
            if new:
                path.unlink(missing_ok=True)
            raise

    @property
    def blocks(self) -> int:
        return self.size_bytes // SECTOR

    def reopen(self) -> None:
        """The array program restarted: the file is opened again, the reservation
        and the counters (volatile state) are gone."""
        self.close()
        self._fd = os.open(self.path, os.O_RDWR | os.O_DSYNC)
        self.reservation = None
        self.stats.clear()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # commands

    def inquiry(self, initiator: str) -> Inquiry:
        self._count(initiator, "inquiry")
        return Inquiry("VSIM", "Virtual LUN", self.serial, ats=True)

    def read_capacity(self, initiator: str) -> tuple[int, int]:
        """(last LBA, block length), as READ CAPACITY (16) answers."""
        self._count(initiator, "read_capacity")
        return self.blocks - 1, SECTOR

    def read(self, initiator: str, lba: int, blocks: int) -> bytes:
        self._count(initiator, "read")
        self._media_access(initiator)
        self._check_range(lba, blocks, MAX_TRANSFER_BLOCKS)
        try:
            data = os.pread(self._fd, blocks * SECTOR, lba * SECTOR)
        except OSError as e:
            raise check_condition(UNRECOVERED_READ_ERROR, e.strerror or "") from None
        self.stats[initiator]["bytes_read"] += len(data)
        return data

    def write(self, initiator: str, lba: int, data: bytes) -> None:
        self._count(initiator, "write")
        self._media_access(initiator)
        blocks = self._blocks_of(data)
        self._check_range(lba, blocks, MAX_TRANSFER_BLOCKS)
        self._pwrite(data, lba)
        self.stats[initiator]["bytes_written"] += len(data)

    def compare_and_write(self, initiator: str, lba: int, verify: bytes, data: bytes) -> None:
        """Writes data only if the blocks at lba hold verify; else MISCOMPARE with the
        current data."""
        self._count(initiator, "compare_and_write")
        self._media_access(initiator)
        blocks = self._blocks_of(verify)
        if len(data) != len(verify):
            raise check_condition(
                PARAMETER_LIST_LENGTH_ERROR,
                f"verify and write data differ in length ({len(verify)} and {len(data)} bytes)",
            )
        self._check_range(lba, blocks, MAX_COMPARE_AND_WRITE_BLOCKS)
        current = os.pread(self._fd, len(verify), lba * SECTOR)
        if current != verify:
            self.stats[initiator]["miscompares"] += 1
            raise check_condition(MISCOMPARE_DURING_VERIFY, f"at LBA {lba}", current)
        self._pwrite(data, lba)
        self.stats[initiator]["bytes_written"] += len(data)

    def reserve(self, initiator: str) -> None:
        self._count(initiator, "reserve")
        if self.reservation not in (None, initiator):
            self._conflict(initiator)
        self.reservation = initiator

    def release(self, initiator: str) -> None:
        """Releases the initiator's reservation; from any other initiator it does
        nothing (and succeeds), as SPC-2 says."""
        self._count(initiator, "release")
        if self.reservation == initiator:
            self.reservation = None

    def reset(self, initiator: str = "") -> None:
        """A LUN reset (LOGICAL UNIT RESET task management): the reservation is gone,
        whoever held it. Hosts send one when a reservation has blocked them far longer
        than any metadata update takes: its holder is presumed dead."""
        if initiator:
            self._count(initiator, "lun_reset")
        self.reservation = None

    # checks

    def _count(self, initiator: str, command: str) -> None:
        self.stats[initiator][command] += 1

    def _media_access(self, initiator: str) -> None:
        if self.reservation not in (None, initiator):
            self._conflict(initiator)

    def _conflict(self, initiator: str) -> None:
        self.stats[initiator]["reservation_conflicts"] += 1
        raise reservation_conflict(self.reservation or "")

    def _blocks_of(self, data: bytes) -> int:
        if not data or len(data) % SECTOR:
            raise check_condition(
                PARAMETER_LIST_LENGTH_ERROR,
                f"data must be a whole number of {SECTOR}-byte blocks, got {len(data)} bytes",
            )
        return len(data) // SECTOR

    def _check_range(self, lba: int, blocks: int, most: int) -> None:
        if not 0 < blocks <= most:
            raise check_condition(
                INVALID_FIELD_IN_CDB, f"transfer length must be 1-{most} blocks, got {blocks}"
            )
        if lba < 0 or lba + blocks > self.blocks:
            raise check_condition(
                LBA_OUT_OF_RANGE,
                f"blocks {lba}..{lba + blocks - 1} are outside 0..{self.blocks - 1}",
            )

    def _pwrite(self, data: bytes, lba: int) -> None:
        try:
            written = os.pwrite(self._fd, data, lba * SECTOR)
        except OSError as e:  # no space for a sparse block, an I/O error: never acked
            raise check_condition(WRITE_ERROR, e.strerror or "") from None
        if written != len(data):
            raise check_condition(WRITE_ERROR, f"short write: {written} of {len(data)} bytes")
