"""NFS v3 file locks as ESXi takes them: `.lck-<fileid>` files beside the locked file.

No NLM: a lock is a file created exclusively (GUARDED CREATE) in the locked file's
directory, holding one 84-byte record. The holder rewrites it every
NFS.DiskFileLockUpdateFreq (10 s), always as one 84-byte stable WRITE. Another host
finds the lock stale only when the record has not changed for
DiskFileLockUpdateFreq x LockRenewMaxFailureNumber + LockUpdateTimeout
(10 x 3 + 5 = 35 s) as it has watched it; then it removes the file and creates its
own. A holder whose renewal finds its file gone or replaced has lost the lock.

A lock file names the boot of its holder: a host that finds a lock in its own name
from another boot of itself (a crash, a stop that did not close its disks) knows that
holder can no longer run — one host boots once at a time (its shell holds a boot lock
on the data dir where its identity lives) — and breaks it at once. Only the
record says so: a lock without a boot id (version 1) waits out the 35 s like any other.

The 84-byte lock record (little-endian):
    0   4   magic b"VLCK"
    4   2   version (1)
    6   2   lock type: 1 exclusive, 2 read-only
    8   16  owner host UUID
    24  8   sequence number: +1 at every renewal
    32  8   owner's clock at the renewal (float64 seconds; for people only)
    40  4   the owner's renewal interval in milliseconds
    44  32  owner host name, UTF-8, NUL-padded (version 1: 40 bytes, no boot id)
    76  8   the owner's boot id (version 2): drawn once per boot, never 0

Plain Python over an injected NFS client port and clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from vsim.clock import Clock
from vsim.faults import CannotAccessFile, FileLocked, StoragePathLost
from vsim.runtime import Timeout
from vsim.storage.nfs_export import Caller, CreateMode, NfsError, NfsExport, NfsStatus

T = TypeVar("T")
RETRANSMITS = 2
"""Times an idempotent request is sent again after a lost reply."""
log = logging.getLogger(__name__)

DISK_FILE_LOCK_UPDATE_FREQ = 10.0
"""NFS.DiskFileLockUpdateFreq: seconds between a holder's rewrites of its lock file."""
LOCK_RENEW_MAX_FAILURE_NUMBER = 3
"""NFS.LockRenewMaxFailureNumber."""
LOCK_UPDATE_TIMEOUT = 5.0
"""NFS.LockUpdateTimeout (seconds)."""
STALE_AFTER = DISK_FILE_LOCK_UPDATE_FREQ * LOCK_RENEW_MAX_FAILURE_NUMBER + LOCK_UPDATE_TIMEOUT
"""35 s without a change: the lock is stale."""
GIVE_UP_AFTER = STALE_AFTER - DISK_FILE_LOCK_UPDATE_FREQ
"""25 s since its last renewal: a holder gives its lock up, one renewal interval
before any other host may find it stale."""

RECORD = struct.Struct("<4sHH16sQdI32sQ")
RECORD_SIZE = RECORD.size
assert RECORD_SIZE == 84
VERSION = 2
EXCLUSIVE, READ_ONLY = 1, 2


@dataclass(frozen=True)
class LockFile:
    lock_type: int
    owner: uuid.UUID
    sequence: int
    owner_clock: float
    host_name: str
    boot: int = 0
    """The holder's boot id; 0 in a version 1 record (unknown)."""

    def pack(self) -> bytes:
        return RECORD.pack(
            b"VLCK",
            VERSION,
            self.lock_type,
            self.owner.bytes,
            self.sequence,
            self.owner_clock,
            int(DISK_FILE_LOCK_UPDATE_FREQ * 1000),
            _name_field(self.host_name),
            self.boot,
        )

    @classmethod
    def unpack(cls, data: bytes) -> LockFile | None:
        if len(data) != RECORD_SIZE or data[:4] != b"VLCK":
            return None  # being created, or not ours: treated as held by someone unknown
        _, version, lock_type, owner, sequence, clock, _, name, boot = RECORD.unpack(data)
        if version == 1:  # the name ran on over what is now the boot id
            name, boot = data[44:84], 0
        text = name.rstrip(b"\0").decode(errors="replace")
        return cls(lock_type, uuid.UUID(bytes=owner), sequence, clock, text, boot)


def _name_field(name: str) -> bytes:
    """The host name cut to 32 bytes at a character boundary."""
    data = name.encode()
    while len(data) > 32:
        name = name[:-1]
        data = name.encode()
    return data


