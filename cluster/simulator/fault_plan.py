"""Faults as data: a `FaultPlan` drawn from a run's seed, and the injector that
applies it to a simulated datacenter and mends it.

Each fault starts at a simulated time and lasts a while; the injector records both
ends in the history. Overlapping faults on one thing nest: a link cut twice comes
up when the last cut ends, a host crashed twice boots when the last crash ends.
Kinds (FAULT_KINDS):

    crash           the host's plug is pulled (memory lost, local disk kept); it
                    boots again when the fault ends
    reboot          a crash and an immediate boot
    hang            the host freezes: nothing it sends or is sent gets through
    partition       the host's management (and vmotion) network is cut
    storage-path    the host's storage network is cut, shorter or longer than the
                    140 s APD timeout
    slow-disk       every command on one datastore's LUN or export is late (the
                    array is slow: 50 ms to 8 s a command)
    array-restart   the array program restarts (reservations and waiting commands
                    dropped, state reloaded from its files) and is unreachable a while
    vcenter-restart vCenter stops and starts again on its data dir
    lost-reply      the callee does the work, the caller never hears: one call of
                    vCenter's to a host (vMotion's among them), one of a migrating
                    host's to its destination, or one storage command of a host's
    slow-heartbeat  a rare-but-legal corner forced: one VMFS heartbeat's reply
                    comes many seconds late
    migration       the next vMotion after its time is broken at one phase: its
                    destination crashes during the pre-copy, as the switchover
                    reaches it, or just after it resumed the VM (before its reply
                    leaves); or the destination's vMotion link is cut mid-pre-copy
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from vsim import validate
from vsim.cluster.simulator.datacenter import DATASTORES, SimulatedDatacenter
from vsim.cluster.simulator.history import History
from vsim.faults import InvalidArgument, NotFound

FAULT_KINDS = (
    "crash",
    "reboot",
    "hang",
    "partition",
    "storage-path",
    "slow-disk",
    "array-restart",
    "vcenter-restart",
    "lost-reply",
    "slow-heartbeat",
    "migration",
)
APD_TIMEOUT = 140.0
MANAGEMENT_CALLS = (
    "PowerOnVm",
    "PowerOffVm",
    "RegisterVm",
    "CreateVm",
    "DestroyVm",
    "ListVms",
    "PrepareVmotion",
    "StartVmotion",
)
VMOTION_CALLS = ("ReceivePages", "Switchover")
"""A source host's calls to a destination, whose replies a lost-reply fault loses."""
MIGRATION_PHASES = {
    "destination-crash:precopy": ("ReceivePages", "arriving"),
    "destination-crash:switchover": ("Switchover", "arriving"),
    "destination-crash:resumed": ("Switchover", "landed"),
    "link-cut:precopy": ("ReceivePages", "arriving"),
}
"""A migration fault's detail -> the vMotion call and moment it fires at."""
STORAGE_COMMANDS = ("compare_and_write", "write", "read", "create", "remove")
DATASTORE_NAMES = tuple(d.name for d in DATASTORES)


@dataclass(frozen=True, order=True)
class Fault:
    at: float
    """Seconds after the workload starts."""
    kind: str
    target: str = ""
    """A host name; a datastore for slow-disk; "" for the array and vCenter."""
    length: float = 0.0
    """Seconds until it is mended (0: nothing to mend)."""
    detail: str = ""
    """lost-reply: the call or command whose reply is lost."""

    def describe(self) -> str:
        parts = [self.kind]
        if self.target:
            parts.append(self.target)
        if self.detail:
            parts.append(self.detail)
        if self.length:
            parts.append(f"for {self.length:.1f} s")
        return " ".join(parts)


def parse_kinds(text: str) -> tuple[str, ...]:
    """A --faults list ("crash,partition"; "all"; "none") as kinds, checked."""
    if text in ("", "none"):
        return ()
    if text == "all":
        return FAULT_KINDS
    kinds = tuple(k.strip() for k in text.split(","))
    for kind in kinds:
        if kind not in FAULT_KINDS:
            raise InvalidArgument(
                f"unknown fault kind {kind[:40]!r}: the kinds are {', '.join(FAULT_KINDS)}"
            )
    return kinds


