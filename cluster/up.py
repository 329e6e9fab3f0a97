"""`vsim up` and `vsim down`: one local cluster (Ray, vCenter, hosts) per user config.

In the foreground, `vsim up` starts a local Ray cluster, the vCenter (which boots the
spec's hosts as actors), logs in as the administrator to record a session and the
pinned thumbprint in the user's config, prints how to reach it, and serves until
SIGINT/SIGTERM; then it stops vCenter and Ray. `--detach` runs that same program as
a daemon in its own session and returns once it is ready. `vsim down` signals it,
waits, and kills whatever it left behind (its descendants, its session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vsim.clock import WallClock
from vsim.cluster import processes
from vsim.cluster.array_setup import prepare_array
from vsim.cluster.client import VCenterClient
from vsim.cluster.config import Settings, UserConfig
from vsim.cluster.spec import ClusterSpec
from vsim.storage.server import start_array
from vsim.tls import write_private
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.sessions import ADMINISTRATOR

READY_TIMEOUT = 600.0
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class UpOptions:
    hosts: int
    port: int
    data_dir: Path
    bind: str
    clock_speed: float


def client_endpoint(bind: str, port: int) -> str:
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
    return f"{host}:{port}"


def start_ray() -> None:
    """A local Ray cluster for this process (vsim up, the benchmarks)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        address="local",
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        configure_logging=True,
    )


async def serve(options: UpOptions, config: UserConfig, on_ready) -> None:
    """Runs the cluster until SIGINT/SIGTERM; calls on_ready(info) once it serves.
    Ray prints its own warnings on stdout; they go to stderr, so that stdout carries
    only what on_ready prints (with -o json, one JSON document)."""
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        await _serve(options, config, lambda info: _with_stdout(out, on_ready, info))


def _with_stdout(out, function, *args) -> None:
    with contextlib.redirect_stdout(out):
        function(*args)


async def _serve(options: UpOptions, config: UserConfig, on_ready) -> None:
    import ray

    from vsim.vcenter.server import start_vcenter

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start_ray()
    array = await start_array(options.data_dir / "array", 0, "127.0.0.1")
    try:
        spec = prepare_array(array.array, ClusterSpec.default(options.hosts))
        running = await start_vcenter(
            options.data_dir,
            spec,
            port=options.port,
            bind=options.bind,
            clock=WallClock(options.clock_speed),
            array=ArrayRef(array.endpoint, array.identity.thumbprint, array.array.management_key),
        )
        try:
            endpoint = client_endpoint(options.bind, int(running.endpoint.rsplit(":", 1)[1]))
            info = await _record_session(running, endpoint, config)
            info["array"] = array.endpoint
            info["datastores"] = [d.name for d in running.core.inventory.datastores()]
            config.save_up_state(
                {
                    "pid": os.getpid(),
                    "started": processes.identity(os.getpid())[1],
                    "data_dir": str(options.data_dir),
                    "endpoint": endpoint,
                    "thumbprint": running.thumbprint,
                }
            )
            on_ready(info)
            await stop.wait()
            print("Stopping vCenter and the hosts...", file=sys.stderr, flush=True)
        finally:
            await running.stop()
    finally:
        await array.stop()
        ray.shutdown()
        config.clear_up_state(os.getpid())
    print("Stopped.", file=sys.stderr, flush=True)


async def _record_session(running, endpoint: str, config: UserConfig) -> dict:
    """Logs in through the API as the administrator and records it in the config."""
    password = running.core.sessions.initial_password()
    config.pin(endpoint, running.thumbprint)
    session = ""
    if password is not None:
        async with await VCenterClient.connect(endpoint, running.thumbprint) as client:
            session = await client.login(ADMINISTRATOR, password)
    config.save_settings(Settings(server=endpoint, user=ADMINISTRATOR, session=session))
    hosts = [h.name for h in running.core.inventory.hosts()]
    return {
        "endpoint": endpoint,
        "thumbprint": running.thumbprint,
        "user": ADMINISTRATOR,
        "password": password
        or f"(unknown: {running.core.data_dir}/initial-admin-password was removed)",
        "hosts": hosts,
        "data_dir": str(running.core.data_dir.parent),
        "pid": os.getpid(),
    }


def recorded_process(config: UserConfig) -> processes.Proc | None:
    """The `vsim up` process the config records, if it still runs (the same process,
    not another that got its pid)."""
    state = config.up_state()
    if state is None:
        return None
    try:
        proc = (int(state["pid"]), int(state["started"]))
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{config.dir / 'up.json'} is damaged; remove it") from None
    if processes.alive(proc):
        return proc
    config.clear_up_state(proc[0])
    return None


def running_pid(config: UserConfig) -> int | None:
    proc = recorded_process(config)
    return proc[0] if proc else None


def detach(argv: list[str], options: UpOptions, config: UserConfig) -> dict:
    """Starts `vsim up` as a daemon in its own session; returns its ready info."""
    options.data_dir.mkdir(parents=True, exist_ok=True)
    ready = options.data_dir / f".ready-{os.getpid()}.json"
    ready.unlink(missing_ok=True)
    log_path = options.data_dir / "vsim-up.log"
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        child = subprocess.Popen(
            [sys.executable, "-m", "vsim.cluster.cli", *argv, "--ready-file", str(ready)],
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "VSIM_CONFIG": str(config.dir)},
        )
    try:
        _wait_ready(child, ready, log_path)
        info = json.loads(ready.read_text())
    except BaseException:
        # Not ready (or interrupted): take down whatever the daemon started.
        processes.kill(processes.in_session(child.pid))
        child.wait()
        raise
    finally:
        ready.unlink(missing_ok=True)
    info["log"] = str(log_path)
    return info


def _wait_ready(child: subprocess.Popen, ready: Path, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not ready.exists():
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"vsim up exited with status {child.returncode} before it was ready; "
                f"last lines of {log_path}:\n" + "\n".join(tail)
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"vsim up was not ready after {READY_TIMEOUT:.0f} s; see {log_path}")
        time.sleep(0.2)


def write_ready(path: Path, info: dict) -> None:
    """Hands the ready info (the administrator password among it) to the parent,
    readable by this user only."""
    write_private(path, json.dumps(info).encode())


def down(config: UserConfig, timeout: float = STOP_TIMEOUT) -> dict:
    """Stops the cluster this config's `vsim up` runs; kills what outlives it."""
    state = config.up_state()
    if state is None:
        return {"stopped": False, "reason": "no cluster is running for this config"}
    proc = recorded_process(config)
    if proc is None:
        return {"stopped": False, "reason": f"the cluster's process {state.get('pid')} is gone"}
    pid = proc[0]
    procs = processes.descendants(pid) + processes.in_session(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    left = processes.wait_gone([p for p in procs if p[0] == pid], timeout)
    # Whatever the cluster started and did not stop goes now.
    stragglers = [p for p in procs if processes.alive(p)] + processes.in_session(pid)
    processes.kill(stragglers)
    remaining = processes.wait_gone(stragglers, 10)
    config.clear_up_state(pid)
    return {
        "stopped": True,
        "pid": pid,
        "graceful": not left,
        "killed": len(stragglers),
        "remaining": len(remaining),
    }
