"""SCSI status and sense data, as a target answers an initiator.

A command either succeeds (GOOD), is refused because another initiator holds a
SCSI-2 reservation (RESERVATION CONFLICT), or fails with CHECK CONDITION and sense
data (sense key, additional sense code and qualifier). These are answers, not
crashes: the array returns them in-band, as a real target does.
"""

from __future__ import annotations

from dataclasses import dataclass

# Status codes (SAM-5).
GOOD = 0x00
CHECK_CONDITION = 0x02
RESERVATION_CONFLICT = 0x18

# Sense keys (SPC-4).
ILLEGAL_REQUEST = 0x05
MEDIUM_ERROR = 0x03
MISCOMPARE = 0x0E


@dataclass(frozen=True)
class Sense:
    key: int
    asc: int
    ascq: int
    description: str


LBA_OUT_OF_RANGE = Sense(ILLEGAL_REQUEST, 0x21, 0x00, "LOGICAL BLOCK ADDRESS OUT OF RANGE")
INVALID_FIELD_IN_CDB = Sense(ILLEGAL_REQUEST, 0x24, 0x00, "INVALID FIELD IN CDB")
LUN_NOT_SUPPORTED = Sense(ILLEGAL_REQUEST, 0x25, 0x00, "LOGICAL UNIT NOT SUPPORTED")
PARAMETER_LIST_LENGTH_ERROR = Sense(ILLEGAL_REQUEST, 0x1A, 0x00, "PARAMETER LIST LENGTH ERROR")
MISCOMPARE_DURING_VERIFY = Sense(MISCOMPARE, 0x1D, 0x00, "MISCOMPARE DURING VERIFY OPERATION")
UNRECOVERED_READ_ERROR = Sense(MEDIUM_ERROR, 0x11, 0x00, "UNRECOVERED READ ERROR")
WRITE_ERROR = Sense(MEDIUM_ERROR, 0x0C, 0x00, "WRITE ERROR")


class ScsiError(Exception):
    """A command that did not complete GOOD: its status and, for CHECK CONDITION,
    the sense data. COMPARE AND WRITE's miscompare carries the current data."""

    def __init__(
        self, status: int, sense: Sense | None = None, detail: str = "", data: bytes = b""
    ):
        self.status = status
        self.sense = sense
        self.detail = detail
        self.data = data
        what = (
            "RESERVATION CONFLICT"
            if status == RESERVATION_CONFLICT
            else (sense.description if sense else f"status {status:#04x}")
        )
        super().__init__(f"{what}: {detail}" if detail else what)

    @property
    def miscompare(self) -> bool:
        """COMPARE AND WRITE found other data than expected (nothing was written)."""
        return self.sense is not None and self.sense.key == MISCOMPARE


def check_condition(sense: Sense, detail: str = "", data: bytes = b"") -> ScsiError:
    return ScsiError(CHECK_CONDITION, sense, detail, data)


def reservation_conflict(holder: str) -> ScsiError:
    return ScsiError(RESERVATION_CONFLICT, None, f"the LUN is reserved by {holder}")
