"""One NFS v3 export: a directory on the array, served with NFS semantics.

File handles are paths relative to the export root, checked on every use: a handle
or name that leads outside the export (`..`, `/`, a symlink) is refused, and a handle
whose file is gone is STALE. Export options are rw/ro, sync, root_squash and the
clients allowed to mount. The permission model is the one ESXi meets: with
root_squash, root (uid 0) becomes the anonymous user, who may read but not create,
write, rename or remove; ESXi always comes as root, so a root_squash export mounts
but cannot hold VMs. WRITEs with sync (or stable=FILE_SYNC) are on disk before the
reply. Every WRITE's size is counted per client, so tests can check what the hosts
sent (the 84-byte NFS lock heartbeats).
"""

from __future__ import annotations

import enum
import os
import stat
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

MAX_NAME = 255
MAX_TRANSFER = 1024 * 1024
MAX_FILE_SIZE = 16 * 1024**4
"""The largest file an export holds (16 TiB, what ext4 allows)."""
ANONYMOUS_UID = 65534


class NfsStatus(enum.IntEnum):
    """nfsstat3 (RFC 1813)."""

    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    ACCES = 13
    EXIST = 17
    NOTDIR = 20
    ISDIR = 21
    INVAL = 22
    ROFS = 30
    FBIG = 27
    NAMETOOLONG = 63
    NOTEMPTY = 66
    STALE = 70


class NfsError(Exception):
    def __init__(self, status: NfsStatus, message: str) -> None:
        super().__init__(f"NFS3ERR_{status.name}: {message}")
        self.status = status
        self.message = message


class CreateMode(enum.IntEnum):
    """createmode3: UNCHECKED replaces, GUARDED fails if the name exists, EXCLUSIVE
    fails too unless it is a retry of the same create (same verifier)."""

    UNCHECKED = 0
    GUARDED = 1
    EXCLUSIVE = 2


@dataclass(frozen=True)
class ExportOptions:
    rw: bool = True
    """Read-write (else ro: every change is ROFS)."""
    sync: bool = True
    """Every WRITE is durable before it is answered (else only stable ones are)."""
    root_squash: bool = False
    """Map uid 0 to the anonymous user. ESXi needs no_root_squash (False)."""
    clients: tuple[str, ...] = ("*",)
    """Who may mount: client names (host IQNs or addresses), or "*" for anyone."""


@dataclass(frozen=True)
class Caller:
    client: str
    uid: int = 0


@dataclass(frozen=True)
class Attributes:
    fileid: int
    kind: str  # "file" or "dir"
    size: int
    mtime_ns: int
    ctime_ns: int


