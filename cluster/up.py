"""`vsim up` and `vsim down`: one local cluster (Ray, vCenter, hosts) per user config.

In the foreground, `vsim up` checks its options, locks its data dir (one cluster per
data dir), starts a local Ray cluster bound to the address it serves on, the vCenter
(which boots the spec's hosts as actors and powers on the VMs the last stop powered
off), logs in as the administrator to record a session and the pinned thumbprint in
the user's config, prints how to reach it, and serves until SIGINT or SIGTERM. Either
signal runs the same orderly stop: every running VM powered off cleanly (and
remembered for the next start), vCenter, the array and Ray stopped, and a stop report
written for `vsim down`. `--detach` runs that same program as a daemon in its own
session, echoing its progress, and returns once it is ready. `vsim down` signals it,
waits, and stops whatever it left behind: its session's processes and its Ray
session's, also when the daemon itself was killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import json
import logging
import os
import signal
import socket
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
from vsim.faults import InvalidArgument
from vsim.spec import ClusterSpec
from vsim.storage.server import start_array
from vsim.tls import write_private
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.sessions import ADMINISTRATOR

READY_TIMEOUT = 600.0
STOP_TIMEOUT = 120.0
"""How long `vsim down` waits for the orderly stop (VMs powered off) before it kills."""
DRAIN_TIMEOUT = 20.0
"""How long the orderly stop lets tasks under way finish."""
POWER_DOWN_TIMEOUT = 60.0
"""Real seconds it waits for the VMs' power-offs: the whole stop fits in STOP_TIMEOUT."""
RUN_ENV = "VSIM_UP_RUN"
MAX_HOSTS = 96
"""A vSphere 8 cluster's most hosts: `vsim up` makes one cluster."""
LOCK_FILE = ".vsim-up.lock"
PROGRESS = "vsim up: "
"""How the daemon's progress lines start in its log, so `--detach` can echo them."""


@dataclass(frozen=True)
class UpOptions:
    hosts: int
    port: int
    data_dir: Path
    bind: str
    clock_speed: float


