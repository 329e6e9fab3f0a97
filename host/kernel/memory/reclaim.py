"""Memory overcommit: the host's memory state and reclaim by ballooning, then
compression, then swapping to each VM's swap file.

ESXi keeps a minimum of free memory (minFree, on a sliding scale of the host's
memory) and names its state by how much is left (vSphere 5.x+):

    high  free >= minFree          TPS only; balloons deflate
    soft  free >= 64% of minFree   ballooning
    hard  free >= 32% of minFree   ballooning, then compression, then swapping
    low   below                    as hard; a guest touching a page waits for reclaim

Reclaim takes pages only from VMs that hold more than their target (their
entitlement, from shares, reservation and limit), the most over target first, and
never takes a VM below its reservation. Within one VM the balloon driver gives back
the pages the guest uses least (outside its working set) first, up to
Mem.CtlMaxPercent of its memory; compression keeps pages that compress to 2 KB or less
in a cache of at most Mem.MemZipMaxPct of the VM's memory; swapping writes the rest to
the VM's swap file (zero pages are simply dropped, as ESXi checks before swapping).

The swap file is a real file (host-local swap, one `.vswp` per VM, sized configured
memory minus reservation as in vSphere); each swapped page's fingerprint is written at
its 4 KiB slot.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vsim.faults import InsufficientResourcesFault, InvalidArgument
from vsim.host.kernel.memory.pmap import (
    BALLOONED,
    COMPRESSED,
    MAPPED,
    PAGE_SIZE,
    PAGES_PER_MB,
    SWAPPED,
    UNTOUCHED,
    MachineMemory,
    VmPages,
    distinct,
    last_writes,
)

MEM_CTL_MAX_PERCENT = 65
"""Mem.CtlMaxPercent: the most of a VM's memory its balloon may hold."""
MEM_ZIP_MAX_PCT = 10
"""Mem.MemZipMaxPct: the most of a VM's memory its compression cache may use."""
COMPRESSIBLE_SHARE = 0.75
"""Share of pages that compress to 2 KB or less (decided by content, so it is stable)."""
BALLOON_RATE = 16 * PAGES_PER_MB
"""Pages per second one VM's balloon driver can inflate by (a model parameter: the
guest must find and pin the pages). A guest that needs a page at once cannot wait
for balloons, so the host compresses or swaps for it instead."""
SOFT, HARD = 0.64, 0.32


class MemoryState(enum.IntEnum):
    HIGH = 0
    SOFT = 1
    HARD = 2
    LOW = 3


def min_free_pages(host_pages: int) -> int:
    """ESXi's minFree: 6% of the first 4 GB, 4% of the next 8 GB, 2% of the next 16 GB
    and 1% of the rest."""
    gb = 1024 * PAGES_PER_MB
    free, left = 0.0, float(host_pages)
    for size, pct in ((4 * gb, 6), (8 * gb, 4), (16 * gb, 2), (float("inf"), 1)):
        part = min(left, size)
        free += part * pct / 100
        left -= part
    return max(1, int(free))


def memory_state(free_pages: int, min_free: int) -> MemoryState:
    if free_pages >= min_free:
        return MemoryState.HIGH
    if free_pages >= SOFT * min_free:
        return MemoryState.SOFT
    if free_pages >= HARD * min_free:
        return MemoryState.HARD
    return MemoryState.LOW


def compressible(fingerprints: np.ndarray) -> np.ndarray:
    scrambled = fingerprints * np.uint64(0x9E3779B97F4A7C15)
    return (fingerprints != 0) & (scrambled >> np.uint64(56) < int(256 * COMPRESSIBLE_SHARE))