@dataclass
class ExportStats:
    write_sizes: defaultdict[str, Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    """client -> {WRITE size in bytes: how many}."""
    operations: Counter[str] = field(default_factory=Counter)


class NfsExport:
    def __init__(self, name: str, root: Path, options: ExportOptions) -> None:
        self.name = name
        self.root = root.resolve()
        self._root_text = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.stats = ExportStats()
        self._verifiers: dict[int, bytes] = {}
        """fileid -> the verifier of the EXCLUSIVE create that made the file."""

    def reopen(self, options: ExportOptions) -> None:
        """The array program restarted: the options as its config file says, the
        counters gone. Exclusive-create verifiers are kept, as servers keep them in
        the file's attributes so a create retried across a reboot still matches."""
        self.options = options
        self.stats = ExportStats()

    # access

    def _enter(self, caller: Caller, operation: str) -> None:
        self.stats.operations[operation] += 1
        if "*" not in self.options.clients and caller.client not in self.options.clients:
            raise NfsError(NfsStatus.ACCES, f"{caller.client} may not mount export {self.name}")

    def _may_change(self, caller: Caller) -> None:
        if not self.options.rw:
            raise NfsError(NfsStatus.ROFS, f"export {self.name} is read-only")
        uid = ANONYMOUS_UID if self.options.root_squash and caller.uid == 0 else caller.uid
        if uid == ANONYMOUS_UID:
            raise NfsError(
                NfsStatus.ACCES,
                f"export {self.name} squashes root to the anonymous user, who may not write",
            )

    def _path(self, handle: str) -> Path:
        """The file a handle names; STALE if it is gone, BADHANDLE-like INVAL if it
        points outside the export."""
        if "\x00" in handle or handle.startswith("/") or ".." in handle.split("/"):
            raise NfsError(NfsStatus.INVAL, f"bad file handle {handle[:80]!r}")
        # Strings, not Path objects, and a walk of the handle's own components (the
        # root is resolved once): every NFS call resolves its handle.
        root = self._root_text
        real = root
        for part in handle.split("/") if handle else ():
            if part in ("", "."):
                continue
            candidate = os.path.join(real, part)
            try:
                if stat.S_ISLNK(os.lstat(candidate).st_mode):
                    candidate = os.path.realpath(candidate)
                    if candidate != root and not candidate.startswith(root + os.sep):
                        raise NfsError(NfsStatus.INVAL, f"bad file handle {handle[:80]!r}")
                    os.stat(candidate)
            except (FileNotFoundError, NotADirectoryError):
                raise NfsError(NfsStatus.STALE, f"{handle} no longer exists") from None
            except OSError as e:  # a component too long, a symlink loop, ...
                raise NfsError(
                    NfsStatus.INVAL, f"bad file handle {handle[:80]!r}: {e.strerror}"
                ) from None
            real = candidate
        if not handle and not os.path.isdir(root):
            raise NfsError(NfsStatus.STALE, "/ no longer exists")
        return Path(real)

    def _dir(self, handle: str) -> Path:
        path = self._path(handle)
        if not path.is_dir():
            raise NfsError(NfsStatus.NOTDIR, f"{handle} is not a directory")
        return path

    def _child(self, directory: Path, name: str) -> Path:
        if not name or name in (".", "..") or "/" in name or "\x00" in name:
            raise NfsError(NfsStatus.INVAL, f"bad file name {name[:80]!r}")
        if len(name.encode()) > MAX_NAME:
            raise NfsError(NfsStatus.NAMETOOLONG, f"a name is at most {MAX_NAME} bytes")
        return directory / name

    def handle_of(self, path: Path) -> str:
        return "" if path == self.root else str(path.relative_to(self.root))

    @staticmethod
    def _attributes(path: Path) -> Attributes:
        st = path.lstat()
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
        return Attributes(st.st_ino, kind, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    # operations

    def lookup(self, caller: Caller, directory: str, name: str) -> tuple[str, Attributes]:
        self._enter(caller, "lookup")
        path = self._child(self._dir(directory), name)
        if not path.exists() or path.is_symlink():
            raise NfsError(NfsStatus.NOENT, f"{name} not found")
        return self.handle_of(path), self._attributes(path)

    def getattr(self, caller: Caller, handle: str) -> Attributes:
        self._enter(caller, "getattr")
        return self._attributes(self._path(handle))

    def create(
        self,
        caller: Caller,
        directory: str,
        name: str,
        mode: CreateMode = CreateMode.GUARDED,
        verifier: bytes = b"",
    ) -> tuple[str, Attributes]:
        self._enter(caller, "create")
        self._may_change(caller)
        path = self._child(self._dir(directory), name)
        key = self.handle_of(path)
        flags = os.O_WRONLY | os.O_CREAT
        if mode == CreateMode.UNCHECKED:
            flags |= os.O_TRUNC
        else:
            flags |= os.O_EXCL
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            existing = self._attributes(path)
            if (
                mode == CreateMode.EXCLUSIVE
                and verifier
                and self._verifiers.get(existing.fileid) == verifier
            ):
                return key, existing  # a retry of the create that made this very file
            raise NfsError(NfsStatus.EXIST, f"{name} exists") from None
        except IsADirectoryError:
            raise NfsError(NfsStatus.ISDIR, f"{name} is a directory") from None
        except OSError as e:  # ELOOP: a symlink sits at that name
            raise NfsError(NfsStatus.EXIST, f"{name} exists ({e.strerror})") from None
        os.close(fd)
        attributes = self._attributes(path)
        if mode == CreateMode.EXCLUSIVE:
            self._verifiers[attributes.fileid] = verifier
        return key, attributes

    def mkdir(self, caller: Caller, directory: str, name: str) -> tuple[str, Attributes]:
        self._enter(caller, "mkdir")
        self._may_change(caller)
        path = self._child(self._dir(directory), name)
        try:
            path.mkdir()
        except FileExistsError:
            raise NfsError(NfsStatus.EXIST, f"{name} exists") from None
        return self.handle_of(path), self._attributes(path)

    def read(self, caller: Caller, handle: str, offset: int, count: int) -> tuple[bytes, bool]:
        """(data, eof)."""
        self._enter(caller, "read")
        path = self._file(handle)
        self._check_span(offset, count)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(count)
            return data, f.tell() >= os.fstat(f.fileno()).st_size

    def write(
        self, caller: Caller, handle: str, offset: int, data: bytes, stable: bool = True
    ) -> int:
        """Writes data at offset; durable before the reply when stable or the export
        is sync. Returns the count written."""
        self._enter(caller, "write")
        self._may_change(caller)
        path = self._file(handle)
        self._check_span(offset, len(data))
        if offset + len(data) > MAX_FILE_SIZE:
            raise NfsError(
                NfsStatus.FBIG, f"a file on this export is at most {MAX_FILE_SIZE} bytes"
            )
        self.stats.write_sizes[caller.client][len(data)] += 1
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                written = os.pwrite(fd, data, offset)
                if stable or self.options.sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise NfsError(NfsStatus.IO, f"write failed: {e.strerror}") from None
        return written

    def remove(self, caller: Caller, directory: str, name: str) -> None:
        self._enter(caller, "remove")
        self._may_change(caller)
        path = self._child(self._dir(directory), name)
        try:
            fileid = path.lstat().st_ino
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        except FileNotFoundError:
            raise NfsError(NfsStatus.NOENT, f"{name} not found") from None
        except OSError:
            raise NfsError(NfsStatus.NOTEMPTY, f"{name} is a directory that is not empty") from None
        self._forget(fileid)

    def rename(
        self, caller: Caller, from_dir: str, from_name: str, to_dir: str, to_name: str
    ) -> None:
        """Atomic; an existing target is replaced, as NFS RENAME does."""
        self._enter(caller, "rename")
        self._may_change(caller)
        source = self._child(self._dir(from_dir), from_name)
        target = self._child(self._dir(to_dir), to_name)
        try:
            replaced = target.lstat().st_ino if target.is_symlink() or target.exists() else None
            os.rename(source, target)
        except FileNotFoundError:
            raise NfsError(NfsStatus.NOENT, f"{from_name} not found") from None
        except OSError as e:
            raise NfsError(NfsStatus.INVAL, f"cannot rename {from_name}: {e.strerror}") from None
        if replaced is not None and replaced != target.lstat().st_ino:
            self._forget(replaced)

    def _forget(self, fileid: int) -> None:
        """A file is gone: its fileid may be reused, so its create verifier goes too."""
        self._verifiers.pop(fileid, None)

    def readdir(self, caller: Caller, directory: str) -> list[tuple[str, Attributes]]:
        self._enter(caller, "readdir")
        path = self._dir(directory)
        return [(p.name, self._attributes(p)) for p in sorted(path.iterdir()) if not p.is_symlink()]

    def fsstat(self, caller: Caller) -> tuple[int, int]:
        """(total bytes, free bytes) of the file system holding the export."""
        self._enter(caller, "fsstat")
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    # helpers

    def _file(self, handle: str) -> Path:
        path = self._path(handle)
        if path.is_dir():
            raise NfsError(NfsStatus.ISDIR, f"{handle} is a directory")
        return path

    @staticmethod
    def _check_span(offset: int, count: int) -> None:
        if offset < 0 or not 0 <= count <= MAX_TRANSFER:
            raise NfsError(NfsStatus.INVAL, f"offset must be >= 0 and count 0-{MAX_TRANSFER} bytes")
