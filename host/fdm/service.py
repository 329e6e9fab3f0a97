"""vSphere HA's agent on a host (FDM): the shell around the agent core (agent.py) and
the master's restart core (restart.py).

vCenter configures it (hostd's ConfigureFdm: the cluster's hosts with their
management addresses and certificates, a secret the agents present to each other, the
protected VMs, the isolation address and response); from then on it acts alone. Once
a heartbeat interval it ticks the agent and carries out what the agent asks: network
heartbeats to the other agents over the management network (HostFdm, host to host,
certificates pinned), pings of a silent host or of the isolation address, the
isolation response. With heartbeat datastores it keeps its files there and, as a
master, watches the others' and reads a silent host's before its verdict
(datastore_heartbeat.py). A master declaring a host dead restarts that host's
protected VMs on the survivors through their agents' RestartVm, which waits for the
VM's disk locks to go stale and never breaks a live one: a wrong verdict only costs a
failed power-on. Only VMs on a datastore are protected: the locks on their files are
what keep a VM from running twice.

Every heartbeat carries what the master needs to place restarts: the sender's
powered-on VMs, the datastores it reaches, its free memory and CPU. What the agent
does goes into its event list (DasHostFailedEvent, ClusterFailoverAction...Event,
VmRestartedByHAEvent, ...) with the host's time, for vCenter to collect.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from google.protobuf.message import Message as ProtoMessage

from vsim import validate
from vsim.dispatch import PUBLIC, DispatchTable, Entry, Need, needs
from vsim.faults import (
    FileLocked,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotAuthenticated,
    NotFound,
    VimFault,
)
from vsim.ha_settings import DATASTORE_KINDS, ISOLATION_RESPONSES, RESTART_PRIORITIES
from vsim.host.fdm import agent as fdm
from vsim.host.fdm import restart
from vsim.host.fdm.datastore_heartbeat import (
    WATCH_EVERY_S,
    HeartbeatFiles,
    HeartbeatReader,
    check_paths,
)
from vsim.host.hostd.kernel_messages import vm_from_proto
from vsim.runtime import Timeout
from vsim.v1 import host_agent_pb2 as pb

log = logging.getLogger("vsim.host.fdm")

SERVICE = pb.DESCRIPTOR.services_by_name["HostFdm"]
SECRET_BYTES = 32
GATEWAY = "gateway"
"""The isolation address when none is set: the management network's gateway."""
CALL_TIMEOUT_S = 1.0
"""A heartbeat or ping unanswered this long is lost (the next comes a second later)."""
LOCK_WAIT_S = 60.0
"""How long a restart's power-on waits for the failed host's disk locks to go stale,
as the restarting host itself watches them (NFS: 35 s unchanged; VMFS: its holder's
heartbeat 16 s still), with room: FileLocked until then, tried every LOCK_POLL_S."""
RESTART_TIMING = restart.RestartSettings(vmfs_lock_stale_s=0.0, nfs_lock_stale_s=0.0)
"""The master asks for a power-on at once after its verdict: the restarting host's
own wait on the locks (LOCK_WAIT_S) is what keeps it from breaking a live one, and
the stale times counted twice (before asking, then again as that host watches the
locks from the first try) would only delay it."""
LOCK_POLL_S = 2.0
RESTART_CALL_S = LOCK_WAIT_S + 15.0
REACHED_EVERY_S = 10.0
"""How often the agent reads which datastores this host reaches."""
MAX_EVENTS = 1000
VM_MISSING_S = 30.0
"""How long a master sees a protected VM run nowhere, its host heard, before it
restarts it."""
ISOLATED_READ_S = 20.0
"""An isolated host's poweron file read within this long says what it runs (a master
reads it again every 8 s while the host stays isolated)."""
MISSING_HEARD_S = 3.0
"""A host heard within this long counts as reporting what it runs."""
MAX_HEARTBEAT_DATASTORES = 5
"""das.heartbeatDsPerHost's highest setting (its default is 2)."""
KEEP_FILES_EVERY_S = 1.0
"""How often the agent sees to its files on the heartbeat datastores."""
KEEP_FILES_TIMEOUT_S = 5.0
"""One round on one heartbeat datastore taking longer is called off (a path down)."""
READ_HEARTBEAT_TIMEOUT_S = 1.0
"""A master's read of another host's files on one datastore taking longer counts as no
heartbeat there (the reads before a verdict hold up the agent's loop meanwhile)."""


