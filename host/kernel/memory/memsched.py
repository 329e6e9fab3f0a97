"""The host's memory manager: machine memory, each powered-on VM's guest, page
sharing and reclaim, tied together on the host's clock.

`tick()` runs one period: every guest does what its workload does over the elapsed
time, the TPS scan runs when it is due, every VM's target (entitlement) is computed
from shares, reservation and limit, and the reclaimer brings free memory back to
minFree. Statistics are read from the pmaps, never kept as separate counters that
could drift.

Plain Python and numpy; time from the injected Clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vsim.clock import Clock
from vsim.faults import InsufficientResourcesFault, InvalidArgument, NotFound
from vsim.guest_workload import GuestWorkload
from vsim.host.guest.memory import GuestMemoryModel
from vsim.host.kernel.memory.page_sharing import PageSharing, ScanResult, salt_domain
from vsim.host.kernel.memory.pmap import (
    BALLOONED,
    COMPRESSED,
    MAPPED,
    PAGES_PER_MB,
    SWAPPED,
    MachineMemory,
)
from vsim.host.kernel.memory.reclaim import MemoryState, Reclaimer, VmReclaim, VmSwapFile
from vsim.host.kernel.resources.pool_tree import PoolTree
from vsim.memory_settings import MemorySettings, VmMemorySettings
from vsim.resource_allocation import (
    ROOT_POOL,
    Unit,
)
from vsim.spec import MAX_KERNEL_PERIOD_S

MAX_PERIOD = 2 * MAX_KERNEL_PERIOD_S
"""The most one period covers (twice the longest kernel period, so a late period is
not cut short): a host back from a long pause does not replay it."""
ACCESS_BATCH = 16 * PAGES_PER_MB
"""Guest pages touched as one step (reclaim may take earlier steps' pages)."""


@dataclass(frozen=True)
class VmMemoryStats:
    """One VM's memory, in MB (vSphere's per-VM counters)."""

    granted: float
    shared: float
    """Guest pages backed by a machine page they share with other pages."""
    shared_saved: float
    """The VM's part of the memory sharing saves: its shared pages minus its share of
    the machine pages behind them."""
    zero: float
    ballooned: float
    compressed: float
    swapped: float
    consumed: float
    """Machine memory charged to the VM: granted minus sharing's saving, plus its
    compression cache."""
    active: float
    target: float


@dataclass(frozen=True)
class HostMemoryStats:
    """The host's memory, in MB."""

    total: float
    free: float
    min_free: float
    state: str
    granted: float
    shared: float
    shared_common: float
    """Machine memory behind shared pages."""
    shared_saved: float
    zero: float
    ballooned: float
    compressed: float
    swapped: float
    consumed: float
    scans: int
    last_scan: ScanResult | None


def _limit_pages(settings: VmMemorySettings) -> int:
    return -1 if settings.limit_mb == -1 else settings.limit_mb * PAGES_PER_MB


def _mb(pages: float) -> float:
    return pages / PAGES_PER_MB


@dataclass
class _PoweredOn:
    guest: GuestMemoryModel
    reclaim: VmReclaim
    settings: VmMemorySettings
    memory_mb: int
    stepped_at: float
    """Until when the guest has run (its activity is drawn up to here)."""
    speed: float = 1.0
    """The share of time its vCPUs run: below 1 while SDPS slows it, 0 stunned."""


class MemoryManager:
    def __init__(
        self,
        memory_mb: int,
        clock: Clock,
        swap_dir: Path,
        settings: MemorySettings | None = None,
        seed: int = 0,
        pools: PoolTree | None = None,
    ) -> None:
        """`pools` is the host's resource-pool tree, shared with the CPU scheduler, its
        memory capacity `memory_mb` (a tree of memory alone if none is given)."""
        self.memory = MachineMemory(memory_mb * PAGES_PER_MB)
        self.clock = clock
        self.swap_dir = Path(swap_dir)
        self.settings = (settings or MemorySettings()).validated()
        self.sharing = PageSharing(self.memory)
        self.reclaimer = Reclaimer(self.memory)
        self.pools = pools if pools is not None else PoolTree({Unit.MB: memory_mb})
        self.tree = self.pools.view(Unit.MB)
        """Memory shares, reservations and limits of the powered-on VMs (and pools)."""
        if self.tree.capacity != memory_mb:
            raise InvalidArgument(
                f"the resource-pool tree has {self.tree.capacity} MB of memory, but the "
                f"host has {memory_mb} MB"
            )
        self.seed = seed
        self._vms: dict[str, _PoweredOn] = {}
        self._last_tick = clock.now()
        self._next_scan = self._last_tick + self.settings.share_scan_period
        self.scans = 0
        self.last_scan: ScanResult | None = None
        self.stalls = 0
        """Guest periods that found no memory to take (all VMs at their reservations)."""

    # -- configuration -------------------------------------------------------

    def set_settings(self, settings: MemorySettings) -> MemorySettings:
        self.settings = settings.validated()
        self._next_scan = min(self._next_scan, self.clock.now() + settings.share_scan_period)
        return self.settings

    def set_vm_settings(self, name: str, settings: VmMemorySettings) -> VmMemorySettings:
        """Reservation, limit and shares apply at once; sharing and salt at the next
        power-on (as in ESXi)."""
        vm = self._vm(name)
        settings = settings.validated(vm.memory_mb)
        self.tree.set_consumer(name, settings.allocation(vm.memory_mb))  # admission first
        vm.settings = settings
        vm.reclaim.reservation_pages = settings.reservation_mb * PAGES_PER_MB
        vm.reclaim.limit_pages = _limit_pages(settings)
        vm.reclaim.balloon_driver = settings.balloon_driver
        return settings

    def reserved_mb(self) -> int:
        return self.tree.reserved()

    # -- power ------------------------------------------------------------------

    def power_on(
        self,
        name: str,
        vm_uuid: str,
        memory_mb: int,
        guest_os: str,
        settings: VmMemorySettings | None = None,
        workload: GuestWorkload | None = None,
        pool: str = ROOT_POOL,
        arriving: bool = False,
    ) -> None:
        """Gives the VM guest memory in resource pool `pool` and boots its guest
        (writing its boot pages); or, `arriving` by vMotion, makes room for a stunned
        guest whose pages are received (`receive`) and that runs once `resume`d with
        the state its checkpoint carries."""
        if name in self._vms:
            raise InvalidArgument(f"{name} is already powered on")
        settings = (settings or VmMemorySettings()).validated(memory_mb)
        pages = memory_mb * PAGES_PER_MB
        guest = GuestMemoryModel(vm_uuid, guest_os, pages, workload, self.seed)
        domain = salt_domain(self.settings.share_force_salting, settings.salt, vm_uuid)
        self.tree.add_consumer(name, settings.allocation(memory_mb), pool)  # admission control
        reserved = settings.reservation_mb * PAGES_PER_MB
        vm_pages = self.memory.add_vm(name, pages, domain, settings.page_sharing)
        swap = VmSwapFile(self.swap_dir / f"{name}-{vm_uuid[:8]}.vswp", pages - reserved)
        reclaim = VmReclaim(vm_pages, swap, reserved, guest.working_set, settings.balloon_driver)
        reclaim.limit_pages = _limit_pages(settings)
        if not self._vms:  # the first guest: no idle time to replay
            self._last_tick = self.clock.now()
        self.reclaimer.add(reclaim)
        self._vms[name] = _PoweredOn(guest, reclaim, settings, memory_mb, self.clock.now())
        try:
            if arriving:  # vMotion's destination: the pages come over the wire
                self._vms[name].speed = 0.0
            else:
                ppns, content = guest.boot()
                self.write(name, ppns, content)
        except BaseException:
            self.power_off(name)
            raise

    def power_off(self, name: str) -> None:
        self._vm(name)
        del self._vms[name]
        self.tree.remove_consumer(name)
        self.reclaimer.remove(name)
        self.memory.remove_vm(name)

    def powered_on(self) -> list[str]:
        return sorted(self._vms)

    # -- the guest's accesses -----------------------------------------------------

    def read(self, name: str, ppns: np.ndarray) -> np.ndarray:
        """What the guest reads at these pages (faulting them in), a batch at a time
        as a guest touches pages: one batch may push out pages of an earlier one."""
        vm = self._vm(name)
        ppns = np.asarray(ppns, np.int64)
        out = np.empty(len(ppns), np.uint64)
        for at in range(0, len(ppns), ACCESS_BATCH):
            batch = ppns[at : at + ACCESS_BATCH]
            self.reclaimer.bring_in(vm.reclaim, batch)
            out[at : at + ACCESS_BATCH] = self.memory.read_mapped(vm.reclaim.pages, batch)
        return out

    def write(self, name: str, ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        vm = self._vm(name)
        ppns = np.asarray(ppns, np.int64)
        fingerprints = np.asarray(fingerprints, np.uint64)
        if len(ppns) != len(fingerprints):
            raise InvalidArgument("one fingerprint per page is needed")
        for at in range(0, len(ppns), ACCESS_BATCH):
            end = at + ACCESS_BATCH
            self.reclaimer.overwrite(vm.reclaim, ppns[at:end], fingerprints[at:end])

    # -- the period ----------------------------------------------------------------

    def tick(self) -> MemoryState:
        now = self.clock.now()
        elapsed = min(MAX_PERIOD, max(0.0, now - self._last_tick))
        self._last_tick = now
        for name, vm in self._vms.items():
            self._run_guest(name, vm, now)
        if self.settings.page_sharing and now >= self._next_scan:
            self.scan()
        self._set_targets()
        return self.reclaimer.tick(elapsed)

    def _run_guest(self, name: str, vm: _PoweredOn, now: float) -> None:
        """The guest's reads and writes from where it was drawn up to `now`."""
        seconds = min(MAX_PERIOD, max(0.0, now - vm.stepped_at))
        vm.stepped_at = now
        if seconds <= 0:
            return
        reads, writes, content = vm.guest.step(seconds, vm.speed)
        try:
            if len(reads):
                self.read(name, reads)
            if len(writes):
                self.write(name, writes, content)
        except InsufficientResourcesFault:
            self.stalls += 1  # every other VM is at its reservation: this guest waits

    # -- vMotion: what leaves and what arrives ---------------------------------------

    def catch_up(self, name: str) -> None:
        """Draws the guest's activity up to now (between kernel periods, where a
        pre-copy round ends)."""
        self._run_guest(name, self._vm(name), self.clock.now())

    def set_speed(self, name: str, speed: float) -> None:
        """How fast the guest's vCPUs run from now (1 normal; SDPS slows them; 0 is
        a stun), after it ran until now at the old speed."""
        if not 0 <= speed <= 1:
            raise InvalidArgument(f"a guest's speed is 0 to 1, got {speed!r}")
        self.catch_up(name)
        self._vm(name).speed = speed

    def speed(self, name: str) -> float:
        return self._vm(name).speed

    def touched_pages(self, name: str) -> np.ndarray:
        """Every page the guest has touched, sorted: what a pre-copy's first round
        sends."""
        return self._vm(name).reclaim.pages.touched()

    def take_dirty(self, name: str) -> np.ndarray:
        """The pages the guest wrote since the last take (up to now), sorted; the
        bitmap starts again."""
        self.catch_up(name)
        return self._vm(name).reclaim.pages.take_dirty()

    def guest_content(self, name: str, ppns: np.ndarray) -> np.ndarray:
        """What the guest sees at these pages, without touching them: mapped pages'
        content, compressed, swapped and ballooned pages' kept content, zero where
        it never wrote."""
        vm = self._vm(name)
        pages = vm.reclaim.pages
        ppns = self.memory.check_ppns(pages, np.asarray(ppns, np.int64))
        if len(ppns) and int(ppns.max()) < len(pages.pmap):
            mpns = pages.pmap[ppns]
            if int(mpns.min()) >= 0:  # the usual case: every page is mapped
                return self.memory.content[mpns]
        out = np.zeros(len(ppns), np.uint64)
        inside = ppns < len(pages.pmap)
        at, backing = ppns[inside], pages.backing[ppns[inside]]
        got = np.zeros(len(at), np.uint64)
        mapped = backing == MAPPED
        got[mapped] = self.memory.content[pages.pmap[at[mapped]]]
        kept = (backing == COMPRESSED) | (backing == BALLOONED)
        got[kept] = pages.stash[at[kept]]
        swapped = backing == SWAPPED
        if swapped.any():
            got[swapped] = vm.reclaim.swap.read(pages.stash[at[swapped]].astype(np.int64))
        out[inside] = got
        return out

    def receive(self, name: str, ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        """Pages arriving by vMotion: written into fresh machine pages (zeroed, then
        filled), as the guest would write them, in one batch (the guest is stunned:
        none of its pages is in use); not dirty here."""
        vm = self._vm(name)
        ppns = np.asarray(ppns, np.int64)
        if len(ppns) != len(fingerprints):
            raise InvalidArgument("one fingerprint per page is needed")
        self.reclaimer.overwrite(vm.reclaim, ppns, fingerprints)
        vm.reclaim.pages.dirty[ppns] = False

    def guest_state(self, name: str) -> dict:
        return self._vm(name).guest.state()

    def resume(self, name: str, guest_state: dict) -> None:
        """An arrived guest runs on from its checkpoint (where it stopped writing)."""
        vm = self._vm(name)
        vm.guest.restore(guest_state)
        vm.stepped_at = self.clock.now()
        vm.speed = 1.0

    def scan(self) -> ScanResult:
        self.last_scan = self.sharing.scan()
        self.scans += 1
        self._next_scan = self.clock.now() + self.settings.share_scan_period
        return self.last_scan

    def _set_targets(self) -> None:
        """Each VM's entitlement (its active memory, shared out by shares through the
        resource pools when the host has too little), and the floor and ceiling of
        what it holds: its own reservation and limit, and its part of its pools'."""
        if not self._vms:
            return
        targets = self.tree.entitlements(self.demand_mb())
        holding, configured = np.zeros(len(self.tree)), np.zeros(len(self.tree))
        for name, vm in self._vms.items():
            holding[self.tree.index(name)] = vm.reclaim.granted / PAGES_PER_MB
            configured[self.tree.index(name)] = vm.memory_mb
        # A reservation protects its full amount, however little is held yet.
        floors, ceilings = self.tree.guarantees(configured), self.tree.caps(holding)
        for name, vm in self._vms.items():
            i, r = self.tree.index(name), vm.reclaim
            r.target_pages = int(targets[i] * PAGES_PER_MB)
            own = vm.settings.reservation_mb * PAGES_PER_MB
            r.reservation_pages = max(own, int(floors[i] * PAGES_PER_MB))
            ceiling = int(ceilings[i] * PAGES_PER_MB)
            r.limit_pages = ceiling if ceiling < r.granted else _limit_pages(vm.settings)

    def demand_mb(self) -> np.ndarray:
        """What each powered-on VM wants now, its active memory (working set) in MB,
        in the tree's consumer order."""
        demand_mb = np.zeros(len(self.tree))
        for name, vm in self._vms.items():
            demand_mb[self.tree.index(name)] = vm.reclaim.working_set / PAGES_PER_MB
        return demand_mb

    def pool_entitlements(self) -> dict[str, float]:
        """Each resource pool's entitlement (MB, its whole subtree) for the current
        active memory of the powered-on VMs."""
        return self.tree.pool_entitlements(self.demand_mb())

    # -- statistics ----------------------------------------------------------------

    def vm_stats(self, name: str) -> VmMemoryStats:
        vm = self._vm(name)
        return self._vm_stats(vm)

    def _vm_stats(self, vm: _PoweredOn) -> VmMemoryStats:
        pages, memory = vm.reclaim.pages, self.memory
        mapped = pages.pmap[pages.backing == MAPPED]
        refs = memory.refcount[mapped]
        shared = refs > 1
        saved = float(np.sum(1.0 - 1.0 / refs[shared])) if shared.any() else 0.0
        return VmMemoryStats(
            granted=_mb(len(mapped)),
            shared=_mb(int(shared.sum())),
            shared_saved=_mb(saved),
            zero=_mb(int(np.count_nonzero(memory.content[mapped] == 0))),
            ballooned=_mb(pages.count(BALLOONED)),
            compressed=_mb(pages.count(COMPRESSED)),
            swapped=_mb(pages.count(SWAPPED)),
            consumed=_mb(len(mapped) - saved + len(pages.zip_mpns)),
            active=_mb(vm.reclaim.working_set),
            target=_mb(max(vm.reclaim.target_pages, 0)),
        )

    def all_vm_stats(self) -> dict[str, VmMemoryStats]:
        return {name: self._vm_stats(vm) for name, vm in self._vms.items()}

    def host_stats(self, vms: dict[str, VmMemoryStats] | None = None) -> HostMemoryStats:
        """The host's numbers; `vms` are all_vm_stats() if the caller has them."""
        memory = self.memory
        per_vm = list((vms if vms is not None else self.all_vm_stats()).values())
        refs = memory.refcount[: memory.high_water]

        def total(field: str) -> float:
            return sum(getattr(s, field) for s in per_vm)

        return HostMemoryStats(
            total=_mb(memory.pages),
            free=_mb(memory.free_pages),
            min_free=_mb(self.reclaimer.min_free),
            state=self.reclaimer.state.name.lower(),
            granted=total("granted"),
            shared=total("shared"),
            shared_common=_mb(int(np.count_nonzero(refs > 1))),
            shared_saved=_mb(int(np.sum(refs[refs > 1] - 1))),
            zero=total("zero"),
            ballooned=total("ballooned"),
            compressed=total("compressed"),
            swapped=total("swapped"),
            consumed=_mb(memory.used_pages),
            scans=self.scans,
            last_scan=self.last_scan,
        )

    def _vm(self, name: str) -> _PoweredOn:
        try:
            return self._vms[name]
        except KeyError:
            raise NotFound(f"{name} is not powered on on this host") from None
