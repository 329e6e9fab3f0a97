"""The docker-compose deployment, started once per session under a project name of
its own, and removed with its volumes at the end, also when a test fails.

Skipped, with the reason printed, where no Docker engine answers; with
VSIM_REQUIRE_DOCKER=1 (as .ci/run sets) that is a failure instead.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from compose_v2 import compose_v2

from vsim.cluster.client import VCenterClient
from vsim.cluster.image import ensure_image
from vsim.vcenter.sessions import ADMINISTRATOR

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT = 240.0


def docker_answers() -> str:
    """Why Docker cannot be used here ("" if it can)."""
    if shutil.which("docker") is None or shutil.which("docker-compose") is None:
        return "docker or docker-compose is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    return "" if info.returncode == 0 else f"no Docker engine answers: {info.stderr.strip()[:200]}"


def free_net() -> str:
    """A 10.x prefix whose /16 no Docker network and no local address uses, for the
    stack's three /24s: a user's own stack on the default 172.30 may be running."""
    used = []
    for net in subprocess.run(
        ["docker", "network", "ls", "-q"], capture_output=True, text=True
    ).stdout.split():
        subnets = subprocess.run(
            [
                "docker",
                "network",
                "inspect",
                "-f",
                "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
                net,
            ],
            capture_output=True,
            text=True,
        ).stdout.split()
        used += [ipaddress.ip_network(s, strict=False) for s in subnets if ":" not in s]
    for line in subprocess.run(
        ["ip", "-o", "-4", "addr"], capture_output=True, text=True
    ).stdout.splitlines():
        used.append(ipaddress.ip_interface(line.split()[3]).network)
    for b in range(200, 255):
        candidate = ipaddress.ip_network(f"10.{b}.0.0/16")
        if not any(candidate.overlaps(u) for u in used):
            return f"10.{b}"
    raise RuntimeError("no free 10.200-254.0.0/16 for the test stack's networks")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Compose:
    """The stack under one project name, driven by Debian's docker-compose 1.29, or by
    Compose v2 with VSIM_COMPOSE=v2 (which names containers project-service-1)."""

    def __init__(self, project: str, port: int, net: str) -> None:
        self.project = project
        self.port = port
        self.net = net
        """The networks' prefix: management is {net}.1.0/24, storage .2, vMotion .3."""
        self.env = {**os.environ, "VSIM_VCENTER_PORT": str(port), "VSIM_NET": net}
        self.v2 = os.environ.get("VSIM_COMPOSE") == "v2"
        self.tool = str(compose_v2()) if self.v2 else "docker-compose"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = [self.tool, "-p", self.project, "-f", str(REPO / "docker-compose.yml")]
        return subprocess.run(
            [*argv, *args], env=self.env, capture_output=True, text=True, check=check
        )

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1" if self.v2 else f"{self.project}_{service}_1"

    def network(self, name: str) -> str:
        return f"{self.project}_{name}"

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)

    def read(self, service: str, path: str) -> str:
        return self.docker("exec", self.container(service), "cat", path).stdout

    def wait_healthy(self, service: str, timeout: float = UP_TIMEOUT) -> None:
        """Waits for the service's health check to pass; fails with the stack's logs."""
        deadline = time.monotonic() + timeout
        while (
            "healthy"
            != self.docker(
                "inspect", "-f", "{{.State.Health.Status}}", self.container(service), check=False
            ).stdout.strip()
        ):
            if time.monotonic() > deadline:
                logs = self.run("logs", "--tail=50", check=False).stdout
                pytest.fail(f"{service} was not healthy within {timeout:.0f} s:\n{logs}")
            time.sleep(1)

    def logs(self, *services: str, tail: int = 40) -> str:
        """The services' last log lines, for a failure's message."""
        return self.run("logs", "--no-color", f"--tail={tail}", *services, check=False).stdout

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def client(self) -> VCenterClient:
        client = await VCenterClient.connect(self.endpoint, None)
        await client.login(
            ADMINISTRATOR, self.read("vcenter", "/data/vcenter/initial-admin-password")
        )
        return client


def unless(reason: str) -> None:
    """Skips for reason (if any), or fails where Docker is required."""
    if reason:
        if os.environ.get("VSIM_REQUIRE_DOCKER") == "1":
            pytest.fail(f"VSIM_REQUIRE_DOCKER=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_tools() -> None:
    unless("" if shutil.which("docker-compose") else "docker-compose is not installed")


@pytest.fixture(scope="session")
def compose() -> Compose:
    unless(docker_answers())
    ensure_image()
    stack = Compose(f"vsimtest{os.getpid()}", free_port(), free_net())
    try:
        stack.run("up", "-d")
        stack.wait_healthy("vcenter")
        yield stack
    finally:
        stack.run("down", "-v", "--remove-orphans", check=False)


@pytest.fixture
async def client(compose: Compose):
    client = await compose.client()
    yield client
    await client.close()


@pytest.fixture
def wait_until():
    return poll_until


def poll_until(predicate, timeout: float, step: float = 0.5):
    """Polls an async predicate until it returns a truthy value (returned)."""

    async def poll():
        deadline = time.monotonic() + timeout
        while True:
            value = await predicate()
            if value or time.monotonic() > deadline:
                return value
            await asyncio.sleep(step)

    return poll()
