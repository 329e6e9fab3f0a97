"""vMotion's pre-copy: a running VM's memory sent to another host while its guest
keeps writing, round after round, until what is left fits the switchover goal.

The decisions are a sans-I/O core (`PreCopy`): given how many pages a round sent and
how many the guest dirtied meanwhile, it says how long a round takes on the link,
whether the rest fits the 500 ms switchover goal, and how fast the guest may run.
That last is SDPS (Stun During Page Send, vSphere 5.0 on): when the guest dirties
pages as fast as the link sends them, or a round hardly shrinks the next, its vCPUs
are slowed until pre-copy converges.

`precopy` drives the core on the host's clock against the source's MemoryManager:
round 1 sends every page the guest has touched, each later round the pages it
dirtied during the one before; a round takes its bytes (4 KiB a page) over the link
speed of simulated time, while the host's kernel periods go on running the guest.
Once the rest fits, the guest is stunned and the rest sent. A page travels as its
64-bit content fingerprint, but costs the link its 4 KiB.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from vsim.clock import Clock
from vsim.faults import InvalidArgument, MigrationFault, NotFound
from vsim.host.kernel.memory.memsched import MemoryManager
from vsim.host.kernel.memory.pmap import PAGE_SIZE

SWITCHOVER_GOAL_S = 0.5
"""Pre-copy ends when what is left can be sent in this long (the stun's budget)."""
MAX_SWITCHOVER_S = 100.0
"""vmotion.maxSwitchoverSeconds: the longest a switchover may take."""
MAX_ROUNDS = 64
"""Rounds after which a pre-copy that has not converged fails (SDPS makes every
guest converge long before)."""
SDPS_SHRINK = 0.9
"""A round whose dirtied pages are at least this share of what it sent is not
converging: SDPS slows the guest."""
SDPS_TARGET = 0.5
"""SDPS slows the guest until it dirties at most this share of the link's rate."""
MIN_SPEED = 0.01
"""The slowest SDPS runs a guest (it is never stopped before the stun)."""

Send = Callable[[np.ndarray, np.ndarray], Awaitable[None]]
"""Sends pages (their PPNs and fingerprints) to the destination."""


@dataclass(frozen=True)
class PreCopySettings:
    link_gbps: float = 10.0
    """The vMotion network's link speed (the VMkernel adapter's)."""
    switchover_goal_s: float = SWITCHOVER_GOAL_S
    max_switchover_s: float = MAX_SWITCHOVER_S

    def validated(self) -> PreCopySettings:
        if not (math.isfinite(self.link_gbps) and 0.1 <= self.link_gbps <= 400):
            raise InvalidArgument(f"a vMotion link is 0.1-400 Gb/s, got {self.link_gbps!r}")
        if not 0 < self.switchover_goal_s <= self.max_switchover_s <= 3600:
            raise InvalidArgument(
                "the switchover goal must be > 0 and at most vmotion.maxSwitchoverSeconds "
                f"(at most 3600), got {self.switchover_goal_s!r} and {self.max_switchover_s!r}"
            )
        return self

    @property
    def pages_per_second(self) -> float:
        return self.link_gbps * 1e9 / 8 / PAGE_SIZE


@dataclass(frozen=True)
class PreCopyRound:
    pages: int
    """Pages sent in the round."""
    seconds: float
    dirtied: int
    """Pages the guest wrote while it was sent (the next round's)."""
    speed: float
    """How fast the guest ran during the round (1: full speed)."""


@dataclass
class PreCopy:
    """The pre-copy's decisions, round by round (no clock, no I/O)."""

    settings: PreCopySettings = field(default_factory=PreCopySettings)
    rounds: list[PreCopyRound] = field(default_factory=list)
    speed: float = 1.0
    """How fast the guest runs now."""
    sdps: bool = False
    """Whether SDPS has slowed the guest in this migration."""

    def seconds(self, pages: int) -> float:
        """How long sending this many pages takes on the link."""
        return pages / self.settings.pages_per_second

    def converged(self, pages: int) -> bool:
        """The rest fits the switchover goal: stun now."""
        return self.seconds(pages) <= self.settings.switchover_goal_s

    def round_done(self, pages: int, seconds: float, dirtied: int) -> float:
        """Records a round; returns how fast the guest may run during the next. If
        the guest dirtied pages at the link's rate or more (at its current speed), or
        the round hardly shrank the next, SDPS slows it to dirty at most
        SDPS_TARGET of the link's rate."""
        self.rounds.append(PreCopyRound(pages, seconds, dirtied, self.speed))
        if len(self.rounds) >= MAX_ROUNDS and not self.converged(dirtied):
            raise MigrationFault(
                f"vMotion did not converge in {MAX_ROUNDS} pre-copy rounds "
                f"({dirtied} pages still dirty)"
            )
        if self.converged(dirtied):
            return self.speed
        link = self.settings.pages_per_second
        rate = dirtied / seconds if seconds > 0 else math.inf
        factors = []
        if rate >= link:  # it dirties as fast as the link sends: at most half that
            factors.append(SDPS_TARGET * link / rate)
        if dirtied >= SDPS_SHRINK * pages:  # the next round as long: at most half as long
            factors.append(SDPS_TARGET * pages / dirtied)
        if factors:
            self.sdps = True
            self.speed = max(MIN_SPEED, self.speed * min(1.0, *factors))
        return self.speed

    def switchover_seconds(self, pages: int) -> float:
        """The stun's page send; MigrationFault if it would pass the switchover
        limit."""
        seconds = self.seconds(pages)
        if seconds > self.settings.max_switchover_s:
            raise MigrationFault(
                f"the switchover would take {seconds:.1f} s, more than "
                f"vmotion.maxSwitchoverSeconds ({self.settings.max_switchover_s:g} s)"
            )
        return seconds


@dataclass(frozen=True)
class PreCopyReport:
    rounds: tuple[PreCopyRound, ...]
    pages_sent: int
    """Pages sent in all, the stun's included."""
    pages_resent: int
    """Pages sent again because the guest dirtied them after they were sent."""
    sdps: bool
    slowest_speed: float
    precopy_s: float
    """From the first round to the stun."""
    stun_pages: int
    stun_send_s: float
    """The part of the downtime spent sending the stun's pages."""
    stunned_at: float
    """When the guest stopped (the downtime runs from here to its resume)."""

    @property
    def memory_sent_bytes(self) -> int:
        return self.pages_sent * PAGE_SIZE


async def precopy(
    memory: MemoryManager,
    name: str,
    clock: Clock,
    send: Send,
    settings: PreCopySettings | None = None,
) -> PreCopyReport:
    """Pre-copies VM `name`'s memory with `send`, then stuns the guest and sends the
    rest. Returns with the guest stunned: the caller resumes it on the destination
    (or, on a failure, on this host with `memory.set_speed(name, 1)`). A failure in
    here leaves the guest running at full speed.

    A round goes out in batches of one second of the link: each batch's pages are
    read when it is sent, and the link's time for it passes before the next, so the
    destination hears from the source every second."""
    plan = PreCopy((settings or PreCopySettings()).validated())
    batch = max(1024, int(plan.settings.pages_per_second))
    began = clock.now()
    memory.take_dirty(name)  # tracking starts: what is written from now is resent
    pages = memory.touched_pages(name)

    async def send_round(ppns: np.ndarray) -> float:
        for at in range(0, len(ppns), batch):
            part = ppns[at : at + batch]
            await send(part, memory.guest_content(name, part))
            await clock.sleep(plan.seconds(len(part)))
        return plan.seconds(len(ppns))

    try:
        while True:
            seconds = await send_round(pages)
            dirty = memory.take_dirty(name)
            speed = plan.round_done(len(pages), seconds, len(dirty))
            if plan.converged(len(dirty)):
                break
            if speed != memory.speed(name):
                memory.set_speed(name, speed)
            pages = dirty
        stunned_at = clock.now()
        memory.set_speed(name, 0.0)
        send_s = plan.switchover_seconds(len(dirty))
        await send_round(dirty)
    except BaseException:
        with contextlib.suppress(NotFound):  # powered off meanwhile: nothing to resume
            memory.set_speed(name, 1.0)
        raise
    rounds = tuple(plan.rounds)
    later = sum(r.pages for r in rounds[1:]) + len(dirty)
    return PreCopyReport(
        rounds=rounds,
        pages_sent=rounds[0].pages + later,
        pages_resent=later,
        sdps=plan.sdps,
        slowest_speed=min(r.speed for r in rounds),
        precopy_s=stunned_at - began,
        stun_pages=len(dirty),
        stun_send_s=send_s,
        stunned_at=stunned_at,
    )
