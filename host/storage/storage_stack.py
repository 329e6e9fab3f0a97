"""The host kernel's storage stack: its mounted datastores (VMFS volumes on LUNs,
NFS exports) and the background work they need (VMFS heartbeats every 3 s, NFS lock
renewals every 10 s), spawned through the boot's runtime. Ports come in from the
shell: block devices and NFS clients over the array's gRPC for a Ray host, in-process
ones for the simulator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from vsim.faults import (
    AlreadyExists,
    CannotAccessFile,
    InvalidArgument,
    NotFound,
    ResourceInUse,
    StoragePathLost,
)
from vsim.host.storage.datastore_files import parent_of
from vsim.host.storage.nfs_files import NfsFileSystem
from vsim.host.storage.nfs_lock import (
    EXCLUSIVE,
    STALE_AFTER,
    ExportClient,
    NfsClient,
    NfsLockManager,
)
from vsim.host.storage.vmfs import BlockDevice, LunDevice, VmfsVolume, format_volume, is_live
from vsim.host.storage.vmfs_files import VmfsFileSystem
from vsim.iscsi import initiator_name
from vsim.runtime import Runtime
from vsim.storage.array import StorageArray
from vsim.storage.nfs_export import NfsError
from vsim.storage.scsi import ScsiError
from vsim.storage.vmfs_format import SUPERBLOCK_LBA, LockMode, Superblock, VolumeLockMode

LOCK_MODES = {"ats-only": VolumeLockMode.ATS_ONLY, "ats+scsi": VolumeLockMode.ATS_SCSI}
DESCRIBE_TIMEOUT = 2.0
"""Seconds (simulated) a datastore's free space may take to come back before it is
reported inaccessible (a cut storage network drops packets: nothing else would end
the wait)."""


class StoragePorts(Protocol):
    """How a host reaches arrays: a LUN as its initiator sees it, an NFS mount."""

    async def block_device(
        self, endpoint: str, thumbprint: str, lun: int, initiator: str
    ) -> BlockDevice: ...

    async def nfs_client(
        self, endpoint: str, thumbprint: str, export: str, client: str
    ) -> NfsClient: ...

    async def close(self) -> None: ...


def _as_path_loss(
    arrive: Callable[[Any], Awaitable[None]], target: Any
) -> Callable[[], Awaitable[None]]:
    """The array's check as a command arrives, with a command the array dropped (it
    restarted) failing as a lost path does over gRPC: CannotAccessFile."""

    async def arrived() -> None:
        try:
            await arrive(target)
        except ConnectionResetError as e:
            raise StoragePathLost(f"the path to the array failed: {e}") from None

    return arrived


class LocalStoragePorts:
    """StoragePorts onto an array object in this process (the in-process engine).
    Each command goes through the array's own latency and restart checks, as the
    gRPC service's do."""

    def __init__(self, array: StorageArray) -> None:
        self.array = array

    async def block_device(
        self, endpoint: str, thumbprint: str, lun: int, initiator: str
    ) -> BlockDevice:
        try:
            device = self.array.lun(initiator, lun)
        except ScsiError as e:
            raise CannotAccessFile(f"LUN {lun}: {e}") from None
        return LunDevice(device, initiator, _as_path_loss(self.array.lun_command, lun))

    async def nfs_client(
        self, endpoint: str, thumbprint: str, export: str, client: str
    ) -> NfsClient:
        try:
            mounted = self.array.export(export)
        except NfsError as e:
            raise CannotAccessFile(f"export {export}: {e}") from None
        return ExportClient(mounted, client, _as_path_loss(self.array.export_operation, export))

    async def close(self) -> None:
        pass


@dataclass(frozen=True)
class Datastore:
    """A mounted datastore, as the host reports it."""

    name: str
    type: str
    accessible: bool
    capacity_bytes: int
    free_bytes: int
    heartbeat_slot: int = -1
    lock_mode: str = ""


