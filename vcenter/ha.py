"""vSphere HA, vCenter's part: configure the agents, show them, keep up with them.

The FDM agents on the hosts decide and act (host/fdm/): vCenter only tells each
connected host the cluster (every host with its management address and certificate,
a secret the agents present to each other), the protected VMs (powered on, with
files on a datastore) with their restart priorities, and the isolation settings, and
tells it again whenever that changes (checked every HA_SYNC_INTERVAL). It collects
what the agents did (DasHostFailedEvent, VmRestartedByHAEvent, ...) into its own
event log, with the times they happened, also what happened while vCenter was down,
and follows the VMs the agents restarted to their new hosts.

Admission control ("host failures cluster tolerates", as a share of the cluster's
resources): the failover capacity required is the share of the cluster's CPU and
memory the largest `host_failures` hosts hold; a power-on that would leave less
unreserved (VM reservations, at least vSphere's 32 MHz a VM) fails with
InsufficientFailoverResourcesFault.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import sqlite3

from vsim import validate
from vsim.faults import InsufficientFailoverResourcesFault, InvalidArgument, VimFault
from vsim.ha_settings import DEFAULT_RESTART_PRIORITY, ISOLATION_RESPONSES, RESTART_PRIORITIES
from vsim.runtime import Runtime
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import CONNECTED, HostManager, host_vm, inventory_vm
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.secrets import SecretBox

log = logging.getLogger("vsim.vcenter.ha")

HA_META = "ha"
SECRET_META = "ha_secret"
EVENTS_META = "ha_events:"
"""+ host: the agent id and the last event key collected from it."""
HA_SYNC_INTERVAL = 5.0
"""Seconds between vCenter's rounds of configuring the agents and collecting events."""
HEARTBEAT_DATASTORES = 2
"""das.heartbeatDsPerHost: how many heartbeat datastores vCenter picks."""
MIN_VM_CPU_MHZ = 32
"""The CPU a powered-on VM counts for in admission control without a reservation."""
ON = pb.POWER_STATE_POWERED_ON


