"""What every benchmark shares: a local Ray cluster, one JSON object on stdout (Ray
prints its own warnings on stdout, so they are sent to stderr meanwhile), and a
reference measured in the same run. Machines here differ 3-4x in speed, so a figure
is read as a ratio to `reference_s` (a numpy sort of 1 Mi float64s, the best of 5)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable

import numpy as np

from vsim.cluster.up import start_ray

__all__ = ["reference", "report", "start_ray"]


def reference() -> dict:
    """This machine's speed now: seconds to sort 1 Mi seeded float64s, best of 5."""
    values = np.random.default_rng(0).random(1 << 20)
    best = float("inf")
    for _ in range(5):
        began = time.perf_counter()
        np.sort(values)
        best = min(best, time.perf_counter() - began)
    return {"reference": "numpy sort of 1 Mi float64 (best of 5)", "reference_s": round(best, 5)}


def report(run: Awaitable[dict]) -> None:
    """Runs the benchmark and prints its result, with the reference measured before
    and after it, as the only line on stdout."""
    before = reference()
    with contextlib.redirect_stdout(sys.stderr):
        result = asyncio.run(run)
    after = reference()
    print(json.dumps(result | before | {"reference_after_s": after["reference_s"]}))