@dataclass(frozen=True)
class FaultPlan:
    faults: tuple[Fault, ...]

    @classmethod
    def draw(
        cls, rng: random.Random, hosts: list[str], kinds: tuple[str, ...], seconds: float
    ) -> FaultPlan:
        """Up to a dozen faults spread over the first 80% of `seconds`: none in a
        tenth of the runs, a few in most, many (of at least three kinds) in a third."""
        validate.positive_number(seconds, "run length")
        if not kinds or not hosts:
            return cls(())
        shape = rng.random()
        count = 0 if shape < 0.1 else rng.randint(1, 3) if shape < 0.6 else rng.randint(4, 12)
        faults = [cls._one(rng, hosts, kinds, seconds) for _ in range(count)]
        return cls(tuple(sorted(faults)))

    @staticmethod
    def _one(rng: random.Random, hosts: list[str], kinds: tuple[str, ...], seconds: float) -> Fault:
        kind = rng.choice(kinds)
        at = round(rng.uniform(5, 0.8 * seconds), 3)
        host = rng.choice(hosts)
        if kind == "crash":
            return Fault(at, kind, host, round(rng.uniform(10, 120), 3))
        if kind == "reboot":
            return Fault(at, kind, host)
        if kind == "hang":
            return Fault(at, kind, host, round(rng.uniform(2, 40), 3))
        if kind == "partition":
            return Fault(at, kind, host, round(rng.uniform(5, 90), 3))
        if kind == "storage-path":
            short = rng.random() < 0.7
            length = rng.uniform(2, 60) if short else rng.uniform(APD_TIMEOUT + 5, APD_TIMEOUT + 60)
            return Fault(at, kind, host, round(length, 3))
        if kind == "slow-disk":
            latency = rng.choice((0.05, 0.5, 2.0, 8.0))
            datastore = rng.choice(DATASTORE_NAMES)
            return Fault(at, kind, datastore, round(rng.uniform(5, 90), 3), f"{latency} s")
        if kind == "array-restart":
            return Fault(at, kind, "", round(rng.uniform(1, 20), 3))
        if kind == "vcenter-restart":
            return Fault(at, kind, "", round(rng.uniform(1, 60), 3))
        if kind == "lost-reply":
            draw = rng.random()
            if draw < 0.45:
                return Fault(at, kind, host, 0.0, "management:" + rng.choice(MANAGEMENT_CALLS))
            if draw < 0.6:
                return Fault(at, kind, host, 0.0, "vmotion:" + rng.choice(VMOTION_CALLS))
            return Fault(at, kind, host, 0.0, "storage:" + rng.choice(STORAGE_COMMANDS))
        if kind == "slow-heartbeat":
            return Fault(at, kind, host, round(rng.uniform(3, 14), 3), "compare_and_write")
        if kind == "migration":
            detail = rng.choice(sorted(MIGRATION_PHASES))
            length = rng.uniform(5, 60) if detail.startswith("link") else rng.uniform(10, 120)
            return Fault(at, kind, "", round(length, 3), detail)
        raise InvalidArgument(f"unknown fault kind {kind!r}")

    def kinds(self) -> Counter[str]:
        return Counter(f.kind for f in self.faults)


