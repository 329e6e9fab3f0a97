"""vSphere HA's restarts (the FDM master's placement and execution of failovers), as a
sans-I/O core: which surviving host powers on each protected VM of a dead host, when,
and what follows a power-on that fails.

The shell tells it that the master declared a host dead (`begin`, with the host's
protected VMs and when it was last heard), how each power-on it asked for ended
(`power_on_succeeded`, `power_on_failed`) and what a surviving host now offers
(`host_changed`, also for a host added back); it calls `tick` by `next_wakeup()`. Each
call returns the actions to carry out (PowerOn) and to report (LeftOff, GiveUp,
FailoverInitiated, FailoverCompleted: ClusterFailoverActionInitiatedEvent and
...CompletedEvent). Time is passed in: the core reads no clock, draws no random number
and does no I/O. Bad input raises InvalidArgument, before anything has changed.

The rules, with vSphere's numbers (RestartSettings):
- A VM whose restart priority is disabled is left off. The others are restarted
  highest priority first, ties by name, among the VMs due at that instant: a VM still
  waiting for its locks does not hold back one of a lower priority that is due.
- A power-on never comes before the dead host's locks on the VM's disks are stale:
  last heard + 16 s on VMFS, + 35 s on NFS, the longest of its datastores' kinds; a VM
  without disks may be powered on at once.
- Placement (admission): a host that is not in maintenance mode, reaches every
  datastore of the VM and has the free memory and CPU its reservations need; of those,
  the one with the most free memory, ties by name. A power-on takes its reservations
  from the host at once; a failed one gives them back, a successful one keeps them.
  A host's report (`host_changed`) replaces its free figures, less the reservations of
  the power-ons still in flight on it (a host counts a VM once it runs).
- At most 32 power-ons in flight per host (das.perHostConcurrentFailoversLimit): a VM
  that fits only hosts that are full waits for a slot, without a time limit and
  without counting an attempt, and is placed as soon as a power-on there ends.
- Up to 5 attempts per VM (das.maxvmrestartcount), the first included. After a failed
  attempt the next is due 120, 240, 480, 960 s later (vSphere's timeline: T0, +2 min,
  +6, +14, +30); it is placed again, avoiding the host that failed if another fits.
  After the 5th failure the VM is given up, with every attempt's reason.
- A VM that fits no host when it is due has made a failed attempt (vSphere counts
  "insufficient resources" like a failed power-on, on the same timeline), and it is
  tried again early whenever capacity may have appeared (a host's report, a failed
  power-on giving reservations back): placed then, that is its next attempt; not
  placed, nothing is counted and its timeline stands.
- A host declared dead is no longer a placement target; a power-on in flight on it
  has failed, and its retry also waits for that host's locks to go stale.
- A failover (one dead host) is done when each of its VMs was restarted or given up;
  FailoverCompleted reports it once. A dead host with nothing to restart has no
  failover actions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from vsim import validate
from vsim.faults import InvalidArgument
from vsim.ha_settings import DATASTORE_KINDS, RESTART_PRIORITIES

DISABLED, LOWEST, LOW, MEDIUM, HIGH, HIGHEST = RESTART_PRIORITIES
_RANK = {priority: rank for rank, priority in enumerate(RESTART_PRIORITIES)}
VMFS, NFS = DATASTORE_KINDS

_WAITING = "waiting"
"""For its next attempt's time, a slot, or a host that fits."""
_IN_FLIGHT = "in flight"
_RESTARTED = "restarted"
_GIVEN_UP = "given up"


