"""The host's disk I/O scheduler: one queue per VM per target (a datastore), at most
`queue_depth` commands outstanding per target (ESXi's Disk.SchedNumReqOutstanding,
32), with Storage I/O Control (SIOC) shares and per-VM IOPS limits.

Uncongested, the VMs that have I/O waiting are served round-robin: a VM that queues a
thousand commands gets one turn for each turn of a VM that queues one, so no VM can
starve another on a shared datastore.

Congested: the scheduler measures each target's device latency (dispatch to
completion, averaged over the last `SiocSettings.window_s`). While that average is
above the target's congestion threshold (SIOC's default 30 ms), SIOC does two things:
- the queues are served in proportion to the VMs' disk shares (low/normal/high =
  500/1000/2000), by start-time fair queueing: each VM's next command carries a start
  tag max(virtual time, the VM's last finish tag) and a finish tag start + 1/shares;
  the lowest start tag goes next (ties in round-robin order). A VM that was idle
  starts at the current virtual time, so idling earns no credit. The tags restart
  each time the target becomes congested.
- the number of commands allowed outstanding on the target (the device queue depth)
  follows PARDA's control law (Gulati, Ahmad, Waldspurger, FAST '09, the algorithm
  behind SIOC), once per window: w <- (1 - gamma) w + gamma (L / latency * w + beta),
  between SIOC_MIN_QUEUE_DEPTH (4) and the configured depth. Above the threshold L it
  shrinks; below it it grows back; with no I/O in the window it returns to the full
  depth at once.
Below the threshold (and before any latency is measured) the order is exactly the
round-robin above and the depth stays at the configured one.

IOPS limits are enforced always, as ESXi's per-VM IOPS limit is: a VM's commands on a
target are dispatched at least 1/limit seconds apart; while a limited VM waits for its
next slot the others go ahead, and the scheduler sleeps on the clock until the slot.

Owns the queues, tags and measurements; never runs a command itself beyond awaiting
the callable it is given, reads time only from its runtime's clock and runs each
dispatched command as a task of that runtime (the host's boot: a crash ends them).
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from vsim.clock import WallClock
from vsim.faults import InvalidArgument
from vsim.runtime import Runtime
from vsim.storage_io_control import SIOC_CONGESTION_THRESHOLD_MS, congestion_threshold_s

SCHED_NUM_REQ_OUTSTANDING = 32
SERVED_LOG = 10_000
"""How many of the latest dispatches each target remembers (for statistics and tests)."""

UNLIMITED_IOPS = -1
DISK_SHARES = {"low": 500, "normal": 1000, "high": 2000}
"""Per-VM disk shares at each level (a virtual disk's SharesInfo for SIOC)."""
SIOC_MIN_QUEUE_DEPTH = 4
"""SIOC never throttles a device queue below this many commands."""
SIOC_PERIOD_S = 4.0
"""SIOC recomputes a datastore's latency and queue depth every 4 seconds."""
_SLOT_SLACK_S = 1e-9
"""An IOPS slot this close counts as reached (float sums of 1/limit drift by ulps)."""


@dataclass(frozen=True)
class DiskAllocation:
    """A VM's SIOC settings on one target. Constructing one validates it."""

    shares: int = DISK_SHARES["normal"]
    """Relative weight while the target is congested (> 0)."""
    iops_limit: int = UNLIMITED_IOPS
    """Most commands per second dispatched for this VM on this target; -1 = unlimited."""

    def __post_init__(self) -> None:
        for name in ("shares", "iops_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(f"disk {name} must be a whole number, got {value!r}")
        if self.shares <= 0:
            raise InvalidArgument(f"disk shares must be > 0, got {self.shares}")
        if self.iops_limit != UNLIMITED_IOPS and self.iops_limit < 1:
            raise InvalidArgument(
                f"IOPS limit must be >= 1 or {UNLIMITED_IOPS} for unlimited, got {self.iops_limit}"
            )


def disk_allocation(level: str, iops_limit: int = UNLIMITED_IOPS) -> DiskAllocation:
    """SIOC settings at a share level (low/normal/high = 500/1000/2000)."""
    if level not in DISK_SHARES:
        raise InvalidArgument(
            f"disk share level {level!r} is not one of {', '.join(DISK_SHARES)} "
            "(give a share count for custom shares)"
        )
    return DiskAllocation(DISK_SHARES[level], iops_limit)


@dataclass(frozen=True)
class SiocSettings:
    """How Storage I/O Control measures and throttles; the defaults are SIOC's."""

    congestion_threshold_ms: float = SIOC_CONGESTION_THRESHOLD_MS
    """A new target's threshold; `set_congestion_threshold` changes one target's."""
    window_s: float = SIOC_PERIOD_S
    """Latency is averaged over the completions of this last stretch of time, and the
    queue depth is recomputed once per this period."""
    gamma: float = 0.2
    """PARDA's smoothing: how far one period moves the depth toward its target."""
    beta: float = 1.0
    """PARDA's additive term, in commands per period (a host's share of the array)."""
    min_queue_depth: int = SIOC_MIN_QUEUE_DEPTH

    def __post_init__(self) -> None:
        congestion_threshold_s(self.congestion_threshold_ms)
        if not (self.window_s > 0 and math.isfinite(self.window_s)):
            raise InvalidArgument(f"SIOC window must be a finite number > 0 s, got {self.window_s}")
        if not 0 < self.gamma <= 1:
            raise InvalidArgument(f"SIOC gamma must be in (0, 1], got {self.gamma}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise InvalidArgument(f"SIOC beta must be a finite number >= 0, got {self.beta}")
        if self.min_queue_depth < 1:
            raise InvalidArgument(
                f"SIOC minimum queue depth must be >= 1, got {self.min_queue_depth}"
            )


_Queued = tuple[Callable[[], Awaitable[Any]], asyncio.Future]


@dataclass
class _Target:
    threshold_s: float
    depth: float
    """The device queue depth SIOC allows now (PARDA's window w)."""
    queues: dict[str, deque[_Queued]] = field(default_factory=dict)
    ring: deque[str] = field(default_factory=deque)
    """VMs with I/O waiting, in the order of their next turn."""
    outstanding: int = 0
    served: deque[str] = field(default_factory=lambda: deque(maxlen=SERVED_LOG))
    completed: Counter[str] = field(default_factory=Counter)
    allocations: dict[str, DiskAllocation] = field(default_factory=dict)
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    """(completed at, latency) of the completions in the latency window."""
    latency_sum: float = 0.0
    congested: bool = False
    controlled_at: float | None = None
    """When the queue depth was last recomputed."""
    virtual_time: float = 0.0
    """Start-time fair queueing: the start tag of the latest dispatch."""
    finish: dict[str, float] = field(default_factory=dict)
    """Each VM's latest finish tag."""
    next_slot: dict[str, float] = field(default_factory=dict)
    """When each IOPS-limited VM may dispatch next."""
    wakeup: asyncio.Task | None = None
    wakeup_at: float = math.inf

    @property
    def latency_s(self) -> float:
        return self.latency_sum / len(self.samples) if self.samples else 0.0


class DiskScheduler:
    def __init__(
        self,
        queue_depth: int = SCHED_NUM_REQ_OUTSTANDING,
        runtime: Runtime | None = None,
        sioc: SiocSettings | None = None,
    ) -> None:
        """runtime: the host's (a live one on real time if None)."""
        if queue_depth < 1:
            raise InvalidArgument(f"queue depth must be >= 1, got {queue_depth}")
        self.queue_depth = queue_depth
        self.runtime = runtime if runtime is not None else Runtime.live(WallClock())
        self.clock = self.runtime.clock
        self.sioc = sioc if sioc is not None else SiocSettings()
        self._min_depth = min(self.sioc.min_queue_depth, queue_depth)
        self._targets: dict[str, _Target] = {}

    # -- settings ------------------------------------------------------------------------

    def set_disk_allocation(self, target: str, vm: str, allocation: DiskAllocation) -> None:
        """Sets vm's disk shares and IOPS limit on target; takes effect at its next
        dispatch."""
        if not isinstance(allocation, DiskAllocation):
            raise InvalidArgument(f"expected a DiskAllocation, got {type(allocation).__name__}")
        _check_name(target, "target")
        _check_name(vm, "VM name")
        self._target(target).allocations[vm] = allocation

    def disk_allocation(self, target: str, vm: str) -> DiskAllocation:
        t = self._targets.get(target)
        return t.allocations.get(vm, DiskAllocation()) if t else DiskAllocation()

    def set_congestion_threshold(self, target: str, threshold_ms: float) -> None:
        threshold = congestion_threshold_s(threshold_ms)
        _check_name(target, "target")
        self._target(target).threshold_s = threshold

    def forget_vm(self, vm: str) -> None:
        """Drops vm's settings and tags on every target where it has no I/O waiting
        (call when it powers off or leaves the host)."""
        for t in self._targets.values():
            if vm not in t.queues:
                t.allocations.pop(vm, None)
                t.finish.pop(vm, None)
                t.next_slot.pop(vm, None)

    # -- I/O -----------------------------------------------------------------------------

    async def submit(self, target: str, vm: str, command: Callable[[], Awaitable[Any]]) -> Any:
        """Queues one command of vm's for target; returns its result once served."""
        t = self._target(target)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        queue = t.queues.setdefault(vm, deque())
        if not queue:
            t.ring.append(vm)
        queue.append((command, future))
        self._dispatch(target, t)
        return await future

    def _dispatch(self, name: str, t: _Target) -> None:
        now = self.clock.now()
        self._observe(t, now)
        while t.ring and t.outstanding < int(t.depth):
            vm = self._next_vm(t, now)
            if vm is None:  # everyone waiting is held by its IOPS limit
                self._wake_at_next_slot(name, t, now)
                return
            queue = t.queues[vm]
            command, future = queue.popleft()
            if vm == t.ring[0]:
                t.ring.popleft()
            else:
                t.ring.remove(vm)
            if queue:
                t.ring.append(vm)  # its next command waits for everyone else's turn
            else:
                del t.queues[vm]
            if future.cancelled():
                continue
            self._charge(t, vm, now)
            t.outstanding += 1
            t.served.append(vm)
            self.runtime.spawn(self._run(name, t, vm, command, future, now), f"disk-io:{name}")

    def _next_vm(self, t: _Target, now: float) -> str | None:
        """Whose command goes next: the first in the ring (round-robin) or, congested,
        the lowest start tag; skipping VMs waiting for an IOPS slot."""
        ready = (vm for vm in t.ring if t.next_slot.get(vm, -math.inf) <= now + _SLOT_SLACK_S)
        if not t.congested:
            return next(ready, None)
        return min(ready, key=lambda vm: self._start_tag(t, vm), default=None)

    def _start_tag(self, t: _Target, vm: str) -> float:
        return max(t.virtual_time, t.finish.get(vm, -math.inf))

    def _charge(self, t: _Target, vm: str, now: float) -> None:
        """Advances vm's fair-queueing tags and IOPS slot for one dispatch."""
        allocation = t.allocations.get(vm)
        if allocation is None:
            allocation = DiskAllocation()
        if t.congested:
            start = self._start_tag(t, vm)
            t.virtual_time = start
            t.finish[vm] = start + 1.0 / allocation.shares
        if allocation.iops_limit != UNLIMITED_IOPS:
            t.next_slot[vm] = now + 1.0 / allocation.iops_limit

    def _wake_at_next_slot(self, name: str, t: _Target, now: float) -> None:
        at = min(t.next_slot[vm] for vm in t.ring)
        if t.wakeup is not None and not t.wakeup.done():
            if t.wakeup_at <= at:
                return
            t.wakeup.cancel()
        t.wakeup_at = at
        t.wakeup = self.runtime.spawn(self._wake(name, t, at - now), f"disk-slot:{name}")

    async def _wake(self, name: str, t: _Target, delay: float) -> None:
        await self.clock.sleep(max(0.0, delay))
        t.wakeup = None
        t.wakeup_at = math.inf
        self._dispatch(name, t)

    async def _run(
        self,
        name: str,
        t: _Target,
        vm: str,
        command: Callable[[], Awaitable[Any]],
        future: asyncio.Future,
        dispatched_at: float,
    ) -> None:
        try:
            result = await command()
        except BaseException as e:  # noqa: BLE001 - the submitter gets it
            if not future.done():
                future.set_exception(e)
        else:
            if not future.done():
                future.set_result(result)
        finally:
            done = self.clock.now()
            t.samples.append((done, done - dispatched_at))
            t.latency_sum += done - dispatched_at
            t.outstanding -= 1
            t.completed[vm] += 1
            self._dispatch(name, t)

    # -- Storage I/O Control ---------------------------------------------------------------

    def _observe(self, t: _Target, now: float) -> None:
        """Drops latencies older than the window, decides congestion, and once per
        window recomputes the device queue depth."""
        horizon = now - self.sioc.window_s
        while t.samples and t.samples[0][0] < horizon:
            t.latency_sum -= t.samples.popleft()[1]
        if not t.samples:
            t.latency_sum = 0.0  # no drift from float subtraction
        congested = t.latency_s > t.threshold_s
        if congested and not t.congested:
            t.virtual_time = 0.0
            t.finish.clear()
        t.congested = congested
        if t.controlled_at is None:
            t.controlled_at = now
        elif now - t.controlled_at >= self.sioc.window_s:
            t.controlled_at = now
            t.depth = self._next_depth(t)

    def _next_depth(self, t: _Target) -> float:
        """PARDA: w <- (1 - gamma) w + gamma (L / latency * w + beta), clamped."""
        latency = t.latency_s
        if latency <= 0.0:
            return float(self.queue_depth)
        s = self.sioc
        w = (1 - s.gamma) * t.depth + s.gamma * (t.threshold_s / latency * t.depth + s.beta)
        return min(float(self.queue_depth), max(float(self._min_depth), w))

    # -- statistics ------------------------------------------------------------------------

    def served(self, target: str) -> list[str]:
        """The VMs in the order their commands were dispatched (the latest ones)."""
        t = self._targets.get(target)
        return list(t.served) if t else []

    def completed(self, target: str) -> dict[str, int]:
        t = self._targets.get(target)
        return dict(t.completed) if t else {}

    def latency_ms(self, target: str) -> float:
        """The target's average device latency over the SIOC window, as of its last
        dispatch or completion."""
        t = self._targets.get(target)
        return t.latency_s * 1000.0 if t else 0.0

    def congested(self, target: str) -> bool:
        t = self._targets.get(target)
        return t.congested if t else False

    def congestion_threshold_ms(self, target: str) -> float:
        t = self._targets.get(target)
        return t.threshold_s * 1000.0 if t else self.sioc.congestion_threshold_ms

    def device_queue_depth(self, target: str) -> int:
        """How many commands SIOC allows outstanding on target now."""
        t = self._targets.get(target)
        return int(t.depth) if t else self.queue_depth

    def outstanding(self, target: str) -> int:
        t = self._targets.get(target)
        return t.outstanding if t else 0

    def _target(self, name: str) -> _Target:
        t = self._targets.get(name)
        if t is None:
            t = self._targets[name] = _Target(
                threshold_s=self.sioc.congestion_threshold_ms / 1000.0,
                depth=float(self.queue_depth),
            )
        return t


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{what} must be a non-empty string, got {name!r}")
