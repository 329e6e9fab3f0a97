"""Files on an NFS v3 datastore: the export's own files, reached by LOOKUP from the
export root, locked with `.lck-<fileid>` files (`vsim.host.storage.nfs_lock`). ESXi always
comes as root; an export that squashes root mounts, but nothing can be created on it.
A file whose lock this host has lost (another host found it stale and broke it) takes
no more I/O from here."""

from __future__ import annotations

import contextlib
import random

from vsim.faults import (
    CannotAccessFile,
    CannotCreateFile,
    FileAlreadyExists,
    FileNotFound,
    FileTooLarge,
    InvalidArgument,
    InvalidState,
    VimFault,
)
from vsim.host.storage.datastore_files import (
    FileInfo,
    SharedLocks,
    check_span,
    parent_of,
    split_path,
)
from vsim.host.storage.nfs_lock import (
    EXCLUSIVE,
    READ_ONLY,
    NfsLockManager,
    lock_file_name,
)
from vsim.storage.nfs_export import MAX_TRANSFER, NfsError, NfsStatus
from vsim.storage.vmfs_format import LockMode

LOCK_TYPES = {LockMode.EXCLUSIVE: EXCLUSIVE, LockMode.READ_ONLY: READ_ONLY}


def nfs_fault(error: NfsError, path: str, creating: bool = False) -> VimFault:
    """The vSphere fault for an NFS error on path."""
    if error.status in (NfsStatus.NOENT, NfsStatus.STALE):
        return FileNotFound(f"{path} does not exist ({error.message})")
    if error.status == NfsStatus.EXIST:
        return FileAlreadyExists(f"{path} already exists")
    if error.status in (NfsStatus.ACCES, NfsStatus.PERM, NfsStatus.ROFS):
        if creating:
            return CannotCreateFile(
                f"cannot create {path}: {error.message}. ESXi writes as root: the export "
                "must be rw with no_root_squash"
            )
        return CannotAccessFile(f"cannot change {path}: {error.message}")
    if error.status == NfsStatus.FBIG:
        return FileTooLarge(f"{path}: {error.message}")
    if error.status == NfsStatus.NOTEMPTY:
        return InvalidState(f"directory {path} is not empty")
    if error.status in (NfsStatus.NOTDIR, NfsStatus.ISDIR, NfsStatus.INVAL):
        return InvalidArgument(f"{path}: {error.message}")
    return CannotAccessFile(f"{path}: {error}")


class NfsFileSystem:
    def __init__(self, manager: NfsLockManager, rng: random.Random) -> None:
        """rng: the host's (new disks' CIDs and UUIDs, lock backoffs)."""
        self.manager = manager
        self.client = manager.client
        self.clock = manager.clock
        self.rng = rng
        self._opens = SharedLocks()  # keyed by (directory handle, fileid)

    async def handle(self, path: str) -> str:
        """The handle of a path, by LOOKUP from the export root."""
        handle = ""
        try:
            for name in split_path(path) if path else []:
                handle = await self.client.lookup(handle, name)
        except NfsError as e:
            raise nfs_fault(e, path) from None
        return handle

    async def mkdir(self, path: str) -> None:
        directory, name = parent_of(path)
        if name.startswith(".lck-"):
            raise InvalidArgument(f"{name} is a lock file name")
        parent = await self.handle(directory)
        try:
            await self.client.mkdir(parent, name)
        except NfsError as e:
            raise nfs_fault(e, path, creating=True) from None

    async def create(self, path: str) -> None:
        directory, name = parent_of(path)
        if name.startswith(".lck-"):
            raise InvalidArgument(f"{name} is a lock file name")
        parent = await self.handle(directory)
        try:
            await self.client.create(parent, name)
        except NfsError as e:
            raise nfs_fault(e, path, creating=True) from None

    async def stat(self, path: str) -> FileInfo:
        handle = await self.handle(path)
        try:
            kind, size = await self.client.getattr(handle)
        except NfsError as e:
            raise nfs_fault(e, path) from None
        return FileInfo(path, kind, size)

    async def listdir(self, path: str) -> list[FileInfo]:
        handle = await self.handle(path)
        try:
            entries = await self.client.readdir(handle)
        except NfsError as e:
            raise nfs_fault(e, path) from None
        prefix = f"{path}/" if path else ""
        return [
            FileInfo(prefix + name, kind, size)
            for name, kind, size in entries
            if not name.startswith(".lck-")
        ]

    async def remove(self, path: str) -> None:
        """A file is removed under its own exclusive lock (FileLocked while any host
        has it open), so no host can open it meanwhile."""
        directory, name = parent_of(path)
        parent = await self.handle(directory)
        try:
            _, kind, fileid = await self.client.entry(parent, name)
            if kind == "dir":
                await self.client.remove(parent, name)
                return
            await self.manager.lock(parent, fileid, path, EXCLUSIVE)
            try:
                await self.client.remove(parent, name)
            finally:
                await self.manager.unlock(parent, fileid)
            # Lock files left by dead hosts go too: a new file may get this fileid.
            for stale in await self.manager.lock_files(parent, lock_file_name(fileid)):
                with contextlib.suppress(NfsError):
                    await self.client.remove(parent, stale)
        except NfsError as e:
            raise nfs_fault(e, path) from None

    async def open(self, path: str, mode: LockMode = LockMode.EXCLUSIVE) -> NfsFile:
        if mode not in LOCK_TYPES:
            raise InvalidArgument("an NFS file opens exclusive or read-only")
        directory, name = parent_of(path)
        parent = await self.handle(directory)
        try:
            handle, kind, fileid = await self.client.entry(parent, name)
        except NfsError as e:
            raise nfs_fault(e, path) from None
        if kind != "file":
            raise InvalidArgument(f"{path} is a directory")
        await self._opens.open(
            (parent, fileid),
            mode,
            lambda: self.manager.lock(parent, fileid, path, LOCK_TYPES[mode]),
            lambda: self.manager.unlock(parent, fileid, LOCK_TYPES[mode]),
        )
        return NfsFile(self, parent, fileid, handle, path, mode)

    async def release(self, directory: str, fileid: int, mode: LockMode) -> None:
        """Drops one open's hold on a file's lock; the lock goes with the last one."""
        await self._opens.close(
            (directory, fileid), lambda: self.manager.unlock(directory, fileid, LOCK_TYPES[mode])
        )