@dataclass(frozen=True)
class RestartSettings:
    vmfs_lock_stale_s: float = 16.0
    """A VMFS lock is stale this long after its holder's last heartbeat on the volume
    (the VMFS heartbeat timeout: host/storage/vmfs.py's HB_TIMEOUT)."""
    nfs_lock_stale_s: float = 35.0
    """An NFS lock is stale this long after its holder's last renewal:
    NFS.DiskFileLockUpdateFreq x NFS.LockRenewMaxFailureNumber + NFS.LockUpdateTimeout
    = 10 x 3 + 5 (host/storage/nfs_lock.py's STALE_AFTER)."""
    per_host_concurrent_power_ons: int = 32
    """das.perHostConcurrentFailoversLimit: power-ons in flight on one host at once."""
    max_attempts: int = 5
    """das.maxvmrestartcount: attempts per VM, the first included."""
    retry_delays_s: tuple[float, ...] = (120.0, 240.0, 480.0, 960.0)
    """From the n-th failed attempt to the next: the n-th delay."""

    def __post_init__(self) -> None:
        _not_negative(self.vmfs_lock_stale_s, "vmfs_lock_stale_s", "s")
        _not_negative(self.nfs_lock_stale_s, "nfs_lock_stale_s", "s")
        validate.int_range(
            self.per_host_concurrent_power_ons, 1, 1024, "per_host_concurrent_power_ons"
        )
        validate.int_range(self.max_attempts, 1, 100, "max_attempts")
        if len(self.retry_delays_s) < self.max_attempts - 1:
            raise InvalidArgument(
                f"retry_delays_s has {len(self.retry_delays_s)} delays; {self.max_attempts} "
                f"attempts need {self.max_attempts - 1}"
            )
        for delay in self.retry_delays_s:
            _not_negative(delay, "each of retry_delays_s", "s")


# what the shell tells it


@dataclass(frozen=True)
class Datastore:
    name: str
    kind: str
    """vmfs or nfs: how long the dead host's locks on it take to go stale."""

    def __post_init__(self) -> None:
        validate.vm_name(self.name, "datastore name")
        if self.kind not in DATASTORE_KINDS:
            raise InvalidArgument(
                f"datastore {self.name!r} has kind {self.kind!r}; use one of "
                f"{', '.join(DATASTORE_KINDS)}"
            )


@dataclass(frozen=True)
class ProtectedVm:
    """A protected VM of a dead host, as the master's protected list has it."""

    name: str
    memory_mb: int
    """Its memory reservation (with overhead): what a host must have free."""
    cpu_mhz: int
    """Its CPU reservation."""
    datastores: tuple[Datastore, ...]
    """Where its files are: a host must reach each."""
    priority: str = MEDIUM
    has_disks: bool = True
    """Without disks it holds no lock a power-on must wait for."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "datastores", tuple(self.datastores))
        validate.vm_name(self.name, "VM name")
        if self.priority not in RESTART_PRIORITIES:
            raise InvalidArgument(
                f"VM {self.name!r} has restart priority {self.priority!r}; use one of "
                f"{', '.join(RESTART_PRIORITIES)}"
            )
        validate.int_range(
            self.memory_mb, 0, validate.MAX_MEMORY_MB, f"memory_mb of VM {self.name!r}", "MB"
        )
        _not_negative(self.cpu_mhz, f"cpu_mhz of VM {self.name!r}", "MHz")
        names = [ds.name for ds in self.datastores]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"VM {self.name!r} names a datastore twice: {names}")
        if self.has_disks and not names:
            raise InvalidArgument(f"VM {self.name!r} has disks but names no datastore")


@dataclass(frozen=True)
class SurvivingHost:
    """A host a VM may be restarted on, as it reports itself."""

    name: str
    datastores: frozenset[str]
    """The datastores it reaches (mounted and accessible)."""
    free_memory_mb: int
    free_cpu_mhz: int
    in_maintenance: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "datastores", frozenset(self.datastores))
        validate.host_name(self.name, "host name")
        validate.int_range(
            self.free_memory_mb,
            0,
            validate.MAX_HOST_MEMORY_MB,
            f"free_memory_mb of host {self.name!r}",
            "MB",
        )
        _not_negative(self.free_cpu_mhz, f"free_cpu_mhz of host {self.name!r}", "MHz")


# what it tells the shell


@dataclass(frozen=True)
class PowerOn:
    vm: str
    host: str
    attempt: int
    """1 to max_attempts."""


@dataclass(frozen=True)
class LeftOff:
    vm: str
    why: str


@dataclass(frozen=True)
class GiveUp:
    vm: str
    reasons: tuple[str, ...]
    """Each attempt's, in order."""


@dataclass(frozen=True)
class FailoverInitiated:
    dead_host: str
    vms: tuple[str, ...]
    """The VMs it restarts, in restart order (not those left off)."""


@dataclass(frozen=True)
class FailoverCompleted:
    dead_host: str
    restarted: tuple[tuple[str, str], ...]
    """(VM, the host it runs on now), by VM name."""
    given_up: tuple[str, ...]