class FdmLine(Protocol):
    """A line from this host to another host's HostFdm service."""

    async def call(self, method: str, request: ProtoMessage) -> ProtoMessage: ...

    async def close(self) -> None: ...


FdmConnector = Callable[[str, str, str], Awaitable[FdmLine]]
"""(endpoint, pinned thumbprint, the cluster's token) -> a line over the management
network to the host there."""
GatewayPing = Callable[[str], Awaitable[bool]]
"""Whether the isolation address answers, pinged over the management network."""


def cluster_token(secret: bytes) -> str:
    """The cluster's secret as the agents' calls carry it, in a session token's shape."""
    return base64.urlsafe_b64encode(secret).rstrip(b"=").decode()


class Fdm:
    judges = frozenset({Need.PUBLIC})

    def __init__(self, hostd: Any, connect: FdmConnector | None, ping: GatewayPing | None):
        self.hostd = hostd
        self._connect = connect
        self._ping_gateway = ping
        self.table = DispatchTable.of_methods(SERVICE, self, self)
        self.config: pb.FdmConfig | None = None
        self.agent: fdm.FdmAgent | None = None
        self._restarts: restart.RestartManager | None = None
        self._peers: dict[str, pb.FdmPeer] = {}
        self._lines: dict[str, FdmLine] = {}
        self._reports: dict[str, pb.FdmHeartbeat] = {}
        """Each agent's last heartbeat, as heard here."""
        self._heard: dict[str, float] = {}
        self._failing_over: set[str] = set()
        """The VMs a failover of this master's is restarting (until run or given up)."""
        self._verdicts: dict[str, str] = {}
        self._reached: set[str] = set()
        self._reached_at = float("-inf")
        self._events: list[pb.FdmEvent] = []
        self._next_key = 0
        self._loop: Any = None
        self._files: HeartbeatFiles | None = None
        self._reader: HeartbeatReader | None = None
        self._keeper: Any = None
        self._watcher: Any = None
        self._asked: set[str] = set()
        """Hosts whose datastore heartbeat the agent asked for, read before each tick
        until its verdict on them is in (alive and heard, or dead)."""
        self._isolated_runs: dict[str, tuple[float, frozenset[str]]] = {}
        """An isolated host's poweron file as last read: when, and the VMs it runs."""
        self._missing: dict[str, float] = {}
        """Protected VMs no heard host runs, since when (a master's)."""
        self.restarting: set[str] = set()
        """VMs this host registered to restart them for a master, until they run (or
        are given up and forgotten): not yet the host's to report."""
        self.agent_id = f"{hostd.runtime.random.getrandbits(64):016x}"
        """This boot's agent (its events' keys start again with the next boot's)."""

    # -- the host's part ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self.hostd.kernel.spec.name

    def _now(self) -> float:
        return self.hostd.runtime.clock.now()

    def configure(self, request: pb.ConfigureFdmRequest) -> pb.FdmState:
        """Starts, reconfigures or stops the agent. A new cluster membership starts a
        new agent (an election); a new protected list or response keeps it."""
        if not request.enabled:
            self._stop()
            self.config = None
            return self.state(0)
        config = request.config
        _check(config, self.name)
        peers = {p.host: p for p in config.hosts}
        same_cluster = (
            self.config is not None
            and self.agent is not None
            and sorted(peers) == sorted(self._peers)
            and self.config.secret == config.secret
        )
        self.config, self._peers = config, peers
        if not same_cluster:
            self._stop()
            self.agent = fdm.FdmAgent(
                host=self.name,
                peers=tuple(sorted(h for h in peers if h != self.name)),
                datastores=len(self._reached),
                heartbeat_datastores=bool(config.heartbeat_datastores),
                isolation_address=config.isolation_address or GATEWAY,
                now=self._now(),
            )
            storage = self.hostd.storage
            self._files = HeartbeatFiles(storage, config.cluster, self.name, self._poweron)
            self._reader = HeartbeatReader(storage, config.cluster, self.hostd.runtime.clock)
            self._loop = self.hostd.runtime.spawn(self._run(), "fdm")
            self._keeper = self.hostd.runtime.spawn(self._keep_files(), "fdm-heartbeat-files")
        else:
            self.agent.heartbeat_datastores = bool(config.heartbeat_datastores)
        self._sync_watch()
        return self.state(0)

    def _stop(self) -> None:
        for task in (self._loop, self._keeper, self._watcher):
            if task is not None:
                task.cancel()
        self._loop = self._keeper = self._watcher = None
        if self._files is not None:
            self.hostd.runtime.spawn(self._files.close(), "fdm-heartbeat-files-close")
        self._files, self._reader = None, None
        self._asked.clear()
        self.agent, self._restarts = None, None
        self._reports.clear()
        self._verdicts.clear()
        for line in self._lines.values():
            self.hostd.runtime.spawn(line.close(), "fdm-close")
        self._lines.clear()

    def state(self, events_after: int) -> pb.FdmState:
        agent = self.agent
        protected = sorted(v.vm.name for v in self._protected()) if self.config else []
        return pb.FdmState(
            enabled=agent is not None,
            role=agent.role if agent else "",
            master=agent.master if agent else "",
            hosts=[pb.FdmHostState(host=h, state=s) for h, s in sorted(self._verdicts.items())],
            events=[e for e in self._events if e.key > events_after],
            protected_vms=protected,
            agent_id=self.agent_id,
        )

    def _protected(self) -> list[pb.FdmProtectedVm]:
        """The configured VMs HA protects: those with files on a datastore."""
        return [v for v in self.config.vms if v.vm.datastore] if self.config else []

    def _event(self, kind: str, message: str, host: str = "", vm: str = "") -> None:
        self._next_key += 1
        self._events.append(
            pb.FdmEvent(
                key=self._next_key, time=self._now(), type=kind, message=message, host=host, vm=vm
            )
        )
        del self._events[:-MAX_EVENTS]
        log.info("%s: %s", self.name, message)

    # -- the loop ----------------------------------------------------------------

    async def _run(self) -> None:
        clock = self.hostd.runtime.clock
        while self.agent is not None:
            if self._now() - self._reached_at >= REACHED_EVERY_S:
                await self._read_reached()
            agent = self.agent
            if agent is None:
                return
            agent.datastores = len(self._reached)
            if self._asked:
                await self._read_asked(agent)
                if self.agent is not agent:
                    return
            self._carry_out(agent.tick(self._now()))
            if self._restarts is not None:
                self._restart_actions(self._restarts.tick(self._now()))
                self._find_missing()
            await clock.sleep(agent.settings.heartbeat_interval_s)

    def _find_missing(self) -> None:
        """A master's watch over the protected list: a protected VM whose host is heard
        and does not run it, nor any other heard host, for VM_MISSING_S was lost (its
        host rebooted before it was found dead, perhaps while another master ruled)
        and is restarted like a failed host's. A VM whose host is silent is left to
        that host's verdict; one powered off by a user leaves the list (vCenter's next
        word, within seconds) before its time is up."""
        now = self._now()
        heard = {h for h, at in self._heard.items() if now - at < MISSING_HEARD_S}
        heard.add(self.name)
        running = set(self.hostd.running_vms())
        for host in heard - {self.name}:
            running.update(self._reports[host].powered_on)
        for host, (read, vms) in self._isolated_runs.items():
            # An isolated host speaks through its poweron file, read lately.
            if self._verdicts.get(host) == fdm.ISOLATED and now - read < ISOLATED_READ_S:
                heard.add(host)
                running.update(vms)
        where = self._runs_on()
        lost: dict[str, set[str]] = {}
        for v in self._protected():
            name = v.vm.name
            if name in running or name in self._failing_over or where.get(name) not in heard:
                self._missing.pop(name, None)
                continue
            since = self._missing.setdefault(name, now)
            if now - since >= VM_MISSING_S:
                lost.setdefault(where[name], set()).add(name)
        for host, names in sorted(lost.items()):
            for name in names:
                del self._missing[name]
            self._event(
                "DasHostFailedEvent",
                f"vSphere HA found {', '.join(sorted(names))} no longer running on {host}",
                host,
            )
            self._fail_over(host, names)

    async def _read_reached(self) -> None:
        self._reached_at = self._now()
        try:
            datastores = await self.hostd.storage.datastores()
        except VimFault:
            return
        self._reached = {d.name for d in datastores if d.accessible}

    def _carry_out(self, actions: list[fdm.Action]) -> None:
        for action in actions:
            if isinstance(action, fdm.Send):
                self.hostd.runtime.spawn(self._send(action.to), "fdm-heartbeat")
            elif isinstance(action, fdm.Ping):
                self.hostd.runtime.spawn(self._ping(action.address), "fdm-ping")
            elif isinstance(action, fdm.Verdict):
                self._verdict(action.host, action.state)
            elif isinstance(action, fdm.ApplyIsolationResponse):
                self.hostd.runtime.spawn(self._isolated(), "fdm-isolation")
            elif isinstance(action, fdm.RoleChanged):
                self._role_changed(action.role)
            elif isinstance(action, fdm.ReadDatastoreHeartbeat):
                self._asked.add(action.host)  # read before each tick until its verdict

    def heartbeat(self) -> pb.FdmHeartbeat:
        agent, kernel = self.agent, self.hostd.kernel
        return pb.FdmHeartbeat(
            sender=self.name,
            role=agent.role if agent else "",
            datastores=len(self._reached),
            master=agent.master if agent else "",
            powered_on=self.hostd.running_vms(),
            agent_id=self.agent_id,
            reached=sorted(self._reached),
            free_memory_mb=max(0, kernel.memory_free_mb),
            free_cpu_mhz=kernel.cpu_unreserved_mhz,
            in_maintenance_mode=kernel.in_maintenance,
        )

    async def _line(self, host: str) -> FdmLine:
        line = self._lines.get(host)
        if line is None:
            peer = self._peers.get(host)
            if peer is None or self._connect is None or self.config is None:
                raise InvalidState(f"{host} is not an agent of this cluster")
            line = await self._connect(
                peer.endpoint, peer.thumbprint, cluster_token(self.config.secret)
            )
            self._lines[host] = line
        return line

    async def _call(self, host: str, method: str, request: ProtoMessage, seconds: float):
        try:
            async with Timeout(self.hostd.runtime.clock, seconds):
                return await (await self._line(host)).call(method, request)
        except (VimFault, TimeoutError, OSError):
            line = self._lines.pop(host, None)
            if line is not None:
                self.hostd.runtime.spawn(line.close(), "fdm-close")
            raise

    async def _send(self, host: str) -> None:
        try:
            await self._call(host, "Heartbeat", self.heartbeat(), CALL_TIMEOUT_S)
        except (VimFault, TimeoutError, OSError):
            pass  # lost: the agents' timeline is made of silences

    async def _ping(self, address: str) -> None:
        try:
            if address == (self.config.isolation_address or GATEWAY):
                answered = self._ping_gateway is not None and await self._ping_gateway(address)
            else:
                await self._call(address, "Ping", pb.FdmPingRequest(), CALL_TIMEOUT_S)
                answered = True
        except (VimFault, TimeoutError, OSError):
            answered = False
        if self.agent is not None:
            self._carry_out(self.agent.ping_answered(self._now(), address, answered))

    # -- datastore heartbeating -------------------------------------------------

    def _heartbeat_datastores(self) -> list[str]:
        """The cluster's heartbeat datastores this host reaches."""
        if self.config is None:
            return []
        return [d for d in self.config.heartbeat_datastores if d in self._reached]

    async def _keep_files(self) -> None:
        clock = self.hostd.runtime.clock
        while self.agent is not None:
            await self._keep_files_once()
            await clock.sleep(KEEP_FILES_EVERY_S)

    async def _keep_files_once(self) -> None:
        """One round of this host's files on the heartbeat datastores it reaches (the
        others' given up), each datastore on its own."""
        files, agent = self._files, self.agent
        if files is None or agent is None:
            return
        datastores = self._heartbeat_datastores()
        for gone in sorted(set(files.kept()) - set(datastores)):
            await files.forget(gone)
        await asyncio.gather(*(self._keep_on(files, d) for d in datastores))

    def _poweron(self) -> tuple[list[str], bool]:
        """What this host's poweron files say: its powered-on VMs, and whether its
        agent is isolated."""
        return self.hostd.running_vms(), self.agent is not None and self.agent.role == fdm.ISOLATED

    async def _keep_on(self, files: HeartbeatFiles, datastore: str) -> None:
        try:
            async with Timeout(self.hostd.runtime.clock, KEEP_FILES_TIMEOUT_S):
                await files.keep(datastore)
        except (VimFault, TimeoutError, OSError) as e:
            log.info("%s: vSphere HA's files on %s: %s", self.name, datastore, e)
        except Exception:  # noqa: BLE001 - a failure on one datastore, not the agent's
            log.exception("%s: vSphere HA's files on %s", self.name, datastore)

    def _sync_watch(self) -> None:
        """A master with heartbeat datastores watches the others' heartbeat files."""
        agent = self.agent
        wanted = (
            agent is not None
            and agent.role == fdm.MASTER
            and self.config is not None
            and bool(self.config.heartbeat_datastores)
        )
        if wanted and self._watcher is None:
            self._watcher = self.hostd.runtime.spawn(self._watch(), "fdm-heartbeat-watch")
        elif not wanted and self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        clock = self.hostd.runtime.clock
        while self.agent is not None:
            peers, datastores = self.agent.peers, self._heartbeat_datastores()
            await asyncio.gather(*(self._beating(d, h) for h in peers for d in datastores))
            await clock.sleep(WATCH_EVERY_S)

    async def _read_asked(self, agent: fdm.FdmAgent) -> None:
        """Reads the datastore heartbeats the agent asked for, just before its tick,
        so that a verdict rests on what the files say now: live if the host beats on
        any heartbeat datastore, isolated if a poweron file there says so."""
        hosts, datastores = sorted(self._asked), self._heartbeat_datastores()
        reads = await asyncio.gather(
            *(self._read_datastore(d, h) for h in hosts for d in datastores)
        )
        if self.agent is not agent:
            return
        now, per_host = self._now(), len(datastores)
        for i, host in enumerate(hosts):
            seen = reads[i * per_host : (i + 1) * per_host]
            live, isolated = any(s[0] for s in seen), any(s[1] for s in seen)
            agent.datastore_heartbeat(now, host, live, isolated)

    async def _read_datastore(self, datastore: str, host: str) -> tuple[bool, bool]:
        """(beating, says isolated) of a host's files on one datastore; an isolated
        host's poweron file also says which VMs it still runs (its isolation
        response may have powered the others off: they are restarted elsewhere)."""
        reader = self._reader
        if reader is None or not await self._beating(datastore, host):
            return False, False
        try:
            async with Timeout(self.hostd.runtime.clock, READ_HEARTBEAT_TIMEOUT_S):
                isolated, vms = await reader.poweron(datastore, host)
        except (VimFault, TimeoutError, OSError) as e:
            log.debug("%s: a poweron file read: %s", self.name, e)
            return True, False
        if isolated:
            self._isolated_runs[host] = (self._now(), vms)
        return True, isolated

    async def _beating(self, datastore: str, host: str) -> bool:
        reader = self._reader
        return reader is not None and await self._bounded(reader.beating(datastore, host))

    async def _bounded(self, read: Awaitable[bool]) -> bool:
        """A read of another host's files; one that fails or takes longer than
        READ_HEARTBEAT_TIMEOUT_S says no."""
        try:
            async with Timeout(self.hostd.runtime.clock, READ_HEARTBEAT_TIMEOUT_S):
                return await read
        except (VimFault, TimeoutError, OSError) as e:
            log.debug("%s: a datastore heartbeat read: %s", self.name, e)
        except Exception:  # noqa: BLE001 - a failed read, not the agent's end
            log.exception("%s: a datastore heartbeat read", self.name)
        return False

    # -- verdicts and failovers --------------------------------------------------

    def _role_changed(self, role: str) -> None:
        if role == fdm.MASTER:
            self._event("DasAgentRunningEvent", f"{self.name} is the vSphere HA master")
            hosts = [
                self._surviving(h, r) for h, r in sorted(self._reports.items()) if h != self.name
            ]
            self._restarts = restart.RestartManager(
                [self._surviving(self.name, self.heartbeat()), *hosts],
                self._now(),
                RESTART_TIMING,
            )
        else:
            self._restarts = None
            self._verdicts.clear()
            self._failing_over.clear()
        self._asked.clear()
        self._sync_watch()
        # An isolation (or its end) is in the poweron files at once.
        self.hostd.runtime.spawn(self._keep_files_once(), "fdm-heartbeat-files")

    def _surviving(self, host: str, report: pb.FdmHeartbeat) -> restart.SurvivingHost:
        return restart.SurvivingHost(
            host,
            frozenset(report.reached),
            report.free_memory_mb,
            report.free_cpu_mhz,
            report.in_maintenance_mode,
        )

    def _verdict(self, host: str, state: str) -> None:
        before = self._verdicts.get(host)
        self._verdicts[host] = state
        if state in (fdm.SLAVE, fdm.DEAD):
            self._asked.discard(host)
        if state == fdm.DEAD and before != fdm.DEAD:
            self._event("DasHostFailedEvent", f"vSphere HA detected that {host} failed", host)
            self._fail_over(host)
        elif state == fdm.ISOLATED and before != fdm.ISOLATED:
            self._event("DasHostIsolatedEvent", f"{host} is network isolated", host)

    def _runs_on(self) -> dict[str, str]:
        """Where each protected VM runs, as the agents last said (vCenter's word for
        one no agent has reported)."""
        where = {v.vm.name: v.host for v in self._protected()}
        for host, report in sorted(self._reports.items()):
            for vm in report.powered_on:
                if vm in where:
                    where[vm] = host
        for vm in self.hostd.running_vms():
            if vm in where:
                where[vm] = self.name
        return where

    def _fail_over(
        self, host: str, names: set[str] | None = None, last_heard: float | None = None
    ) -> None:
        """Restarts the protected VMs that ran on `host` (or those of `names`), but
        those already being restarted; `last_heard`: when the host was last heard
        (its last report here, unless given)."""
        if self._restarts is None:
            return
        where = self._runs_on()
        vms = [
            restart.ProtectedVm(
                v.vm.name,
                v.vm.memory_mb,
                v.vm.resources.cpu.reservation if v.vm.HasField("resources") else 0,
                (restart.Datastore(v.vm.datastore, v.datastore_kind or restart.VMFS),),
                v.restart_priority or restart.MEDIUM,
                has_disks=bool(v.vm.disks),
            )
            for v in self._protected()
            if (where.get(v.vm.name) == host if names is None else v.vm.name in names)
            and v.vm.name not in self._failing_over
        ]
        if last_heard is None:
            last_heard = self._heard.get(host, self._now())
        try:
            actions = self._restarts.begin(self._now(), host, vms, last_heard)
        except InvalidArgument as e:  # its failover is under way: it restarts them
            log.info("%s: no new failover of %s: %s", self.name, host, e)
            return
        self._failing_over.update(vm.name for vm in vms)
        self._restart_actions(actions)

    def _restart_actions(self, actions: list[restart.Action]) -> None:
        for action in actions:
            if isinstance(action, restart.PowerOn):
                self.hostd.runtime.spawn(self._power_on(action), f"fdm-restart:{action.vm}")
            elif isinstance(action, restart.FailoverInitiated):
                self._event(
                    "ClusterFailoverActionInitiatedEvent",
                    f"vSphere HA initiated a failover of {len(action.vms)} VM(s) of "
                    f"{action.dead_host}: {', '.join(action.vms)}",
                    action.dead_host,
                )
            elif isinstance(action, restart.FailoverCompleted):
                self._event(
                    "ClusterFailoverActionCompletedEvent",
                    f"vSphere HA completed the failover of {action.dead_host}: "
                    f"{len(action.restarted)} restarted, {len(action.given_up)} given up",
                    action.dead_host,
                )
            elif isinstance(action, restart.GiveUp):
                self._failing_over.discard(action.vm)
                self._event(
                    "VmFailoverFailed",
                    f"vSphere HA stopped trying to restart {action.vm}: "
                    + "; ".join(action.reasons),
                    vm=action.vm,
                )
            elif isinstance(action, restart.LeftOff):
                log.info("%s: %s left off: %s", self.name, action.vm, action.why)

    async def _power_on(self, action: restart.PowerOn) -> None:
        manager = self._restarts
        config = {v.vm.name: v for v in self._protected()}.get(action.vm)
        if manager is None:
            return
        if config is None:  # vCenter no longer protects it (powered off, destroyed)
            self._tell(manager, "power_on_failed", action, "it is no longer protected")
            return
        request = pb.FdmRestartVmRequest(vm=config.vm)
        try:
            if action.host == self.name:
                await self.restart_here(request)
            else:
                await self._call(action.host, "RestartVm", request, RESTART_CALL_S)
        except (VimFault, TimeoutError, OSError) as e:
            reason = f"{action.host}: {getattr(e, 'name', type(e).__name__)}: {e}"
            self._tell(manager, "power_on_failed", action, reason[:1000])
            return
        self._event(
            "VmRestartedByHAEvent",
            f"vSphere HA restarted {action.vm} on {action.host}",
            action.host,
            action.vm,
        )
        self._failing_over.discard(action.vm)
        self._tell(manager, "power_on_succeeded", action)

    def _tell(self, manager: restart.RestartManager, what: str, action: restart.PowerOn, *why: str):
        """How a power-on ended, to the restart core it came from, if this agent is
        still that master and the core still waits for it (the host may have been
        declared dead meanwhile: its outcome is then moot)."""
        if manager is not self._restarts:
            return
        try:
            actions = getattr(manager, what)(self._now(), action.vm, action.host, *why)
        except InvalidArgument as e:
            log.info("%s: %s on %s: %s", self.name, action.vm, action.host, e)
            return
        self._restart_actions(actions)

    async def _isolated(self) -> None:
        response = self.config.isolation_response if self.config else "none"
        self._event(
            "DasHostIsolatedEvent",
            f"{self.name} is network isolated; isolation response {response or 'none'}",
            self.name,
        )
        if response in ("power-off", "shutdown"):
            for v in self._protected():
                try:
                    running = self.hostd.kernel.vm(v.vm.name).powered_on
                except NotFound:
                    continue
                if running:
                    await self.hostd.power_off(v.vm.name)
                    self._event(
                        "VmPoweredOffEvent",
                        f"vSphere HA powered {v.vm.name} off: {self.name} is isolated",
                        self.name,
                        v.vm.name,
                    )

    # -- what another agent asks ---------------------------------------------------

    def admit(self, token: str | None, entry: Entry) -> None:
        """Only an agent of this cluster (it presents the cluster's secret) gets in."""
        if self.config is None or self.agent is None:
            raise NotAuthenticated(f"vSphere HA is not configured on {self.name}")
        expected = cluster_token(self.config.secret)
        if not hmac.compare_digest((token or "").encode(), expected.encode()):
            raise NotAuthenticated(f"{entry.name}: not an agent of {self.config.cluster}")

    @needs(PUBLIC)
    def Heartbeat(self, r: pb.FdmHeartbeat, _: None) -> pb.FdmAck:
        agent = self.agent
        if agent is None or r.sender not in self._peers or r.sender == self.name:
            raise InvalidArgument(f"{r.sender[:64]!r} is not another agent of this cluster")
        now = self._now()
        before, heard = self._reports.get(r.sender), self._heard.get(r.sender, now)
        self._reports[r.sender] = r
        self._heard[r.sender] = now
        if before is not None and before.agent_id != r.agent_id:
            self._rebooted(r.sender, before, r, heard)
        message = fdm.Message(r.sender, r.role, r.datastores, r.master)
        self._carry_out(agent.heard(now, message))
        if self._restarts is not None and self._verdicts.get(r.sender) != fdm.DEAD:
            self._restart_actions(self._restarts.host_changed(now, self._surviving(r.sender, r)))
        return pb.FdmAck()

    def _rebooted(
        self, host: str, before: pb.FdmHeartbeat, now: pb.FdmHeartbeat, last_heard: float
    ) -> None:
        """A host heard again from a new boot, back before its silence made it dead:
        the protected VMs its last boot ran and this one does not were lost with it,
        and are restarted as a dead host's are."""
        lost = set(before.powered_on) - set(now.powered_on)
        lost &= {v.vm.name for v in self._protected()}
        if not lost or self._restarts is None or self._verdicts.get(host) == fdm.DEAD:
            return
        self._event(
            "DasHostFailedEvent",
            f"vSphere HA detected that {host} failed (it rebooted, losing "
            f"{', '.join(sorted(lost))})",
            host,
        )
        self._fail_over(host, lost, last_heard)

    @needs(PUBLIC)
    def Ping(self, r: pb.FdmPingRequest, _: None) -> pb.FdmAck:
        return pb.FdmAck()

    @needs(PUBLIC)
    async def RestartVm(self, r: pb.FdmRestartVmRequest, _: None) -> pb.FdmAck:
        await self.restart_here(r)
        return pb.FdmAck()

    async def restart_here(self, r: pb.FdmRestartVmRequest) -> None:
        """Registers the VM here if it is not, and powers it on once its disks can be
        opened: FileLocked while the failed host's locks are live, tried again every
        LOCK_POLL_S for LOCK_WAIT_S. A VM that cannot start is not left registered."""
        hostd, vm = self.hostd, vm_from_proto(r.vm)
        try:
            known = hostd.kernel.vm(vm.name)
        except NotFound:
            known = None
        if vm.name in hostd.powering_on:
            raise InvalidPowerState(f"{vm.name} is powering on here already")
        if known is not None and known.powered_on:
            return  # asked again after a lost reply: it runs here
        if known is None:
            hostd.register(vm)
            self.restarting.add(vm.name)  # registered for the restart alone, until it runs
        deadline = self._now() + LOCK_WAIT_S
        try:
            while True:
                try:
                    await hostd.power_on(vm.name)
                    return
                except FileLocked:
                    if self._now() >= deadline:
                        raise
                await hostd.runtime.clock.sleep(LOCK_POLL_S)
        except BaseException:
            if known is None:
                await hostd.forget(vm.name)
            raise
        finally:
            self.restarting.discard(vm.name)


