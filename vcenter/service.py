"""The vCenter core: the managers of one vCenter instance, and the RPCs that do
work of their own.

`VCenter` owns the inventory, sessions, tasks, events, hosts and VMs of one vCenter
instance, and what it shows and changes of the hosts' VMkernels (statistics, memory
settings, resource pools, standard switches, the physical network, DirectPath
devices). `VCenter.table` (vcenter/api.py) maps every RPC to what answers it: a
manager's method, or one of the RPC-named methods here (sessions, status, host
tasks, waits, the event log), which take the request message and the caller's
`Session` (admitted by `admit`) and return the response or raise a VimFault.
Nothing here knows about gRPC, so tests drive it with the in-process engine and the
server drives it with the Ray engine. Everything it draws, waits for or runs in the
background goes through its `Runtime` (vsim/runtime.py): live under the server,
seeded under the tests and the simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from vsim import __version__, validate
from vsim.dispatch import Entry, Need
from vsim.faults import InvalidArgument, InvalidLogin, NoPermission
from vsim.runtime import Runtime
from vsim.spec import ClusterSpec, DatastoreSpec
from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter import api
from vsim.vcenter.autostart import AutoStart
from vsim.vcenter.datastore import ArrayRef, DatastoreManager
from vsim.vcenter.engine import HostEngine
from vsim.vcenter.evc import ClusterEvc
from vsim.vcenter.events import EventLog
from vsim.vcenter.ha import ClusterHa
from vsim.vcenter.host_system import CONNECTED, HostManager
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.maintenance import HostMaintenance
from vsim.vcenter.network_system import NetworkSystem
from vsim.vcenter.pci_passthru import PciPassthruManager
from vsim.vcenter.performance import Performance
from vsim.vcenter.physical_network import PhysicalNetwork
from vsim.vcenter.resource_pool import HostResourcePools
from vsim.vcenter.secrets import SecretBox
from vsim.vcenter.sessions import ADMINISTRATOR, Session, SessionManager, SessionPolicy
from vsim.vcenter.storage_array import StorageArrayManager
from vsim.vcenter.storage_provider import RemoteStorageProvider, StorageProvider
from vsim.vcenter.tasks import TaskManager
from vsim.vcenter.virtual_machine import VmManager
from vsim.vcenter.virtual_nic import MacPool
from vsim.vcenter.vm_reconfigure import VmReconfigurer
from vsim.vcenter.vmotion import VMotion

ADMIN_ROLE = "Admin"
DEFAULT_WAIT = 60.0
MAX_WAIT = 3600.0
INVENTORY_FILE = "inventory.sqlite"


def instance_uuid(inventory: Inventory, runtime: Runtime) -> str:
    """This vCenter's instance UUID, made (from runtime) on first start."""
    value = inventory.meta("instance_uuid")
    if value is None:
        value = str(runtime.uuid())
        inventory.set_meta("instance_uuid", value)
    return value


