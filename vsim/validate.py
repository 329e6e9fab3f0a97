"""Input checks shared by every RPC and CLI command. Each raises InvalidArgument with
a message naming the field, what was given and what is allowed."""

from __future__ import annotations

import math
import re
import unicodedata
import uuid as uuid_

from vsim.faults import InvalidArgument

# vSphere limits (vSphere 8 configuration maximums).
MAX_VM_NAME = 80
MAX_VCPUS = 768
MIN_MEMORY_MB = 4
MAX_MEMORY_MB = 24 * 1024 * 1024
MAX_HOST_CPU_CORES = 896
MAX_HOST_MEMORY_MB = 24 * 1024 * 1024
HOST_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
VM_NAME_FORBIDDEN = re.compile(r"[/\\%\x00-\x1f\x7f]")
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
"""Unicode categories no name may hold: controls, format characters (U+202E
right-to-left override, U+FEFF BOM, zero-width spaces), surrogates and line and
paragraph separators. They are invisible or reorder text, so a name holding one
scrambles every table it is shown in and looks like a name it is not."""
RESERVED_NAMES = frozenset({".", ".."})
"""Names of folders on a datastore (this one, its parent): a VM's folder is its name."""


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"


def host_name(value: str, field: str = "name") -> str:
    # Stricter than visible_name: ASCII letters, digits and '-' only.
    if not HOST_NAME.fullmatch(value):
        raise InvalidArgument(
            f"{field} {_shown(value)} is not a valid host name: use 1-63 lower-case "
            "letters, digits and '-', not starting or ending with '-' (e.g. esxi-04)"
        )
    return value


def visible_name(value: str, field: str = "name") -> str:
    """The rule every name the API takes follows, whatever else its kind allows: not
    '.' or '..', and no invisible or text-reordering character (INVISIBLE_CATEGORIES)."""
    if value in RESERVED_NAMES:
        raise InvalidArgument(
            f"{field} {value!r} is not a valid name: '.' and '..' name folders on a "
            "datastore; pick a name with other characters too"
        )
    for position, char in enumerate(value):
        if unicodedata.category(char) in INVISIBLE_CATEGORIES:
            what = unicodedata.name(char, "a control character")
            raise InvalidArgument(
                f"{field} {_shown(value)} has U+{ord(char):04X} ({what}) at position "
                f"{position + 1}: names may not contain control or format characters "
                "or line breaks"
            )
    return value


def vm_name(value: str, field: str = "name") -> str:
    """An inventory name (VMs, resource pools, port groups): vSphere's rules."""
    if not value or len(value) > MAX_VM_NAME:
        raise InvalidArgument(
            f"{field} {_shown(value)} must be 1-{MAX_VM_NAME} characters, got {len(value)}"
        )
    visible_name(value, field)
    if value != value.strip() or VM_NAME_FORBIDDEN.search(value):
        raise InvalidArgument(
            f"{field} {_shown(value)} may not contain '/', '\\', '%', control characters "
            "or leading/trailing spaces"
        )
    return value


def int_range(value: int, low: int, high: int, field: str, unit: str = "") -> int:
    if not low <= value <= high:
        suffix = f" {unit}" if unit else ""
        raise InvalidArgument(f"{field} must be between {low} and {high}{suffix}, got {value}")
    return value


def vcpus(value: int) -> int:
    return int_range(value, 1, MAX_VCPUS, "cpus")


def memory_mb(value: int) -> int:
    int_range(value, MIN_MEMORY_MB, MAX_MEMORY_MB, "memory_mb", "MB")
    if value % 4:
        raise InvalidArgument(f"memory_mb must be a multiple of 4 MB, got {value}")
    return value


def text(value: str, field: str, max_len: int = 256) -> str:
    if len(value) > max_len:
        raise InvalidArgument(f"{field} is {len(value)} characters; at most {max_len}")
    return value


def uuid(value: str, field: str = "uuid") -> uuid_.UUID:
    """The UUID a field holds; InvalidArgument if it is not one."""
    try:
        return uuid_.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgument(f"{field} {_shown(str(value))} is not a UUID") from None


def number_range(value: float, low: float, high: float, field: str, unit: str = "") -> float:
    """A finite number from low to high inclusive (a float's int_range)."""
    if not (math.isfinite(value) and low <= value <= high):
        shown = f" {unit}" if unit else ""
        raise InvalidArgument(f"{field} must be {low:g}-{high:g}{shown}, got {value!r}")
    return value


def positive_number(value: float, field: str) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise InvalidArgument(f"{field} must be a finite number > 0, got {value}")
    return value


def port(value: int, field: str = "--port") -> int:
    """A TCP port to listen on (0: any free one)."""
    if not 0 <= value < 65536:
        raise InvalidArgument(f"{field} must be 0-65535, got {value}")
    return value
