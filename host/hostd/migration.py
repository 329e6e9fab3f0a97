"""vMotion between two hosts: the destination's side (an arriving VM and the
HostVMotion service the source streams to) and the source's (pre-copy, stun,
switchover, and putting the VM back if any of it fails).

vCenter gives both hosts one migration's ticket (an id and 32 random bytes). The
destination registers the VM, admits it and gives it stunned memory
(`PrepareVmotion`); the source pre-copies its memory to the destination's HostVMotion
service over the vMotion network, with the ticket as the call's token, stuns the
guest, releases the disks (the guest's write in flight is acknowledged first) and
sends the checkpoint (`Switchover`): the destination opens the disks, connects the
vNICs and resumes the guest. The disks' on-disk locks decide who runs a VM whose
switchover reply was lost: the side that holds them.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import Message

from vsim.dispatch import PUBLIC, DispatchTable, Entry, Need, needs
from vsim.faults import (
    AlreadyExists,
    FileLocked,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    MigrationFault,
    NotAuthenticated,
    NotFound,
    VimFault,
    VMotionNotConfigured,
)
from vsim.host.vm.vmotion import PreCopySettings, precopy
from vsim.v1 import host_agent_pb2 as pb
from vsim.vmotion_ticket import KEY_BYTES, NONCE_BYTES, SECRET_BYTES

log = logging.getLogger("vsim.host.migration")

SERVICE = pb.DESCRIPTOR.services_by_name["HostVMotion"]
MAX_BATCH_PAGES = 1 << 18
"""The most pages one ReceivePages call carries (4 MiB of PPNs and fingerprints)."""
MIGRATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class PeerLink(Protocol):
    """A line from this host to another host's HostVMotion service."""

    async def call(self, method: str, request: Message) -> Message: ...

    async def close(self) -> None: ...


PeerConnector = Callable[[str, str, str], Awaitable[PeerLink]]
"""(endpoint, pinned thumbprint, the ticket's token) -> a line over the vMotion
network to the host there."""


def ticket_token(ticket: pb.VmotionTicket) -> str:
    """The ticket as the source's calls carry it: its secret in a session token's
    shape (32 bytes, URL-safe base64), so it travels as any session does."""
    return base64.urlsafe_b64encode(ticket.secret).rstrip(b"=").decode()


class Sealer:
    """Encrypted vMotion's sealing, one per side of a migration: every message is
    sealed with AES-256-GCM under the ticket's key, its nonce the ticket's 64-bit
    nonce and a 32-bit message number that only ever grows (a replayed or reordered
    message fails), and the migration id as associated data."""

    def __init__(self, ticket: pb.VmotionTicket) -> None:
        self._aead = AESGCM(bytes(ticket.key))
        self._nonce = bytes(ticket.nonce)
        self._aad = ticket.migration_id.encode()
        self._sent = 0
        self._received = 0

    def seal(self, data: bytes) -> tuple[bytes, int]:
        self._sent += 1
        return self._aead.encrypt(self._nonce_for(self._sent), data, self._aad), self._sent

    def open(self, sealed: bytes, sequence: int) -> bytes:
        if sequence <= self._received:
            raise InvalidArgument(f"sealed message {sequence} comes again or out of order")
        try:
            data = self._aead.decrypt(self._nonce_for(sequence), sealed, self._aad)
        except InvalidTag:
            raise InvalidArgument("a sealed vMotion message failed authentication") from None
        self._received = sequence
        return data

    def _nonce_for(self, sequence: int) -> bytes:
        return self._nonce + sequence.to_bytes(4, "big")


def check_ticket(ticket: pb.VmotionTicket) -> None:
    if not MIGRATION_ID.fullmatch(ticket.migration_id):
        raise InvalidArgument(
            f"a migration id is 1-64 letters, digits, '.', '_' or '-', got "
            f"{ticket.migration_id[:80]!r}"
        )
    if len(ticket.secret) != SECRET_BYTES:
        raise InvalidArgument(
            f"a migration secret is {SECRET_BYTES} bytes, got {len(ticket.secret)}"
        )
    if ticket.key or ticket.nonce:
        if (len(ticket.key), len(ticket.nonce)) != (KEY_BYTES, NONCE_BYTES):
            raise InvalidArgument(
                f"an encrypted vMotion's key is {KEY_BYTES} bytes and its nonce "
                f"{NONCE_BYTES}, got {len(ticket.key)} and {len(ticket.nonce)}"
            )