class NfsClient(Protocol):
    """What the lock manager needs of an NFS mount. Failures raise NfsError."""

    async def fsstat(self) -> tuple[int, int]:
        """(total bytes, free bytes) of the export."""

    async def lookup(self, directory: str, name: str) -> str: ...

    async def entry(self, directory: str, name: str) -> tuple[str, str, int]:
        """(handle, kind "file" or "dir", fileid) of a name, from one LOOKUP (NfsError
        NOENT if there is none)."""

    async def create(self, directory: str, name: str, verifier: bytes = b"") -> str:
        """GUARDED create: NfsError(EXIST) if the name exists. With a verifier, an
        EXCLUSIVE create: a retry with the same verifier of a create that made the
        file (its reply lost) succeeds as that create."""

    async def getattr(self, handle: str) -> tuple[str, int]:
        """(kind "file" or "dir", size in bytes)."""

    async def mkdir(self, directory: str, name: str) -> str: ...

    async def readdir(self, directory: str) -> list[tuple[str, str, int]]:
        """(name, kind, size) of each entry."""

    async def read(self, handle: str, count: int, offset: int = 0) -> bytes: ...

    async def write(self, handle: str, data: bytes, offset: int = 0) -> None:
        """A stable (FILE_SYNC) WRITE."""

    async def remove(self, directory: str, name: str) -> None: ...

    async def rename(self, from_dir: str, from_name: str, to_dir: str, to_name: str) -> None: ...


@dataclass
class _Held:
    directory: str
    name: str
    handle: str
    record: LockFile
    renewed: float
    """When (this host's clock) the lock file was last written."""


@dataclass
class _Watch:
    content: bytes
    since: float


def lock_file_name(fileid: int) -> str:
    return f".lck-{fileid:016x}"


