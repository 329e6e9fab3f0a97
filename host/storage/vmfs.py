"""The VMFS driver of a host's kernel: heartbeats and on-disk locks on a shared LUN.

Hosts never talk to each other or to vCenter to lock: everything is in the sectors
described in `vsim.storage.vmfs_format`, changed atomically with COMPARE AND WRITE
(ATS) on ats-only volumes, or under a SCSI-2 reservation on ats+scsi volumes
(conflicts retried with backoff and counted).

- Mount claims a free heartbeat slot; the slot's counter is bumped every 3 s. A host
  whose slot was cleared by another (it was presumed dead), or that could not
  heartbeat for 16 s, marks the volume lost access and issues no more I/O to it.
- A COMPARE AND WRITE whose reply is lost (the path failed after the array ran it)
  is settled by reading the sector back; if that fails too, the sector is kept as in
  doubt, and a later lock or heartbeat that finds it there knows the write was its
  own. So a lost reply never leaves a lock held that its holder does not know of,
  nor a heartbeat slot its owner takes for cleared by another host.
- A lock held by another host is refused with FileLocked naming the holder, unless
  the holder is gone: its slot was cleared or reused (stale at once), or its counter
  has not moved for 16 s as this host has watched it (then this host clears the slot,
  generation + 1, and takes the lock). Never before 16 s.

Plain Python over two injected ports: the block device (the LUN as this host's
initiator sees it) and the clock.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from vsim.clock import Clock
from vsim.faults import CannotAccessFile, FileLocked, InvalidArgument, StoragePathLost
from vsim.runtime import Timeout
from vsim.storage.lun import MAX_TRANSFER_BLOCKS, Lun
from vsim.storage.scsi import RESERVATION_CONFLICT, ScsiError
from vsim.storage.vmfs_format import (
    MAX_PATH,
    MAX_SHARED_OWNERS,
    SECTOR,
    SUPERBLOCK_LBA,
    FileDescriptor,
    FileType,
    HeartbeatSlot,
    LockMode,
    LockOwner,
    LockRecord,
    SlotState,
    Superblock,
    VolumeLockMode,
    bitmap_bit,
)

HB_INTERVAL = 3.0
"""Seconds between a host's heartbeats on a VMFS volume."""
HB_TIMEOUT = 16.0
"""Seconds without a heartbeat after which a host is presumed dead (and, for itself,
after which it marks the volume lost access)."""
RETRANSMITS = 2
"""Times a READ or WRITE the path lost is sent again."""
LEASE_MARGIN = 0.5
"""Seconds before HB_TIMEOUT at which an I/O still unanswered is called off: another
host may break this host's locks at HB_TIMEOUT, and nothing of this host's may land
at that same instant."""
RESERVE_BACKOFF = (0.002, 0.05)
"""Seconds: the first backoff after a RESERVATION CONFLICT, and the most."""
RESERVATION_RESET_AFTER = 2.0
"""Seconds of unbroken RESERVATION CONFLICTs after which the holder is presumed dead
(a metadata update holds the LUN for milliseconds) and the host resets the LUN."""
RESERVE_GIVE_UP = 10.0
"""Seconds of conflicts (resets included) after which a command fails."""


class BlockDevice(Protocol):
    """A LUN as one initiator sees it. Failures raise ScsiError."""

    async def capacity(self) -> int:
        """The LUN's size in bytes (READ CAPACITY)."""

    async def read(self, lba: int, blocks: int) -> bytes: ...

    async def write(self, lba: int, data: bytes) -> None: ...

    async def compare_and_write(self, lba: int, verify: bytes, data: bytes) -> None: ...

    async def reserve(self) -> None: ...

    async def release(self) -> None: ...

    async def lun_reset(self) -> None:
        """LOGICAL UNIT RESET: clears whatever reservation the LUN holds."""