ARRIVAL_IDLE = 20.0
"""Migrate.NetTimeout: seconds a destination waits, hearing nothing of a migration
(a source sends every second), before it gives the partial copy up itself (vCenter's
abort may never come: it may be down)."""


REOPEN_BACKOFF_MAX = 5.0
"""Seconds, at most, between tries to open again the disks of a VM whose switchover
failed while its host had lost its storage."""


@dataclass
class _Arrival:
    migration_id: str
    secret: bytes
    vm: str
    registered_here: bool
    heard: float
    sealer: Sealer | None
    """Encrypted vMotion: what opens the source's messages."""
    resumed: bool = False

    def payload(self, clear: bytes, sealed: bytes, sequence: int) -> bytes:
        """A message's content: in the clear, or opened from its sealed form on an
        encrypted migration (never both, never the wrong one)."""
        if self.sealer is None:
            if sealed:
                raise InvalidArgument("this migration is not encrypted: send it in the clear")
            return clear
        if clear or not sealed:
            raise InvalidArgument("this migration is encrypted: its messages must be sealed")
        return self.sealer.open(sealed, sequence)


class _PageStream:
    """The source's page batches to the destination, in order, while the pre-copy
    goes on: what one `send` was given (a second of the link) is encoded, sealed and
    sent while the pre-copy waits out the link's time for it, so the destination
    takes pages in while the source sends. Its calls go one at a time, and the next
    send's only once they are answered: the destination applies pages in the order
    they were read. A failed call is raised at the next send, or by `drain`."""

    def __init__(self, link: PeerLink, sealer: Sealer | None, spawn: Any) -> None:
        self._link, self._sealer, self._spawn = link, sealer, spawn
        self._calls: Any = None
        """The calls under way (an asyncio task answering their failure), or None."""

    async def send(self, ppns: np.ndarray, fingerprints: np.ndarray) -> None:
        await self.drain()
        self._calls = self._spawn(self._deliver(ppns, fingerprints), "vmotion-pages")

    async def _deliver(self, ppns: np.ndarray, fingerprints: np.ndarray) -> BaseException | None:
        try:
            for at in range(0, len(ppns), MAX_BATCH_PAGES):
                batch = self._batch(
                    ppns[at : at + MAX_BATCH_PAGES], fingerprints[at : at + MAX_BATCH_PAGES]
                )
                await self._link.call("ReceivePages", batch)
        except Exception as e:  # noqa: BLE001 - answered to whoever waits for the calls
            return e
        return None

    def _batch(self, ppns: np.ndarray, fingerprints: np.ndarray) -> pb.VmotionPagesRequest:
        raw_ppns, raw = ppns.astype("<i8").tobytes(), fingerprints.astype("<u8").tobytes()
        if self._sealer is None:
            return pb.VmotionPagesRequest(ppns=raw_ppns, fingerprints=raw)
        sealed, sequence = self._sealer.seal(raw_ppns + raw)
        return pb.VmotionPagesRequest(sealed=sealed, sequence=sequence)

    async def drain(self) -> None:
        """Waits for the calls under way; raises their failure."""
        calls, self._calls = self._calls, None
        if calls is not None:
            failure = await calls
            if failure is not None:
                raise failure

    def cancel(self) -> None:
        if self._calls is not None:
            self._calls.cancel()
            self._calls = None


class _LinkPace:
    """The host's clock as the pre-copy sees it: the link's time for a batch has
    passed once that time is over and the batch has arrived, whichever is later (a
    destination slower than the link holds the pre-copy back, never the stun)."""

    def __init__(self, clock: Any, stream: _PageStream) -> None:
        self._clock, self._stream = clock, stream
        self.speed = clock.speed

    def now(self) -> float:
        return self._clock.now()

    async def sleep(self, seconds: float) -> None:
        await self._clock.sleep(seconds)  # the batch's calls are under way meanwhile
        await self._stream.drain()

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Any:
        return self._clock.call_later(seconds, callback)