class NfsFile:
    def __init__(
        self, fs: NfsFileSystem, directory: str, fileid: int, handle: str, path: str, mode: LockMode
    ) -> None:
        self.fs = fs
        self.directory = directory
        self.fileid = fileid
        self.handle = handle
        self.path = path
        self.mode = mode
        self._closed = False

    def _check(self, writing: bool = False) -> None:
        if self._closed:
            raise InvalidState(f"{self.path} is closed")
        if writing and self.mode != LockMode.EXCLUSIVE:
            raise InvalidState(f"{self.path} is open read-only")
        self.fs.manager.check_held(self._lock_key(), self.path)

    def lock_lost(self) -> bool:
        """Whether the lock this file was opened under is gone (lost or given up):
        another host may hold it now or soon."""
        return self.mode == LockMode.EXCLUSIVE and self.fs.manager.gone(self._lock_key())

    def lock_in_doubt(self) -> bool:
        return self.lock_lost()

    def abandon(self) -> None:
        """The file is dropped unclosed (its VM killed): its lock is given up."""
        self._closed = True
        if self.mode == LockMode.EXCLUSIVE:
            self.fs.manager.abandon(self._lock_key())

    def _lock_key(self) -> tuple[str, str]:
        manager = self.fs.manager
        return (self.directory, manager.lock_name(self.fileid, LOCK_TYPES[self.mode]))

    async def read(self, offset: int, count: int) -> bytes:
        self._check()
        check_span(offset, count)
        out = bytearray()
        try:
            while len(out) < count:
                want = min(MAX_TRANSFER, count - len(out))
                at = offset + len(out)
                data = await self.fs.manager.retransmitted(
                    lambda want=want, at=at: self.fs.client.read(self.handle, want, at)
                )
                out += data
                if len(data) < want:
                    break
        except NfsError as e:
            raise nfs_fault(e, self.path) from None
        return bytes(out) + bytes(count - len(out))

    async def write(self, offset: int, data: bytes) -> None:
        self._check(writing=True)
        check_span(offset, len(data))
        try:
            for at in range(0, len(data), MAX_TRANSFER):
                chunk = data[at : at + MAX_TRANSFER]
                await self.fs.manager.within_lease(
                    self._lock_key(),
                    self.path,
                    lambda chunk=chunk, at=at: self.fs.client.write(
                        self.handle, chunk, offset + at
                    ),
                )
        except NfsError as e:
            raise nfs_fault(e, self.path) from None

    async def size(self) -> int:
        self._check()
        try:
            return (await self.fs.client.getattr(self.handle))[1]
        except NfsError as e:
            raise nfs_fault(e, self.path) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.fs.release(self.directory, self.fileid, self.mode)
