"""Machine memory and the pmaps: which machine page (MPN) backs each guest-physical
page (PPN) of each VM.

A 4 KiB page is its 64-bit content fingerprint; 0 is the zero page. Machine memory is
arrays indexed by MPN (content, reference count, sharing domain), grown on demand up to
the host's memory, so an idle host costs little. Each VM's pmap is an array indexed by
PPN, grown up to the highest page the guest has touched.

This module owns the isolation rules of DESIGN.md invariant 3 and nothing else:
- every MPN is zeroed before a VM gets it, so a page freed by one VM never shows its
  old content to another;
- a write to a shared page gives the writer a private copy (copy-on-write);
- reference counts equal the number of pmap entries naming the MPN, and a free MPN is
  on the free stack exactly once.

Sharing (page_sharing.py) and reclaim (memory_reclaim.py) act through the methods
here. No clock and no randomness: callers decide what is written when.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vsim.faults import InsufficientResourcesFault, InvalidArgument

PAGE_SIZE = 4096
PAGES_PER_MB = 1024 * 1024 // PAGE_SIZE
UNMAPPED = -1
"""A pmap entry with no machine page behind it."""

# What backs a guest-physical page (VmPages.backing).
UNTOUCHED = 0
"""Never touched (or only ever zero): the guest reads zeros, no machine page is used."""
MAPPED = 1
BALLOONED = 2
"""Pinned by the guest's balloon driver; its machine page went back to the host and
what the guest held there went to the guest's own page file (content in stash)."""
COMPRESSED = 3
"""Held compressed in the VM's compression cache (content in VmPages.stash)."""
SWAPPED = 4
"""Written to the VM's swap file (slot in VmPages.stash)."""

PMAP_CHUNK = 16 * 1024
"""Pmaps grow in steps of this many pages (64 MB of guest memory)."""