async def format_volume(
    device: BlockDevice,
    label: str,
    lock_mode: VolumeLockMode,
    volume_uuid: uuid.UUID,
    block_size: int = 1024 * 1024,
) -> Superblock:
    """vmkfstools -C: writes empty heartbeat, lock and descriptor regions, the root
    directory, a bitmap with the metadata's blocks in use, then the superblock (last,
    so a format cut short leaves no volume that looks whole)."""
    try:
        superblock = Superblock.for_capacity(
            volume_uuid, label, block_size, lock_mode, await device.capacity()
        )
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    empty = bytes(SECTOR * (superblock.metadata_sectors - 1))
    for start in range(0, len(empty), MAX_TRANSFER_BLOCKS * SECTOR):
        chunk = empty[start : start + MAX_TRANSFER_BLOCKS * SECTOR]
        await device.write(1 + start // SECTOR, chunk)
    root = FileDescriptor(FileType.DIRECTORY, 1)
    await device.write(superblock.descriptor_lba(0), root.pack())
    bitmap = bytearray(SECTOR * superblock.bitmap_sectors)
    for block in range(superblock.first_data_block):
        sector, byte, bit = bitmap_bit(block)
        bitmap[sector * SECTOR + byte] |= 1 << bit
    await device.write(superblock.bitmap_lba(), bytes(bitmap))
    await device.write(SUPERBLOCK_LBA, superblock.pack())
    return superblock


def is_live(heartbeat_age: float | None) -> bool:
    """Whether a lock owner with this heartbeat age (see VmfsVolume.heartbeat_age)
    still holds its slot and heartbeated in the last HB_TIMEOUT seconds of watching."""
    return heartbeat_age is not None and heartbeat_age < HB_TIMEOUT


@dataclass
class _Watch:
    """What this host has seen of another host's heartbeat slot."""

    counter: int
    since: float


class VmfsVolume:
    def __init__(
        self,
        device: BlockDevice,
        host: uuid.UUID,
        clock: Clock,
        rng: random.Random,
    ) -> None:
        self.device = device
        self.host = host
        self.clock = clock
        self.rng = rng
        self.superblock: Superblock | None = None
        self.slot = -1
        self.lost_access = False
        self.reclaimable = True
        """Whether a lost access may end (see `reclaim`): not once the slot was
        cleared by another host, or given back by an unmount."""
        self.stats: Counter[str] = Counter()
        self._slot_sector = b""
        self._last_heartbeat = 0.0
        self._watches: dict[tuple[int, uuid.UUID, int], _Watch] = {}
        self._held: set[int] = set()
        """Lock records this mount holds, as it knows: one on disk in this mount's
        name but not here is an orphan (its release never landed), this host's to
        take again."""
        self._in_doubt: dict[int, bytes] = {}
        """LBA -> the sector a COMPARE AND WRITE of this host's may have written: its
        reply was lost and the sector could not be read back. Should the sector be
        found holding it, the write was this host's (`lock`, `heartbeat`)."""

    # mounting and heartbeats

    async def mount(self) -> None:
        self.superblock = Superblock.unpack(await self.io(self.device.read, SUPERBLOCK_LBA, 1))
        sb = self.superblock
        region = await self.io(self.device.read, sb.heartbeat_lba(0), sb.heartbeat_slots)
        for index in range(sb.heartbeat_slots):
            sector = region[index * SECTOR : (index + 1) * SECTOR]
            try:
                slot = self._slot(sector)
            except CannotAccessFile:
                continue  # a damaged slot is nobody's to take
            if slot.state == SlotState.FREE or slot.owner == self.host:
                # Taking back our own slot after a crash starts a new generation: the
                # locks the old incarnation held are then seen as gone by everyone.
                generation = slot.generation + (slot.owner == self.host)
                claimed = HeartbeatSlot(
                    SlotState.IN_USE, generation, self.host, 1, self.clock.now()
                )
                if await self.swap(sb.heartbeat_lba(index), sector, claimed.pack()):
                    self.slot = index
                    self._slot_sector = claimed.pack()
                    self._last_heartbeat = self.clock.now()
                    return
        raise CannotAccessFile(f"no free heartbeat slot on volume {sb.label}")

    async def unmount(self) -> None:
        """Gives this host's heartbeat slot back: FREE, with a new generation, so that
        a lock record still naming this mount reads as released. Best effort: if the
        path is down, the slot simply goes stale, as a crashed host's would."""
        if self.superblock is None or self.slot < 0 or self.lost_access:
            return
        current = HeartbeatSlot.unpack(self._slot_sector)
        freed = HeartbeatSlot(SlotState.FREE, current.generation + 1)
        try:
            await self.swap(
                self.superblock.heartbeat_lba(self.slot), self._slot_sector, freed.pack()
            )
        except Exception:  # noqa: BLE001 - an unreachable slot goes stale instead
            return
        finally:
            self.lost_access = True  # no more I/O through this mount
            self.reclaimable = False
            self.lost_reason = "unmounted"

    @property
    def slot_generation(self) -> int:
        return HeartbeatSlot.unpack(self._slot_sector).generation

    async def heartbeat(self) -> bool:
        """Bumps this host's counter (COMPARE AND WRITE against what it last wrote).
        Returns False, and marks the volume lost access, when the slot is no longer
        ours or the last good heartbeat is HB_TIMEOUT old."""
        # Too late after HB_TIMEOUT: others may have broken this host's locks, and
        # coming back now would write under them.
        if self._heartbeat_too_old():
            return False
        sb = self.mounted()
        current = HeartbeatSlot.unpack(self._slot_sector)
        bumped = replace(current, counter=current.counter + 1, owner_clock=self.clock.now())
        lba = sb.heartbeat_lba(self.slot)
        # What others watch dates from when the bump was sent, not from its reply: a
        # late reply must not stretch this host's lease past what they see.
        issued = self.clock.now()
        try:
            await self.io(self.device.compare_and_write, lba, self._slot_sector, bumped.pack())
            written = True
        except ScsiError as e:
            if e.miscompare and self._in_doubt.get(lba) == e.data:
                # An earlier bump landed though its reply was lost: go on from it.
                self._slot_sector = self._in_doubt.pop(lba)
                self.stats["lost_replies"] += 1
                return await self.heartbeat()
            if e.miscompare:
                self._lose_access("another host cleared this host's heartbeat slot")
                self.reclaimable = False
                return False
            written = False
        except Exception:  # noqa: BLE001 - a path failure: did the bump land?
            written = await self._applied(lba, bumped.pack())
        if written:
            self._slot_sector = bumped.pack()
            self._last_heartbeat = issued
            self.stats["heartbeats"] += 1
            return True
        self.stats["heartbeat_failures"] += 1
        return not self._heartbeat_too_old()

    async def heartbeat_forever(self) -> None:
        """Heartbeats every HB_INTERVAL; once the volume is lost for want of
        heartbeats (a path down, a host frozen), tries every HB_INTERVAL to take its
        slot back, until that succeeds or the slot turns out cleared by another host
        (then this mount's locks are gone, and the volume stays lost here)."""
        while True:
            if not await self.heartbeat() and not await self.reclaim():
                if not self.reclaimable:
                    return
            await self.clock.sleep(HB_INTERVAL)

    async def reclaim(self) -> bool:
        """Takes this host's heartbeat slot back after a lost access, if no other host
        cleared it meanwhile: one COMPARE AND WRITE against what this host last wrote.
        Safe because a host breaking this host's locks clears the slot first (with
        the same atomic swap), so exactly one of the two wins. True when the volume
        is usable again."""
        if not (self.lost_access and self.reclaimable and self.superblock is not None):
            return False
        current = HeartbeatSlot.unpack(self._slot_sector)
        bumped = replace(current, counter=current.counter + 1, owner_clock=self.clock.now())
        issued = self.clock.now()
        lba = self.superblock.heartbeat_lba(self.slot)
        try:
            await self.device.compare_and_write(lba, self._slot_sector, bumped.pack())
        except ScsiError as e:
            if not e.miscompare:
                return False  # still no path, or the LUN is reserved: later
            if e.data == self._in_doubt.get(lba):  # an earlier bump of ours did land
                self._slot_sector = self._in_doubt.pop(lba)
                return await self.reclaim()
            if e.data != bumped.pack():  # not our own bump whose reply was lost
                self.reclaimable = False
                self.lost_reason = "another host cleared this host's heartbeat slot"
                return False
        except Exception:  # noqa: BLE001 - the path is still down: try again later
            return False
        self._slot_sector = bumped.pack()
        self._last_heartbeat = issued
        self.lost_access = False
        self.stats["reclaims"] += 1
        return True

    @property
    def slot_cleared(self) -> bool:
        """Another host cleared this host's heartbeat slot: every lock it held here is
        broken, and the volume stays lost."""
        return self.lost_access and not self.reclaimable

    def access_in_doubt(self) -> bool:
        """Whether others may break this host's locks now: the volume is lost, or its
        last good heartbeat is HB_TIMEOUT old (no I/O, nothing changed: a query)."""
        return self.lost_access or self.clock.now() - self._last_heartbeat >= HB_TIMEOUT

    def _heartbeat_too_old(self) -> bool:
        """Whether the volume is lost: already, or now because this host's last good
        heartbeat is HB_TIMEOUT old."""
        if not self.lost_access and self.clock.now() - self._last_heartbeat >= HB_TIMEOUT:
            self._lose_access(f"no heartbeat for {HB_TIMEOUT:.0f} s")
        return self.lost_access

    def _lose_access(self, why: str) -> None:
        self.lost_access = True
        self.stats["lost_access"] += 1
        self.lost_reason = why

    def mounted(self) -> Superblock:
        """The superblock, while this host may still use the volume: not once its
        heartbeat is HB_TIMEOUT old (others may already have broken its locks)."""
        if self.superblock is None:
            raise CannotAccessFile("the volume is not mounted")
        if self._heartbeat_too_old():
            raise CannotAccessFile(
                f"lost access to volume {self.superblock.label}: {self.lost_reason}"
            )
        return self.superblock

    # locks

    async def lock(self, index: int, path: str, mode: LockMode = LockMode.EXCLUSIVE) -> LockRecord:
        """Takes lock record `index` for path in mode, or raises FileLocked."""
        sb = self.mounted()
        if not 0 <= index < sb.lock_records:
            raise ValueError(f"lock index {index} is outside 0..{sb.lock_records - 1}")
        if len(path.encode()) > MAX_PATH:
            raise InvalidArgument(f"a locked path is at most {MAX_PATH} bytes")
        me = LockOwner(self.host, self.slot, self.slot_generation)
        while True:
            sector = await self.io(self.device.read, sb.lock_lba(index), 1)
            record = self._record(sector)
            if self._in_doubt.get(sb.lock_lba(index)) == sector:
                # This host's own grant, whose reply was lost: the lock is held.
                del self._in_doubt[sb.lock_lba(index)]
                self.stats["lost_replies"] += 1
                if record.mode == mode and record.path == path:
                    await self._check_own_slot()
                    self._held.add(index)
                    self.stats["locks"] += 1
                    return record
            mine = [o for o in record.owners if o == me]
            if mine and index not in self._held:
                mine = []  # an orphan of this mount's: taken again below
                self.stats["orphans_retaken"] += 1
            if mine and (
                mode == LockMode.EXCLUSIVE
                or record.mode == LockMode.EXCLUSIVE
                or record.mode != mode
            ):
                raise FileLocked(
                    f"{path} is already locked {record.mode.name.lower()} by this host",
                    holder=str(self.host),
                    mode=record.mode.name,
                )
            if mine:
                return record  # a shared lock this host already has
            others = [o for o in record.owners if o != me]
            live = [o for o in others if await self._alive(o)]
            if live and not (record.mode == mode and mode != LockMode.EXCLUSIVE):
                holder = live[0]
                raise FileLocked(
                    f"{path} is locked {record.mode.name.lower()} by host {holder.host} "
                    f"(heartbeat slot {holder.slot})",
                    holder=str(holder.host),
                    mode=record.mode.name,
                )
            if len(others) != len(live):
                await self._break(record, [o for o in others if o not in live])
            owners = tuple(live) + (me,) if mode != LockMode.EXCLUSIVE else (me,)
            if len(owners) > MAX_SHARED_OWNERS:
                raise FileLocked(f"{path} already has {MAX_SHARED_OWNERS} sharers")
            new = LockRecord(mode, record.generation + 1, owners, path)
            if await self.swap(sb.lock_lba(index), sector, new.pack()):
                await self._check_own_slot()
                self._held.add(index)
                self.stats["locks"] += 1
                return new
            self.stats["lock_races"] += 1

    async def _check_own_slot(self) -> None:
        """A lock granted on a heartbeat slot someone has meanwhile cleared is worth
        nothing: others see its holder as gone. Then this host has lost the volume."""
        sb = self.mounted()
        if await self.io(self.device.read, sb.heartbeat_lba(self.slot), 1) != self._slot_sector:
            self._lose_access("another host cleared this host's heartbeat slot")
            raise CannotAccessFile(self.lost_reason)

    def _slot(self, sector: bytes) -> HeartbeatSlot:
        try:
            return HeartbeatSlot.unpack(sector)
        except (ValueError, UnicodeDecodeError) as e:
            raise CannotAccessFile(f"a heartbeat slot on the volume is damaged: {e}") from None

    def _record(self, sector: bytes) -> LockRecord:
        try:
            return LockRecord.unpack(sector)
        except (ValueError, UnicodeDecodeError) as e:
            raise CannotAccessFile(f"a lock record on the volume is damaged: {e}") from None

    async def unlock(self, index: int) -> None:
        # Forgotten first: should the release not land, the record is an orphan.
        self._held.discard(index)
        sb = self.mounted()
        while True:
            sector = await self.io(self.device.read, sb.lock_lba(index), 1)
            record = self._record(sector)
            owners = tuple(o for o in record.owners if o.host != self.host)
            if len(owners) == len(record.owners):
                return  # not ours (any more)
            mode = record.mode if owners else LockMode.FREE
            new = LockRecord(mode, record.generation + 1, owners, record.path if owners else "")
            if await self.swap(sb.lock_lba(index), sector, new.pack()):
                return

    async def read_lock(self, index: int) -> LockRecord:
        sb = self.mounted()
        return self._record(await self.io(self.device.read, sb.lock_lba(index), 1))

    async def heartbeat_age(self, owner: LockOwner) -> float | None:
        """Seconds this host has watched the owner's heartbeat counter stand still (0
        when it just moved), or None when the owner's slot was cleared or taken over
        (the owner is gone)."""
        sb = self.mounted()
        slot = self._slot(await self.io(self.device.read, sb.heartbeat_lba(owner.slot), 1))
        if (
            slot.state != SlotState.IN_USE
            or slot.owner != owner.host
            or slot.generation != owner.slot_generation
        ):
            return None
        now = self.clock.now()
        key = (owner.slot, owner.host, owner.slot_generation)
        watch = self._watches.get(key)
        if watch is None or watch.counter != slot.counter:
            self._watches[key] = watch = _Watch(slot.counter, now)
        return now - watch.since

    async def _alive(self, owner: LockOwner) -> bool:
        return is_live(await self.heartbeat_age(owner))

    async def break_stale(self, index: int) -> LockRecord:
        """Frees lock record `index` if every owner is gone (heartbeat still for
        HB_TIMEOUT as this host watched it, or slot cleared); FileLocked otherwise.
        Returns the record as it was."""
        sb = self.mounted()
        while True:
            sector = await self.io(self.device.read, sb.lock_lba(index), 1)
            record = self._record(sector)
            if record.mode == LockMode.FREE:
                return record
            for owner in record.owners:
                age = await self.heartbeat_age(owner)
                if is_live(age):
                    raise FileLocked(
                        f"{record.path} is held by host {owner.host}, whose heartbeat moved "
                        f"{age:.0f} s ago (stale only after {HB_TIMEOUT:.0f} s still)",
                        holder=str(owner.host),
                    )
            await self._break(record, list(record.owners))
            freed = LockRecord(LockMode.FREE, record.generation + 1)
            if await self.swap(sb.lock_lba(index), sector, freed.pack()):
                return record

    async def _break(self, record: LockRecord, dead: list[LockOwner]) -> None:
        """Clears the heartbeat slots of dead owners (generation + 1), so that they
        stop writing if they come back, before their locks are taken."""
        sb = self.mounted()
        for owner in dead:
            lba = sb.heartbeat_lba(owner.slot)
            sector = await self.io(self.device.read, lba, 1)
            slot = self._slot(sector)
            if slot.owner == owner.host and slot.generation == owner.slot_generation:
                cleared = HeartbeatSlot(SlotState.FREE, slot.generation + 1)
                if not await self.swap(lba, sector, cleared.pack()):
                    # The slot moved under us: its owner heartbeated again (it was
                    # slow, not dead). Its locks are its own still.
                    raise FileLocked(
                        f"{record.path} is held by host {owner.host}, whose heartbeat "
                        "moved again just as this host went to break the lock",
                        holder=str(owner.host),
                    )
                self.stats["slots_cleared"] += 1
            self._watches.pop((owner.slot, owner.host, owner.slot_generation), None)
        self.stats["locks_broken"] += 1

    # atomic sector updates

    async def swap(self, lba: int, expected: bytes, new: bytes) -> bool:
        """Replaces the sector at lba with new if it still holds expected: with ATS,
        or under a SCSI-2 reservation. False if another host changed it first."""
        sb = self.superblock
        if sb is not None and sb.lock_mode == VolumeLockMode.ATS_SCSI:
            # The update is made under the reservation, and is a COMPARE AND WRITE
            # even so: should the reservation be lost under it (another host reset the
            # LUN, taking this one for dead), a sector changed meanwhile is kept.
            return await self._under_reservation(
                lambda: self._compare_and_write(lba, expected, new)
            )
        return await self._compare_and_write(lba, expected, new)

    async def _compare_and_write(self, lba: int, expected: bytes, new: bytes) -> bool:
        try:
            await self.io(self.device.compare_and_write, lba, expected, new)
        except ScsiError as e:
            if e.miscompare:
                self.stats["ats_miscompares"] += 1
                return False
            raise
        except Exception:  # the path failed: the array may have run it all the same
            if await self._applied(lba, new):
                return True
            raise
        self._in_doubt.pop(lba, None)
        return True

    async def _applied(self, lba: int, new: bytes) -> bool:
        """Whether a COMPARE AND WRITE whose reply was lost was run: the sector is read
        back. If even that fails, the sector is kept as in doubt, so that this host
        can tell its own write when it next sees it, and False is returned."""
        try:
            sector = await self.io(self.device.read, lba, 1)
        except Exception:  # noqa: BLE001 - the path is still down
            self._in_doubt[lba] = new
            return False
        if sector == new:
            self._in_doubt.pop(lba, None)
            self.stats["lost_replies"] += 1
            return True
        return False

    async def _under_reservation(self, work: Callable[[], Awaitable[bool]]) -> bool:
        try:
            await self.io(self.device.reserve)
            return await work()
        finally:
            await self._release()

    async def _release(self) -> None:
        """RELEASE, retried: a reservation left held blocks every other host. (A
        release from a host that holds none is a harmless no-op.)"""
        for attempt in range(3):
            try:
                await asyncio.shield(self.device.release())
                return
            except Exception:  # noqa: BLE001 - try again, then give up loudly
                if attempt == 2:
                    self.stats["release_failures"] += 1
                    raise

    async def io(self, command: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Runs one SCSI command, retrying RESERVATION CONFLICTs (another host holds
        the LUN for a metadata update) with randomised exponential backoff. A
        reservation that blocks for RESERVATION_RESET_AFTER seconds belongs to a dead
        host: a LUN reset clears it."""
        backoff = RESERVE_BACKOFF[0]
        started = self.clock.now()
        first = started
        holder = None
        reset = False
        resent = 0
        while True:
            try:
                if self.slot >= 0:
                    self.mounted()  # no retried I/O once this host may have lost the volume
                    return await self._within_lease(command, args)
                return await command(*args)
            except ScsiError as e:
                if e.status != RESERVATION_CONFLICT:
                    raise
                if e.detail != holder:
                    # Another holder: short holds by live hosts, one after another, are
                    # no reason to reset. Only one holder blocking throughout is.
                    holder, started = e.detail, self.clock.now()
            except StoragePathLost:
                # READ and WRITE are sent again, as an initiator retries a command
                # the transport lost (the same bytes to the same place); the atomic
                # and reservation commands have their own rules for a lost reply.
                if command not in (self.device.read, self.device.write) or resent >= RETRANSMITS:
                    raise
                resent += 1
                self.stats["retransmits"] += 1
                continue
            self.stats["reservation_conflicts"] += 1
            blocked = self.clock.now() - started
            if self.clock.now() - first >= RESERVE_GIVE_UP:
                raise CannotAccessFile(
                    f"the LUN stayed reserved by other hosts for {RESERVE_GIVE_UP:.0f} s"
                )
            if blocked >= RESERVATION_RESET_AFTER and not reset:
                await self.device.lun_reset()
                self.stats["lun_resets"] += 1
                reset = True
                continue
            await self.clock.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, RESERVE_BACKOFF[1])

    async def _within_lease(self, command: Callable[..., Awaitable[Any]], args: tuple) -> Any:
        """Runs a command that must land, if at all, while this host's heartbeat lease
        holds (HB_TIMEOUT - LEASE_MARGIN after its last good heartbeat was sent):
        after HB_TIMEOUT others
        may break its locks, so a command still unanswered then (held in a hung host's
        ports or a slow path) is called off, and the volume is lost."""
        left = self._last_heartbeat + HB_TIMEOUT - LEASE_MARGIN - self.clock.now()
        try:
            async with Timeout(self.clock, left):
                return await command(*args)
        except TimeoutError:
            self._lose_access(f"an I/O was unanswered when the {HB_TIMEOUT:.0f} s lease ran out")
            label = self.superblock.label if self.superblock is not None else "?"
            raise CannotAccessFile(f"lost access to volume {label}: {self.lost_reason}") from None


class LunDevice:
    """A BlockDevice over an in-process Lun (the in-process engine and tests). Each
    command first awaits `arrive` - the array's `lun_command`: its injected latency,
    a restart dropping it - or at least yields to the event loop, as a round trip to
    the array would, so hosts running as tasks interleave between commands."""

    def __init__(
        self, lun: Lun, initiator: str, arrive: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.lun = lun
        self.initiator = initiator
        self._arrive = arrive or _round_trip

    async def capacity(self) -> int:
        await self._arrive()
        last_lba, block_length = self.lun.read_capacity(self.initiator)
        return (last_lba + 1) * block_length

    async def read(self, lba: int, blocks: int) -> bytes:
        await self._arrive()
        return self.lun.read(self.initiator, lba, blocks)

    async def write(self, lba: int, data: bytes) -> None:
        await self._arrive()
        self.lun.write(self.initiator, lba, data)

    async def compare_and_write(self, lba: int, verify: bytes, data: bytes) -> None:
        await self._arrive()
        self.lun.compare_and_write(self.initiator, lba, verify, data)

    async def reserve(self) -> None:
        await self._arrive()
        self.lun.reserve(self.initiator)

    async def release(self) -> None:
        await self._arrive()
        self.lun.release(self.initiator)

    async def lun_reset(self) -> None:
        await self._arrive()
        self.lun.reset(self.initiator)


async def _round_trip() -> None:
    await asyncio.sleep(0)