class NfsLockManager:
    def __init__(
        self, client: NfsClient, host: uuid.UUID, host_name: str, clock: Clock, boot: int
    ) -> None:
        if not 0 < boot < 2**64:
            raise ValueError("a boot id is a non-zero 64-bit number")
        self.client = client
        self.host = host
        self.host_name = host_name
        self.clock = clock
        self.boot = boot
        self.held: dict[tuple[str, str], _Held] = {}
        self.lost: set[tuple[str, str]] = set()
        self.abandoned: set[tuple[str, str]] = set()
        self._verifiers: dict[tuple[str, str], bytes] = {}
        self._creates = 0
        """Lock files in this boot's name it no longer uses: given up, lost, or whose
        release never landed. Only this boot could renew them, so they are stale now."""
        self.stats: Counter[str] = Counter()
        self._watches: dict[tuple[str, str], _Watch] = {}

    async def retransmitted(self, send: Callable[[], Awaitable[T]]) -> T:
        """An idempotent request sent again when its reply does not come (the path
        failed), RETRANSMITS times, as an NFS client retransmits; NFS errors and a
        lost volume or lease are answers, not lost replies, and pass at once."""
        for attempt in range(RETRANSMITS + 1):
            try:
                return await send()
            except StoragePathLost:
                if attempt == RETRANSMITS:
                    raise
                self.stats["retransmits"] += 1
        raise AssertionError("unreachable")

    def _next_verifier(self) -> bytes:
        """This host's, this boot's and this create's: unique to it, never random."""
        self._creates += 1
        tag = (
            self.host.bytes + self.boot.to_bytes(8, "little") + self._creates.to_bytes(8, "little")
        )
        return hashlib.blake2b(tag, digest_size=16).digest()

    def lock_name(self, fileid: int, lock_type: int = EXCLUSIVE) -> str:
        """The name of this host's lock file on a file: shared for an exclusive lock,
        its own for a read-only one."""
        if lock_type == EXCLUSIVE:
            return lock_file_name(fileid)
        return f"{lock_file_name(fileid)}-ro-{self.host.hex}"

    async def lock(
        self, directory: str, fileid: int, path: str, lock_type: int = EXCLUSIVE
    ) -> None:
        """Takes the lock on the file with this fileid, exclusive or read-only, or
        raises FileLocked. Read-only holders each have their own lock file
        (`.lck-<fileid>-ro-<host>`); either kind creates its file first and then looks
        for the other kind, so an exclusive and a read-only lock never both stand."""
        base = lock_file_name(fileid)
        name = self.lock_name(fileid, lock_type)
        key = (directory, name)
        if key in self.held or (directory, base) in self.held:
            raise FileLocked(f"{path} is already locked by this host", holder=str(self.host))
        if lock_type == EXCLUSIVE and any(
            d == directory and n.startswith(base + "-ro-") for d, n in self.held
        ):
            raise FileLocked(f"{path} is already open read-only on this host")
        # One verifier per lock file until its create is answered: a create whose
        # reply was lost is recognised by the array when this host tries again.
        verifier = self._verifiers.setdefault(key, self._next_verifier())
        while True:
            try:
                handle = await self.retransmitted(
                    lambda: self.client.create(directory, name, verifier)
                )
            except NfsError as e:
                if e.status != NfsStatus.EXIST:
                    raise CannotAccessFile(f"cannot lock {path}: {e}") from None
                await self._break_if_stale(key, path)  # FileLocked while the holder lives
                continue
            record = LockFile(lock_type, self.host, 1, self.clock.now(), self.host_name, self.boot)
            try:
                await self.retransmitted(
                    lambda handle=handle, record=record: self.client.write(handle, record.pack())
                )
            except NfsError as e:
                # Do not leave an empty lock file that blocks everyone for 35 s.
                with contextlib.suppress(NfsError):
                    await self.client.remove(directory, name)
                raise CannotAccessFile(f"cannot write the lock of {path}: {e}") from None
            self.held[key] = _Held(directory, name, handle, record, self.clock.now())
            self.lost.discard(key)  # a lock lost before, taken again: this one holds
            self.abandoned.discard(key)
            self._verifiers.pop(key, None)
            self._watches.pop(key, None)
            break
        try:
            for other in await self._conflicting(directory, base, lock_type):
                await self._break_if_stale((directory, other), path)
        except BaseException:
            await self.unlock(directory, fileid, lock_type)
            raise
        self.stats["locks"] += 1

    async def _conflicting(self, directory: str, base: str, lock_type: int) -> list[str]:
        """The lock files of the other kind on the same file."""
        names = await self.lock_files(directory, base)
        if lock_type == EXCLUSIVE:
            return [n for n in names if n != base]
        return [base] if base in names else []

    async def lock_files(self, directory: str, base: str) -> list[str]:
        """The lock files on one file: `base` (the exclusive one) and the read-only
        ones (`base-ro-<host>`), not those being moved aside by a breaker."""
        try:
            names = [entry[0] for entry in await self.client.readdir(directory)]
        except NfsError as e:
            raise CannotAccessFile(f"cannot list the locks in {directory or '/'}: {e}") from None
        return [
            n for n in names if n == base or (n.startswith(base + "-ro-") and ".broken-" not in n)
        ]

    async def holders(self, directory: str, fileid: int) -> list[tuple[LockFile | None, float]]:
        """Every lock on a file (the exclusive one, or the read-only ones), each with
        how long this host has seen it unchanged."""
        out = []
        for name in await self.lock_files(directory, lock_file_name(fileid)):
            seen = await self._inspect_name(directory, name)
            if seen is not None:
                out.append(seen)
        return out

    async def _break_if_stale(self, key: tuple[str, str], path: str) -> bool:
        """Raises FileLocked while the lock file is live; removes it once its content
        has not changed for STALE_AFTER seconds of watching. True if this host broke
        it, False if it was gone already."""
        directory, name = key
        seen = await self._inspect_name(directory, name)
        if seen is None:
            return False  # released meanwhile
        record, age = seen
        watch = self._watches[key]
        if age < STALE_AFTER and not self._ours_unheld(record, key):
            holder = f"{record.host_name} ({record.owner})" if record else "another host"
            raise FileLocked(
                f"{path} is locked by {holder}", holder=str(record.owner) if record else ""
            )
        # Stale. Move it aside under a name only this host uses (RENAME is atomic),
        # then check that what was moved is the stale record: if another host broke
        # it meanwhile and a fresh lock took its place, put that one back.
        aside = f"{name}.broken-{self.host.hex}"
        self._watches.pop(key, None)
        try:
            await self.client.rename(directory, name, directory, aside)
        except NfsError:
            return False  # gone already: released or broken by another host
        moved = await self.client.read(await self.client.lookup(directory, aside), RECORD_SIZE + 1)
        if moved != watch.content:
            await self.client.rename(directory, aside, directory, name)
            raise FileLocked(f"{path} was locked again while this host broke its stale lock")
        await self.client.remove(directory, aside)
        self.stats["locks_broken"] += 1
        return True

    def _ours_unheld(self, record: LockFile | None, key: tuple[str, str]) -> bool:
        """Whether the record is this host's own and nothing of this host's uses it:
        from another of its boots, which no longer runs, or from this boot but given
        up or lost (a renewal missed past the give-up point; a release that never
        landed: `abandoned`). Then the lock is stale now, whatever its age."""
        if record is None or record.owner != self.host or record.boot == 0:
            return False
        return record.boot != self.boot or key in self.abandoned

    def _watch(self, key: tuple[str, str], content: bytes) -> float:
        """Seconds this host has seen the lock file's content unchanged."""
        now = self.clock.now()
        watch = self._watches.get(key)
        if watch is None or watch.content != content:
            self._watches[key] = watch = _Watch(content, now)
        return now - watch.since

    async def _inspect_name(
        self, directory: str, name: str
    ) -> tuple[LockFile | None, float] | None:
        key = (directory, name)
        try:
            handle = await self.client.lookup(directory, name)
            content = await self.client.read(handle, RECORD_SIZE + 1)
        except NfsError as e:
            if e.status in (NfsStatus.NOENT, NfsStatus.STALE):
                return None
            raise CannotAccessFile(f"cannot read the lock file {name}: {e}") from None
        return LockFile.unpack(content), self._watch(key, content)

    async def break_stale(self, directory: str, fileid: int, path: str) -> bool:
        """Removes a lock file that has not changed for STALE_AFTER seconds of this
        host's watching; FileLocked while it is live. True if it was broken here."""
        return await self._break_if_stale((directory, lock_file_name(fileid)), path)

    async def unlock(self, directory: str, fileid: int, lock_type: int = EXCLUSIVE) -> None:
        key = (directory, self.lock_name(fileid, lock_type))
        held = self.held.pop(key, None)
        self.lost.discard(key)
        if held is None:
            return
        try:
            handle = await self.client.lookup(directory, held.name)
            if await self.client.read(handle, RECORD_SIZE + 1) == held.record.pack():
                await self.client.remove(directory, held.name)
            # Otherwise it is another host's lock now (ours was broken): leave it.
        except NfsError:
            pass  # already gone
        except Exception as e:  # noqa: BLE001 - the path failed: the file may still stand
            # Released as far as this host goes: nothing of it uses the lock, which
            # goes stale for others in 35 s and is this host's to break at once.
            self.abandoned.add(key)
            log.warning("releasing %s/%s: %s", directory, held.name, e)

    async def renew(self) -> None:
        """Rewrites every held lock file (one 84-byte WRITE each). A lock whose file
        was removed or replaced by another host is lost."""
        for key, held in list(self.held.items()):
            try:
                current = await self.client.read(held.handle, RECORD_SIZE + 1)
            except NfsError:
                current = b""  # gone: removed by a host that broke it
            except Exception:  # noqa: BLE001 - the path to the array failed this time
                self._missed(key, held)
                continue
            if current != held.record.pack():
                self._drop(key)  # broken and perhaps taken by another host
                continue
            record = LockFile(
                held.record.lock_type,
                self.host,
                held.record.sequence + 1,
                self.clock.now(),
                self.host_name,
                self.boot,
            )
            sent = self.clock.now()  # what others see dates from the write, not its reply
            try:
                await self.client.write(held.handle, record.pack())
            except Exception:  # noqa: BLE001
                self._missed(key, held)
                continue
            held.record = record
            held.renewed = sent
            self.stats["renewals"] += 1

    def _missed(self, key: tuple[str, str], held: _Held) -> None:
        """A renewal that did not happen. Before others may find the lock stale
        (STALE_AFTER), with one renewal interval to spare, this host gives it up."""
        self.stats["renewal_failures"] += 1
        if self.clock.now() - held.renewed >= GIVE_UP_AFTER:
            self._drop(key)

    def gone(self, key: tuple[str, str]) -> bool:
        """Whether this host can no longer count on the lock: lost, or not renewed
        for GIVE_UP_AFTER (others may break it soon). No I/O."""
        held = self.held.get(key)
        return key in self.lost or (
            held is not None and self.clock.now() - held.renewed >= GIVE_UP_AFTER
        )

    def check_held(self, key: tuple[str, str], path: str) -> None:
        """Raises CannotAccessFile unless I/O under this lock is still safe: it is not
        lost, and was renewed within GIVE_UP_AFTER. Checked at every I/O, not only at
        renewals, so a path that comes back between two renewals cannot carry a write
        past the point where another host may break the lock."""
        held = self.held.get(key)
        if held is not None and self.clock.now() - held.renewed >= GIVE_UP_AFTER:
            self._drop(key)
        if key in self.lost:
            raise CannotAccessFile(
                f"this host lost the lock on {path}: its lock file was broken by another "
                f"host, or not renewed for {GIVE_UP_AFTER:.0f} s"
            )

    async def within_lease(
        self, key: tuple[str, str], path: str, command: Callable[[], Awaitable[T]]
    ) -> T:
        return await self.retransmitted(lambda: self._once_within_lease(key, path, command))

    async def _once_within_lease(
        self, key: tuple[str, str], path: str, command: Callable[[], Awaitable[T]]
    ) -> T:
        """Runs an I/O under a held lock that must land, if at all, before this host's
        give-up point (GIVE_UP_AFTER its last renewal was sent): one still unanswered
        then (held in a hung host's ports, a slow path) is called off and the lock
        given up, so no write of this host lands where another may hold the lock."""
        self.check_held(key, path)
        held = self.held.get(key)
        if held is None:  # read-only opens of files another host holds are not leased
            return await command()
        left = held.renewed + GIVE_UP_AFTER - self.clock.now()
        try:
            async with Timeout(self.clock, left):
                return await command()
        except TimeoutError:
            self._drop(key)
            raise CannotAccessFile(
                f"an I/O on {path} was unanswered at this host's give-up point for its lock"
            ) from None

    def abandon(self, key: tuple[str, str]) -> None:
        """Gives the lock up without I/O (its holder was killed): no more renewals,
        so it goes stale for others; this host may break it at once."""
        if key in self.held:
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        self.held.pop(key, None)
        self.lost.add(key)
        self.abandoned.add(key)
        self.stats["locks_lost"] += 1

    async def renew_forever(self) -> None:
        while True:
            await self.clock.sleep(DISK_FILE_LOCK_UPDATE_FREQ)
            try:
                await self.renew()
            except Exception:  # noqa: BLE001 - renewals must go on
                self.stats["renewal_failures"] += 1


