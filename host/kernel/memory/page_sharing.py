"""Transparent page sharing (TPS): a periodic scan finds machine pages with identical
content in the same sharing domain and backs all their guest pages with one MPN,
copy-on-write (a later write gets a private copy: pmap.MachineMemory.write).

Salting decides the domains, as `Mem.ShareForceSalting` does (VMware KB 2097593):

- 0: salting off; pages are shared across all VMs.
- 1: a VM's domain is its `sched.mem.pshare.salt`, or the common default when it has
  none; VMs without a salt share with each other.
- 2 (default): a VM's domain is its salt, or its own UUID when it has none, so pages
  are shared only within one VM unless an administrator gives VMs the same salt.

A VM's domain is fixed when it powers on (as in ESXi, a salting change reaches a VM at
its next power-on or vMotion). Sharing can be turned off per host (the scan does not
run) and per VM (its pages never take part).

The scan is vectorised: one 64-bit key per candidate MPN (a hash of content and
domain, with the MPN packed in the low bits), one sort, and a full comparison of
content and domain before any merge, as ESXi compares whole pages after a hash hit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from vsim.faults import InvalidArgument
from vsim.host.kernel.memory.pmap import UNMAPPED, MachineMemory

SALTING_MODES = (0, 1, 2)
COMMON_DOMAIN = 0
"""The domain of VMs that share across VMs (salting 0, or 1 without a salt)."""


def salt_domain(salting: int, salt: str, vm_uuid: str) -> int:
    """The sharing domain a VM powers on with."""
    if salting not in SALTING_MODES:
        raise InvalidArgument(f"Mem.ShareForceSalting must be 0, 1 or 2, got {salting}")
    if salting == 0:
        return COMMON_DOMAIN
    if salt:
        return _domain_of("salt:" + salt)
    return COMMON_DOMAIN if salting == 1 else _domain_of("uuid:" + vm_uuid)


def _domain_of(text: str) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return value or 1  # 0 is the common domain


@dataclass(frozen=True)
class ScanResult:
    scanned: int
    """Candidate machine pages hashed."""
    merged: int
    """Machine pages freed by this scan."""
    collisions: int
    """Hash matches whose content or domain differed (left unshared)."""


_SPREAD = np.uint64(0x9E3779B97F4A7C15)
"""An odd multiplier: a bijection on 64-bit keys that carries low-bit differences into
the high bits the scan keeps."""
_NOT_CANDIDATE = np.uint64(1 << 63)


COMPARE_CHUNK = 1 << 20
"""Pages compared per step after hash matches (bounds the scratch memory)."""


class PageSharing:
    """The host's TPS scanner. Its work arrays grow with machine memory and are
    touched once when they do, so a scan runs over memory that is already paged in
    (a fresh array of 100s of MB costs more to page in than the scan's arithmetic)."""

    def __init__(self, memory: MachineMemory) -> None:
        self.memory = memory
        self._size = 0
        self._itype = memory.mpn_type
        self._utype = np.uint32 if memory.mpn_type == np.int32 else np.uint64
        self._buffers(len(memory.content) + 1)
        memory.on_grow.append(lambda slots: self._buffers(slots + 1))

    def _buffers(self, size: int) -> None:
        if size <= self._size:
            return
        size = max(size, 1024)
        self._size = size
        self._keys = np.zeros(size, np.uint64)
        self._index = np.arange(size, dtype=self._itype)
        self._mpns = np.zeros(size, self._itype)
        self._follower = np.zeros(size, self._itype)
        self._leader = np.zeros(size, self._itype)
        self._mask = np.zeros(size, bool)
        self._equal = np.zeros(size, bool)
        self._chunk = np.zeros(min(size, COMPARE_CHUNK), np.uint64)
        for array in (self._keys, self._mpns, self._follower, self._leader, self._mask):
            array.fill(0)  # page it in now, not during a scan
        self._equal.fill(False)

    def scan(self) -> ScanResult:
        """One full scan: merges every group of identical sharable pages of one domain."""
        memory, top = self.memory, self.memory.high_water
        self._buffers(top + 1)
        count = self._sort_candidates(top)
        if count < 2:
            return ScanResult(count, 0, 0)
        follower, leader = self._matches(count)
        if len(follower) == 0:
            return ScanResult(count, 0, 0)
        equal = self._same_page(follower, leader)
        collisions = len(follower) - int(np.count_nonzero(equal))
        if collisions:
            regrouped = _exact_pairs(memory, follower[~equal])
            follower = np.concatenate([follower[equal], regrouped[0]])
            leader = np.concatenate([leader[equal], regrouped[1]])
            if len(follower) == 0:
                return ScanResult(count, 0, collisions)
        target = self._mpns[: top + 1]
        np.copyto(target[:top], self._index[:top])
        target[top] = UNMAPPED
        memory.merge(follower, leader, target)
        return ScanResult(count, len(follower), collisions)

    def _sort_candidates(self, top: int) -> int:
        """Sorts the candidates' keys (hash in the high bits, MPN in the low bits) to
        the front of self._keys; returns how many there are."""
        memory, keys, mask = self.memory, self._keys[:top], self._mask[:top]
        np.greater(memory.refcount[:top], 0, out=mask)
        mask &= memory.sharable[:top]
        count = int(np.count_nonzero(mask))
        if count < 2:
            return count
        self._bits = max(1, int(top - 1).bit_length())
        low = np.uint64((1 << self._bits) - 1)
        np.bitwise_xor(memory.content[:top], memory.domain[:top], out=keys)
        keys *= _SPREAD
        keys >>= np.uint64(1)  # candidates sort before every non-candidate
        np.invert(mask, out=mask)
        np.copyto(keys, _NOT_CANDIDATE, where=mask)
        keys &= ~low
        keys |= self._index[:top].view(self._utype)
        keys.sort()
        return count

    def _matches(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """Pairs each page whose hash equals its predecessor's with the first page of
        its run (the leader)."""
        keys, mpns = self._keys[:count], self._mpns[:count]
        low = np.uint64((1 << self._bits) - 1)
        np.bitwise_and(keys, low, out=mpns.view(self._utype), casting="unsafe")
        keys >>= np.uint64(self._bits)
        same = self._mask[: count - 1]
        np.equal(keys[1:], keys[:-1], out=same)
        positions = np.flatnonzero(same)
        positions += 1
        matches = len(positions)
        # Each run starts at the last position whose hash differs from its predecessor.
        starts = keys.view(self._itype)[:count]  # the hashes are no longer needed
        np.copyto(starts, self._index[:count])
        starts[positions] = 0
        np.maximum.accumulate(starts, out=starts)
        follower = np.take(mpns, positions, out=self._follower[:matches])
        leader = np.take(starts, positions, out=self._leader[:matches])
        np.take(mpns, leader, out=leader, mode="clip")
        return follower, leader

    def _same_page(self, follower: np.ndarray, leader: np.ndarray) -> np.ndarray:
        """Whole-page comparison after a hash match: same content, same domain."""
        memory, n = self.memory, len(follower)
        equal, theirs = self._equal[:n], self._chunk
        for at in range(0, n, len(theirs)):
            end = min(n, at + len(theirs))
            part, mine = equal[at:end], self._keys[at:end]
            np.take(memory.content, follower[at:end], out=mine)
            np.equal(
                mine, np.take(memory.content, leader[at:end], out=theirs[: end - at]), out=part
            )
            np.take(memory.domain, follower[at:end], out=mine)
            part &= mine == np.take(memory.domain, leader[at:end], out=theirs[: end - at])
        return equal


def _exact_pairs(memory: MachineMemory, mpns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(follower, leader) pairs among the few pages a hash run held that did not match
    its leader: grouped by their exact content and domain."""
    content, domain = memory.content[mpns], memory.domain[mpns]
    order = np.lexsort((mpns, domain, content))
    mpns, content, domain = mpns[order], content[order], domain[order]
    same = (content[1:] == content[:-1]) & (domain[1:] == domain[:-1])
    starts = np.arange(len(mpns))
    starts[1:][same] = 0
    np.maximum.accumulate(starts, out=starts)
    followers = np.flatnonzero(same) + 1
    return mpns[followers], mpns[starts[followers]]
