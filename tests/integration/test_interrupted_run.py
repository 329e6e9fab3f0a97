"""A test run stopped by SIGTERM (a CI job cancelled, `kill` of make's pytest) ends
as Ctrl-C ends it: every session fixture is torn down (the compose stack's
`docker-compose down` runs) and no process of the Ray cluster it started is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("probe_interrupted_run.py")


def descendants(pid: int) -> set[int]:
    """Every live process below pid, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def test_sigterm_tears_down_what_the_run_started(tmp_path: Path):
    ready, torn_down = tmp_path / "ready", tmp_path / "torn-down"
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PROBE)],
        cwd=REPO,
        env={**os.environ, "VSIM_PROBE_READY": str(ready), "VSIM_PROBE_TORN_DOWN": str(torn_down)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert wait_until(ready.exists, 180), "the probe session never started Ray"
        ray_processes = descendants(run.pid)
        assert len(ray_processes) >= 2  # at least the GCS server and the raylet
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=120)[0].decode(errors="replace")
    finally:
        if run.poll() is None:
            run.kill()
    assert "KeyboardInterrupt" in output or "Interrupted" in output, output[-2000:]
    assert torn_down.exists(), "the session's fixtures were not torn down"
    left = {pid for pid in ray_processes if alive(pid)}
    assert wait_until(lambda: not any(alive(p) for p in left), 30), (
        f"processes the run started are still running: {sorted(left)}"
    )
