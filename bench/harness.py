"""What every benchmark shares: a local Ray cluster, and one JSON object on stdout
(Ray prints its own warnings on stdout, so they are sent to stderr meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable


def start_ray() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        address="local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
    )


def report(run: Awaitable[dict]) -> None:
    """Runs the benchmark and prints its result as the only line on stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        result = asyncio.run(run)
    print(json.dumps(result))