class Migrations:
    """One host's migrations, in and out; its `table` is the HostVMotion service."""

    judges = frozenset({Need.PUBLIC})

    def __init__(self, hostd: Any, connect: PeerConnector | None) -> None:
        self.hostd = hostd
        self._connect = connect
        self._arrivals: dict[str, _Arrival] = {}
        self.table = DispatchTable.of_methods(SERVICE, self, self)

    def admit(self, token: str | None, entry: Entry) -> _Arrival:
        """The host-to-host calls carry the migration's ticket as their token: only
        the source of a migration under way gets in."""
        try:
            secret = base64.urlsafe_b64decode((token or "") + "=")
        except (ValueError, TypeError):
            secret = b""
        for arrival in self._arrivals.values():
            if len(secret) == SECRET_BYTES and hmac.compare_digest(secret, arrival.secret):
                arrival.heard = self._now()
                return arrival
        raise NotAuthenticated(
            f"{entry.name}: no vMotion to {self.hostd.kernel.spec.name} is under way "
            "with that migration's secret"
        )

    # -- the destination -----------------------------------------------------------

    async def prepare(self, ticket: pb.VmotionTicket, vm: Any) -> Any:
        """Registers the arriving VM (a VmConfig; unless it is registered here,
        powered off) and admits it with stunned memory. Returns its configuration."""
        check_ticket(ticket)
        self._require_vmotion_nic()
        self._require_encryption(ticket)
        if ticket.migration_id in self._arrivals:
            raise AlreadyExists(f"migration {ticket.migration_id} is already prepared")
        kernel = self.hostd.kernel
        try:
            known = kernel.vm(vm.name)
        except NotFound:
            known = None
        if known is not None and (known.powered_on or kernel.arriving(vm.name)):
            raise InvalidPowerState(f"{vm.name} already runs on {kernel.spec.name}")
        if known is None:
            self.hostd.register(vm)
        try:
            kernel.arrive(vm.name)
        except BaseException:
            if known is None:
                await self.hostd.forget(vm.name)
            raise
        arrival = _Arrival(
            ticket.migration_id,
            bytes(ticket.secret),
            vm.name,
            known is None,
            self._now(),
            Sealer(ticket) if ticket.key else None,
        )
        self._arrivals[ticket.migration_id] = arrival
        self.hostd.runtime.spawn(self._watch(arrival), f"vmotion-arrival:{arrival.migration_id}")
        return kernel.vm(vm.name)

    def _require_vmotion_nic(self) -> None:
        if not self.hostd.vmotion_address():
            raise VMotionNotConfigured(
                f"{self.hostd.kernel.spec.name} has no VMkernel adapter tagged for vMotion"
            )

    def _require_encryption(self, ticket: pb.VmotionTicket) -> None:
        if ticket.key and not self.hostd.kernel.spec.vmotion_encryption:
            raise MigrationFault(
                f"{self.hostd.kernel.spec.name} cannot encrypt a vMotion stream; migrate "
                "with encryption disabled or opportunistic"
            )

    def _now(self) -> float:
        return self.hostd.runtime.clock.now()

    async def _watch(self, arrival: _Arrival) -> None:
        """Forgets an arrival that resumed (its ticket opens nothing more) and gives
        up one nothing is heard of for ARRIVAL_IDLE (then, not up to twice that: each
        wait lasts until ARRIVAL_IDLE after the source was last heard)."""
        wait = ARRIVAL_IDLE
        while self._arrivals.get(arrival.migration_id) is arrival:
            await self.hostd.runtime.clock.sleep(wait)
            wait = arrival.heard + ARRIVAL_IDLE - self._now()
            if arrival.resumed or self._now() - arrival.heard >= ARRIVAL_IDLE:
                if not arrival.resumed:
                    log.warning(
                        "%s: gave up %s's arrival (migration %s): nothing arrived for %.0f s",
                        self.hostd.kernel.spec.name,
                        arrival.vm,
                        arrival.migration_id,
                        ARRIVAL_IDLE,
                    )
                await self._drop(arrival)

    @needs(PUBLIC)
    def ReceivePages(self, r: pb.VmotionPagesRequest, arrival: _Arrival) -> pb.VmotionAck:
        if arrival.resumed:
            raise InvalidState(f"{arrival.vm} has resumed here: no more pages")
        # PPNs then fingerprints, as the source seals them (the halves of the clear
        # message must match before they are joined, or they could not be told apart).
        if len(r.ppns) % 8 or len(r.ppns) != len(r.fingerprints):
            raise InvalidArgument("pages come as 8-byte PPNs, each with an 8-byte fingerprint")
        data = arrival.payload(r.ppns + r.fingerprints, r.sealed, r.sequence)
        pages = len(data) // 16
        if len(data) % 16:
            raise InvalidArgument("pages come as 8-byte PPNs, each with an 8-byte fingerprint")
        ppns = np.frombuffer(data, "<i8", pages).astype(np.int64)
        fingerprints = np.frombuffer(data, "<u8", pages, pages * 8).astype(np.uint64)
        self.hostd.kernel.memory.receive(arrival.vm, ppns, fingerprints)
        return pb.VmotionAck()

    @needs(PUBLIC)
    async def Switchover(self, r: pb.VmotionSwitchoverRequest, arrival: _Arrival) -> pb.VmotionAck:
        if arrival.resumed:
            return pb.VmotionAck()  # the source asking again: it did
        text = arrival.payload(r.guest_state.encode(), r.sealed, r.sequence)
        try:
            state = json.loads(text)
        except ValueError:
            raise InvalidArgument("the checkpoint's guest state is not JSON") from None
        await self.hostd.resume_arrived(arrival.vm, state)
        arrival.resumed = True
        return pb.VmotionAck()

    async def abort(self, ticket: pb.VmotionTicket) -> None:
        """Frees what a failed migration left here: the partial copy, and the VM's
        registration if the migration made it. A migration that ended (resumed here)
        is left alone: the VM runs here."""
        check_ticket(ticket)
        arrival = self._arrivals.get(ticket.migration_id)
        if arrival is None or not hmac.compare_digest(arrival.secret, bytes(ticket.secret)):
            return
        await self._drop(arrival)

    async def _drop(self, arrival: _Arrival) -> None:
        if self._arrivals.get(arrival.migration_id) is not arrival:
            return
        del self._arrivals[arrival.migration_id]
        if not arrival.resumed:
            self.hostd.kernel.abandon_arrival(arrival.vm)
            if arrival.registered_here:
                await self.hostd.forget(arrival.vm)

    # -- the source ----------------------------------------------------------------

    async def start(self, request: pb.StartVmotionRequest) -> pb.VmotionReport:
        check_ticket(request.ticket)
        kernel = self.hostd.kernel
        here = kernel.spec.name
        vm = kernel.vm(request.vm)
        if not vm.powered_on:
            raise InvalidPowerState(f"{vm.name} is not running on {here}: nothing to pre-copy")
        self._require_vmotion_nic()
        self._require_encryption(request.ticket)
        if self._connect is None:
            raise InvalidState(f"{here} has no vMotion network to reach other hosts on")
        settings = PreCopySettings(link_gbps=request.link_gbps or 10.0).validated()
        try:
            link = await self._connect(
                request.destination_endpoint,
                request.destination_thumbprint,
                ticket_token(request.ticket),
            )
        except VimFault as e:  # not this host's line to vCenter failing: never relayed so
            raise MigrationFault(
                f"{here} cannot reach {request.destination}'s vMotion network at "
                f"{request.destination_endpoint[:80]} ({e.name}: {e.message}); {vm.name} "
                f"goes on running on {here}"
            ) from None
        try:
            return await self._migrate(vm.name, request, link, settings)
        finally:
            await link.close()

    async def _migrate(
        self, name: str, request: pb.StartVmotionRequest, link: PeerLink, settings
    ) -> pb.VmotionReport:
        hostd, memory, clock = self.hostd, self.hostd.kernel.memory, self.hostd.runtime.clock
        here, there = hostd.kernel.spec.name, request.destination

        sealer = Sealer(request.ticket) if request.ticket.key else None
        stream = _PageStream(link, sealer, hostd.runtime.spawn)
        try:
            report = await precopy(memory, name, _LinkPace(clock, stream), stream.send, settings)
            try:
                await stream.drain()  # the stun's last pages are there
            except BaseException:
                with contextlib.suppress(NotFound):  # precopy left the guest stunned
                    memory.set_speed(name, 1.0)
                raise
        except VimFault as e:
            raise MigrationFault(
                f"the pre-copy of {name} to {there} failed ({e.name}: {e.message}); it "
                f"goes on running on {here}"
            ) from None
        finally:
            stream.cancel()
        vmx = hostd.vmx.get(name)
        state = json.dumps(memory.guest_state(name))
        if sealer is None:
            checkpoint = pb.VmotionSwitchoverRequest(guest_state=state)
        else:
            sealed, sequence = sealer.seal(state.encode())
            checkpoint = pb.VmotionSwitchoverRequest(sealed=sealed, sequence=sequence)
        try:
            if vmx is not None and vmx.disks:
                await vmx.close_disks()  # the write in flight is acknowledged first
            await link.call("Switchover", checkpoint)
        except BaseException as e:
            if not await self._resolve_switchover(name, vmx, link, checkpoint):
                fault = f"{e.name}: {e.message}" if isinstance(e, VimFault) else repr(e)
                raise MigrationFault(
                    f"the switchover of {name} to {there} failed ({fault}); it goes on "
                    f"running on {here}"
                ) from None
        downtime = clock.now() - report.stunned_at
        await hostd.depart(name)
        return pb.VmotionReport(
            rounds=len(report.rounds),
            memory_sent_bytes=report.memory_sent_bytes,
            pages_resent=report.pages_resent,
            sdps=report.sdps,
            slowest_speed=report.slowest_speed,
            precopy_s=report.precopy_s,
            downtime_ms=downtime * 1000,
            encrypted=sealer is not None,
        )

    async def _resolve_switchover(
        self, name: str, vmx: Any, link: PeerLink, checkpoint: pb.VmotionSwitchoverRequest
    ) -> bool:
        """After a failed switchover call, where the VM runs: asked once more (the
        destination answers at once if it resumed and only its reply was lost), else
        here again, unless the destination holds its disks. True if it moved."""
        try:
            await link.call("Switchover", checkpoint)
            return True
        except VimFault:
            pass
        if vmx is not None and vmx.disk_specs:
            try:
                await vmx.open_disks()
            except FileLocked:
                log.warning("%s runs on the destination: its disks are held there", name)
                return True
            except VimFault as e:
                # This host lost its storage (APD): the guest stays stunned, its I/O
                # hung, until its disks open here again or turn out held there.
                log.warning("%s cannot open its disks again (%s): it waits for them", name, e)
                self.hostd.runtime.spawn(self._reopen(name, vmx), f"vmotion-reopen:{name}")
                return False
            vmx.start_guest()
        self.hostd.kernel.memory.set_speed(name, 1.0)
        return False

    async def _reopen(self, name: str, vmx: Any) -> None:
        """A failed switchover's VM whose disks could not be opened again: tried again
        (1 s, doubling to REOPEN_BACKOFF_MAX) until they open (the guest resumes here)
        or are held elsewhere (the destination resumed it: it departs from here)."""
        hostd, wait = self.hostd, 1.0
        while True:
            await hostd.runtime.clock.sleep(wait)
            wait = min(wait * 2, REOPEN_BACKOFF_MAX)
            if hostd.vmx.get(name) is not vmx or not hostd.kernel.vm(name).powered_on:
                return  # powered off (or unregistered) meanwhile
            try:
                await vmx.open_disks()
            except FileLocked:
                log.warning("%s runs on the destination: its disks are held there", name)
                await hostd.depart(name)
                return
            except VimFault:
                continue
            vmx.start_guest()
            hostd.kernel.memory.set_speed(name, 1.0)
            log.warning("%s has its disks again and runs on", name)
            return
