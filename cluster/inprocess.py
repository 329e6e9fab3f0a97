"""The in-process engine: every host core in this process, on the caller's runtime.

No Ray and no sockets: vCenter's calls reach each host's `Hostd` through its
dispatch table, as gRPC serving does (messages are copied, as a wire would, and an
unexpected error is a SystemError), so unit tests and the deterministic simulator run the
same host code with the same checks as the Ray engine. Host certificates are still
real; accounts persist in memory across `reboot`, as /etc/shadow does on disk.

Everything a host draws comes from the engine's runtime: each machine's is
`runtime.child(name/machine-M)` (its certificate; a host decommissioned and
provisioned again is a new machine), each boot's `runtime.child(name/boot-N)` (its
boot id, session tokens, disk ids, and the tasks a crash halts), so the same seed
boots the same hosts whatever order they are provisioned in.

Each host has three networks the engine can cut (`set_link`): management (vCenter's
lines to hostd: a call on a cut line fails as an unreachable host's would, before the
host sees it), storage (the host's paths to the array: every SCSI or NFS command
fails as an unreachable array's would) and vmotion (host-to-host migration traffic).
A cut of one leaves the others working, as on hosts whose vmkernel ports are on
separate networks.

A hung host (`hang_host`) is frozen as seen from outside: every message to or from
it, on any network, waits at its ports until the hang ends, then goes on; one whose
sender gave up meanwhile (its own I/O deadline cancelled it) never leaves. A crash
drops whatever was waiting. `storage_tap`, when set, sees every storage command the
array ran, at the instant it ran: the simulator's checkers read the array's own state
there, not what the hosts believe. `vmotion_tap` likewise sees every host-to-host
vMotion call as it reaches its destination and once the destination has run it:
the simulator compares both hosts' memory at the switchover, and aims faults at a
migration's phases.
"""

from __future__ import annotations

import asyncio
import datetime
import shutil
import tempfile
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from vsim import dispatch, validate
from vsim.faults import (
    HostConnectFault,
    InvalidArgument,
    NotFound,
    SSLVerifyFault,
    StoragePathLost,
    VimFault,
)
from vsim.host.boot import LocalDisk, boot_host
from vsim.host.fdm.service import FdmConnector, FdmLine, GatewayPing
from vsim.host.hostd.accounts import MemoryAccountStore
from vsim.host.hostd.esx_conf import MemoryConfigStore
from vsim.host.hostd.migration import PeerConnector, PeerLink
from vsim.host.hostd.service import Hostd
from vsim.host.storage.storage_stack import LocalStoragePorts
from vsim.passwords import hash_password
from vsim.runtime import Runtime
from vsim.spec import HostSpec
from vsim.storage.array import StorageArray
from vsim.tls import Identity, make_identity

NETWORKS = ("management", "storage", "vmotion")
"""The networks of a host the engine can cut."""

StorageTap = Callable[[str, Any, str, tuple], None]
"""(host, device, command, args): a storage command the array has just run for the
host; device is the array-side LunDevice or ExportClient it ran on."""

VmotionTap = Callable[[str, str, str, str], None]
"""(source, destination, method, moment): a vMotion call from source to destination
(ReceivePages, Switchover) "arriving" (the destination has not run it yet) or
"landed" (it ran there; its reply has not left)."""


def path_down(network: str, message: str) -> VimFault:
    """A message lost on one of a host's networks, as its sender sees it: vCenter's
    line to hostd fails (HostConnectFault); a host's storage path fails as a datastore
    it cannot reach (CannotAccessFile), which hostd must not relay as its own line
    failing."""
    if network == "storage":
        return StoragePathLost(message)
    return HostConnectFault(message)


class _OverStorageNetwork:
    """A block device or NFS client of a host, reached over its storage network: each
    command is carried by `carry(command, send)` (the engine's `_carry`: a cut network,
    a lost or late reply)."""

    def __init__(self, target: Any, carry: Callable[..., Any]) -> None:
        self._target = target
        self._carry = carry

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute
        target = self._target

        async def command(*args: Any, **kwargs: Any) -> Any:
            return await self._carry(name, lambda: attribute(*args, **kwargs), (target, name, args))

        setattr(self, name, command)  # built once per command, not per call
        return command


