"""Files on a datastore, the same to the rest of the host whether the datastore is a
VMFS volume or an NFS export: paths, file kinds, and what an open file can do.

A datastore path is relative to the datastore's root ("vm-01/vm-01.vmdk"): names
separated by "/", none of them empty, "." or "..", at most 255 bytes each and 256
bytes in all (what a VMFS lock record holds).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from vsim.clock import Clock
from vsim.faults import CannotAccessFile, FileLocked, InvalidArgument
from vsim.storage.vmfs_format import MAX_PATH, LockMode

MAX_NAME = 255
T = TypeVar("T")


@dataclass(frozen=True)
class FileInfo:
    path: str
    kind: str
    """"file" or "dir"."""
    size: int


def split_path(path: str) -> list[str]:
    """The names in a datastore path; InvalidArgument for a path that is empty, too
    long, absolute, or steps outside the datastore."""
    if not isinstance(path, str) or not path:
        raise InvalidArgument("a datastore path must not be empty")
    if len(path.encode()) > MAX_PATH:
        raise InvalidArgument(f"a datastore path is at most {MAX_PATH} bytes")
    if "\x00" in path or path.startswith("/"):
        raise InvalidArgument(f"{path[:80]!r} is not a path inside the datastore")
    names = path.split("/")
    for name in names:
        if name in ("", ".", "..") or len(name.encode()) > MAX_NAME:
            raise InvalidArgument(f"{path[:80]!r} is not a path inside the datastore")
    return names


def parent_of(path: str) -> tuple[str, str]:
    """(directory, name) of a datastore path; the root directory is ""."""
    names = split_path(path)
    return "/".join(names[:-1]), names[-1]


class DatastoreFile(Protocol):
    path: str
    mode: LockMode

    async def read(self, offset: int, count: int) -> bytes:
        """count bytes at offset; holes and bytes past the end read as zeros."""

    async def write(self, offset: int, data: bytes) -> None:
        """Durable before it returns. InvalidState unless opened to write."""

    async def size(self) -> int: ...

    async def close(self) -> None:
        """Releases the file's lock."""

    def lock_lost(self) -> bool:
        """Whether the file's lock is gone: another host may hold it (no I/O)."""

    def lock_in_doubt(self) -> bool:
        """Whether the lock may be gone or may go any moment (no I/O)."""

    def abandon(self) -> None:
        """Drops the file without closing it (no I/O): its lock is given up."""


class DatastoreFiles(Protocol):
    """The file system of one mounted datastore, as this host sees it."""

    clock: Clock
    rng: random.Random
    """The host's (its boot's runtime): lock backoffs, new disks' CIDs and UUIDs."""

    async def mkdir(self, path: str) -> None: ...

    async def create(self, path: str) -> None:
        """An empty file; FileAlreadyExists if the name is taken."""

    async def remove(self, path: str) -> None:
        """FileLocked while any host has the file open."""

    async def stat(self, path: str) -> FileInfo:
        """FileNotFound if there is no such file or directory."""

    async def listdir(self, path: str) -> list[FileInfo]: ...

    async def open(self, path: str, mode: LockMode) -> DatastoreFile:
        """Takes the file's on-disk lock in mode (FileLocked if another host's lock
        is in the way)."""


def check_span(offset: int, count: int) -> None:
    """InvalidArgument for a negative offset or length."""
    if offset < 0 or count < 0:
        raise InvalidArgument(f"offset and length must be >= 0, got {offset} and {count}")


SHORT_HOLD_WAIT = 10.0
"""Seconds to wait out another host's short hold of a lock (it is creating a name in
a directory, or reading a descriptor) before reporting FileLocked."""


async def wait_out_short_holds(
    clock: Clock,
    rng: random.Random,
    attempt: Callable[[], Awaitable[T]],
    wait: float = SHORT_HOLD_WAIT,
) -> T:
    """attempt(), tried again with growing, randomised pauses (so racing hosts fall
    out of step) while it raises FileLocked, for up to `wait` seconds of the clock."""
    deadline = clock.now() + wait
    pause = 0.005
    while True:
        try:
            return await attempt()
        except FileLocked:
            if clock.now() >= deadline:
                raise
        await clock.sleep(pause * (0.5 + rng.random()))
        pause = min(pause * 2, 0.2)


async def write_whole(fs: DatastoreFiles, path: str, data: bytes, create: bool = False) -> None:
    """Writes a small file (a descriptor, a .vmx, a header) from its start, opened
    exclusive. A longer old content is overwritten with newlines (text files only
    grow or keep their length in practice: nothing stale survives)."""
    if create:
        await fs.create(path)
    file = await wait_out_short_holds(fs.clock, fs.rng, lambda: fs.open(path, LockMode.EXCLUSIVE))
    try:
        old = 0 if create else await file.size()
        await file.write(0, data + b"\n" * max(0, old - len(data)))
    finally:
        await file.close()


async def close_all(files: Iterable[Closable]) -> None:
    """Closes every one, even when some fail; then raises the first failure. A
    datastore lost meanwhile is no failure: its locks are others' to break."""
    failure: BaseException | None = None
    for file in files:
        try:
            await file.close()
        except CannotAccessFile:
            pass
        except Exception as e:  # noqa: BLE001 - close the others first
            failure = failure or e
    if failure is not None:
        raise failure


class Closable(Protocol):
    async def close(self) -> None: ...


class SharedLocks:
    """The opens on this host that share one on-disk lock: a shared (read-only or
    multi-writer) lock is taken by the first open in that mode and given back by the
    last close. Opens and closes of one file take turns, so the count is always that
    of the lock on disk."""

    def __init__(self) -> None:
        self._held: dict[Hashable, tuple[LockMode, int]] = {}
        self._guards: dict[Hashable, asyncio.Lock] = {}

    async def open(
        self,
        key: Hashable,
        mode: LockMode,
        take: Callable[[], Awaitable[object]],
        drop: Callable[[], Awaitable[object]],
        check: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """One more open of key in mode: take() the lock unless this host holds it
        shared in that mode already; then check() (the file is still there), giving
        the hold back if that fails."""
        async with self._guards.setdefault(key, asyncio.Lock()):
            held = self._held.get(key)
            if mode != LockMode.EXCLUSIVE and held is not None and held[0] == mode:
                self._held[key] = (mode, held[1] + 1)
            else:
                await take()  # FileLocked if this host holds it in another mode
                self._held[key] = (mode, 1)
            if check is not None:
                try:
                    await check()
                except BaseException:
                    await self._close(key, drop)
                    raise

    async def close(self, key: Hashable, drop: Callable[[], Awaitable[object]]) -> None:
        """One open fewer; drop() the lock with the last one."""
        async with self._guards.setdefault(key, asyncio.Lock()):
            await self._close(key, drop)

    async def _close(self, key: Hashable, drop: Callable[[], Awaitable[object]]) -> None:
        mode, count = self._held.get(key, (LockMode.EXCLUSIVE, 1))
        if count > 1:
            self._held[key] = (mode, count - 1)
            return
        self._held.pop(key, None)
        await drop()