class VmSwapFile:
    """A VM's `.vswp`: one 4 KiB slot per page it may swap.

    Slots never used are handed out in order from `_fresh` on; released ones are kept
    on a stack and handed out first, the last released first. Nothing per slot is
    kept until a slot has been used: a 64 GiB VM's power-on (or vMotion arrival) does
    not page in a list of 16 Mi free slots."""

    def __init__(self, path: Path, slots: int) -> None:
        self.path = path
        self.slots = slots
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(max(1, slots) * PAGE_SIZE)  # sparse, as a thin .vswp
        self._map = np.memmap(path, np.uint64, "r+", shape=(max(1, slots), PAGE_SIZE // 8))
        self._fresh = 0
        """Slots at and above this one were never used."""
        self._released = np.zeros(0, np.int64)
        self._top = 0
        """Released slots are _released[:_top], the next one handed out last."""

    @property
    def used(self) -> int:
        return self.slots - self.free

    @property
    def free(self) -> int:
        return self._top + self.slots - self._fresh

    def write(self, fingerprints: np.ndarray) -> np.ndarray:
        count = len(fingerprints)
        if count > self.free:
            raise InsufficientResourcesFault(
                f"{self.path.name} has {self.free} free slots, {count} are needed"
            )
        reused = min(count, self._top)
        again = self._released[self._top - reused : self._top][::-1]
        fresh = np.arange(self._fresh, self._fresh + count - reused, dtype=np.int64)
        slots = np.concatenate([again, fresh])
        self._top -= reused
        self._fresh += len(fresh)
        self._map[slots, 0] = fingerprints
        return slots

    def read(self, slots: np.ndarray) -> np.ndarray:
        return np.array(self._map[slots, 0], np.uint64)

    def release(self, slots: np.ndarray) -> None:
        self._map[slots, 0] = 0
        need = self._top + len(slots)
        if need > len(self._released):
            grown = np.zeros(max(need, 2 * len(self._released), 1024), np.int64)
            grown[: self._top] = self._released[: self._top]
            self._released = grown
        self._released[self._top : need] = slots
        self._top = need

    def delete(self) -> None:
        del self._map
        self.path.unlink(missing_ok=True)


@dataclass
class VmReclaim:
    """What the reclaimer needs to know of one VM."""

    pages: VmPages
    swap: VmSwapFile
    reservation_pages: int = 0
    working_set: int = 0
    """PPNs below this are the guest's active pages; the balloon takes others first."""
    balloon_driver: bool = True
    """VMware Tools' vmmemctl is running in the guest."""
    target_pages: int = -1
    """The VM's entitlement; -1 until the host computed one."""
    limit_pages: int = -1
    """sched.mem.max in pages; -1 for unlimited."""
    zipped: int = 0
    log: list[tuple[str, int]] = field(default_factory=list)
    """(technique, pages) for each reclaim step, oldest first."""

    @property
    def zip_capacity(self) -> int:
        """Compressed pages the cache may hold (two per 4 KiB page of cache)."""
        return 2 * (self.pages.configured_pages * MEM_ZIP_MAX_PCT // 100)

    @property
    def granted(self) -> int:
        return self.pages.count(MAPPED)

    balloon_budget: float = 0.0
    """Pages the balloon driver may still inflate by in this period."""

    @property
    def reclaimable(self) -> int:
        """Pages above both the reservation and the target."""
        floor = max(self.reservation_pages, self.target_pages)
        return max(0, self.granted - floor)

    @property
    def above_reservation(self) -> int:
        return max(0, self.granted - self.reservation_pages)

    @property
    def above_limit(self) -> int:
        if self.limit_pages < 0:
            return 0
        return max(0, self.granted - max(self.limit_pages, self.reservation_pages))


class Reclaimer:
    """Balloon, compression and swap for every powered-on VM of one host."""

    def __init__(self, memory: MachineMemory) -> None:
        self.memory = memory
        self.vms: dict[str, VmReclaim] = {}
        self.min_free = min_free_pages(memory.pages)
        self._protected: tuple[str, np.ndarray] | None = None

    @property
    def state(self) -> MemoryState:
        return memory_state(self.memory.free_pages, self.min_free)

    def add(self, vm: VmReclaim) -> None:
        self.vms[vm.pages.name] = vm

    def remove(self, name: str) -> None:
        vm = self.vms.pop(name)
        vm.swap.delete()

    # -- the guest touches its pages -------------------------------------------

    def bring_in(self, vm: VmReclaim, ppns: np.ndarray) -> None:
        """Maps the pages back that the guest reads: decompressed, swapped in, or
        fresh zeroed pages where it never wrote or the balloon gave them back."""
        pages = vm.pages
        ppns = distinct(self.memory.check_ppns(pages, ppns))
        pages.grow(int(ppns.max()) + 1 if len(ppns) else 0)
        backing = pages.backing[ppns]
        self.make_room(self.memory.allocation_need(pages, ppns, writing=False), vm, ppns)
        if bool(np.all(backing == MAPPED)):
            return  # the usual case: the guest reads what it holds, nothing to bring in
        zipped, swapped = ppns[backing == COMPRESSED], ppns[backing == SWAPPED]
        paged = ppns[backing == BALLOONED]
        if len(paged):  # the guest reads back what it paged out under balloon pressure
            self.memory.map_content(pages, paged, pages.stash[paged])
        if len(zipped):
            self.memory.map_content(pages, zipped, pages.stash[zipped])
            self._unzip(vm, len(zipped))
        if len(swapped):
            slots = pages.stash[swapped].astype(np.int64)
            self.memory.map_content(pages, swapped, vm.swap.read(slots))
            vm.swap.release(slots)
        self.memory.map_zeroed(pages, ppns[backing == UNTOUCHED])

    def overwrite(self, vm: VmReclaim, ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        """The guest writes whole pages: stored copies are dropped, not read back."""
        pages = vm.pages
        # Deduplicated once here (the last write to a page wins), so the pmap's write
        # finds the batch sorted and distinct and need not sort it again.
        ppns = self.memory.check_ppns(pages, ppns)
        fingerprints = np.asarray(fingerprints, np.uint64)
        if len(ppns) != len(fingerprints):
            raise InvalidArgument("one fingerprint per page is needed")
        unique, fingerprints = last_writes(ppns, fingerprints)
        pages.grow(int(unique.max()) + 1 if len(unique) else 0)
        need = self.memory.allocation_need(pages, unique, writing=True)
        backing = pages.backing[unique]
        self.make_room(need, vm, unique)
        if not bool(np.all(backing == MAPPED)):  # else nothing is stored elsewhere
            zipped, swapped = unique[backing == COMPRESSED], unique[backing == SWAPPED]
            if len(swapped):
                vm.swap.release(pages.stash[swapped].astype(np.int64))
            if len(zipped):
                self._unzip(vm, len(zipped))
            pages.backing[unique[backing != MAPPED]] = UNTOUCHED
        if len(unique):
            self.memory.write_distinct(pages, unique, fingerprints)

    def make_room(self, need: int, asking: VmReclaim, touching: np.ndarray) -> None:
        """Reclaims until `need` pages are free, never the pages the asking guest is
        touching: first from the VMs above their targets (most over first), then down
        to reservations; balloons as far as this period's inflation allows, then
        compression and swapping. (A guest waits while ESXi reclaims; here the
        reclaim happens at once.)"""
        short = need - self.memory.free_pages
        if short <= 0:
            return
        protect, techniques = (asking.pages.name, touching), self._techniques(MemoryState.LOW)
        for urgent in (False, True):  # first what VMs hold above their targets
            short -= self._reclaim(short, techniques, protect=protect, urgent=urgent)
            if short <= 0:
                return
        if short > 0:
            raise InsufficientResourcesFault(
                f"{asking.pages.name} needs {need} machine pages; {self.memory.free_pages} "
                "are free and every VM is at its reservation or target",
                free_pages=self.memory.free_pages,
            )

    # -- the periodic pass -------------------------------------------------------

    def tick(self, elapsed: float) -> MemoryState:
        """One reclaim pass over `elapsed` seconds: brings free memory back to minFree
        with the techniques the state allows; deflates balloons when memory is
        plentiful."""
        for vm in self.vms.values():
            vm.balloon_budget = BALLOON_RATE * elapsed
        self._enforce_limits()
        state = self.state
        if state == MemoryState.HIGH:
            self._deflate()
            return state
        self._reclaim(self.min_free - self.memory.free_pages, self._techniques(state))
        return self.state

    def _techniques(self, state: MemoryState) -> list[Callable[[VmReclaim, int], int]]:
        if state == MemoryState.SOFT:
            return [self._balloon]
        return [self._balloon, self._compress, self._swap]

    def _enforce_limits(self) -> None:
        """A limit holds whatever the host's state: what a VM has above it goes (by
        balloon, then compression, then swap)."""
        for vm in self.vms.values():
            for technique in self._techniques(MemoryState.HARD):
                if vm.above_limit == 0:
                    break
                technique(vm, vm.above_limit)

    def _reclaim(
        self,
        short: int,
        techniques: Sequence[Callable[[VmReclaim, int], int]],
        protect: tuple[str, np.ndarray] | None = None,
        urgent: bool = False,
    ) -> int:
        """Frees up to `short` pages with each technique in turn, from the VMs most
        over their target first; returns how many were freed. An urgent reclaim
        (a guest waits for a page) goes down to reservations; `protect` names a VM
        and the pages of it that must stay mapped."""
        freed = 0
        self._protected = protect

        def room(vm: VmReclaim) -> int:
            return vm.above_reservation if urgent else vm.reclaimable

        try:
            for technique in techniques:
                over = sorted(self.vms.values(), key=lambda v: v.target_pages - v.granted)
                for vm in over:  # the most over its target first
                    if freed >= short:
                        return freed
                    if room(vm) == 0:
                        continue
                    freed += technique(vm, min(short - freed, room(vm)))
            return freed
        finally:
            self._protected = None

    def _victims(self, vm: VmReclaim, count: int, eligible: np.ndarray | None = None) -> np.ndarray:
        """The mapped pages the guest needs least: private before shared (taking a
        shared page frees memory only with its last sharer), outside the working set
        before inside, highest page numbers first."""
        pages = vm.pages
        mapped = pages.backing == MAPPED
        if eligible is not None:
            mapped &= eligible
        if self._protected and self._protected[0] == pages.name:
            mapped[self._protected[1]] = False
        candidates = np.flatnonzero(mapped)[::-1]
        private = self.memory.refcount[pages.pmap[candidates]] == 1
        idle = candidates >= vm.working_set
        order = [private & idle, private & ~idle, ~private & idle, ~private & ~idle]
        return np.concatenate([candidates[part] for part in order])[:count]

    def _balloon(self, vm: VmReclaim, count: int) -> int:
        if not vm.balloon_driver:
            return 0
        room = vm.pages.configured_pages * MEM_CTL_MAX_PERCENT // 100 - vm.pages.count(BALLOONED)
        ppns = self._victims(vm, min(count, room, int(vm.balloon_budget)))
        if len(ppns) == 0:
            return 0
        vm.balloon_budget -= len(ppns)
        before = self.memory.free_pages
        # The guest pages out what it held there (to its own disk): it is not lost.
        vm.pages.keep(ppns, self.memory.unmap(vm.pages, ppns, BALLOONED))
        vm.log.append(("balloon", len(ppns)))
        return self.memory.free_pages - before

    def _compress(self, vm: VmReclaim, count: int) -> int:
        pages = vm.pages
        room = vm.zip_capacity - vm.zipped
        eligible = np.zeros(len(pages.pmap), bool)
        mapped = pages.backing == MAPPED
        mpns = pages.pmap[mapped]
        eligible[mapped] = (self.memory.refcount[mpns] == 1) & compressible(
            self.memory.content[mpns]
        )
        # Two compressed pages fill one page of cache: the gain is half a page each.
        ppns = self._victims(vm, min(2 * count, room, vm.above_reservation), eligible)
        if len(ppns) < 2:
            return 0
        before = self.memory.free_pages
        pages.keep(ppns, self.memory.unmap(pages, ppns, COMPRESSED))
        vm.zipped += len(ppns)
        self._size_cache(vm)
        vm.log.append(("compress", len(ppns)))
        return self.memory.free_pages - before

    def _swap(self, vm: VmReclaim, count: int) -> int:
        pages = vm.pages
        before = self.memory.free_pages
        ppns = self._victims(vm, count)
        zero = self.memory.read_mapped(pages, ppns) == 0
        self._take(vm, ppns[zero], UNTOUCHED, "zero")
        ppns = ppns[~zero][: vm.swap.free]
        if len(ppns):
            content = self.memory.unmap(pages, ppns, SWAPPED)
            pages.keep(ppns, vm.swap.write(content).astype(np.uint64))
            vm.log.append(("swap", len(ppns)))
        return self.memory.free_pages - before

    def _take(self, vm: VmReclaim, ppns: np.ndarray, backing: int, what: str) -> int:
        if len(ppns) == 0:
            return 0
        before = self.memory.free_pages
        self.memory.unmap(vm.pages, ppns, backing)
        vm.log.append((what, len(ppns)))
        return self.memory.free_pages - before

    def _deflate(self) -> None:
        """Gives ballooned pages back while free memory stays above minFree, to VMs
        below their targets and limits."""
        for vm in self.vms.values():
            room = min(self.memory.free_pages - self.min_free, vm.target_pages - vm.granted)
            if vm.limit_pages >= 0:
                room = min(room, vm.limit_pages - vm.granted)
            ppns = np.flatnonzero(vm.pages.backing == BALLOONED)[: max(0, room)]
            if len(ppns):
                self.memory.map_content(vm.pages, ppns, vm.pages.stash[ppns])
                vm.log.append(("deflate", len(ppns)))

    def _unzip(self, vm: VmReclaim, count: int) -> None:
        vm.zipped -= count
        self._size_cache(vm)

    def _size_cache(self, vm: VmReclaim) -> None:
        """One machine page of cache per two compressed pages."""
        pages, want = vm.pages, -(-vm.zipped // 2)
        have = len(pages.zip_mpns)
        if want > have:
            more = self.memory.allocate(want - have)
            pages.zip_mpns = np.concatenate([pages.zip_mpns, more])
        elif want < have:
            self.memory.release(pages.zip_mpns[want:])
            pages.zip_mpns = pages.zip_mpns[:want]