def _check(config: pb.FdmConfig, here: str) -> None:
    validate.text(config.cluster, "cluster", 80)
    if not config.cluster:
        raise InvalidArgument("an HA configuration names its cluster")
    if len(config.secret) != SECRET_BYTES:
        raise InvalidArgument(
            f"the cluster's secret is {SECRET_BYTES} bytes, got {len(config.secret)}"
        )
    names = [p.host for p in config.hosts]
    if len(set(names)) != len(names):
        raise InvalidArgument("a host is named twice in the cluster")
    for p in config.hosts:
        validate.host_name(p.host, "host")
        validate.text(p.endpoint, f"{p.host}'s endpoint", 200)
    if here not in names:
        raise InvalidArgument(f"{here} is not one of the cluster's hosts")
    if config.isolation_response not in ("", *ISOLATION_RESPONSES):
        raise InvalidArgument(
            f"isolation_response is one of {', '.join(ISOLATION_RESPONSES)}, got "
            f"{config.isolation_response[:40]!r}"
        )
    validate.text(config.isolation_address, "isolation_address", 200)
    _check_heartbeat_datastores(config)
    for v in config.vms:
        if v.restart_priority not in ("", *RESTART_PRIORITIES):
            raise InvalidArgument(
                f"{v.vm.name}'s restart priority is one of "
                f"{', '.join(RESTART_PRIORITIES)}, got {v.restart_priority[:40]!r}"
            )
        if v.datastore_kind not in ("", *DATASTORE_KINDS):
            raise InvalidArgument(f"{v.vm.name}'s datastore kind is vmfs or nfs")


def _check_heartbeat_datastores(config: pb.FdmConfig) -> None:
    names = list(config.heartbeat_datastores)
    if len(names) > MAX_HEARTBEAT_DATASTORES:
        raise InvalidArgument(
            f"at most {MAX_HEARTBEAT_DATASTORES} heartbeat datastores "
            f"(das.heartbeatDsPerHost), got {len(names)}"
        )
    if len(set(names)) != len(names):
        raise InvalidArgument("a heartbeat datastore is named twice")
    for name in names:
        validate.text(name, "heartbeat datastore", 80)
        if not name:
            raise InvalidArgument("a heartbeat datastore has a name")
    if names:
        check_paths(config.cluster, [p.host for p in config.hosts])
