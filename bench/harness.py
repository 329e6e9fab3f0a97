"""What every benchmark shares: a local Ray cluster, and one JSON object on stdout
(Ray prints its own warnings on stdout, so they are sent to stderr meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable

from vsim.cluster.up import start_ray

__all__ = ["report", "start_ray"]


def report(run: Awaitable[dict]) -> None:
    """Runs the benchmark and prints its result as the only line on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        result = asyncio.run(run)
    print(json.dumps(result))