class _StoragePortsOverNetwork:
    """A host's storage ports whose devices and NFS clients go over its storage network."""

    def __init__(self, ports: LocalStoragePorts, carry: Callable[..., Any]) -> None:
        self._ports = ports
        self._carry = carry

    async def block_device(self, endpoint: str, thumbprint: str, lun: int, initiator: str) -> Any:
        device = await self._carry(
            "block_device",
            lambda: self._ports.block_device(endpoint, thumbprint, lun, initiator),
        )
        return _OverStorageNetwork(device, self._carry)

    async def nfs_client(self, endpoint: str, thumbprint: str, export: str, client: str) -> Any:
        nfs = await self._carry(
            "nfs_client", lambda: self._ports.nfs_client(endpoint, thumbprint, export, client)
        )
        return _OverStorageNetwork(nfs, self._carry)

    async def close(self) -> None:
        await self._ports.close()


class LocalHostPort:
    """A line to one boot of a host: it goes dead when that host crashes or reboots,
    as a TCP connection would."""

    def __init__(
        self, engine: InProcessEngine, name: str, hostd: Hostd, identity: Identity
    ) -> None:
        self.name = name
        self.endpoint = f"in-process://{name}"
        self.thumbprint = identity.thumbprint
        self._engine = engine
        self._hostd: Hostd | None = hostd

    async def call(self, method: str, request: Any, session: str | None) -> Any:
        if self._hostd is None:
            raise HostConnectFault(f"the connection to {self.name} is closed")
        if self._engine.running(self.name) is not self._hostd:
            raise HostConnectFault(f"{self.name} does not answer (it crashed or rebooted)")
        hostd = self._hostd
        return await self._engine._carry(
            self.name,
            "management",
            method,
            lambda: dispatch.call(hostd.table, method, request, session),
        )

    async def close(self) -> None:
        self.drop()

    def drop(self) -> None:
        """The line goes dead at once: every later call fails as on a closed socket."""
        self._hostd = None


class _HostLine:
    """A host's line to another host's service (a migration's to HostVMotion over
    the vMotion networks, the HA agent's to HostFdm over the management networks):
    each call crosses the sender's network, then the receiver's. vMotion calls go
    by the engine's vMotion tap as they arrive and once they landed."""

    def __init__(
        self,
        engine: InProcessEngine,
        source: str,
        boot: int,
        peer: str,
        token: str,
        network: str,
        table: Callable[[Hostd], Any],
    ):
        self._engine, self._source, self._boot = engine, source, boot
        self._peer, self._token, self._network, self._table = peer, token, network, table

    async def call(self, method: str, request: Any) -> Any:
        engine, peer, network = self._engine, self._peer, self._network
        tapped = network == "vmotion"

        async def arrive() -> Any:
            if tapped:
                engine.tap_vmotion(self._source, peer, method, "arriving")
            hostd = engine.running(peer)
            if hostd is None:
                raise HostConnectFault(f"{peer} does not answer on its {network} network")
            reply = await dispatch.call(self._table(hostd), method, request, self._token)
            if tapped:
                engine.tap_vmotion(self._source, peer, method, "landed")
            if engine.running(peer) is not hostd:
                raise path_down(network, f"{peer} crashed before its reply to {method} left")
            return reply

        return await engine._carry(
            self._source,
            network,
            method,
            lambda: engine._carry(peer, network, method, arrive),
            sender=self._boot,
        )

    async def close(self) -> None:
        return None


async def _nothing() -> None:
    return None