class FaultInjector:
    """Applies a plan to a datacenter on its clock, and mends whatever is left."""

    def __init__(self, dc: SimulatedDatacenter, history: History) -> None:
        self.dc = dc
        self.history = history
        self.engine = dc.engine
        self._down: Counter[tuple[str, str]] = Counter()
        self._crashed: Counter[str] = Counter()
        self._slow: Counter[str] = Counter()
        self._vcenter_down = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._mending: set[asyncio.Task[None]] = set()
        self.injected: Counter[str] = Counter()
        self._armed: list[Fault] = []
        """Migration faults waiting for a vMotion to reach their phase."""
        self.before_crash: list = []
        """Callbacks run just before a host is crashed (a checker's last look)."""

    async def run(self, plan: FaultPlan) -> None:
        """Starts each fault at its time; returns once every one has started."""
        started = self.dc.clock.now()
        for fault in plan.faults:
            await self.dc.clock.sleep(started + fault.at - self.dc.clock.now())
            try:
                await self._start(fault)
            except NotFound:  # its host was removed from vCenter and decommissioned
                self.history.record("fault", f"{fault.describe()}: skipped, the host is gone")

    async def _start(self, fault: Fault) -> None:
        host = fault.target
        on_host = fault.kind not in ("slow-disk", "array-restart", "vcenter-restart", "migration")
        if on_host and host not in self.engine.hosts() and not self._crashed[host]:
            # Removed from vCenter and decommissioned meanwhile: nothing to break.
            self.history.record("fault", f"{fault.describe()}: skipped, {host} is gone")
            return
        self.injected[fault.kind] += 1
        self.history.record("fault", fault.describe())
        if fault.kind in ("crash", "reboot"):
            await self._crash(host)
            if fault.kind == "reboot":
                await self._boot(host)
            else:
                self._later(fault, lambda: self._boot(host))
        elif fault.kind == "hang":
            if await self.engine.is_running(host):
                await self.engine.hang_host(host, fault.length)
                self._later(fault, lambda: self._noted(f"{host} thaws"))
        elif fault.kind == "partition":
            self._cut(host, "management")
            self._cut(host, "vmotion")
            self._later(fault, lambda: self._mend_all(host, ("management", "vmotion")))
        elif fault.kind == "storage-path":
            self._cut(host, "storage")
            self._later(fault, lambda: self._mend_all(host, ("storage",)))
        elif fault.kind == "slow-disk":
            self._slow[host] += 1
            self.dc.array.set_latency(host, float(fault.detail.split()[0]))
            self._later(fault, lambda: self._disk_back(host))
        elif fault.kind == "array-restart":
            self.dc.array.restart()
            for name in self.dc.host_names:
                self._cut(name, "storage")
            self._later(fault, self._array_back)
        elif fault.kind == "vcenter-restart":
            self._vcenter_down += 1
            await self.dc.stop_vcenter()
            self._later(fault, self._vcenter_back)
        elif fault.kind == "lost-reply":
            network, command = fault.detail.split(":")
            if network == "management":
                self.engine.reset_next_call(host, command, applied=True)
            elif network == "vmotion":
                self.engine.lose_next_vmotion_reply(host, command)
            else:
                self.engine.lose_next_storage_reply(host, command)
        elif fault.kind == "slow-heartbeat":
            self.engine.delay_next_storage_reply(host, fault.detail, fault.length)
        elif fault.kind == "migration":
            self._armed.append(fault)

    def vmotion(self, source: str, destination: str, method: str, moment: str) -> None:
        """The engine's vMotion tap: fires the first armed migration fault whose
        phase this call is."""
        for fault in self._armed:
            if MIGRATION_PHASES[fault.detail] == (method, moment):
                self._armed.remove(fault)
                break
        else:
            return
        self.history.record(
            "fault", f"{fault.describe()} fires: {source} to {destination}, {method} {moment}"
        )
        if fault.detail.startswith("destination-crash"):
            self._crashed[destination] += 1
            for look in self.before_crash:
                look(destination)
            self.engine.crash(destination)
            self._later(fault, lambda: self._boot(destination))
        else:
            self._cut(destination, "vmotion")
            self._later(fault, lambda: self._mend_all(destination, ("vmotion",)))

    def _later(self, fault: Fault, mend: Callable[[], Awaitable[None]]) -> None:
        async def after() -> None:
            await self.dc.clock.sleep(fault.length)
            self._mending.add(task)
            with contextlib.suppress(NotFound):  # decommissioned meanwhile
                await mend()

        task = asyncio.get_running_loop().create_task(after())
        self._tasks.append(task)

    async def _noted(self, what: str) -> None:
        self.history.record("heal", what)

    def _cut(self, host: str, network: str) -> None:
        self._down[(host, network)] += 1
        self.engine.set_link_now(host, network, up=False)

    async def _mend_all(self, host: str, networks: tuple[str, ...]) -> None:
        for network in networks:
            self._down[(host, network)] -= 1
            if self._down[(host, network)] == 0:
                self.engine.set_link_now(host, network, up=True)
                self.history.record("heal", f"{host} {network} network up")

    async def _crash(self, host: str) -> None:
        self._crashed[host] += 1
        for look in self.before_crash:
            look(host)
        await self.engine.crash_host(host)

    async def _boot(self, host: str) -> None:
        self._crashed[host] -= 1
        if self._crashed[host] == 0:
            self.history.record("heal", f"{host} powered on")
            with contextlib.suppress(NotFound):  # removed from vCenter meanwhile
                await self.engine.power_on_host(host)

    async def _disk_back(self, datastore: str) -> None:
        self._slow[datastore] -= 1
        if self._slow[datastore] == 0:
            self.dc.array.set_latency(datastore, 0)
            self.history.record("heal", f"{datastore} answers at full speed")

    async def _array_back(self) -> None:
        for name in self.dc.host_names:
            await self._mend_all(name, ("storage",))

    async def _vcenter_back(self) -> None:
        self._vcenter_down -= 1
        if self._vcenter_down == 0:
            self.history.record("heal", "vCenter starts")
            await self.dc.start_vcenter()

    async def heal(self) -> None:
        """Mends everything at once: faults still pending are called off, links come
        up, crashed hosts boot, vCenter starts (a hang, at most 40 s, ends by itself
        within the settle period)."""
        for fault in self._armed:
            self.history.record("heal", f"{fault.describe()}: no vMotion reached its phase")
        self._armed.clear()
        for task in self._tasks:
            if task not in self._mending:  # a mend under way (vCenter starting) ends
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for (host, network), count in list(self._down.items()):
            if count:
                with contextlib.suppress(NotFound):
                    self.engine.set_link_now(host, network, up=True)
        self._down.clear()
        for host, count in list(self._crashed.items()):
            if count:
                with contextlib.suppress(NotFound):  # removed from vCenter meanwhile
                    await self.engine.power_on_host(host)
        self._crashed.clear()
        for datastore, count in list(self._slow.items()):
            if count:
                self.dc.array.set_latency(datastore, 0)
        self._slow.clear()
        if self.dc.vcenter is None:
            await self.dc.start_vcenter()
        self._vcenter_down = 0
        self.history.record("heal", "every fault mended")