class ExportClient:
    """An NfsClient over an in-process NfsExport, as root from one client. Each call
    first awaits `arrive` (the array's `export_operation`: injected latency, a
    restart dropping it) or at least yields to the event loop, as a round trip would."""

    def __init__(
        self, export: NfsExport, client: str, arrive: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.export = export
        self.caller = Caller(client, 0)
        self._arrive = arrive or _round_trip

    async def fsstat(self) -> tuple[int, int]:
        await self._arrive()
        return self.export.fsstat(self.caller)

    async def lookup(self, directory: str, name: str) -> str:
        await self._arrive()
        return self.export.lookup(self.caller, directory, name)[0]

    async def entry(self, directory: str, name: str) -> tuple[str, str, int]:
        await self._arrive()
        handle, attributes = self.export.lookup(self.caller, directory, name)
        return handle, attributes.kind, attributes.fileid

    async def create(self, directory: str, name: str, verifier: bytes = b"") -> str:
        await self._arrive()
        mode = CreateMode.EXCLUSIVE if verifier else CreateMode.GUARDED
        return self.export.create(self.caller, directory, name, mode, verifier)[0]

    async def getattr(self, handle: str) -> tuple[str, int]:
        await self._arrive()
        attributes = self.export.getattr(self.caller, handle)
        return attributes.kind, attributes.size

    async def mkdir(self, directory: str, name: str) -> str:
        await self._arrive()
        return self.export.mkdir(self.caller, directory, name)[0]

    async def readdir(self, directory: str) -> list[tuple[str, str, int]]:
        await self._arrive()
        return [(n, a.kind, a.size) for n, a in self.export.readdir(self.caller, directory)]

    async def read(self, handle: str, count: int, offset: int = 0) -> bytes:
        await self._arrive()
        return self.export.read(self.caller, handle, offset, count)[0]

    async def write(self, handle: str, data: bytes, offset: int = 0) -> None:
        await self._arrive()
        self.export.write(self.caller, handle, offset, data, stable=True)

    async def remove(self, directory: str, name: str) -> None:
        await self._arrive()
        self.export.remove(self.caller, directory, name)

    async def rename(self, from_dir: str, from_name: str, to_dir: str, to_name: str) -> None:
        await self._arrive()
        self.export.rename(self.caller, from_dir, from_name, to_dir, to_name)


async def _round_trip() -> None:
    await asyncio.sleep(0)