class InProcessEngine:
    kind = "in-process"
    machines = False

    def __init__(
        self,
        runtime: Runtime,
        array: StorageArray | None = None,
        storage_tap: StorageTap | None = None,
    ) -> None:
        self.runtime = runtime
        self.clock = runtime.clock
        self.array = array
        """The storage array the hosts reach (in this process), if any."""
        self.storage_tap = storage_tap
        self.vmotion_tap: VmotionTap | None = None
        self._thawed: dict[str, asyncio.Event] = {}
        """Hung hosts: each one's event is set when its hang ends."""
        self._thaws: dict[str, asyncio.Task[None]] = {}
        self._hostd: dict[str, Hostd] = {}
        self._specs: dict[str, HostSpec] = {}
        self._identities: dict[str, Identity] = {}
        self._disks: dict[str, LocalDisk] = {}
        """Each host's accounts and esx.conf, kept across reboots as its disk would."""
        self._boots: Counter[str] = Counter()
        """How many times each host has booted."""
        self._machines: Counter[str] = Counter()
        """How many machines each host name has been provisioned on."""
        self._ports: dict[str, weakref.WeakSet[LocalHostPort]] = {}
        """The lines handed out to each host (vCenter's), for `drop_connections`."""
        self._next: dict[tuple[str, str, str], tuple[str, float]] = {}
        """(host, network, command) -> (fault, seconds) for the next such message:
        "reset" (lost before the other side saw it), "lost" (its reply is lost),
        "late" (its reply comes `seconds` late)."""
        self._cut: set[tuple[str, str]] = set()
        """(host, network) pairs whose link is down (`set_link`)."""
        self._swap_root = Path(tempfile.mkdtemp(prefix="vsim-inprocess-"))
        """The hosts' local disks (their swap files); they outlive a vCenter restart
        and go with the engine."""
        weakref.finalize(self, shutil.rmtree, self._swap_root, True)

    async def provision(self, spec: HostSpec) -> str:
        if spec.name not in self._identities:
            self._machines[spec.name] += 1
            machine = self.runtime.child(f"{spec.name}/machine-{self._machines[spec.name]}")
            self._identities[spec.name] = make_identity(
                spec.name,
                datetime.datetime.fromtimestamp(self.clock.now(), datetime.UTC),
                machine.secure_random,
            )
        identity = self._identities[spec.name]
        if spec.name not in self._hostd:
            self._specs[spec.name] = spec.validated()
            disk = self._disks.setdefault(
                spec.name,
                LocalDisk(MemoryAccountStore(), MemoryConfigStore(), self._swap_root / spec.name),
            )
            # A runtime per boot: each draws its own boot id, as a real one would.
            self._boots[spec.name] += 1
            ports = (
                _StoragePortsOverNetwork(LocalStoragePorts(self.array), self._carrier(spec.name))
                if self.array is not None
                else None
            )
            boot = self.runtime.child(f"{spec.name}/boot-{self._boots[spec.name]}")
            root_hash = hash_password(spec.root_password, source=boot.secure_random)
            hostd = boot_host(
                spec,
                disk,
                root_hash,
                boot,
                ports,
                peers=self._vmotion_connector(spec.name),
                fdm_peers=self._fdm_connector(spec.name),
                gateway=self._gateway(spec.name),
            )
            hostd.vmotion_endpoint = f"in-process://{spec.name}"
            hostd.management_endpoint = f"in-process://{spec.name}"
            self._hostd[spec.name] = hostd
        return identity.thumbprint

    def _vmotion_connector(self, name: str) -> PeerConnector:
        """How the current boot of a host reaches another host's HostVMotion service:
        over both hosts' vMotion networks, the peer's certificate pinned."""
        boot = self._boots[name]

        async def connect(endpoint: str, thumbprint: str, token: str) -> PeerLink:
            peer = endpoint.removeprefix("in-process://")
            if not endpoint.startswith("in-process://") or peer not in self._identities:
                raise HostConnectFault(f"no host answers at {endpoint[:80]!r}")
            presented = self._identities[peer].thumbprint
            if presented != thumbprint:
                raise SSLVerifyFault(
                    f"{peer} presents the certificate {presented}, not the one pinned",
                    thumbprint=presented,
                )
            return _HostLine(
                self, name, boot, peer, token, "vmotion", lambda hostd: hostd.migrations.table
            )

        return connect

    def _fdm_connector(self, name: str) -> FdmConnector:
        """How the current boot of a host's HA agent reaches another host's: over both
        hosts' management networks, the peer's certificate pinned."""
        boot = self._boots[name]

        async def connect(endpoint: str, thumbprint: str, token: str) -> FdmLine:
            peer = endpoint.removeprefix("in-process://")
            if not endpoint.startswith("in-process://") or peer not in self._identities:
                raise HostConnectFault(f"no host answers at {endpoint[:80]!r}")
            if self._identities[peer].thumbprint != thumbprint:
                raise SSLVerifyFault(
                    f"{peer} presents another certificate than the one pinned",
                    thumbprint=self._identities[peer].thumbprint,
                )
            return _HostLine(
                self, name, boot, peer, token, "management", lambda hostd: hostd.fdm.table
            )

        return connect

    def _gateway(self, name: str) -> GatewayPing:
        """The management network's gateway answers a host whose management link is
        up and that is not hung."""
        boot = self._boots[name]

        async def ping(address: str) -> bool:
            try:
                await self._carry(name, "management", "ping", _nothing, sender=boot)
            except VimFault:
                return False
            return True

        return ping

    def _carrier(self, name: str) -> Callable[..., Awaitable[Any]]:
        """How the current boot of a host sends over its storage network."""
        boot = self._boots[name]

        def carry(command: str, send: Callable, landed: tuple | None = None) -> Awaitable[Any]:
            return self._carry(name, "storage", command, send, landed, boot)

        return carry

    async def is_running(self, name: str) -> bool:
        return name in self._hostd

    async def can_boot(self, name: str) -> bool:
        return True

    async def connect(self, name: str) -> LocalHostPort:
        hostd = self._hostd.get(name)
        if hostd is None:
            raise HostConnectFault(f"host {name} does not answer: it is not running")
        self._check_link(name, "management")
        port = LocalHostPort(self, name, hostd, self._identities[name])
        self._ports.setdefault(name, weakref.WeakSet()).add(port)
        return port

    def running(self, name: str) -> Hostd | None:
        """The hostd of the host's current boot, if it is up."""
        return self._hostd.get(name)

    def hosts(self) -> dict[str, Hostd]:
        """The hostd of every host that is up, by name: the hardware as a test or the
        simulator looks at it, beside vCenter's view."""
        return dict(self._hostd)

    def spec(self, name: str) -> HostSpec:
        """The spec a host was last provisioned with (KeyError if it never was)."""
        return self._specs[name]

    def thumbprint(self, name: str) -> str:
        """The SHA-1 thumbprint of a provisioned host's certificate, as its console
        shows it (KeyError if it was never provisioned)."""
        return self._identities[name].thumbprint

    async def decommission(self, name: str) -> None:
        if name in self._hostd:
            await self._hostd[name].close()
        for table in (self._hostd, self._specs, self._identities, self._disks):
            table.pop(name, None)
        self._cut -= {(name, network) for network in NETWORKS}
        self._thaw(name)
        self._next = {key: fault for key, fault in self._next.items() if key[0] != name}

    async def close(self) -> None:
        pass

    def tap_vmotion(self, source: str, destination: str, method: str, moment: str) -> None:
        if self.vmotion_tap is not None:
            self.vmotion_tap(source, destination, method, moment)

    # Faults the simulator injects (a host is hardware that can fail).

    def crash(self, name: str) -> None:
        """The host stops answering and stops heartbeating; its runtime state
        (powered-on VMs, mounts) is lost, and so is every message waiting at its
        ports (a hang ends with it)."""
        hostd = self._hostd.pop(name, None)
        if hostd is not None:
            hostd.halt()
        self._thaw(name)

    # The fault plane as the fault service and the simulator drive it.

    async def crash_host(self, name: str) -> None:
        """Pulls the plug (see `crash`); NotFound for a host never provisioned."""
        self._known(name)
        self.crash(name)

    async def power_on_host(self, name: str) -> None:
        """Boots a crashed host again (a running one is left as it is); vCenter's
        monitor finds it and reattaches it."""
        self._known(name)
        if name not in self._hostd:
            await self.provision(self._specs[name])

    async def hang_host(self, name: str, seconds: float) -> None:
        """Freezes the host for `seconds` of the engine's clock: nothing it sends or is
        sent gets through until then (a later hang replaces the end of this one; 0
        ends a hang now)."""
        self._known(name)
        if seconds == 0:
            self._thaw(name)
            return
        validate.positive_number(seconds, "hang seconds")
        if name not in self._hostd:
            raise InvalidArgument(f"{name} is not running: a host that is off cannot hang")
        self._thawed.setdefault(name, asyncio.Event())
        if name in self._thaws:
            self._thaws.pop(name).cancel()
        self._thaws[name] = self.runtime.spawn(self._thaw_after(name, seconds), f"hang:{name}")

    async def _thaw_after(self, name: str, seconds: float) -> None:
        await self.clock.sleep(seconds)
        self._thaws.pop(name, None)
        self._thaw(name)

    def hung(self, name: str) -> bool:
        return name in self._thawed

    def _thaw(self, name: str) -> None:
        """Ends a hang (at its end, or early: a crash, a decommission)."""
        timer = self._thaws.pop(name, None)
        if timer is not None:
            timer.cancel()
        event = self._thawed.pop(name, None)
        if event is not None:
            event.set()

    async def set_link(self, name: str, network: str, up: bool) -> None:
        """`set_link_now` as the fault service calls it."""
        self.set_link_now(name, network, up)

    def _known(self, name: str) -> None:
        if name not in self._specs:
            raise NotFound(f"no host named {name[:80]!r} was provisioned on this engine")

    def drop_connections(self, name: str) -> int:
        """Every open line to the host goes dead, as a crashed host's TCP connections
        do (the host itself is untouched); returns how many there were."""
        ports = list(self._ports.pop(name, ()))
        for port in ports:
            port.drop()
        return len(ports)

    def reset_next_call(self, name: str, method: str, applied: bool) -> None:
        """The next `method` call on a line to the host fails as a reset connection
        would (HostConnectFault): with `applied`, after the host ran it (only the
        reply is lost), otherwise before the host saw it."""
        self._arm(name, "management", method, "lost" if applied else "reset")

    def set_link_now(self, name: str, network: str, up: bool) -> None:
        """Cuts (up=False) or mends one of a host's networks (NETWORKS): its other
        networks keep working, and the host itself keeps running."""
        if network not in NETWORKS:
            raise InvalidArgument(
                f"a host's network is one of {', '.join(NETWORKS)}, got {network[:40]!r}"
            )
        self._known(name)
        if up:
            self._cut.discard((name, network))
        else:
            self._cut.add((name, network))

    def link_up(self, name: str, network: str) -> bool:
        return (name, network) not in self._cut

    def _check_link(self, name: str, network: str) -> None:
        if (name, network) in self._cut:
            raise path_down(network, f"{name} cannot be reached: its {network} network is down")

    def lose_next_storage_reply(self, name: str, command: str) -> None:
        """The array runs the host's next SCSI or NFS `command` (a method of its block
        device or NFS client: "compare_and_write", "write", "create", ...), but the
        reply never reaches the host, which sees its path fail."""
        self._arm(name, "storage", command, "lost")

    def lose_next_vmotion_reply(self, name: str, method: str) -> None:
        """The host's next vMotion stream call `method` (ReceivePages, Switchover) is
        carried out by the destination, but its reply never reaches the host."""
        self._arm(name, "vmotion", method, "lost")

    def delay_next_storage_reply(self, name: str, command: str, seconds: float) -> None:
        """The array runs the host's next storage `command` at once, but its reply
        reaches the host `seconds` later (a slow path: a late heartbeat reply)."""
        validate.positive_number(seconds, "reply delay")
        self._arm(name, "storage", command, "late", seconds)

    def delay_next_reply(self, name: str, method: str, seconds: float) -> None:
        """The host runs the next `method` call at once, but its reply reaches the
        caller `seconds` later on the engine's clock (a slow line or a busy hostd):
        whatever the caller does meanwhile races the call."""
        validate.positive_number(seconds, "reply delay")
        self._arm(name, "management", method, "late", seconds)

    def _arm(self, name: str, network: str, command: str, fault: str, seconds: float = 0) -> None:
        self._known(name)
        self._next[(name, network, command)] = (fault, seconds)

    async def _carry(
        self,
        name: str,
        network: str,
        command: str,
        send: Callable[[], Awaitable[Any]],
        landed: tuple | None = None,
        sender: int = 0,
    ) -> Any:
        """One message over one of a host's networks and its reply, with whatever
        fault is armed for it: a hung host, a cut network, a reset, a lost or a late
        reply. `landed` is (device, command, args) of a storage command, for the tap;
        `sender`, the boot that sends it (a boot that crashed sends nothing more)."""
        if sender and (self._boots[name] != sender or name not in self._hostd):
            raise path_down(network, f"{name}'s boot {sender} is down: it sends nothing")
        boot = self._hostd.get(name)
        await self._through_ports(name, network, boot, command)
        self._check_link(name, network)
        fault, seconds = self._next.pop((name, network, command), ("", 0.0))
        if fault == "reset":
            raise path_down(
                network, f"the {network} connection of {name} was reset before {command} reached it"
            )
        reply = await send()
        if landed is not None and self.storage_tap is not None:
            self.storage_tap(name, *landed)
        await self._through_ports(name, network, boot, command)
        if fault == "lost":
            raise path_down(
                network,
                f"the {network} connection of {name} was reset after {command} ran: "
                "its reply is lost",
            )
        if fault == "late":
            await self.clock.sleep(seconds)
        return reply

    async def _through_ports(
        self, name: str, network: str, boot: Hostd | None, command: str
    ) -> None:
        """Waits while the host is hung; fails if the boot the message is from or to
        is gone by then (a crash drops what waits at its ports)."""
        event = self._thawed.get(name)
        if event is None:
            return
        await event.wait()
        if self._hostd.get(name) is not boot:
            raise path_down(network, f"{name} crashed while {command} waited at its ports")

    async def reboot(self, name: str) -> None:
        """Boots a crashed host again with its identity and accounts."""
        self._hostd.pop(name, None)
        await self.provision(self._specs[name])