class ClusterHa:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        events: EventLog,
        secrets: SecretBox,
        runtime: Runtime,
    ) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._events = events
        self._secrets = secrets
        self._runtime = runtime
        self._opened_secret: bytes | None = None
        self._pushed: dict[str, bytes] = {}
        """Host -> the configuration it was last given (serialized)."""

    # settings

    def config(self) -> pb.HaConfig:
        stored = self._inventory.meta(HA_META)
        return pb.HaConfig.FromString(base64.b64decode(stored)) if stored else pb.HaConfig()

    def enabled(self) -> bool:
        return self.config().enabled

    async def configure(self, request: pb.ConfigureHaRequest, user: str) -> pb.HaStatus:
        config = request.config
        hosts = len(self._inventory.hosts())
        if config.enabled:
            validate.int_range(config.host_failures, 0, max(0, hosts - 1), "host_failures")
            if config.isolation_response not in ("", *ISOLATION_RESPONSES):
                raise InvalidArgument(
                    f"isolation_response is one of {', '.join(ISOLATION_RESPONSES)}, got "
                    f"{config.isolation_response[:40]!r}"
                )
            validate.text(config.isolation_address, "isolation_address", 200)
            known = {d.name for d in self._inventory.datastores()}
            for name in config.heartbeat_datastores:
                if name not in known:
                    raise InvalidArgument(f"heartbeat datastore {name[:80]!r} is not a datastore")
        was = self.enabled()
        with self._inventory.transaction():
            if config.enabled and not self._inventory.meta(SECRET_META):
                secret = base64.b64encode(self._runtime.secret_bytes(32)).decode()
                self._inventory.set_meta(
                    SECRET_META, base64.b64encode(self._secrets.seal(secret)).decode()
                )
            self._inventory.set_meta(HA_META, base64.b64encode(config.SerializeToString()).decode())
            if config.enabled != was:
                word = "enabled" if config.enabled else "disabled"
                self._events.post(
                    "DasEnabledEvent" if config.enabled else "DasDisabledEvent",
                    f"vSphere HA {word} on the cluster",
                    user=user,
                )
        await self.sync()
        return await self.status()

    def set_vm(self, request: pb.SetVmHaRequest) -> pb.Vm:
        vm = self._inventory.require_vm(request.name)
        if request.restart_priority not in RESTART_PRIORITIES:
            raise InvalidArgument(
                f"restart_priority is one of {', '.join(RESTART_PRIORITIES)}, got "
                f"{request.restart_priority[:40]!r}"
            )
        vm.ha_restart_priority = request.restart_priority
        self._inventory.set_vm_config(vm)
        return self._inventory.require_vm(request.name)

    def _secret(self) -> bytes:
        """The cluster's secret, opened once (it never changes once made)."""
        if self._opened_secret is None:
            sealed = base64.b64decode(self._inventory.meta(SECRET_META))
            self._opened_secret = base64.b64decode(self._secrets.open(sealed))
        return self._opened_secret

    # the agents

    def fdm_request(self) -> hpb.ConfigureFdmRequest:
        """What every agent is told now."""
        config = self.config()
        if not config.enabled:
            return hpb.ConfigureFdmRequest(enabled=False)
        kinds = {d.name: d.type for d in self._inventory.datastores()}
        hosts = [
            hpb.FdmPeer(host=h.name, endpoint=h.endpoint, thumbprint=h.thumbprint)
            for h in self._inventory.hosts()
        ]
        vms = [
            hpb.FdmProtectedVm(
                vm=host_vm(vm),
                restart_priority=vm.ha_restart_priority or DEFAULT_RESTART_PRIORITY,
                host=vm.host,
                datastore_kind=kinds.get(vm.datastore, "vmfs"),
            )
            for vm in self._inventory.vms()
            if wanted_on(vm) and vm.datastore
        ]
        return hpb.ConfigureFdmRequest(
            enabled=True,
            config=hpb.FdmConfig(
                cluster=self._inventory.meta("cluster") or "cluster",
                secret=self._secret(),
                hosts=hosts,
                isolation_address=config.isolation_address,
                isolation_response=config.isolation_response,
                vms=vms,
                heartbeat_datastores=self.heartbeat_datastores(config),
            ),
        )

    def heartbeat_datastores(self, config: pb.HaConfig) -> list[str]:
        """The datastores the agents heartbeat on: the configured ones, else vCenter's
        pick of HEARTBEAT_DATASTORES (VMFS first, as vSphere prefers, then by name)."""
        if config.heartbeat_datastores:
            return list(config.heartbeat_datastores)
        ranked = sorted(self._inventory.datastores(), key=lambda d: (d.type != "vmfs", d.name))
        return [d.name for d in ranked[:HEARTBEAT_DATASTORES]]

    async def sync(self) -> None:
        """Tells each connected host's agent what changed since it was last told (a
        host reconnected is told again)."""
        request = self.fdm_request()
        body = request.SerializeToString(deterministic=True)
        connected = set(self._hosts.connected_names())
        for host in list(self._pushed):
            if host not in connected:
                del self._pushed[host]  # told again once it is back

        async def tell(host: str) -> None:
            if self._pushed.get(host) == body:
                return
            try:
                await self._hosts.call(host, "ConfigureFdm", request)
            except VimFault as fault:
                log.warning("cannot configure vSphere HA on %s: %s", host, fault)
                return
            self._pushed[host] = body

        await asyncio.gather(*(tell(h) for h in sorted(connected)))

    async def collect(self) -> None:
        """The agents' events since last collected, into vCenter's log with their own
        times; a VM an agent restarted is followed to its new host."""
        for host in sorted(self._hosts.connected_names()):
            seen = self._inventory.meta(EVENTS_META + host) or ":0"
            agent, _, key = seen.rpartition(":")
            try:
                state = await self._hosts.call(
                    host, "GetFdmState", hpb.GetFdmStateRequest(events_after=int(key))
                )
            except VimFault:
                continue
            if state.agent_id != agent:  # another agent (the host rebooted): from its start
                state = await self._hosts.call(
                    host, "GetFdmState", hpb.GetFdmStateRequest(events_after=0)
                )
            last = 0 if state.agent_id != agent else int(key)
            moved: list[tuple[str, str]] = []
            host_of: dict[str, str] = {}
            with self._inventory.transaction():
                for event in state.events:
                    moved += self._record(event)
                    if event.type == "VmRestartedByHAEvent":
                        host_of[event.vm] = event.host
                    last = max(last, event.key)
                self._inventory.set_meta(EVENTS_META + host, f"{state.agent_id}:{last}")
            for vm, old in moved:
                if old:
                    await self._forget_on(old, vm)
                else:
                    await self._discover(vm, host_of[vm])

    def _record(self, event: hpb.FdmEvent) -> list[tuple[str, str]]:
        """Posts an agent's event; follows a restarted VM. Returns (VM, the host it
        left) for each VM followed."""
        self._events.post(event.type, event.message, host=event.host, vm=event.vm, at=event.time)
        if event.type != "VmRestartedByHAEvent":
            return []
        vm = self._inventory.vm(event.vm)
        if self._inventory.host(event.host) is None:
            return []
        if vm is None:  # it left the inventory with its failed host (removed)
            return [(event.vm, "")]
        self._inventory.set_power_state(event.vm, ON)
        if vm.host == event.host:  # restarted where it was (its host came back first)
            return []
        self._inventory.set_vm_host(event.vm, event.host)
        return [(event.vm, vm.host)]

    async def _discover(self, name: str, host: str) -> None:
        """A VM an agent restarted that vCenter no longer knows (its failed host was
        removed, and its VMs with it): taken into the inventory from the host that
        runs it, as vCenter discovers a VM registered on one of its hosts."""
        try:
            reply = await self._hosts.call(host, "ListVms", hpb.ListHostVmsRequest())
        except VimFault as fault:
            log.warning("cannot discover %s on %s: %s", name, host, fault)
            return
        found = next((v for v in reply.vms if v.name == name and v.powered_on), None)
        if found is None or self._inventory.vm(name) is not None:
            return
        vm = inventory_vm(found, host)
        vm.ha_protected = True
        try:
            with self._inventory.transaction():
                self._inventory.add_vm(vm)
                self._events.post(
                    "VmDiscoveredEvent",
                    f"Discovered {name} on {host} (restarted there by vSphere HA)",
                    host=host,
                    vm=name,
                )
        except sqlite3.IntegrityError as e:  # a MAC of its is another VM's now
            log.warning("cannot take %s on %s into the inventory: %s", name, host, e)

    async def _forget_on(self, host: str, vm: str) -> None:
        """The failed host, if it is back, still has the VM registered (powered off,
        its memory lost with it): unregistered there, its files staying."""
        if host not in self._hosts.connected_names():
            return  # its reconcile, when it reconnects, takes the stray off
        try:
            await self._hosts.call(host, "UnregisterVm", hpb.HostVmRequest(name=vm))
        except VimFault as fault:  # not there, or running there: its reconcile decides
            log.warning("%s keeps its %s: %s", host, vm, fault)

    async def monitor(self) -> None:
        """Configures and collects every HA_SYNC_INTERVAL, forever."""
        while True:
            await self._runtime.clock.sleep(HA_SYNC_INTERVAL)
            try:
                if self.enabled() or self._pushed:
                    await self.sync()
                    await self.collect()
            except Exception:  # noqa: BLE001 - the monitor must outlive one bad round
                log.exception("vSphere HA round failed")

    # what a user sees

    async def status(self) -> pb.HaStatus:
        config = self.config()
        states: dict[str, hpb.FdmState] = {}
        for host in sorted(self._hosts.connected_names()):
            try:
                states[host] = await self._hosts.call(
                    host, "GetFdmState", hpb.GetFdmStateRequest(events_after=2**62)
                )
            except VimFault:
                continue
        master = next((h for h, s in states.items() if s.role == "master"), "")
        verdicts = {v.host: v.state for v in states[master].hosts} if master else {}
        hosts = []
        for record in self._inventory.hosts():
            state = states.get(record.name)
            if state is not None and state.enabled:
                word = state.role
            else:
                word = verdicts.get(record.name, "")
            hosts.append(pb.HaHostStatus(host=record.name, state=word))
        vms = [
            pb.HaVmStatus(
                name=vm.name,
                host=vm.host,
                restart_priority=vm.ha_restart_priority or DEFAULT_RESTART_PRIORITY,
                protected=config.enabled
                and wanted_on(vm)
                and bool(vm.datastore)
                and vm.ha_restart_priority != "disabled",
            )
            for vm in self._inventory.vms()
        ]
        capacity = self._capacity()
        if config.enabled and not config.heartbeat_datastores:
            config.heartbeat_datastores.extend(self.heartbeat_datastores(config))
        return pb.HaStatus(
            config=config,
            master=master,
            hosts=hosts,
            vms=vms,
            cpu_failover_pct=capacity[0],
            memory_failover_pct=capacity[1],
            required_cpu_failover_pct=capacity[2],
            required_memory_failover_pct=capacity[3],
        )

    # admission control

    def _capacity(self, adding: pb.Vm | None = None) -> tuple[float, float, float, float]:
        """(CPU %, memory % unreserved, CPU %, memory % required), with `adding`
        powered on too."""
        specs = [
            self._hosts.public_spec(h.name)
            for h in self._inventory.hosts()
            if h.connection_state == CONNECTED and not h.in_maintenance
        ]
        cpus = sorted((s.cpu_cores * s.cpu_mhz for s in specs), reverse=True)
        memories = sorted((s.memory_mb for s in specs), reverse=True)
        total_cpu, total_memory = sum(cpus), sum(memories)
        if not total_cpu or not total_memory:
            return (0.0, 0.0, 0.0, 0.0)
        failures = self.config().host_failures
        running = [vm for vm in self._inventory.vms() if vm.power_state == ON]
        if adding is not None:
            running.append(adding)
        cpu = sum(max(MIN_VM_CPU_MHZ, vm.resources.cpu.reservation) for vm in running)
        memory = sum(vm.resources.memory.reservation for vm in running)
        return (
            100 * (total_cpu - cpu) / total_cpu,
            100 * (total_memory - memory) / total_memory,
            100 * sum(cpus[:failures]) / total_cpu,
            100 * sum(memories[:failures]) / total_memory,
        )

    def admit(self, vm: pb.Vm) -> None:
        """InsufficientFailoverResourcesFault if powering vm on would leave the cluster
        less failover capacity than its host failures tolerated require."""
        config = self.config()
        if not config.enabled or config.host_failures == 0:
            return
        cpu, memory, need_cpu, need_memory = self._capacity(vm)
        if cpu < need_cpu or memory < need_memory:
            raise InsufficientFailoverResourcesFault(
                f"powering {vm.name} on would leave {cpu:.1f}% of the cluster's CPU and "
                f"{memory:.1f}% of its memory unreserved; tolerating {config.host_failures} "
                f"host failure(s) needs {need_cpu:.1f}% and {need_memory:.1f}%: lower its "
                "reservations, add a host, or tolerate fewer failures"
            )


def wanted_on(vm: pb.Vm) -> bool:
    """Whether HA keeps the VM running: powered on, or powered on by a user and not
    powered off by one since (its host lost it)."""
    return vm.power_state == ON or vm.ha_protected