class VCenter:
    def __init__(
        self,
        data_dir: Path,
        inventory: Inventory,
        engine: HostEngine,
        runtime: Runtime,
        array: ArrayRef | None = None,
        storage_provider: StorageProvider | None = None,
        session_policy: SessionPolicy | None = None,
    ) -> None:
        """runtime: this vCenter start's own (its clock, ids, secrets, background
        tasks: stopped with it). storage_provider: how vCenter manages the array; by
        default over gRPC with the array's management key, when `array` carries one."""
        self.data_dir = data_dir
        self.inventory = inventory
        self.engine = engine
        self.runtime = runtime
        self.clock = runtime.clock
        self.uuid = instance_uuid(inventory, runtime)
        rng = runtime.random
        self.sessions = SessionManager(inventory, runtime, data_dir, session_policy)
        self.events = EventLog(inventory, self.clock)
        self.tasks = TaskManager(inventory, runtime)
        secrets = SecretBox(data_dir, runtime)
        self.hosts = HostManager(
            inventory,
            engine,
            secrets,
            self.events,
            runtime,
            self.tasks.busy,
        )
        self.macs = MacPool(inventory, rng)
        self.network = NetworkSystem(self.hosts, self.events)
        self.vms = VmManager(
            inventory, self.hosts, self.tasks, self.events, runtime, self.macs, self.network
        )
        self.vmotion = VMotion(inventory, self.hosts, self.tasks, self.events, runtime)
        self.evc = ClusterEvc(inventory, self.hosts, self.events)
        self.ha = ClusterHa(inventory, self.hosts, self.events, secrets, runtime)
        self.vms.admission = self.ha.admit
        self.maintenance = HostMaintenance(
            inventory, self.hosts, self.tasks, self.events, self.vmotion
        )
        self.reconfigure = VmReconfigurer(
            inventory, self.hosts, self.tasks, self.events, self.macs, self.network
        )
        self.physical_network = PhysicalNetwork(inventory, self.hosts, self.events)
        self.performance = Performance(inventory, self.hosts, self.events)
        self.resource_pools = HostResourcePools(inventory, self.hosts, self.tasks, self.events)
        self.pci = PciPassthruManager(self.hosts, self.events)
        if storage_provider is None and array is not None and array.management_key:
            storage_provider = RemoteStorageProvider(
                array.management_endpoint or array.endpoint, array.thumbprint, array.management_key
            )
        self.storage_array = StorageArrayManager(inventory, self.events, storage_provider)
        self.datastores = DatastoreManager(
            inventory, self.hosts, self.tasks, self.events, rng, array, self.storage_array
        )
        self.hosts.prepare_storage = self.datastores.remount
        self.autostart = AutoStart(inventory, self.hosts, self.vms, self.tasks, self.events)
        self._monitor: asyncio.Task | None = None
        self._ha_monitor: asyncio.Task | None = None
        self.table = api.table(self)
        """Every VCenter RPC, as the gRPC server and the in-process client call it."""

    async def start(self, spec: ClusterSpec, boot: bool = True) -> None:
        """Brings the instance up: administrator account, interrupted tasks closed, every
        known host re-attached (booted again if the engine lost it), the spec's hosts
        added on the first start (afterwards the inventory is the truth: a host removed
        stays removed), the VMs a datacenter power-down stopped powered on again, and
        the heartbeat monitor started."""
        self.sessions.ensure_administrator()
        if self.inventory.meta("datacenter") is None:
            self.inventory.set_meta("datacenter", spec.datacenter)
            self.inventory.set_meta("cluster", spec.cluster)
            self.events.post("VcenterStartedEvent", "vCenter started for the first time")
        else:
            self.events.post("VcenterStartedEvent", "vCenter started")
        self.tasks.close_interrupted()
        await self.hosts.attach_all(boot)
        if self.inventory.meta("realised") is None:
            await self.realise(spec)
            self.inventory.set_meta("realised", "1")
        await self.autostart.power_up()
        self._monitor = self.runtime.spawn(self.hosts.monitor(), "host-monitor")
        self._ha_monitor = self.runtime.spawn(self.ha.monitor(), "ha-monitor")

    async def realise(self, spec: ClusterSpec) -> None:
        """Adds the spec's hosts that the inventory lacks, trusting the certificates of
        hosts this vCenter provisions itself."""

        async def add(host_spec) -> None:
            if self.inventory.host(host_spec.name) is not None:
                return
            request = pb.AddHostRequest(
                name=host_spec.name,
                cpu_cores=host_spec.cpu_cores,
                cpu_mhz=host_spec.cpu_mhz,
                memory_mb=host_spec.memory_mb,
                kernel_period_s=host_spec.kernel_period_s,
                cpu_model=host_spec.cpu_model,
                vmotion_encryption=host_spec.vmotion_encryption,
            )
            full, reported = await self.hosts.provision(self.hosts.check_add(request), request)
            request.ssl_thumbprint = reported
            task = self.tasks.start(
                "AddHost_Task",
                full.name,
                ADMINISTRATOR,
                lambda _task: self.hosts.add(request, full, ADMINISTRATOR),
                kind="host",
            )
            await self._succeeded(task, f"adding {full.name}")

        results = await asyncio.gather(*(add(h) for h in spec.hosts), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if self.datastores.array is not None:
            for datastore in spec.datastores:
                await self._create_datastore(datastore)

    async def _create_datastore(self, datastore: DatastoreSpec) -> None:
        if self.inventory.datastore(datastore.name) is not None:
            return
        if datastore.type == "vmfs":
            request = pb.CreateVmfsDatastoreRequest(
                name=datastore.name, lun=datastore.lun, lock_mode=datastore.lock_mode
            )
            task = self.datastores.create_vmfs(request, ADMINISTRATOR)
        else:
            request = pb.CreateNasDatastoreRequest(name=datastore.name, export=datastore.name)
            task = self.datastores.create_nas(request, ADMINISTRATOR)
        await self._succeeded(task, f"creating {datastore.name}")

    async def _succeeded(self, task: common_pb2.Task, doing: str) -> None:
        """Waits for a task of realise(); RuntimeError if it failed."""
        done = await self.tasks.wait(task.id, MAX_WAIT)
        if done.state != common_pb2.TASK_STATE_SUCCESS:
            raise RuntimeError(f"{doing} failed: {done.error.name}: {done.error.message}")

    async def stop(self) -> None:
        """Stops this vCenter; the hosts keep running."""
        monitors = [m for m in (self._monitor, self._ha_monitor) if m is not None]
        for monitor in monitors:
            monitor.cancel()
        # Their host calls end before the links and the inventory close under them.
        await asyncio.gather(*monitors, return_exceptions=True)
        self._monitor = self._ha_monitor = None
        await self.tasks.drain()
        await self.hosts.close()
        if self.storage_array.provider is not None:
            await self.storage_array.provider.close()
        await self.engine.close()
        await self.runtime.stop()  # whatever else it had under way
        self.inventory.close()

    judges = frozenset({Need.PUBLIC, Need.SESSION, Need.ADMINISTRATOR})
    """What the dispatch table (vcenter/api.py) may ask of a caller."""

    def admit(self, token: str | None, entry: Entry) -> Session | None:
        """vCenter's one session check: the caller's session (None for Login),
        NotAuthenticated without a valid one, NoPermission without the Admin role."""
        if entry.need is Need.PUBLIC:
            return None
        session = self.sessions.authenticate(token)
        if entry.need is Need.ADMINISTRATOR:
            account = self.inventory.account(session.user_name)
            if account is None or account[1] != ADMIN_ROLE:
                raise NoPermission(
                    f"{entry.name} is for administrators only; {session.user_name} is not one"
                )
        return session

    # sessions

    async def Login(self, request: pb.LoginRequest, session: None) -> pb.LoginResponse:
        validate.text(request.user_name, "user_name", 256)
        validate.text(request.password, "password", 256)
        try:
            token = await self.sessions.login(request.user_name, request.password)
        except InvalidLogin as fault:
            self.events.post(
                "BadUsernameSessionEvent",
                f"Cannot login user {request.user_name}: {fault.message}",
                user=request.user_name,
            )
            raise
        self.events.post(
            "UserLoginSessionEvent", f"User {request.user_name} logged in", user=request.user_name
        )
        return pb.LoginResponse(session=token, user_name=request.user_name)

    def Logout(self, request: pb.LogoutRequest, session: Session) -> pb.LogoutResponse:
        self.sessions.logout(session)
        self.events.post(
            "UserLogoutSessionEvent", f"User {session.user_name} logged out", user=session.user_name
        )
        return pb.LogoutResponse()

    def GetStatus(self, request: pb.GetStatusRequest, session: Session) -> pb.Status:
        hosts = self.inventory.hosts()
        vms, vms_on = self.inventory.counts()
        return pb.Status(
            instance_uuid=self.uuid,
            datacenter=self.inventory.meta("datacenter") or "",
            cluster=self.inventory.meta("cluster") or "",
            hosts=len(hosts),
            hosts_connected=sum(h.connection_state == CONNECTED for h in hosts),
            vms=vms,
            vms_powered_on=vms_on,
            engine=self.engine.kind,
            clock_speed=self.clock.speed if self.clock.speed != float("inf") else 0.0,
            now=self.clock.now(),
            version=__version__,
            evc_mode=self.hosts.evc_mode(),
        )

    def ConfigureEvc(self, request: pb.ConfigureEvcRequest, session: Session) -> pb.Status:
        self.evc.configure(request, session.user_name)
        return self.GetStatus(pb.GetStatusRequest(), session)

    # hosts

    def AddHost(self, request: pb.AddHostRequest, session: Session) -> common_pb2.Task:
        spec = self.hosts.check_add(request)
        user = session.user_name
        return self.tasks.start(
            "AddHost_Task",
            spec.name,
            user,
            lambda _t: self.hosts.add(request, spec, user),
            kind="host",
        )

    def RemoveHost(self, request: pb.RemoveHostRequest, session: Session) -> common_pb2.Task:
        self.hosts.check_remove(request.name)
        user = session.user_name
        return self.tasks.start(
            "RemoveHost_Task",
            request.name,
            user,
            lambda _t: self.hosts.remove(request.name, user),
            kind="host",
        )

    # datastore locks

    async def BreakStaleLock(self, request: pb.LockRequest, session: Session) -> pb.LockInfo:
        info = await self.datastores.lock(request, "BreakStaleLock")
        if info.broken:
            self.events.post(
                "StaleLockBrokenEvent",
                f"Broke the stale lock on {request.path} on {request.datastore} "
                f"(held by {', '.join(h.host or h.host_uuid for h in info.holders)})",
                user=session.user_name,
            )
        return info

    # tasks and events

    async def WaitForTask(
        self, request: pb.WaitForTaskRequest, session: Session
    ) -> common_pb2.Task:
        timeout = request.timeout_seconds or DEFAULT_WAIT
        if not 0 < timeout <= MAX_WAIT:
            raise InvalidArgument(f"timeout_seconds must be in (0, {MAX_WAIT:.0f}], got {timeout}")
        self.tasks.get(request.id)  # NotFound before waiting
        with self.sessions.in_use(session):
            return await self.tasks.wait(request.id, timeout)

    def ListTasks(self, request: pb.ListTasksRequest, session: Session) -> pb.ListTasksResponse:
        limit = request.limit or 100
        validate.int_range(limit, 1, 10_000, "limit")
        return pb.ListTasksResponse(tasks=self.tasks.recent(limit))

    def ListEvents(self, request: pb.ListEventsRequest, session: Session) -> pb.ListEventsResponse:
        limit = request.limit or 1000
        validate.int_range(limit, 1, 10_000, "limit")
        after = validate.int_range(request.after_key, 0, 2**62, "after_key")
        read = self.events.newest if request.newest else self.events.after
        page = read(after, limit)
        if not page:
            return pb.ListEventsResponse()
        return pb.ListEventsResponse(
            events=page,
            older=self.events.count(after, page[0].key),
            newer=self.events.count(page[-1].key),
        )

    async def WatchEvents(
        self, request: pb.WatchEventsRequest, session: Session
    ) -> AsyncIterator[common_pb2.Event]:
        validate.int_range(request.after_key, 0, 2**62, "after_key")
        with self.sessions.in_use(session):
            async for event in self.events.follow(request.after_key):
                yield event