def distinct(ppns: np.ndarray) -> np.ndarray:
    """The sorted distinct values; without sorting when they already are (a guest
    touching a run of pages, the common case)."""
    if len(ppns) < 2 or bool(np.all(ppns[1:] > ppns[:-1])):
        return ppns
    # np.unique's result, by a sort and a comparison: on the guest's batches of about
    # a thousand pages np.unique's hashing costs several times a sort.
    ordered = np.sort(ppns)
    first = np.empty(len(ordered), bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def last_writes(ppns: np.ndarray, fingerprints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pages a batch of writes leaves, sorted and distinct, each with the last
    content written to it (as they stand when already sorted and distinct)."""
    if len(ppns) < 2 or bool(np.all(ppns[1:] > ppns[:-1])):
        return ppns, fingerprints
    # What np.unique(reversed, return_index=True) gives, without its overheads: a
    # stable sort of the reversed batch puts each page's last write first.
    backwards = ppns[::-1]
    order = np.argsort(backwards, kind="stable")
    ordered = backwards[order]
    first = np.empty(len(ordered), bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    last = len(ppns) - 1 - order[first]
    return ppns[last], fingerprints[last]


@dataclass(eq=False)
class VmPages:
    """One powered-on VM's guest-physical memory."""

    index: int
    """The VM's slot in MachineMemory (stable while it is powered on)."""
    name: str
    configured_pages: int
    domain: int
    """Sharing domain (its salt): pages are shared only within one domain."""
    sharable: bool
    """False when page sharing is disabled for this VM (sched.mem.pshare.enable)."""
    pmap: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    backing: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    stash: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    """Per PPN: the fingerprint of a compressed page, or the swap slot of a swapped one."""
    zip_mpns: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    """Machine pages holding the VM's compression cache (two compressed pages each)."""
    dirty: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    """Per PPN: written by the guest since the bitmap was last taken (vMotion's
    dirty-page tracking; every guest write sets it)."""

    def grow(self, pages: int) -> None:
        """Makes the pmap cover PPNs below `pages` (whole chunks, never past the VM)."""
        if pages <= len(self.pmap):
            return
        # Whole chunks, and at least double: a guest touching its memory in order
        # (a boot, a vMotion's arrival) must not copy the pmap once per chunk.
        chunks = -(-pages // PMAP_CHUNK) * PMAP_CHUNK
        size = min(self.configured_pages, max(chunks, 2 * len(self.pmap)))
        old = len(self.pmap)
        self.pmap = np.concatenate([self.pmap, np.full(size - old, UNMAPPED, self.pmap.dtype)])
        self.backing = np.concatenate([self.backing, np.zeros(size - old, np.int8)])
        self.dirty = np.concatenate([self.dirty, np.zeros(size - old, bool)])
        if len(self.stash):
            self.stash = np.concatenate([self.stash, np.zeros(size - old, np.uint64)])

    def keep(self, ppns: np.ndarray, values: np.ndarray) -> None:
        """Stashes what a reclaimed page held; the stash exists only once reclaim
        has taken a page of this VM (most VMs never need one)."""
        if len(self.stash) < len(self.pmap):
            self.stash = np.concatenate(
                [self.stash, np.zeros(len(self.pmap) - len(self.stash), np.uint64)]
            )
        self.stash[ppns] = values

    def take_dirty(self) -> np.ndarray:
        """The pages written since the last take (sorted), and the bitmap cleared."""
        written = np.flatnonzero(self.dirty)
        self.dirty[written] = False
        return written

    def touched(self) -> np.ndarray:
        """Every page the guest has touched (whatever backs it now), sorted."""
        return np.flatnonzero(self.backing != UNTOUCHED)

    def count(self, backing: int) -> int:
        return int(np.count_nonzero(self.backing == backing))


class MachineMemory:
    """The host's machine pages and every powered-on VM's pmap."""

    def __init__(self, pages: int) -> None:
        if pages < 1:
            raise InvalidArgument(f"machine memory must have at least one page, got {pages}")
        self.pages = pages
        self.mpn_type = np.int32 if pages < 2**31 else np.int64
        """MPNs fit 32 bits on hosts below 8 TiB: pmaps and scans take half the bytes."""
        self.on_grow: list[Callable[[int], None]] = []
        """Called with the new number of MPN slots when the machine arrays grow."""
        self.content = np.zeros(0, np.uint64)
        self.refcount = np.zeros(0, np.int32)
        self.domain = np.zeros(0, np.uint64)
        self.sharable = np.zeros(0, bool)
        self.high_water = 0
        """MPNs below this have been used at least once; the rest were never handed out."""
        self._free = np.zeros(0, self.mpn_type)
        self._free_top = 0
        self.vms: dict[str, VmPages] = {}
        self._next_index = 0

    # -- machine pages -------------------------------------------------------------

    @property
    def free_pages(self) -> int:
        return self._free_top + (self.pages - self.high_water)

    @property
    def used_pages(self) -> int:
        return self.pages - self.free_pages

    def allocate(self, count: int, domain: int = 0, sharable: bool = False) -> np.ndarray:
        """`count` zeroed MPNs with reference count 1; InsufficientResourcesFault when
        the host has fewer free pages (reclaim first)."""
        if count > self.free_pages:
            raise InsufficientResourcesFault(
                f"need {count} machine pages and only {self.free_pages} are free",
                free_pages=self.free_pages,
            )
        reused = min(count, self._free_top)
        if reused == 0 and count:  # all fresh: one run of MPNs, set by slices
            start = self.high_water
            self._extend(start + count)
            self.high_water += count
            run = slice(start, start + count)
            self.content[run] = 0
            self.refcount[run] = 1
            self.domain[run] = domain
            self.sharable[run] = sharable
            return np.arange(start, start + count, dtype=self.mpn_type)
        mpns = self._free[self._free_top - reused : self._free_top].copy()
        self._free_top -= reused
        if count > reused:
            fresh = np.arange(
                self.high_water, self.high_water + count - reused, dtype=self.mpn_type
            )
            self._extend(self.high_water + len(fresh))
            self.high_water += len(fresh)
            mpns = np.concatenate([mpns, fresh])
        self.content[mpns] = 0  # zeroed before any VM sees it
        self.refcount[mpns] = 1
        self.domain[mpns] = domain
        self.sharable[mpns] = sharable
        return mpns

    def release(self, mpns: np.ndarray) -> None:
        """Drops one reference to each MPN (repeats allowed); frees those left at 0."""
        if len(mpns) == 0:
            return
        if np.all(self.refcount[mpns] == 1):  # private pages, each named once
            self.refcount[mpns] = 0
            self._push_free(mpns)
            return
        np.subtract.at(self.refcount, mpns, 1)
        left = self.refcount[mpns]
        if np.any(left < 0):
            raise AssertionError("an MPN was released more times than it was referenced")
        self._push_free(distinct(mpns[left == 0]))  # one released twice appears twice

    def _push_free(self, mpns: np.ndarray) -> None:
        if len(mpns) == 0:
            return
        need = self._free_top + len(mpns)
        if need > len(self._free):
            grown = np.empty(max(need, 2 * len(self._free), 1024), self.mpn_type)
            grown[: self._free_top] = self._free[: self._free_top]
            self._free = grown
        self._free[self._free_top : need] = mpns
        self._free_top = need

    def free_list(self) -> np.ndarray:
        return self._free[: self._free_top].copy()

    def _extend(self, size: int) -> None:
        if size <= len(self.content):
            return
        new = min(self.pages, max(size, 2 * len(self.content), 1024))
        for name in ("content", "refcount", "domain", "sharable"):
            old = getattr(self, name)
            grown = np.zeros(new, old.dtype)
            grown[: len(old)] = old
            setattr(self, name, grown)
        for hook in self.on_grow:
            hook(new)

    # -- VMs ---------------------------------------------------------------------

    def add_vm(self, name: str, configured_pages: int, domain: int, sharable: bool) -> VmPages:
        if name in self.vms:
            raise InvalidArgument(f"{name} already has guest memory on this host")
        if configured_pages < 1:
            raise InvalidArgument(f"{name} needs at least one page of memory")
        empty = np.empty(0, self.mpn_type)
        vm = VmPages(
            self._next_index, name, configured_pages, domain, sharable, empty, zip_mpns=empty
        )
        self._next_index += 1
        self.vms[name] = vm
        return vm

    def remove_vm(self, name: str) -> VmPages:
        """Frees every machine page the VM maps or holds compressed (its swap file is
        the reclaimer's to drop)."""
        vm = self.vms.pop(name)
        self.release(vm.pmap[vm.backing == MAPPED])
        self.release(vm.zip_mpns)
        vm.zip_mpns = vm.zip_mpns[:0]
        vm.pmap[:] = UNMAPPED
        vm.backing[:] = UNTOUCHED
        return vm

    def check_ppns(self, vm: VmPages, ppns: np.ndarray) -> np.ndarray:
        ppns = np.asarray(ppns, np.int64)
        if len(ppns) and (ppns.min() < 0 or ppns.max() >= vm.configured_pages):
            raise InvalidArgument(
                f"{vm.name} has guest-physical pages 0..{vm.configured_pages - 1}; "
                f"got {int(ppns.min())}..{int(ppns.max())}"
            )
        return ppns

    def pages_to_allocate(self, vm: VmPages, ppns: np.ndarray, writing: bool) -> int:
        """How many machine pages touching these PPNs would take (for reclaim to make
        room first)."""
        ppns = distinct(self.check_ppns(vm, ppns))
        vm.grow(int(ppns.max()) + 1 if len(ppns) else 0)
        return self.allocation_need(vm, ppns, writing)

    def allocation_need(self, vm: VmPages, ppns: np.ndarray, writing: bool) -> int:
        """pages_to_allocate for PPNs already checked, distinct and inside the pmap
        (callers that have them so spare the sort and checks a second time)."""
        mapped = vm.backing[ppns] == MAPPED
        need = int(np.count_nonzero(~mapped))
        if writing:
            need += int(np.count_nonzero(self.refcount[vm.pmap[ppns[mapped]]] > 1))
        return need

    def write(self, vm: VmPages, ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        """The guest writes whole pages. A page that is not mapped (untouched,
        ballooned, compressed or swapped) gets a fresh zeroed MPN; a shared page gets
        a private copy; the caller has dropped any compressed or swapped copy."""
        ppns = self.check_ppns(vm, ppns)
        fingerprints = np.asarray(fingerprints, np.uint64)
        if len(ppns) != len(fingerprints):
            raise InvalidArgument("one fingerprint per page is needed")
        ppns, fingerprints = last_writes(ppns, fingerprints)  # the last write to a page wins
        if len(ppns) == 0:
            return
        vm.grow(int(ppns.max()) + 1)
        self.write_distinct(vm, ppns, fingerprints)

    def write_distinct(self, vm: VmPages, ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        """write() for PPNs already checked, sorted, distinct and inside the pmap, one
        fingerprint each (reclaim has them so and need not pay for the checks again)."""
        vm.dirty[ppns] = True
        mpns = vm.pmap[ppns]
        mapped = vm.backing[ppns] == MAPPED
        shared = mapped.copy()
        shared[mapped] = self.refcount[mpns[mapped]] > 1
        private = mapped & ~shared
        if bool(np.all(private)):  # the usual case: the guest rewrites pages it owns
            self.content[mpns] = fingerprints
            return
        self.content[mpns[private]] = fingerprints[private]
        needs_page = ~private
        fresh = self.allocate(int(np.count_nonzero(needs_page)), vm.domain, vm.sharable)
        self.release(mpns[shared])  # copy-on-write: the others keep the shared page
        self.content[fresh] = fingerprints[needs_page]
        vm.pmap[ppns[needs_page]] = fresh
        vm.backing[ppns[needs_page]] = MAPPED

    def map_zeroed(self, vm: VmPages, ppns: np.ndarray) -> None:
        """First touch of untouched or ballooned pages: back them with zeroed MPNs."""
        ppns = distinct(self.check_ppns(vm, ppns))
        if len(ppns) == 0:
            return
        vm.grow(int(ppns.max()) + 1)
        ppns = ppns[(vm.backing[ppns] == UNTOUCHED) | (vm.backing[ppns] == BALLOONED)]
        vm.pmap[ppns] = self.allocate(len(ppns), vm.domain, vm.sharable)
        vm.backing[ppns] = MAPPED

    def map_content(self, vm: VmPages, ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        """Brings pages back in (decompressed or swapped in) with their content."""
        fresh = self.allocate(len(ppns), vm.domain, vm.sharable)
        self.content[fresh] = fingerprints
        vm.pmap[ppns] = fresh
        vm.backing[ppns] = MAPPED

    def unmap(self, vm: VmPages, ppns: np.ndarray, backing: int) -> np.ndarray:
        """Takes mapped pages away from the guest (balloon, compress, swap); returns
        their content; drops one reference each."""
        mpns = vm.pmap[ppns]
        content = self.content[mpns].copy()
        vm.pmap[ppns] = UNMAPPED
        vm.backing[ppns] = backing
        self.release(mpns)
        return content

    def read_mapped(self, vm: VmPages, ppns: np.ndarray) -> np.ndarray:
        """The content of pages the caller made sure are mapped."""
        return self.content[vm.pmap[ppns]]

    def merge(self, follower: np.ndarray, leader: np.ndarray, target: np.ndarray) -> None:
        """Shares pages: every pmap entry naming a follower MPN now names its leader
        (same content, same domain: the caller checked), and the followers are freed.
        Followers of one leader come together (as a sorted scan yields them). `target`
        is an identity map over MPNs (target[i] == i) with one more slot, holding -1."""
        target[follower] = leader
        for vm in self.vms.values():
            np.take(target, vm.pmap, out=vm.pmap, mode="wrap")  # -1 wraps to the last slot
        runs = np.flatnonzero(np.concatenate(([True], leader[1:] != leader[:-1])))
        moved = self.refcount[follower]
        if np.all(moved == 1):  # the usual case: private pages joining a share
            gained = np.diff(runs, append=len(follower))
        else:
            gained = np.add.reduceat(moved, runs, dtype=np.int64)
        self.refcount[leader[runs]] += gained.astype(np.int32)
        self.refcount[follower] = 0
        self._push_free(follower)

    # -- invariants, for tests and the chaos checker --------------------------------

    def check(self) -> None:
        """Raises AssertionError if reference counts or the free stack are wrong."""
        expected = np.zeros(self.high_water, np.int64)
        for vm in self.vms.values():
            mapped = vm.pmap[vm.backing == MAPPED]
            if len(mapped) and (mapped.min() < 0 or mapped.max() >= self.high_water):
                raise AssertionError(f"{vm.name} maps an MPN that was never allocated")
            expected += np.bincount(mapped, minlength=self.high_water)
            expected += np.bincount(vm.zip_mpns, minlength=self.high_water)
            if np.any(vm.pmap[vm.backing != MAPPED] != UNMAPPED):
                raise AssertionError(f"{vm.name} has an MPN on a page that is not mapped")
        if np.any(self.refcount[: self.high_water] != expected):
            raise AssertionError("an MPN's reference count is not the number of its mappings")
        free = self.free_list()
        if len(np.unique(free)) != len(free):
            raise AssertionError("an MPN is on the free stack twice")
        if np.any(self.refcount[free] != 0):
            raise AssertionError("a free MPN has references")
        in_use = np.count_nonzero(self.refcount[: self.high_water] > 0)
        if in_use + len(free) != self.high_water:
            raise AssertionError(
                f"leaked MPNs: {self.high_water - in_use - len(free)} neither used nor free"
            )
