"""Storage I/O Control's congestion threshold, as both sides see it: vCenter checks
the threshold a user configures on a datastore, and each host's disk scheduler
throttles against it.

Never does: schedule I/O (host/storage/disk_scheduler.py does).
"""

from __future__ import annotations

from vsim.faults import InvalidArgument

SIOC_CONGESTION_THRESHOLD_MS = 30.0
"""Default congestion threshold of a datastore (vSphere's manual default)."""
SIOC_THRESHOLD_RANGE_MS = (5.0, 100.0)
"""The manual threshold vSphere accepts (5.1 and later; 10-100 ms before)."""


def congestion_threshold_s(threshold_ms: float) -> float:
    """A congestion threshold in seconds; InvalidArgument outside vSphere's 5-100 ms."""
    low, high = SIOC_THRESHOLD_RANGE_MS
    if isinstance(threshold_ms, bool) or not isinstance(threshold_ms, int | float):
        raise InvalidArgument(f"congestion threshold must be a number of ms, got {threshold_ms!r}")
    if not low <= threshold_ms <= high:
        raise InvalidArgument(
            f"congestion threshold must be between {low:g} and {high:g} ms, got {threshold_ms}"
        )
    return threshold_ms / 1000.0
