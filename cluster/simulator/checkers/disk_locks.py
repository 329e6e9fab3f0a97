"""Invariant: at no instant do two hosts hold write access to one VMDK, and no host
writes a disk it does not hold (DESIGN.md section 7, 1).

Read from the array's view, never from what hosts believe: at every data write the
array runs to a guest disk's extent (`-flat.vmdk`, `-delta.vmdk`), the checker reads
the truth on the array's own files at that instant. On VMFS: the lock record guarding
the file's descriptor must be exclusive and name the writer, and the writer's
heartbeat slot must still be its own (a breaker clears the slot before it takes the
lock). On NFS: the `.lck-<fileid>` file beside the disk must hold the writer's name
and boot. The block-to-file map is kept from the descriptor writes the array runs.
Lock grants and releases go into the history as they land.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vsim.cluster.simulator.checkers import Checker
from vsim.host.storage.nfs_lock import RECORD_SIZE, LockFile, lock_file_name
from vsim.storage.vmfs_format import (
    SECTOR,
    FileDescriptor,
    FileType,
    HeartbeatSlot,
    LockMode,
    LockRecord,
    SlotState,
    Superblock,
)

GUARDED = ("-flat.vmdk", "-delta.vmdk")
"""The files a guest writes: its disks' extents."""


def guarded(path: str) -> bool:
    return path.endswith(GUARDED)