def client_endpoint(bind: str, port: int) -> str:
    host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def check_options(options: UpOptions) -> None:
    """What `vsim up` can know is wrong before it starts anything (InvalidArgument)."""
    if not 1 <= options.hosts <= MAX_HOSTS:
        raise InvalidArgument(
            f"--hosts must be between 1 and {MAX_HOSTS} (a vSphere 8 cluster's most), "
            f"not {options.hosts}"
        )
    try:
        address = ipaddress.ip_address(options.bind)
    except ValueError:
        raise InvalidArgument(
            f"--bind must be an IP address of this machine (127.0.0.1, 0.0.0.0, ...), "
            f"not {options.bind!r}"
        ) from None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As the gRPC server will: a port in TIME_WAIT is free, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((options.bind, options.port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise InvalidArgument(
                    f"port {options.port} on {options.bind} is in use; stop what uses it "
                    "or choose another --port"
                ) from None
            if e.errno == errno.EADDRNOTAVAIL:
                raise InvalidArgument(
                    f"--bind {options.bind} is not an address of this machine"
                ) from None
            raise InvalidArgument(
                f"cannot listen on {options.bind} port {options.port}: {e.strerror}"
            ) from None


def start_ray() -> str:
    """A local Ray cluster for this process (vsim up, the benchmarks), every one of
    its servers on loopback (Ray then takes 127.0.0.1 as the node's address: the
    hosts, the array and Ray are all on this machine); returns its session
    directory."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Read by Ray when it is imported, and by the processes it starts.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported already
    ray.init(
        address="local",
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
        configure_logging=True,
        _node_ip_address="127.0.0.1",
    )
    return ray_session_dir()


def ray_session_dir() -> str:
    """The running Ray session's directory: every process Ray starts names it."""
    from ray._private import worker

    node = worker._global_node
    return node.get_session_dir_path() if node is not None else ""


class DataDirLock:
    """One `vsim up` per data dir: an exclusive flock held while the cluster runs. The
    file also names the holder and its Ray session, so a later start or `vsim down`
    can find what a killed one left."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> dict | None:
        """Takes the lock; returns what the previous holder recorded (None if none).
        InvalidArgument while another `vsim up` holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_json(self.path) or {}
            os.close(fd)
            raise InvalidArgument(
                f"{self.path.parent} is in use by another vsim up (pid "
                f"{holder.get('pid', '?')}); stop it with `vsim down` or choose another "
                "--data-dir"
            ) from None
        self._fd = fd
        return _read_json(self.path)

    def record(self, state: dict) -> None:
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(state).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def check_free(self) -> None:
        """InvalidArgument if another `vsim up` holds the data dir (takes nothing)."""
        self.acquire()
        self.release()


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def leftovers(state: dict) -> list[processes.Proc]:
    """What a `vsim up` run left running, never the caller itself: this user's
    processes that carry its run id in their environment, and those with a file
    open in its Ray session's directory (a process that retitles itself, as Ray's
    workers and agents do, can overwrite what /proc shows of its environment; they
    all keep their logs open there). Nothing for a run that stopped in order."""
    run, session = state.get("run"), state.get("ray_session")
    found = set()
    if isinstance(run, str) and run:
        found.update(processes.with_environment(RUN_ENV, run))
    if isinstance(session, str) and session.startswith("/") and session.count("/") > 2:
        found.update(processes.with_open_file_under(session))
    return sorted(found)


def progress(message: str) -> None:
    print(PROGRESS + message, file=sys.stderr, flush=True)


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
    check_options(options)
    lock = DataDirLock(options.data_dir)
    previous = lock.acquire()
    # Every process this run starts (Ray's, the hosts') carries this in its
    # environment, whatever its command line becomes: how a later `vsim down` or
    # `vsim up` finds what a killed run left, and nothing else.
    pid, started = processes.identity(os.getpid())
    run = f"{pid}-{started}"  # this process, safe against pid reuse
    os.environ[RUN_ENV] = run
    me = {"pid": pid, "started": started, "run": run}
    lock.record(me)
    config.save_up_state({**me, "data_dir": str(options.data_dir)})
    try:
        report = await _run(options, config, lock, me, previous or {}, on_ready)
        # Stopped in order: nothing of this run is left to find.
        lock.record({"pid": me["pid"], "stopped": report})
    finally:
        lock.release()
        config.clear_up_state(os.getpid())
    print("Stopped.", file=sys.stderr, flush=True)


async def _run(
    options: UpOptions,
    config: UserConfig,
    lock: DataDirLock,
    me: dict,
    previous: dict,
    on_ready,
) -> dict:
    """Starts the cluster, serves until a signal, stops it in order; the stop report."""
    import ray

    from vsim.cluster.fault_service import fault_services
    from vsim.cluster.ray_engine import ray_engines
    from vsim.vcenter.server import start_vcenter

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def catch_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    catch_signals()
    left = leftovers(previous)
    if left:  # a killed `vsim up` on this data dir: its hosts must not run beside ours
        processes.kill(left)
        processes.wait_gone(left, 10)
        progress(f"stopped {len(left)} processes an earlier vsim up left running")
    session = start_ray()
    # Ray's init installs its own SIGTERM handler (exit at once): ours go back in, so
    # that SIGTERM and SIGINT both run the orderly stop below.
    catch_signals()
    me["ray_session"] = session
    lock.record(me)
    config.save_up_state({**me, "data_dir": str(options.data_dir)})
    progress(f"Ray started ({session}, on loopback)")
    report: dict = {"clean": False}
    array = await start_array(options.data_dir / "array", 0, "127.0.0.1")
    try:
        progress(f"storage array serving on {array.endpoint}")
        spec = prepare_array(array.array, ClusterSpec.default(options.hosts))
        running = await start_vcenter(
            options.data_dir,
            spec,
            ray_engines(),
            port=options.port,
            bind=options.bind,
            clock=WallClock(options.clock_speed),
            array=ArrayRef(array.endpoint, array.identity.thumbprint, array.array.management_key),
            on_event=_progress_of,
            services=fault_services,
        )
        try:
            endpoint = client_endpoint(options.bind, int(running.endpoint.rsplit(":", 1)[1]))
            progress(f"vCenter serving on {endpoint}")
            info = await _record_session(running, endpoint, config)
            info["array"] = array.endpoint
            info["datastores"] = [d.name for d in running.core.inventory.datastores()]
            config.save_up_state(
                {
                    **me,
                    "data_dir": str(options.data_dir),
                    "endpoint": endpoint,
                    "thumbprint": running.thumbprint,
                }
            )
            if not stop.is_set():
                on_ready(info)
                await stop.wait()
            report.update(await _power_down(running))
        finally:
            await running.stop()
    finally:
        await array.stop()
        ray.shutdown()
    return report


async def _power_down(running) -> dict:
    """The orderly stop's part for VMs: no new calls, the tasks under way finished,
    then every running VM powered off cleanly (and remembered for the next start)."""
    print("Stopping: powering off the VMs...", file=sys.stderr, flush=True)
    await running.server.stop(grace=2.0)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(running.core.tasks.drain(), DRAIN_TIMEOUT)
    # vCenter waits on its own clock: the real deadline in its simulated seconds.
    speed = running.core.clock.speed
    outcome = await running.core.autostart.power_down(POWER_DOWN_TIMEOUT * speed)
    print("Stopping vCenter and the hosts...", file=sys.stderr, flush=True)
    return {
        "clean": not outcome.failed,
        "vms_powered_off": outcome.done,
        "vms_not_powered_off": outcome.failed,
    }


# The events that tell a person watching `vsim up` start how far it is.
_PROGRESS_EVENTS = frozenset(
    {
        "HostAddedEvent",
        "HostConnectedEvent",
        "HostNotRespondingEvent",
        "VmfsDatastoreCreatedEvent",
        "NasDatastoreCreatedEvent",
        "VmPoweredOnEvent",
        "VmAutoStartFailedEvent",
    }
)


def _progress_of(event) -> None:
    if event.type in _PROGRESS_EVENTS:
        progress(event.message)


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
    return proc if processes.alive(proc) else None


def running_pid(config: UserConfig) -> int | None:
    proc = recorded_process(config)
    return proc[0] if proc else None


def detach(argv: list[str], options: UpOptions, config: UserConfig) -> dict:
    """Starts `vsim up` as a daemon in its own session; returns its ready info."""
    check_options(options)
    DataDirLock(options.data_dir).check_free()
    ready = options.data_dir / f".ready-{os.getpid()}.json"
    ready.unlink(missing_ok=True)
    log_path = options.data_dir / "vsim-up.log"
    if log_path.exists():  # this run's log starts empty; the last run's is kept beside it
        log_path.replace(log_path.with_suffix(".log.1"))
    with open(log_path, "wb") as log, open(os.devnull, "rb") as devnull:
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
    echoed = 0
    while not ready.exists():
        echoed = _echo_progress(log_path, echoed)
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(
                f"vsim up exited with status {child.returncode} before it was ready; "
                f"last lines of {log_path}:\n" + "\n".join(tail)
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"vsim up was not ready after {READY_TIMEOUT:.0f} s; see {log_path}")
        time.sleep(0.2)
    _echo_progress(log_path, echoed)


def _echo_progress(log_path: Path, echoed: int) -> int:
    """Prints the daemon's new progress lines on stderr; returns how many lines of
    the log have been looked at."""
    text = log_path.read_text(errors="replace")
    lines = text.splitlines()
    complete = len(lines) - (not text.endswith("\n"))  # a last line may be half written
    for line in lines[echoed:complete]:
        if line.startswith(PROGRESS):
            print(line, file=sys.stderr, flush=True)
    return max(echoed, complete)


def write_ready(path: Path, info: dict) -> None:
    """Hands the ready info (the administrator password among it) to the parent,
    readable by this user only."""
    write_private(path, json.dumps(info).encode())


def down(config: UserConfig, timeout: float = STOP_TIMEOUT) -> dict:
    """Stops the cluster this config's `vsim up` runs (SIGTERM: its orderly stop, VMs
    powered off); kills what outlives it, and what a killed one left. The report says
    what happened: `graceful` only when the process stopped itself in time and its
    stop report says every VM was powered off."""
    state = config.up_state()
    if state is None:
        return {"stopped": False, "reason": "no cluster is running for this config"}
    pid = state.get("pid")
    proc = recorded_process(config)
    if proc is None:
        left = leftovers(state)
        processes.kill(left)
        remaining = processes.wait_gone(left, 10)
        config.clear_up_state(pid)
        if not left:
            return {"stopped": False, "reason": f"the cluster's process {pid} is gone"}
        return {
            "stopped": True,
            "pid": pid,
            "graceful": False,
            "reason": f"the cluster's process {pid} had died; stopped the {len(left)} "
            "processes it left running (its VMs were not powered off cleanly)",
            "killed": len(left),
            "remaining": len(remaining),
        }
    # While it lives, nothing else can hold its pid as a session id.
    procs = processes.descendants(pid) + processes.in_session(pid)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    timed_out = processes.wait_gone([proc], timeout)
    # Whatever the cluster started and did not stop goes now.
    stragglers = sorted({p for p in procs if processes.alive(p)} | set(leftovers(state)))
    processes.kill(stragglers)
    remaining = processes.wait_gone(stragglers, 10)
    config.clear_up_state(pid)
    return _down_report(pid, stop_report(state), timed_out, timeout, stragglers, remaining)


def stop_report(state: dict) -> dict | None:
    """What the run's orderly stop recorded in its data dir's lock file, if it ran."""
    data_dir = state.get("data_dir")
    record = _read_json(Path(data_dir) / LOCK_FILE) if data_dir else None
    if record is None or record.get("pid") != state.get("pid"):
        return None
    return record.get("stopped")


def _down_report(
    pid: int,
    report: dict | None,
    timed_out: list,
    timeout: float,
    stragglers: list,
    remaining: list,
) -> dict:
    result = {
        "stopped": True,
        "pid": pid,
        "graceful": bool(not timed_out and report and report.get("clean")),
        "vms_powered_off": (report or {}).get("vms_powered_off", []),
        "killed": len(stragglers),
        "remaining": len(remaining),
    }
    if timed_out:
        result["reason"] = f"it did not stop within {timeout:.0f} s and was killed"
    elif report is None:
        result["reason"] = "it exited without its orderly stop"
    elif not report.get("clean"):
        result["reason"] = "some VMs could not be powered off: " + "; ".join(
            f"{vm}: {why}" for vm, why in report.get("vms_not_powered_off", {}).items()
        )
    return result
