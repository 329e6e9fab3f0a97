"""One local Ray cluster and one vCenter (3 hosts) per test session, on loopback.

Tests that need a vCenter of their own (restart, Ray loss) start one in their own
data dir on the same Ray cluster and stop it themselves.
"""

from __future__ import annotations

import logging
import os
import signal

import pytest
import ray

from vsim.cluster.client import VCenterClient
from vsim.cluster.ray_engine import ray_engines
from vsim.spec import ClusterSpec
from vsim.vcenter.server import RunningVCenter, start_vcenter
from vsim.vcenter.sessions import ADMINISTRATOR


@pytest.fixture(scope="session")
def ray_cluster():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    on_sigterm = signal.getsignal(signal.SIGTERM)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    # Ray's handler exits at once; tests/conftest.py's tears the session down first.
    signal.signal(signal.SIGTERM, on_sigterm)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
async def vcenter(ray_cluster, tmp_path_factory) -> RunningVCenter:
    running = await start_vcenter(
        tmp_path_factory.mktemp("vcenter"), ClusterSpec.default(3), ray_engines(), port=0
    )
    yield running
    await running.stop()


@pytest.fixture
async def client(vcenter: RunningVCenter) -> VCenterClient:
    client = await VCenterClient.connect(vcenter.endpoint, vcenter.thumbprint)
    await client.login(ADMINISTRATOR, vcenter.core.sessions.initial_password())
    yield client
    await client.close()


async def _login(running: RunningVCenter) -> VCenterClient:
    client = await VCenterClient.connect(running.endpoint, running.thumbprint)
    await client.login(ADMINISTRATOR, running.core.sessions.initial_password())
    return client


@pytest.fixture
def login():
    """An administrator client for a vCenter a test started itself."""
    return _login
