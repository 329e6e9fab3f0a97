"""How the CLI prints: a table for people, exactly one JSON document for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

STATE_WORDS = {
    "CONNECTION_STATE_CONNECTED": "connected",
    "CONNECTION_STATE_DISCONNECTED": "disconnected",
    "CONNECTION_STATE_NOT_RESPONDING": "notResponding",
    "POWER_STATE_POWERED_ON": "poweredOn",
    "POWER_STATE_POWERED_OFF": "poweredOff",
    "TASK_STATE_QUEUED": "queued",
    "TASK_STATE_RUNNING": "running",
    "TASK_STATE_SUCCESS": "success",
    "TASK_STATE_ERROR": "error",
}


def to_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def plain(value: Any) -> Any:
    """A JSON-ready value: messages become dicts (the proto JSON mapping)."""
    if isinstance(value, Message):
        return to_dict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(plain(value), indent=2) + "\n")
    sys.stdout.flush()


def when(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cell(value: Any) -> str:
    text = STATE_WORDS.get(value, value) if isinstance(value, str) else value
    return "" if text is None else str(text)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns, headed by the column names in upper case."""
    grid = [[c.upper() for c in columns]] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in grid
    )


def fields(pairs: dict[str, Any]) -> str:
    """A record as 'key: value' lines."""
    width = max(len(k) for k in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {cell(v)}" for k, v in pairs.items())
