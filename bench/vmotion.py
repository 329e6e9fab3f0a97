"""vMotion benchmark, part (a): the in-process pre-copy of a 64 GiB VM with 16 GiB
touched whose guest dirties 100 MB/s, over a 10 Gb/s link, on the virtual clock.

Reports the wall seconds of the pre-copy (issue 14's bar: <= 0.25 s) with the pages
only fingerprinted and handed to a sink, and again with a destination host's memory
manager receiving them into machine pages; and the simulated figures (rounds, stun).

Prints one JSON object. Run with `python bench/vmotion.py`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from harness import reference

from vsim.clock import SimClock
from vsim.guest_workload import GuestWorkload
from vsim.host.kernel.memory.memsched import MemoryManager
from vsim.host.kernel.memory.pmap import PAGES_PER_MB
from vsim.host.vm.vmotion import PreCopySettings, precopy
from vsim.memory_settings import MemorySettings
from vsim.virtual_time import run

VM_MB = 64 * 1024
HOST_MB = 2 * VM_MB
UUID = "4c4c4544-0000-0000-0000-0000000000b1"


def source(directory: Path, dirty_mb_s: float) -> MemoryManager:
    memory = MemoryManager(
        HOST_MB, SimClock(), directory / "src", MemorySettings(page_sharing=False)
    )
    workload = GuestWorkload(
        working_set_pct=10, boot_touch_pct=25, dirty_rate=dirty_mb_s * PAGES_PER_MB, touch_rate=0
    )
    memory.power_on("big", UUID, VM_MB, "", None, workload)
    return memory


async def migrate(directory: Path, dirty_mb_s: float, into_destination: bool) -> dict:
    (directory / "src").mkdir()
    memory = source(directory, dirty_mb_s)
    touched_mb = len(memory.touched_pages("big")) / PAGES_PER_MB
    destination = None
    if into_destination:
        (directory / "dst").mkdir()
        destination = MemoryManager(
            HOST_MB, memory.clock, directory / "dst", MemorySettings(page_sharing=False)
        )
        destination.power_on("big", UUID, VM_MB, "", arriving=True)

    async def send(ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        if destination is not None:
            destination.receive("big", ppns, fingerprints)

    began = time.perf_counter()
    result = await precopy(memory, "big", memory.clock, send, PreCopySettings(link_gbps=10))
    wall = time.perf_counter() - began
    return {
        "into": "destination memory manager" if into_destination else "sink",
        "wall_s": round(wall, 4),
        "touched_mb": round(touched_mb),
        "rounds": len(result.rounds),
        "memory_sent_mb": round(result.memory_sent_bytes / 2**20),
        "pages_resent": result.pages_resent,
        "sdps": result.sdps,
        "simulated_precopy_s": round(result.precopy_s, 3),
        "simulated_stun_ms": round(result.stun_send_s * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dirty-mb-s", type=float, default=100.0)
    args = parser.parse_args()
    before = reference()
    runs = []
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    for into in (False, True):
        with tempfile.TemporaryDirectory(dir=shm) as d:
            runs.append(run(migrate(Path(d), args.dirty_mb_s, into)))
    after = reference()
    result = {
        "precopy_64_gib_vm": runs,
        "dirty_mb_s": args.dirty_mb_s,
        "bar_wall_s": 0.25,
    }
    print(json.dumps(result | before | {"reference_after_s": after["reference_s"]}))


if __name__ == "__main__":
    main()
