"""Not collected by the suite (no test_ prefix): the session that
test_interrupted_run.py starts and stops with SIGTERM. It starts the session's Ray
cluster and a session fixture standing for the compose stack (its teardown leaves a
file, as the stack's `docker-compose down` would remove it), says it is ready in the
file VSIM_PROBE_READY names, and waits to be stopped."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def stack():
    yield
    Path(os.environ["VSIM_PROBE_TORN_DOWN"]).write_text("down")


def test_waits_to_be_stopped(ray_cluster, stack):
    Path(os.environ["VSIM_PROBE_READY"]).write_text(str(os.getpid()))
    time.sleep(600)
