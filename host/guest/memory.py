"""The guest's use of its memory: which pages it touches and what it writes there.

A powered-on VM boots (touching part of its memory), then keeps a working set hot:
it reads pages at `touch_rate` and rewrites pages at `dirty_rate`. Content is drawn
so that the three kinds of page TPS cares about all occur:

- zero pages (fingerprint 0), as a guest leaves free memory zeroed;
- pages common to every VM of the same guest OS family (its kernel and libraries):
  drawn from one pool of fingerprints per family, so VMs of one family find matches;
- private pages: random fingerprints no other page has.

Plain Python and numpy: the caller passes the elapsed time, and randomness comes from
a generator seeded by the VM (a run replays exactly).
"""

from __future__ import annotations

import hashlib

import numpy as np

from vsim.guest_workload import GUEST_DEFAULTS, GuestWorkload, os_family

COMMON_POOL_PAGES = 16_384
"""Distinct common pages per guest OS family (64 MB of kernel and libraries)."""


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("/".join(parts).encode(), digest_size=8).digest())


def common_pool(family: str) -> np.ndarray:
    """The fingerprints of a family's common pages (the same on every host)."""
    rng = np.random.default_rng(_seed("common", family))
    return rng.integers(1, 2**63, COMMON_POOL_PAGES, dtype=np.uint64)


class GuestMemoryModel:
    """One VM's guest, from power-on to power-off."""

    def __init__(
        self,
        vm_uuid: str,
        guest_os: str,
        configured_pages: int,
        workload: GuestWorkload | None = None,
        seed: int = 0,
    ) -> None:
        self.family = os_family(guest_os)
        self.workload = (workload or GUEST_DEFAULTS[self.family]).validated()
        self.configured_pages = configured_pages
        self.working_set = max(1, int(configured_pages * self.workload.working_set_pct / 100))
        self.booted_pages = max(
            self.working_set, int(configured_pages * self.workload.boot_touch_pct / 100)
        )
        self._rng = np.random.default_rng(_seed("guest", vm_uuid, str(seed)))
        self._pool = common_pool(self.family)
        self._carry = {"dirty": 0.0, "touch": 0.0}

    def content(self, count: int) -> np.ndarray:
        """Fingerprints for `count` written pages, in the workload's mix."""
        w = self.workload
        kind = self._rng.random(count) * 100
        fingerprints = self._rng.integers(1, 2**63, count, dtype=np.uint64)
        common = (kind >= w.zero_pct) & (kind < w.zero_pct + w.common_pct)
        fingerprints[common] = self._pool[self._rng.integers(0, len(self._pool), int(common.sum()))]
        fingerprints[kind < w.zero_pct] = 0
        return fingerprints

    def boot(self) -> tuple[np.ndarray, np.ndarray]:
        """The pages written while booting, and their content."""
        ppns = np.arange(self.booted_pages, dtype=np.int64)
        return ppns, self.content(len(ppns))

    def step(self, seconds: float, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The guest's activity over `seconds`: pages read, pages written, content.
        `speed` is the share of those seconds its vCPUs ran (SDPS slows them during a
        vMotion; 0 while it is stunned)."""
        reads = self._pages("touch", self.workload.touch_rate * seconds * speed)
        writes = self._pages("dirty", self.workload.dirty_rate * seconds * speed)
        return reads, writes, self.content(len(writes))

    def state(self) -> dict:
        """What the guest is in the middle of (its generator and fractional carries):
        a vMotion checkpoint carries it, so the guest goes on where it stopped."""
        return {"rng": self._rng.bit_generator.state, "carry": dict(self._carry)}

    def restore(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._carry = {
            "dirty": float(state["carry"]["dirty"]),
            "touch": float(state["carry"]["touch"]),
        }

    def _pages(self, kind: str, expected: float) -> np.ndarray:
        """Working-set pages; fractional counts carry over to the next step."""
        total = self._carry[kind] + expected
        count = int(total)
        self._carry[kind] = total - count
        return self._rng.integers(0, self.working_set, count, dtype=np.int64)
