"""Files on a datastore, the same to the rest of the host whether the datastore is a
VMFS volume or an NFS export: paths, file kinds, and what an open file can do.

A datastore path is relative to the datastore's root ("vm-01/vm-01.vmdk"): names
separated by "/", none of them empty, "." or "..", at most 255 bytes each and 256
bytes in all (what a VMFS lock record holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vsim.clock import Clock
from vsim.faults import InvalidArgument
from vsim.storage.vmfs_format import MAX_PATH, LockMode

MAX_NAME = 255


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


class DatastoreFiles(Protocol):
    """The file system of one mounted datastore, as this host sees it."""

    clock: Clock

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


def check_span(offset: int, count: int, limit: int) -> None:
    if offset < 0 or count < 0:
        raise InvalidArgument(f"offset and length must be >= 0, got {offset} and {count}")
    if offset + count > limit:
        raise InvalidArgument(f"bytes {offset}..{offset + count} go past the {limit}-byte limit")