Action = PowerOn | LeftOff | GiveUp | FailoverInitiated | FailoverCompleted


@dataclass
class _Restart:
    vm: ProtectedVm
    failover: _Failover
    not_before: float
    """When its next attempt is due."""
    state: str = _WAITING
    attempts: int = 0
    host: str = ""
    """Where it is in flight, or runs."""
    avoid: str = ""
    """The host whose power-on of it failed last: its next attempt goes elsewhere."""
    unplaced: bool = False
    """Its last attempt found no host: new capacity may place it before its time."""
    reasons: list[str] = field(default_factory=list)


@dataclass
class _Failover:
    dead_host: str
    restarts: list[_Restart] = field(default_factory=list)
    reported: bool = False

    def done(self) -> bool:
        return all(r.state in (_RESTARTED, _GIVEN_UP) for r in self.restarts)


@dataclass
class _Host:
    name: str
    report: SurvivingHost
    free_memory_mb: int
    free_cpu_mhz: int
    in_flight: dict[str, ProtectedVm] = field(default_factory=dict)


def _not_negative(value: float, field: str, unit: str) -> float:
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgument(f"{field} must be a finite number >= 0 {unit}, got {value!r}")
    return value


def _order(vm: ProtectedVm) -> tuple[int, str]:
    """Restart order: highest priority first, then by name."""
    return (-_RANK[vm.priority], vm.name)


