"""The fault service of a live cluster: the physical layer broken and mended on
purpose (proto/vsim/v1/fault.proto), served by vCenter beside its own service.

It is an administrator's (vCenter's sessions judge every call, through the one
dispatch table `FaultService.table`), and every call that changes something is an
event in vCenter's log. Each call is checked whole before anything is done: an
unknown host or datastore (NotFound), network or state (InvalidArgument), a duration
out of range (InvalidArgument), a host in the wrong state (InvalidState) fail with
nothing changed. Hosts are broken through the engine (`FaultEngine`: the Ray
engine's actors, the in-process engine's hosts), disks and the array program through
vCenter's management line to the array, so a user's chaos suite needs nothing but a
gRPC client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from vsim import validate
from vsim.dispatch import ADMINISTRATOR, DispatchTable, needs
from vsim.faults import InvalidArgument, InvalidState, NotFound, VimFault
from vsim.v1 import fault_pb2 as pb
from vsim.vcenter.service import VCenter
from vsim.vcenter.sessions import Session

SERVICE = pb.DESCRIPTOR.services_by_name["Faults"]
NETWORKS = ("management", "storage", "vmotion")
STATES = {"down": False, "up": True}
DEFAULT_HANG = 30.0
MAX_HANG = 3600.0
MAX_LATENCY_MS = 60_000.0


@runtime_checkable
class FaultEngine(Protocol):
    """What an engine offers the fault service: hosts are hardware that fails."""

    async def crash_host(self, name: str) -> None:
        """The host dies at once: nothing flushed, its in-memory state lost."""

    async def hang_host(self, name: str, seconds: float) -> None:
        """hostd stops answering and the host's I/O stalls for `seconds` (0: a hang
        ends now)."""

    async def power_on_host(self, name: str) -> None:
        """A crashed host boots again (vCenter's monitor reattaches it)."""

    async def set_link(self, name: str, network: str, up: bool) -> None:
        """One of the host's networks drops traffic both ways, or carries it again."""


@dataclass
class _Injected:
    kind: str
    target: str
    detail: str
    since: float
    until: float = 0.0
    """A hang's end (vCenter's clock); 0 for faults that last until mended."""


class FaultService:
    def __init__(self, core: VCenter) -> None:
        self.core = core
        self._faults: dict[tuple[str, str], _Injected] = {}
        """(kind, target[/network]) -> the fault in place."""
        self._lock = asyncio.Lock()
        """One fault call at a time: each checks, then acts, on a state nobody
        else changes meanwhile."""
        self.table = DispatchTable.of_methods(SERVICE, core, self)
        """Every Faults RPC, judged by vCenter's session check (its `admit`)."""

    # checks (each before anything changes)

    def _engine(self) -> FaultEngine:
        engine = self.core.engine
        if not isinstance(engine, FaultEngine):
            raise InvalidState(
                f"this vCenter's engine ({getattr(engine, 'kind', type(engine).__name__)}) "
                "cannot inject host faults"
            )
        return engine

    def _host(self, name: str) -> str:
        if not name or self.core.inventory.host(name) is None:
            known = ", ".join(h.name for h in self.core.inventory.hosts()) or "none"
            raise NotFound(f"no host named {name[:80]!r} in the inventory (hosts: {known})")
        return name

    def _running(self, name: str) -> str:
        if ("host-crash", self._host(name)) in self._faults:
            raise InvalidState(f"{name} is crashed; power it on first (vsim fault host-power-on)")
        return name

    # the RPCs

    @needs(ADMINISTRATOR)
    async def CrashHost(self, r: pb.HostFaultRequest, session: Session) -> pb.FaultState:
        async with self._lock:
            name = self._running(r.host)
            await self._engine().crash_host(name)
            # The process is gone, and with it its hang and its cut links.
            for key in [k for k in self._faults if k[1].split("/")[0] == name]:
                del self._faults[key]
            self._add("host-crash", name, "powered off without a shutdown")
            return self._posted(session, f"Crashed host {name} (pulled the plug)", host=name)

    @needs(ADMINISTRATOR)
    async def HangHost(self, r: pb.HangHostRequest, session: Session) -> pb.FaultState:
        async with self._lock:
            seconds = r.seconds or DEFAULT_HANG
            validate.number_range(seconds, 0, MAX_HANG, "a hang", "seconds")
            if seconds <= 0:
                raise InvalidArgument(f"a hang must last more than 0 seconds, got {seconds!r}")
            name = self._running(r.host)
            await self._engine().hang_host(name, seconds)
            now = self.core.runtime.now()
            self._faults[("host-hang", name)] = _Injected(
                "host-hang", name, f"{seconds:g} s", now, now + seconds
            )
            return self._posted(
                session, f"Hung host {name} for {seconds:g} s (hostd and its I/O stall)", host=name
            )

    @needs(ADMINISTRATOR)
    async def PowerOnHost(self, r: pb.HostFaultRequest, session: Session) -> pb.FaultState:
        async with self._lock:
            name = self._host(r.host)
            await self._engine().power_on_host(name)
            self._faults.pop(("host-crash", name), None)
            # Reattach now rather than at the monitor's next round.
            self.core.runtime.spawn(self.core.hosts.heartbeat(name), f"reattach:{name}")
            return self._posted(session, f"Powered on host {name}", host=name)

    @needs(ADMINISTRATOR)
    async def SetLink(self, r: pb.SetLinkRequest, session: Session) -> pb.FaultState:
        async with self._lock:
            if r.network not in NETWORKS:
                raise InvalidArgument(
                    f"network must be one of {', '.join(NETWORKS)}, got {r.network[:40]!r}"
                )
            if r.state not in STATES:
                raise InvalidArgument(f"state must be down or up, got {r.state[:40]!r}")
            name = self._running(r.host)
            up = STATES[r.state]
            await self._engine().set_link(name, r.network, up)
            key = ("link", f"{name}/{r.network}")
            if up:
                self._faults.pop(key, None)
            else:
                self._faults.setdefault(
                    key, _Injected("link", name, f"{r.network} down", self.core.runtime.now())
                )
            return self._posted(
                session, f"Link of host {name} on its {r.network} network is {r.state}", host=name
            )

    @needs(ADMINISTRATOR)
    async def SetDiskLatency(self, r: pb.DiskLatencyRequest, session: Session) -> pb.FaultState:
        async with self._lock:
            ms = validate.number_range(r.milliseconds, 0, MAX_LATENCY_MS, "disk latency", "ms")
            record = self.core.inventory.datastore(r.datastore) if r.datastore else None
            if record is None:
                known = ", ".join(d.name for d in self.core.inventory.datastores()) or "none"
                raise NotFound(f"no datastore named {r.datastore[:80]!r} (datastores: {known})")
            lun = record.lun if record.type == "vmfs" else None
            export = record.export if record.type == "nfs" else ""
            await self.core.storage_array.set_latency(lun, export, ms / 1000)
            key = ("disk-latency", record.name)
            if ms:
                self._faults[key] = _Injected(
                    "disk-latency", record.name, f"{ms:g} ms", self.core.runtime.now()
                )
            else:
                self._faults.pop(key, None)
            where = f"LUN {record.lun}" if lun is not None else f"export {record.export}"
            return self._posted(
                session, f"Disk latency of datastore {record.name} ({where}) set to {ms:g} ms"
            )

    @needs(ADMINISTRATOR)
    async def RestartArray(self, r: pb.RestartArrayFaultRequest, session: Session) -> pb.FaultState:
        async with self._lock:
            answer = await self.core.storage_array.restart()
            dropped = ", ".join(map(str, answer.reservations_dropped)) or "none"
            return self._posted(
                session,
                f"Restarted the storage array program (restart {answer.generation}); "
                f"SCSI reservations dropped on LUNs: {dropped}",
            )

    @needs(ADMINISTRATOR)
    def ListFaults(self, r: pb.ListFaultsRequest, session: Session) -> pb.FaultState:
        return self._state(f"{len(self._current())} fault(s) in place")

    @needs(ADMINISTRATOR)
    async def ClearFaults(self, r: pb.ClearFaultsRequest, session: Session) -> pb.FaultState:
        async with self._lock:
            mended, failed = [], []
            for fault in self._current():
                try:
                    await self._mend(fault)
                    mended.append(f"{fault.kind} {fault.target}")
                except VimFault as e:  # one that cannot be mended must not stop the rest
                    failed.append(f"{fault.kind} {fault.target}: {e}")
            message = f"Cleared {len(mended)} fault(s)" + (
                f"; could not mend {len(failed)}: {'; '.join(failed)}" if failed else ""
            )
            self.core.events.post("FaultClearedEvent", message, user=session.user_name)
            return self._state(message)

    async def _mend(self, fault: _Injected) -> None:
        engine = self._engine() if fault.kind != "disk-latency" else None
        if fault.kind == "host-crash" and engine is not None:
            await engine.power_on_host(fault.target)
            self.core.runtime.spawn(
                self.core.hosts.heartbeat(fault.target), f"reattach:{fault.target}"
            )
            key = ("host-crash", fault.target)
        elif fault.kind == "host-hang" and engine is not None:
            await engine.hang_host(fault.target, 0)
            key = ("host-hang", fault.target)
        elif fault.kind == "link" and engine is not None:
            network = fault.detail.split()[0]
            await engine.set_link(fault.target, network, True)
            key = ("link", f"{fault.target}/{network}")
        else:
            record = self.core.inventory.datastore(fault.target)
            if record is not None:
                lun = record.lun if record.type == "vmfs" else None
                export = record.export if record.type == "nfs" else ""
                await self.core.storage_array.set_latency(lun, export, 0)
            key = ("disk-latency", fault.target)
        self._faults.pop(key, None)

    # state

    def _add(self, kind: str, target: str, detail: str) -> None:
        self._faults[(kind, target)] = _Injected(kind, target, detail, self.core.runtime.now())

    def _current(self) -> list[_Injected]:
        """The faults in place now: hangs that ended by themselves are gone."""
        now = self.core.runtime.now()
        for key in [k for k, f in self._faults.items() if f.until and f.until <= now]:
            del self._faults[key]
        return sorted(self._faults.values(), key=lambda f: (f.since, f.kind, f.target))

    def _state(self, message: str) -> pb.FaultState:
        now = self.core.runtime.now()
        faults = []
        for f in self._current():
            detail = f"for {f.until - now:.1f} s more" if f.until else f.detail
            faults.append(
                pb.InjectedFault(kind=f.kind, target=f.target, detail=detail, since=f.since)
            )
        return pb.FaultState(faults=faults, message=message)

    def _posted(self, session: Session, message: str, **about: Any) -> pb.FaultState:
        self.core.events.post("FaultInjectedEvent", message, user=session.user_name, **about)
        return self._state(message)


def fault_services(core: VCenter) -> list[DispatchTable]:
    """`start_vcenter`'s services: the fault service beside VCenter."""
    return [FaultService(core).table]
