"""docker-compose benchmark: the image build, cold (no vsim image on the machine)
and cached (nothing changed), and the time from `docker-compose up` to a vCenter
that answers with all four hosts connected.

Prints one JSON object. Run with `python bench/compose.py` (not while the compose
tests run: the cold build removes this project's images first).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness import reference

from vsim.cluster.client import VCenterClient
from vsim.cluster.image import BASE, IMAGE, ensure_image
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.sessions import ADMINISTRATOR

REPO = Path(__file__).resolve().parent.parent
PROJECT = f"vsimbench{os.getpid()}"


def remove_images() -> None:
    for repository in (IMAGE, BASE):
        listed = subprocess.run(
            ["docker", "images", "-q", repository], capture_output=True, text=True, check=True
        ).stdout.split()
        if listed:
            subprocess.run(["docker", "rmi", "-f", *set(listed)], capture_output=True, check=True)


def compose(*args: str, port: int) -> None:
    env = {**os.environ, "VSIM_VCENTER_PORT": str(port)}
    argv = ["docker-compose", "-p", PROJECT, "-f", str(REPO / "docker-compose.yml"), *args]
    subprocess.run(argv, env=env, capture_output=True, check=True)


async def all_connected(port: int, timeout: float = 300.0) -> float:
    """Seconds until vCenter answers with every host connected."""
    started = time.monotonic()
    container = f"{PROJECT}_vcenter_1"
    while time.monotonic() - started < timeout:
        try:
            password = subprocess.run(
                ["docker", "exec", container, "cat", "/data/vcenter/initial-admin-password"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            client = await VCenterClient.connect(f"127.0.0.1:{port}", None)
            try:
                await client.login(ADMINISTRATOR, password)
                hosts = await client.hosts()
            finally:
                await client.close()
            if len(hosts) == 4 and all(
                h.connection_state == pb.CONNECTION_STATE_CONNECTED for h in hosts
            ):
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"the cluster did not come up within {timeout:.0f} s")


def main() -> None:
    remove_images()
    started = time.monotonic()
    tag, steps = ensure_image()
    cold = time.monotonic() - started
    started = time.monotonic()
    ensure_image()
    cached = time.monotonic() - started
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = reference()
    started = time.monotonic()
    try:
        compose("up", "-d", port=port)
        asyncio.run(all_connected(port))
        up = time.monotonic() - started
    finally:
        compose("down", "-v", "--remove-orphans", port=port)
    print(
        json.dumps(
            {
                "image": tag,
                "image_build_cold_s": round(cold, 1),
                "image_build_steps_s": steps,
                "image_build_cached_s": round(cached, 2),
                "compose_up_to_all_hosts_connected_s": round(up, 1),
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
            }
            | before
        )
    )


if __name__ == "__main__":
    main()