@dataclass(frozen=True)
class LockHolder:
    host: str
    """The holder's host UUID."""
    heartbeat_slot: int
    """VMFS: its heartbeat slot (-1 on NFS)."""
    seconds_unchanged: float
    """How long this host has seen the holder's heartbeat (VMFS) or lock file (NFS)
    unchanged; -1 when the holder is gone (its slot was cleared)."""
    live: bool


@dataclass(frozen=True)
class LockStatus:
    mode: str
    """"FREE", "EXCLUSIVE", "READ_ONLY" or "MULTI_WRITER"."""
    holders: tuple[LockHolder, ...] = ()
    broken: bool = False
    """Set by break_stale_lock when it broke the lock."""


class StorageStack:
    def __init__(
        self,
        host: uuid.UUID,
        host_name: str,
        runtime: Runtime,
        ports: StoragePorts | None = None,
    ):
        """runtime: this boot's (its clock, its rng for the boot id, lock backoffs
        and disk ids, and the tasks heartbeats and renewals run in)."""
        self.host = host
        self.host_name = host_name
        self.ports = ports
        self._capacity: dict[str, int] = {}
        self.runtime = runtime
        self.clock = runtime.clock
        self.rng = runtime.random
        self.boot = self.rng.getrandbits(64) or 1
        """This boot's id, in the NFS lock files it writes (one stack per boot)."""
        self.vmfs: dict[str, VmfsVolume] = {}
        self.nfs: dict[str, NfsLockManager] = {}
        self.files: dict[str, VmfsFileSystem | NfsFileSystem] = {}
        self._loops: dict[str, asyncio.Task] = {}
        self._targets: dict[str, tuple[str, str, str]] = {}
        """Mounted datastore -> where it lives (type, array endpoint, LUN or export)."""

    async def mount_vmfs(self, label: str, device: BlockDevice) -> VmfsVolume:
        if label in self.vmfs or label in self.nfs:
            raise InvalidArgument(f"a datastore named {label} is already mounted")
        volume = VmfsVolume(device, self.host, self.clock, self.rng)
        await volume.mount()
        self.vmfs[label] = volume
        self.files[label] = VmfsFileSystem(volume)
        self._loops[label] = self.runtime.spawn(volume.heartbeat_forever(), f"heartbeat:{label}")
        return volume

    async def mount_nfs(self, label: str, client: NfsClient) -> NfsLockManager:
        if label in self.vmfs or label in self.nfs:
            raise InvalidArgument(f"a datastore named {label} is already mounted")
        manager = NfsLockManager(client, self.host, self.host_name, self.clock, self.boot)
        self.nfs[label] = manager
        self.files[label] = NfsFileSystem(manager, self.rng)
        self._loops[label] = self.runtime.spawn(manager.renew_forever(), f"lock-renewal:{label}")
        return manager

    # datastores, by where they live on an array

    def _ports(self) -> StoragePorts:
        if self.ports is None:
            raise CannotAccessFile(f"{self.host_name} has no path to a storage array")
        return self.ports

    async def format_vmfs(
        self, endpoint: str, thumbprint: str, lun: int, label: str, mode: str, volume: uuid.UUID
    ) -> int:
        """vmkfstools -C on a LUN this host sees; returns the LUN's capacity."""
        if mode not in LOCK_MODES:
            raise InvalidArgument(f"lock mode must be ats-only or ats+scsi, got {mode[:40]!r}")
        device = await self._ports().block_device(
            endpoint, thumbprint, lun, initiator_name(self.host_name)
        )
        try:
            await format_volume(device, label, LOCK_MODES[mode], volume)
            return await device.capacity()
        except ScsiError as e:
            raise CannotAccessFile(f"cannot format LUN {lun}: {e}") from None

    async def probe_vmfs(self, endpoint: str, thumbprint: str, lun: int) -> Superblock | None:
        """The VMFS volume on a LUN this host sees, if the LUN holds one."""
        device = await self._ports().block_device(
            endpoint, thumbprint, lun, initiator_name(self.host_name)
        )
        try:
            sector = await device.read(SUPERBLOCK_LBA, 1)
        except ScsiError as e:
            raise CannotAccessFile(f"cannot read LUN {lun}: {e}") from None
        try:
            return Superblock.unpack(sector)
        except ValueError:  # no (readable) volume: the LUN is blank or holds another format
            return None

    async def mount(
        self, name: str, kind: str, endpoint: str, thumbprint: str, lun: int, export: str
    ) -> Datastore:
        ports = self._ports()
        target = (kind, endpoint, str(lun) if kind == "vmfs" else export)
        for other, where in self._targets.items():
            # A second mount of one volume would take this host's heartbeat slot
            # again (a new generation) and so void the first mount's locks.
            if where == target and other != name:
                raise AlreadyExists(
                    f"{'LUN ' + str(lun) if kind == 'vmfs' else 'export ' + export} is "
                    f"already mounted on {self.host_name} as datastore {other}"
                )
        try:
            if kind == "vmfs":
                device = await ports.block_device(
                    endpoint, thumbprint, lun, initiator_name(self.host_name)
                )
                capacity = await device.capacity()
                await self.mount_vmfs(name, device)
                self._capacity[name] = capacity
            elif kind == "nfs":
                client = await ports.nfs_client(endpoint, thumbprint, export, self.host_name)
                await client.fsstat()  # the export answers this host, or the mount fails
                await self.mount_nfs(name, client)
            else:
                raise InvalidArgument(f"datastore type must be vmfs or nfs, got {kind[:20]!r}")
        except (ScsiError, NfsError, ValueError) as e:
            raise CannotAccessFile(f"cannot mount {name} on {self.host_name}: {e}") from None
        self._targets[name] = target
        return await self.describe(name)

    async def unmount(self, name: str, in_use: list[str]) -> None:
        """esxcli storage filesystem unmount: stops the datastore's heartbeats or lock
        renewals and frees its heartbeat slot; the data stays on the array. Refused
        while VMs registered here (in_use) live on it."""
        if name not in self.files:
            raise NotFound(f"no datastore {name[:80]!r} is mounted on {self.host_name}")
        if in_use:
            raise ResourceInUse(
                f"cannot unmount {name} from {self.host_name}: VMs registered here use it "
                f"({', '.join(sorted(in_use))})"
            )
        loop = self._loops.pop(name, None)
        if loop is not None:
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
        volume = self.vmfs.pop(name, None)
        if volume is not None:
            await volume.unmount()
        self.nfs.pop(name, None)
        self.files.pop(name, None)
        self._capacity.pop(name, None)
        self._targets.pop(name, None)

    async def describe(self, name: str) -> Datastore:
        if name in self.vmfs:
            volume = self.vmfs[name]
            sb = volume.superblock
            capacity = self._capacity.get(name, 0)
            mode = next((k for k, v in LOCK_MODES.items() if sb and v == sb.lock_mode), "")
            try:
                if volume.lost_access:
                    raise ConnectionError("lost access")
                free = await self.runtime.wait_for(self.files[name].free_bytes(), DESCRIBE_TIMEOUT)
            except Exception:  # noqa: BLE001 - lost access or no path: report it so
                return Datastore(name, "vmfs", False, capacity, 0, volume.slot, mode)
            return Datastore(
                name, "vmfs", not volume.lost_access, capacity, free, volume.slot, mode
            )
        manager = self.nfs_mount(name)
        try:
            total, free = await self.runtime.wait_for(manager.client.fsstat(), DESCRIBE_TIMEOUT)
        except Exception:  # noqa: BLE001 - unreachable export: mounted but inaccessible
            return Datastore(name, "nfs", False, 0, 0)
        return Datastore(name, "nfs", True, total, free)

    async def datastores(self) -> list[Datastore]:
        return list(
            await asyncio.gather(*(self.describe(n) for n in sorted([*self.vmfs, *self.nfs])))
        )

    # lock arbitration

    async def query_lock(self, label: str, path: str) -> LockStatus:
        """Who holds the lock on path, and how fresh their heartbeat looks from here."""
        if label in self.vmfs:
            index = await self.files[label].lock_index(path)
            if index is None:
                return LockStatus("FREE")
            return await self._vmfs_status(self.vmfs[label], index)
        directory, fileid = await self._nfs_file(label, path)
        return await self._nfs_status(self.nfs[label], directory, fileid)

    async def break_stale_lock(self, label: str, path: str) -> LockStatus:
        """Breaks the lock on path if its holder is gone; FileLocked while it lives.
        Returns the lock as it was."""
        if label in self.vmfs:
            volume = self.vmfs[label]
            index = await self.files[label].lock_index(path)
            if index is None:
                return LockStatus("FREE")
            before = await self._vmfs_status(volume, index)
            if before.mode == "FREE":
                return before
            broken = (await volume.break_stale(index)).mode != LockMode.FREE
            return _as_broken(before) if broken else before
        manager = self.nfs_mount(label)
        directory, fileid = await self._nfs_file(label, path)
        before = await self._nfs_status(manager, directory, fileid)
        if before.mode == "FREE":
            return before
        broken = await manager.break_stale(directory, fileid, path)
        return _as_broken(before) if broken else before

    @staticmethod
    async def _vmfs_status(volume: VmfsVolume, index: int) -> LockStatus:
        record = await volume.read_lock(index)
        if record.mode == LockMode.FREE:
            return LockStatus("FREE")
        holders = []
        for owner in record.owners:
            age = await volume.heartbeat_age(owner)
            holders.append(
                LockHolder(str(owner.host), owner.slot, -1 if age is None else age, is_live(age))
            )
        return LockStatus(record.mode.name, tuple(holders))

    async def _nfs_file(self, label: str, path: str) -> tuple[str, int]:
        """(directory handle, fileid) of a file on an NFS datastore."""
        self.nfs_mount(label)  # NotFound when it is not mounted here
        files = self.files[label]
        directory, name = parent_of(path)
        handle = await files.handle(directory)
        try:
            return handle, (await files.client.entry(handle, name))[2]
        except NfsError as e:
            raise NotFound(f"{path} on {label}: {e}") from None

    @staticmethod
    async def _nfs_status(manager: NfsLockManager, directory: str, fileid: int) -> LockStatus:
        seen = await manager.holders(directory, fileid)  # exclusive, or read-only ones
        if not seen:
            return LockStatus("FREE")
        holders = tuple(
            LockHolder(str(record.owner) if record else "unknown", -1, age, age < STALE_AFTER)
            for record, age in seen
        )
        exclusive = any(record is None or record.lock_type == EXCLUSIVE for record, _ in seen)
        return LockStatus("EXCLUSIVE" if exclusive else "READ_ONLY", holders)

    def nfs_mount(self, label: str) -> NfsLockManager:
        if label not in self.nfs:
            raise NotFound(f"no NFS datastore {label} is mounted on {self.host_name}")
        return self.nfs[label]

    def halt(self) -> None:
        """Stops heartbeats and renewals at once (the host crashed or shuts down)."""
        for task in self._loops.values():
            task.cancel()
        self._loops.clear()

    async def close(self) -> None:
        self.halt()
        if self.ports is not None:
            await self.ports.close()


def _as_broken(before: LockStatus) -> LockStatus:
    """The lock as it was when broken: its holders were judged gone by the break, even
    if the look just before it (a moment earlier) still found them live."""
    return replace(
        before, broken=True, holders=tuple(replace(h, live=False) for h in before.holders)
    )