class _Volume:
    """What the checker knows of one LUN's VMFS layout, read from its file."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.superblock: Superblock | None = None
        self.files: dict[int, int] = {}
        """volume block -> descriptor index of the file it belongs to"""
        self.blocks_of: dict[int, set[int]] = {}
        self.indirect: dict[int, int] = {}
        """pointer block -> descriptor index"""
        self.locks: dict[int, LockRecord] = {}

    def read(self, lba: int, count: int = 1) -> bytes:
        return os.pread(self.fd, count * SECTOR, lba * SECTOR)

    def layout(self) -> Superblock | None:
        if self.superblock is None:
            try:
                self.superblock = Superblock.unpack(self.read(0))
            except ValueError:
                return None  # not formatted yet
        return self.superblock

    def close(self) -> None:
        os.close(self.fd)


class DiskLockChecker(Checker):
    name = "disk-lock exclusion"

    def __init__(self, dc, history) -> None:
        super().__init__(dc, history)
        self._volumes: dict[int, _Volume] = {}
        self._uuids: dict[str, object] = {}
        self._boots: dict[str, int] = {}
        self.writes_checked = 0

    # who the writer is (its identity, not its beliefs)

    def _identity(self, host: str) -> None:
        hostd = self.dc.engine.running(host)
        if hostd is not None:
            self._uuids[host] = hostd.storage.host
            self._boots[host] = hostd.storage.boot

    def storage(self, host: str, device: Any, command: str, args: tuple) -> None:
        self._identity(host)
        if hasattr(device, "lun"):
            if command in ("write", "compare_and_write"):
                self._vmfs_write(host, device.lun, args[0], args[-1])
        elif command == "write":
            self._nfs_write(host, device.export.root, args[0])
        elif command in ("create", "remove"):
            self._nfs_lock_change(host, device.export.root, command, args)

    # VMFS

    def _volume(self, lun: Any) -> _Volume:
        volume = self._volumes.get(lun.id)
        if volume is None:
            volume = self._volumes[lun.id] = _Volume(lun.path)
        return volume

    def _vmfs_write(self, host: str, lun: Any, lba: int, data: bytes) -> None:
        volume = self._volume(lun)
        if lba == 0:
            volume.superblock = None
        sb = volume.layout()
        if sb is None:
            return
        sectors = len(data) // SECTOR
        end = lba + sectors
        first_lock, first_desc = sb.lock_lba(0), sb.descriptor_lba(0)
        n = sb.lock_records
        for sector in range(max(lba, first_lock), min(end, first_lock + n)):
            self._lock_changed(sb, volume, sector - first_lock)
        for sector in range(max(lba, first_desc), min(end, first_desc + n)):
            self._descriptor_changed(sb, volume, sector - first_desc)
        data_start = sb.block_lba(sb.first_data_block)
        if end <= data_start:
            return
        per_block = sb.block_size // SECTOR
        first = sb.first_data_block + (max(lba, data_start) - data_start) // per_block
        last = sb.first_data_block + (end - 1 - data_start) // per_block
        for block in range(first, last + 1):
            if block in volume.indirect:
                self._descriptor_changed(sb, volume, volume.indirect[block])
                continue
            index = volume.files.get(block)
            if index is not None:
                self._check_vmfs_writer(sb, volume, host, index)

    def _descriptor_changed(self, sb: Superblock, volume: _Volume, index: int) -> None:
        for block in volume.blocks_of.pop(index, set()):
            volume.files.pop(block, None)
        volume.indirect = {b: i for b, i in volume.indirect.items() if i != index}
        try:
            descriptor = FileDescriptor.unpack(volume.read(sb.descriptor_lba(index)))
        except ValueError:
            return
        if descriptor.type != FileType.FILE or not guarded(descriptor.path):
            return
        blocks = {b for b in descriptor.direct if b}
        if descriptor.indirect:
            volume.indirect[descriptor.indirect] = index
            pointers = volume.read(sb.block_lba(descriptor.indirect), sb.block_size // SECTOR)
            for at in range(0, len(pointers), 4):
                block = int.from_bytes(pointers[at : at + 4], "little")
                if block:
                    blocks.add(block)
        volume.blocks_of[index] = blocks
        for block in blocks:
            volume.files[block] = index

    def _lock_changed(self, sb: Superblock, volume: _Volume, index: int) -> None:
        try:
            record = LockRecord.unpack(volume.read(sb.lock_lba(index)))
        except ValueError:
            return
        before = volume.locks.get(index)
        volume.locks[index] = record
        if before is not None and (before.mode, before.owners) == (record.mode, record.owners):
            return
        label = sb.label
        if record.mode == LockMode.FREE:
            if before is not None and before.mode != LockMode.FREE:
                self.history.record("lock-release", f"{label}:{before.path or index}")
            return
        owners = ",".join(self._host_of(o.host) for o in record.owners)
        self.history.record(
            "lock-grant",
            f"{label}:{record.path} {record.mode.name.lower()} to {owners} gen {record.generation}",
        )

    def _host_of(self, host_uuid: object) -> str:
        for name, known in self._uuids.items():
            if known == host_uuid:
                return name
        return str(host_uuid)[:8]

    def _check_vmfs_writer(self, sb: Superblock, volume: _Volume, host: str, index: int) -> None:
        self.writes_checked += 1
        writer = self._uuids.get(host)
        record = LockRecord.unpack(volume.read(sb.lock_lba(index)))
        path = f"{sb.label}:{record.path or index}"
        mine = [o for o in record.owners if o.host == writer]
        if record.mode != LockMode.EXCLUSIVE or not mine:
            holders = ",".join(self._host_of(o.host) for o in record.owners) or "nobody"
            self.violate(
                f"{host} wrote {path} while its lock is {record.mode.name.lower()} "
                f"and held by {holders}"
            )
            return
        slot = HeartbeatSlot.unpack(volume.read(sb.heartbeat_lba(mine[0].slot)))
        if (
            slot.state != SlotState.IN_USE
            or slot.owner != writer
            or slot.generation != mine[0].slot_generation
        ):
            self.violate(
                f"{host} wrote {path} after another host cleared its heartbeat slot "
                f"{mine[0].slot} (its locks there were broken)"
            )

    # NFS

    def _nfs_write(self, host: str, root: Path, handle: str) -> None:
        if not guarded(handle):
            return
        self.writes_checked += 1
        path = root / handle
        try:
            fileid = path.lstat().st_ino
            lock = (path.parent / lock_file_name(fileid)).read_bytes()
        except FileNotFoundError:
            self.violate(f"{host} wrote {root.name}:{handle}, which no lock file guards")
            return
        record = LockFile.unpack(lock[:RECORD_SIZE])
        if record is None or record.host_name != host or record.boot != self._boots.get(host):
            holder = "an unreadable record" if record is None else record.host_name
            self.violate(f"{host} wrote {root.name}:{handle} while its lock file names {holder}")

    def _nfs_lock_change(self, host: str, root: Path, command: str, args: tuple) -> None:
        directory, name = args[0], args[1] if len(args) > 1 else ""
        if not name.startswith(".lck-"):
            return
        # Lock files are named by the locked file's fileid (its inode here, which
        # differs between runs): the history names the file itself.
        fileid, _, rest = name[5:].partition("-")
        kind = "read-only" if rest.startswith("ro-") else "exclusive"
        if ".broken-" in name:
            kind = "broken"
        locked = _named(root / directory, int(fileid.split(".")[0], 16))
        what = "lock-grant" if command == "create" else "lock-release"
        self.history.record(what, f"{root.name}:{directory}/{locked} {kind} by {host}")

    def close(self) -> None:
        for volume in self._volumes.values():
            volume.close()


def _named(directory: Path, fileid: int) -> str:
    """The name of the file with this fileid in directory ("?" once it is gone)."""
    try:
        for entry in directory.iterdir():
            if entry.lstat().st_ino == fileid:
                return entry.name
    except FileNotFoundError:
        pass
    return "?"
