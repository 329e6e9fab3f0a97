"""Finding and stopping the processes one `vsim up` started (Linux /proc), so
`vsim down` removes exactly what its cluster made and nothing else."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

Proc = tuple[int, int]
"""(pid, start time in clock ticks): a process, safe against pid reuse."""


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def identity(pid: int) -> Proc | None:
    """The running (not zombie) process with this pid, as (pid, start time)."""
    fields = _stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return pid, int(fields[19])


def alive(proc: Proc) -> bool:
    return identity(proc[0]) == proc


def descendants(root: int) -> list[Proc]:
    """root and every process below it, found by walking parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        proc = identity(pid)
        if proc is not None:
            found.append(proc)
        todo.extend(children.get(pid, []))
    return found


def in_session(sid: int) -> list[Proc]:
    """Processes whose session id is sid (everything a detached `vsim up` started)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[3]) == sid and fields[0] != "Z":
                found.append((int(entry), int(fields[19])))
    return found


def wait_gone(procs: list[Proc], timeout: float) -> list[Proc]:
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in procs if alive(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


def kill(procs: list[Proc], sig: int = signal.SIGKILL) -> None:
    for proc in procs:
        if alive(proc):
            try:
                os.kill(proc[0], sig)
            except (ProcessLookupError, PermissionError):
                pass  # gone, or not ours to stop


def with_environment(name: str, value: str) -> list[Proc]:
    """This user's running processes started with name=value in their environment
    (inherited from the process that started them, whatever their command line
    became); never the caller. Others' environments cannot be read: skipped."""
    entry_bytes = f"{name}={value}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if entry_bytes in environ.split(b"\0"):
            proc = identity(int(entry))
            if proc is not None:
                found.append(proc)
    return found


def with_open_file_under(directory: str) -> list[Proc]:
    """This user's running processes holding a file open below directory (Ray's
    processes all log into their session's directory); never the caller."""
    prefix = directory.rstrip("/") + "/"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                proc = identity(int(entry))
                if proc is not None:
                    found.append(proc)
                break
    return found