@dataclass
class RestartManager:
    """The master's restarts of every failover in progress (the rules: the module's)."""

    hosts: Iterable[SurvivingHost]
    """The surviving hosts at the start."""
    now: float
    settings: RestartSettings = field(default_factory=RestartSettings)

    def __post_init__(self) -> None:
        _finite(self.now, "now")
        self.hosts = tuple(self.hosts)
        self._hosts: dict[str, _Host] = {}
        for report in self.hosts:
            if report.name in self._hosts:
                raise InvalidArgument(f"host {report.name!r} is named twice")
            self._hosts[report.name] = _Host(
                report.name, report, report.free_memory_mb, report.free_cpu_mhz
            )
        self._active: dict[str, _Restart] = {}
        """Restarts not yet restarted or given up, by VM name."""
        self._failovers: dict[str, _Failover] = {}
        """The latest failover of each dead host, in the order they began."""

    # what the shell tells it

    def begin(
        self, now: float, dead_host: str, vms: Iterable[ProtectedVm], last_heard: float
    ) -> list[Action]:
        """The master declared `dead_host` dead; it was last heard at `last_heard`."""
        vms = tuple(vms)
        self._check_time(now)
        self._check_failover(now, dead_host, vms, last_heard)
        self.now = now
        actions: list[Action] = []
        restarts = []
        failover = _Failover(dead_host, restarts)
        for vm in sorted(vms, key=_order):
            if vm.priority == DISABLED:
                actions.append(LeftOff(vm.name, "its restart priority is disabled"))
                continue
            not_before = max(now, last_heard + self._lock_wait(vm))
            restarts.append(_Restart(vm, failover, not_before))
        if restarts:
            actions.insert(0, FailoverInitiated(dead_host, tuple(r.vm.name for r in restarts)))
        failover.reported = not restarts
        self._failovers.pop(dead_host, None)
        self._failovers[dead_host] = failover
        self._host_died(dead_host, last_heard, actions)
        self._active.update((r.vm.name, r) for r in restarts)
        return self._dispatch(actions)

    def tick(self, now: float) -> list[Action]:
        self._check_time(now)
        self.now = now
        return self._dispatch([])

    def power_on_succeeded(self, now: float, vm: str, host: str) -> list[Action]:
        self._check_time(now)
        restart = self._in_flight(vm, host)
        self.now = now
        del self._hosts[host].in_flight[vm]  # its reservations stay taken: it runs there
        restart.state = _RESTARTED
        del self._active[vm]
        return self._dispatch([])

    def power_on_failed(self, now: float, vm: str, host: str, reason: str) -> list[Action]:
        self._check_time(now)
        restart = self._in_flight(vm, host)
        validate.text(reason, "reason", 1024)
        self.now = now
        target = self._hosts[host]
        del target.in_flight[vm]
        target.free_memory_mb += restart.vm.memory_mb
        target.free_cpu_mhz += restart.vm.cpu_mhz
        actions: list[Action] = []
        self._failed(restart, reason or "the power-on failed", now, actions)
        return self._dispatch(actions, capacity_changed=True)

    def host_changed(self, now: float, host: SurvivingHost) -> list[Action]:
        """What a surviving host now offers (a host unknown until now is added)."""
        self._check_time(now)
        self.now = now
        known = self._hosts.get(host.name)
        in_flight = known.in_flight if known is not None else {}
        self._hosts[host.name] = _Host(
            host.name,
            host,
            host.free_memory_mb - sum(vm.memory_mb for vm in in_flight.values()),
            host.free_cpu_mhz - sum(vm.cpu_mhz for vm in in_flight.values()),
            in_flight,
        )
        return self._dispatch([], capacity_changed=True)

    # views

    def next_wakeup(self) -> float | None:
        """The earliest time the shell must call `tick` (None: only its reports can
        move anything on)."""
        due = [
            r.not_before
            for r in self._active.values()
            if r.state == _WAITING and r.not_before > self.now
        ]
        return min(due, default=None)

    def done(self, dead_host: str) -> bool:
        """Whether each VM of the dead host's latest failover was restarted or given up."""
        failover = self._failovers.get(dead_host)
        if failover is None:
            raise InvalidArgument(f"host {dead_host!r} has had no failover")
        return failover.done()

    # checks

    def _check_time(self, now: float) -> None:
        _finite(now, "now")
        if now < self.now:
            raise InvalidArgument(f"now is {now!r}, before the last call's {self.now!r}")

    def _check_failover(
        self, now: float, dead_host: str, vms: tuple[ProtectedVm, ...], last_heard: float
    ) -> None:
        validate.host_name(dead_host, "dead host")
        _finite(last_heard, "last_heard")
        if last_heard > now:
            raise InvalidArgument(
                f"{dead_host} was last heard at {last_heard!r}, after now ({now!r})"
            )
        earlier = self._failovers.get(dead_host)
        if earlier is not None and not earlier.done():
            raise InvalidArgument(f"{dead_host} is failing over already")
        seen: set[str] = set()
        for vm in vms:
            if not isinstance(vm, ProtectedVm):
                raise InvalidArgument(f"the VMs of {dead_host} must be ProtectedVm, got {vm!r}")
            if vm.name in seen:
                raise InvalidArgument(f"VM {vm.name!r} is named twice in the VMs of {dead_host}")
            seen.add(vm.name)
            other = self._active.get(vm.name)
            if other is not None:
                raise InvalidArgument(
                    f"VM {vm.name!r} is being restarted already (failover of "
                    f"{other.failover.dead_host})"
                )

    def _in_flight(self, vm: str, host: str) -> _Restart:
        if host not in self._hosts:
            known = ", ".join(sorted(self._hosts)) or "none"
            raise InvalidArgument(f"host {host!r} is not a surviving host (they are: {known})")
        restart = self._active.get(vm)
        if restart is None or restart.state != _IN_FLIGHT:
            raise InvalidArgument(f"VM {vm!r} has no power-on in flight")
        if restart.host != host:
            raise InvalidArgument(f"VM {vm!r} is being powered on by {restart.host}, not by {host}")
        return restart

    # the restarts

    def _lock_wait(self, vm: ProtectedVm) -> float:
        if not vm.has_disks:
            return 0.0
        stale = {VMFS: self.settings.vmfs_lock_stale_s, NFS: self.settings.nfs_lock_stale_s}
        return max(stale[ds.kind] for ds in vm.datastores)

    def _host_died(self, dead_host: str, last_heard: float, actions: list[Action]) -> None:
        """A dead host places nothing more; what was in flight on it has failed, and
        may run there still, holding its locks until they go stale."""
        host = self._hosts.pop(dead_host, None)
        if host is None:
            return
        for name in sorted(host.in_flight):
            restart = self._active[name]
            locks_stale = last_heard + self._lock_wait(restart.vm)
            self._failed(restart, f"{dead_host} failed", locks_stale, actions)

    def _failed(
        self, restart: _Restart, reason: str, not_before: float, actions: list[Action]
    ) -> None:
        restart.reasons.append(f"attempt {restart.attempts} on {restart.host}: {reason}")
        restart.state = _WAITING
        restart.avoid, restart.host = restart.host, ""
        restart.unplaced = False
        self._next_attempt(restart, not_before, actions)

    def _unplaced(self, restart: _Restart, reason: str, actions: list[Action]) -> None:
        restart.attempts += 1
        restart.reasons.append(f"attempt {restart.attempts}: {reason}")
        restart.avoid = ""
        restart.unplaced = True
        self._next_attempt(restart, self.now, actions)

    def _next_attempt(self, restart: _Restart, not_before: float, actions: list[Action]) -> None:
        if restart.attempts >= self.settings.max_attempts:
            restart.state = _GIVEN_UP
            del self._active[restart.vm.name]
            actions.append(GiveUp(restart.vm.name, tuple(restart.reasons)))
            return
        delay = self.settings.retry_delays_s[restart.attempts - 1]
        restart.not_before = max(self.now + delay, not_before)

    def _dispatch(self, actions: list[Action], capacity_changed: bool = False) -> list[Action]:
        for restart in sorted(self._active.values(), key=lambda r: _order(r.vm)):
            if restart.state != _WAITING:
                continue
            due = restart.not_before <= self.now
            if due or (capacity_changed and restart.unplaced):
                self._place(restart, due, actions)
        self._report_completed(actions)
        return actions

    def _place(self, restart: _Restart, due: bool, actions: list[Action]) -> None:
        fits, why_not = self._fitting(restart.vm)
        if not fits:
            if due:
                self._unplaced(restart, why_not, actions)
            return
        if len(fits) > 1:
            fits = [h for h in fits if h.name != restart.avoid]
        limit = self.settings.per_host_concurrent_power_ons
        free = [h for h in fits if len(h.in_flight) < limit]
        if not free:
            return  # waits for a slot
        host = min(free, key=lambda h: (-h.free_memory_mb, h.name))
        vm = restart.vm
        host.in_flight[vm.name] = vm
        host.free_memory_mb -= vm.memory_mb
        host.free_cpu_mhz -= vm.cpu_mhz
        restart.state, restart.host, restart.avoid = _IN_FLIGHT, host.name, ""
        restart.attempts += 1
        actions.append(PowerOn(vm.name, host.name, restart.attempts))

    def _fitting(self, vm: ProtectedVm) -> tuple[list[_Host], str]:
        """The hosts that could run the VM now, and if none, why not."""
        fits, why_not = [], []
        for _, host in sorted(self._hosts.items()):
            misfit = _misfit(host, vm)
            if misfit:
                why_not.append(misfit)
            else:
                fits.append(host)
        if not self._hosts:
            return fits, "no host fits: there is no surviving host"
        return fits, "no host fits: " + "; ".join(why_not)

    def _report_completed(self, actions: list[Action]) -> None:
        for failover in self._failovers.values():
            if failover.reported or not failover.done():
                continue
            failover.reported = True
            restarts = sorted(failover.restarts, key=lambda r: r.vm.name)
            actions.append(
                FailoverCompleted(
                    failover.dead_host,
                    tuple((r.vm.name, r.host) for r in restarts if r.state == _RESTARTED),
                    tuple(r.vm.name for r in restarts if r.state == _GIVEN_UP),
                )
            )


def _misfit(host: _Host, vm: ProtectedVm) -> str:
    """Why the host cannot run the VM now ("" if it can)."""
    if host.report.in_maintenance:
        return f"{host.name} is in maintenance mode"
    missing = [ds.name for ds in vm.datastores if ds.name not in host.report.datastores]
    if missing:
        return f"{host.name} does not reach {', '.join(missing)}"
    if host.free_memory_mb < vm.memory_mb:
        return f"{host.name} has {host.free_memory_mb} MB of memory free, {vm.memory_mb} needed"
    if host.free_cpu_mhz < vm.cpu_mhz:
        return f"{host.name} has {host.free_cpu_mhz} MHz of CPU free, {vm.cpu_mhz} needed"
    return ""


def _finite(value: float, field: str) -> None:
    if not math.isfinite(value):
        raise InvalidArgument(f"{field} must be a finite number of seconds, got {value!r}")
