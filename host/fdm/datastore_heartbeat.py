"""vSphere HA's datastore heartbeating on a host: the files each agent keeps on the
cluster's heartbeat datastores, and how a master reads another host's.

In `.vSphere-HA/<cluster>/` on each heartbeat datastore it reaches (vCenter chooses
them, das.heartbeatDsPerHost), every agent keeps two files, through the host's own
datastore files and their on-disk locks like any other file:

- `host-<host>-hb`, its datastore heartbeat.
  VMFS: created once, then held open exclusive for as long as the agent runs, and
  never written: its liveness is its lock holder's VMFS heartbeat (bumped every 3 s
  on the volume). A reader asks the file's lock who holds it and whether that
  holder's heartbeat is live as the reader watches it (it moved within 16 s and the
  slot was not cleared), exactly as a host deciding whether it may break a lock does
  (StorageStack.query_lock).
  NFS: rewritten every NFS_REWRITE_S (5 s) with a line naming the host, a sequence
  number and its clock, each time under a short exclusive lock (its `.lck` file
  comes and goes). A reader opens it read-only and finds it live when it has seen
  its content change within NFS_STALE_AFTER_S of its own watching. An open refused
  at that instant by the writer's lock (or a dead writer's) is no change seen.
- `host-<host>-poweron`, the VMs powered on here: its first line `1` while the agent
  is isolated, else `0`, then one VM name a line. Rewritten, under a short exclusive
  lock, whenever that changes; read read-only.

Either way a reader knows a heartbeat stopped only from having watched it: a host
whose heartbeat it first sees now looks live for the next 16 s (VMFS) or 15 s (NFS).
So a master watches every other host's heartbeat file every WATCH_EVERY_S from its
election on, and reads a silent host's files again just before each verdict.

The shell (service.py) calls these on its loops, under timeouts of the host's clock;
a storage failure reaches it as a VimFault (CannotAccessFile, FileNotFound, ...),
TimeoutError or OSError, and costs one round on one datastore, never the agent. It
never writes another host's files and never reaches the array but through this
host's datastore files: it takes and breaks locks only as any open of a file does
(a dead writer's lock is stale after VMFS's 16 s or NFS's 35 s, never before).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from vsim.clock import Clock
from vsim.faults import (
    CannotAccessFile,
    FileAlreadyExists,
    FileLocked,
    FileNotFound,
    InvalidArgument,
    NotFound,
)
from vsim.host.storage.datastore_files import (
    DatastoreFile,
    DatastoreFiles,
    split_path,
    wait_out_short_holds,
    write_whole,
)
from vsim.host.storage.nfs_lock import LOCK_UPDATE_TIMEOUT
from vsim.host.storage.storage_stack import StorageStack
from vsim.storage.vmfs_format import LockMode

HA_DIR = ".vSphere-HA"
NFS_REWRITE_S = 5.0
"""How often an agent rewrites its heartbeat file on an NFS datastore."""
NFS_STALE_AFTER_S = 2 * NFS_REWRITE_S + LOCK_UPDATE_TIMEOUT
"""15 s of a reader's watching without a change: the NFS heartbeat has stopped. The
NFS lock rule (missed rewrites x their period + NFS.LockUpdateTimeout) on the
heartbeat's 5 s with two misses, not a lock file's three (35 s would outlive HA's
18 s verdict): a stopped host is stale by then, a beating one never looks it."""
WATCH_EVERY_S = 0.5
"""How often a master reads every other host's heartbeat file. A heartbeat that
stopped is first seen still at most this late (and the read's time): with the host's
last network heartbeat within the second before, it has been watched still for over
16 s (VMFS's HB_TIMEOUT; NFS: 15 s) by the verdict at 18 s."""
HEARTBEAT_BYTES = 256
"""What a reader reads of an NFS heartbeat file (its one line)."""
POWERON_BYTES = 64 * 1024
"""The most a reader reads of a poweron file."""


def cluster_dir(cluster: str) -> str:
    """The cluster's directory on a heartbeat datastore (the name quoted, so that a
    cluster's name is one path name)."""
    return f"{HA_DIR}/{quote(cluster, safe='')}"


def heartbeat_path(cluster: str, host: str) -> str:
    return f"{cluster_dir(cluster)}/host-{host}-hb"


def poweron_path(cluster: str, host: str) -> str:
    return f"{cluster_dir(cluster)}/host-{host}-poweron"


def check_paths(cluster: str, hosts: Iterable[str]) -> None:
    """InvalidArgument unless every host's files have valid datastore paths."""
    for host in hosts:
        try:
            names = split_path(poweron_path(cluster, host))
        except InvalidArgument as e:
            raise InvalidArgument(f"the cluster's heartbeat files: {e}") from None
        if len(names) != 3:
            raise InvalidArgument(f"cluster {cluster[:40]!r} is no directory name")


def poweron_text(isolated: bool, powered_on: Iterable[str]) -> bytes:
    return "".join(f"{line}\n" for line in ("1" if isolated else "0", *sorted(powered_on))).encode()


def poweron_says_isolated(data: bytes) -> bool:
    return data.split(b"\n", 1)[0].strip() == b"1"


async def _ensure(make, path: str) -> None:
    """make(path) (a mkdir or a create), a name already there being no failure."""
    with contextlib.suppress(FileAlreadyExists):
        await make(path)


async def _close_quietly(file: DatastoreFile | None) -> None:
    if file is not None:
        with contextlib.suppress(Exception):
            await file.close()


@dataclass
class _Kept:
    """What this host keeps on one datastore, as far as it knows."""

    fs: DatastoreFiles
    made: bool = False
    """The cluster's directory exists."""
    held: DatastoreFile | None = None
    """VMFS: the heartbeat file, open exclusive."""
    rewritten: float = float("-inf")
    """NFS: when the heartbeat file was last rewritten."""
    sequence: int = 0
    poweron: bytes = b""
    """What the poweron file was last written with."""
    guard: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held by the round on it: one round at a time on one datastore."""
    gone: bool = False
    """Given up (forgotten, or a new mount): a round waiting for it does nothing."""


PowerOn = Callable[[], tuple[Iterable[str], bool]]
"""What the poweron file says now: the VMs powered on here, and whether the agent is
isolated."""


async def _give_up(kept: _Kept) -> None:
    """Closes what a datastore's rounds hold, once the one in progress is done."""
    async with kept.guard:
        kept.gone = True
        held, kept.held = kept.held, None
        await _close_quietly(held)


class HeartbeatFiles:
    """This host's own files on the heartbeat datastores."""

    def __init__(self, storage: StorageStack, cluster: str, host: str, poweron: PowerOn) -> None:
        self.storage = storage
        self.cluster = cluster
        self.host = host
        self.poweron = poweron
        self._kept: dict[str, _Kept] = {}

    async def keep(self, datastore: str) -> None:
        """One round on one datastore: the directory and the files there, the
        heartbeat held (VMFS) or rewritten when due (NFS), the poweron file rewritten
        if what it says changed (asked once this round has the datastore to itself,
        so that no round writes an older state over a newer one)."""
        fs = self.storage.files.get(datastore)
        if fs is None:
            await self.forget(datastore)
            raise NotFound(f"{datastore} is not mounted on {self.storage.host_name}")
        kept = self._kept.get(datastore)
        if kept is None or kept.fs is not fs:  # first, or a new mount
            old, kept = kept, _Kept(fs)
            self._kept[datastore] = kept
            if old is not None:
                await _give_up(old)
        async with kept.guard:
            if kept.gone:
                return
            try:
                await self._keep(datastore, kept)
            except FileNotFound:
                kept.made = False  # the directory went: made again next round
                raise

    async def _keep(self, datastore: str, kept: _Kept) -> None:
        fs = kept.fs
        if not kept.made:
            await _ensure(fs.mkdir, HA_DIR)
            await _ensure(fs.mkdir, cluster_dir(self.cluster))
            kept.made = True
        if datastore in self.storage.vmfs:
            await self._hold(kept)
        elif self.storage.clock.now() - kept.rewritten >= NFS_REWRITE_S:
            await self._rewrite(kept)
        powered_on, isolated = self.poweron()
        poweron = poweron_text(isolated, powered_on)
        if poweron != kept.poweron:
            path = poweron_path(self.cluster, self.host)
            await _ensure(fs.create, path)
            await write_whole(fs, path, poweron)
            kept.poweron = poweron

    async def _hold(self, kept: _Kept) -> None:
        """The VMFS heartbeat file open exclusive: opened again once the volume was
        lost under it (its lock then is others' to break)."""
        if kept.held is not None:
            try:
                await kept.held.size()  # no I/O: fails once the volume is lost
                return
            except CannotAccessFile:
                held, kept.held = kept.held, None
                await _close_quietly(held)
        path = heartbeat_path(self.cluster, self.host)
        await _ensure(kept.fs.create, path)
        kept.held = await kept.fs.open(path, LockMode.EXCLUSIVE)

    async def _rewrite(self, kept: _Kept) -> None:
        began = self.storage.clock.now()
        path = heartbeat_path(self.cluster, self.host)
        await _ensure(kept.fs.create, path)
        line = f"{self.host} {kept.sequence + 1} {began:.3f}"
        await write_whole(kept.fs, path, line.encode())
        kept.sequence += 1
        kept.rewritten = began

    def kept(self) -> list[str]:
        """The datastores this host keeps its files on."""
        return sorted(self._kept)

    async def forget(self, datastore: str) -> None:
        """No longer kept there (not a heartbeat datastore, not reached, unmounted):
        the heartbeat file's lock is given back."""
        kept = self._kept.pop(datastore, None)
        if kept is not None:
            await _give_up(kept)

    async def close(self) -> None:
        for datastore in self.kept():
            await self.forget(datastore)


async def _read(fs: DatastoreFiles, path: str, most: int, wait: bool) -> bytes | None:
    """A file's first bytes, read under a read-only lock; None when it is not there
    or (wait: after waiting out a short hold) its writer's lock is in the way."""
    try:
        if wait:
            file = await wait_out_short_holds(
                fs.clock, fs.rng, lambda: fs.open(path, LockMode.READ_ONLY)
            )
        else:
            file = await fs.open(path, LockMode.READ_ONLY)
    except (FileNotFound, FileLocked):
        return None
    try:
        return await file.read(0, min(most, await file.size()))
    finally:
        await file.close()


class HeartbeatReader:
    """A host's reading of the others' files; it watches NFS heartbeats itself (VMFS
    heartbeats are watched by the volume, as for its locks)."""

    def __init__(self, storage: StorageStack, cluster: str, clock: Clock) -> None:
        self.storage = storage
        self.cluster = cluster
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[bytes, float]] = {}
        """(datastore, host) -> an NFS heartbeat's content and when it was first seen."""

    def _files(self, datastore: str) -> DatastoreFiles:
        fs = self.storage.files.get(datastore)
        if fs is None:
            raise NotFound(f"{datastore} is not mounted on {self.storage.host_name}")
        return fs

    async def beating(self, datastore: str, host: str) -> bool:
        """Whether the host's heartbeat on this datastore is live, as watched from here."""
        fs = self._files(datastore)
        path = heartbeat_path(self.cluster, host)
        if datastore in self.storage.vmfs:
            status = await self.storage.query_lock(datastore, path)
            return status.mode == "EXCLUSIVE" and any(h.live for h in status.holders)
        content = await _read(fs, path, HEARTBEAT_BYTES, wait=False)
        now = self.clock.now()
        seen = self._seen.get((datastore, host))
        if content and (seen is None or seen[0] != content):
            self._seen[(datastore, host)] = seen = (content, now)
        return seen is not None and now - seen[1] < NFS_STALE_AFTER_S

    async def poweron(self, datastore: str, host: str) -> tuple[bool, frozenset[str]]:
        """What the host's poweron file on this datastore says: whether it is
        isolated, and the VMs it runs (nothing known: not isolated, none)."""
        data = await _read(
            self._files(datastore), poweron_path(self.cluster, host), POWERON_BYTES, wait=True
        )
        if data is None:
            return False, frozenset()
        lines = data.decode(errors="replace").split("\n")
        return poweron_says_isolated(data), frozenset(line for line in lines[1:] if line)
