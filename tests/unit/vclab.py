"""A vCenter core on the in-process engine, as the unit tests drive it (no Ray, no
sockets): `Lab` boots one on a SimClock and calls it through the SDK client, as a user
would; `host_call` reaches a host's hostd as root through its dispatch table.
Everything a lab draws (ids, secrets, certificates, boot ids) follows from its seed."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import Message

from vsim.clock import Clock, SimClock
from vsim.cluster.array_setup import prepare_array
from vsim.cluster.client import VCenterClient
from vsim.cluster.inprocess import InProcessEngine
from vsim.dispatch import LocalTransport
from vsim.runtime import Runtime
from vsim.spec import ClusterSpec, HostSpec
from vsim.storage.array import StorageArray
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.service import INVENTORY_FILE, VCenter
from vsim.vcenter.sessions import ADMINISTRATOR
from vsim.vcenter.storage_provider import LocalStorageProvider

T0 = 1_700_000_000.0
"""Where every test's SimClock starts."""

SUCCESS = common_pb2.TASK_STATE_SUCCESS
ERROR = common_pb2.TASK_STATE_ERROR
ON = pb.POWER_STATE_POWERED_ON
OFF = pb.POWER_STATE_POWERED_OFF
CONNECTED = pb.CONNECTION_STATE_CONNECTED
NOT_RESPONDING = pb.CONNECTION_STATE_NOT_RESPONDING


class Lab:
    """One vCenter core on the in-process engine, and an administrator's SDK client
    of it (`client`: `VCenterClient.in_process`, through vCenter's dispatch table with
    its session check, message copies and faults, as over gRPC). With `array`, a
    storage array in this process too (in data_dir's sibling `<name>-array`), which
    vCenter manages and the hosts reach, with the spec's LUNs and exports made. Its
    clock is a SimClock (the virtual loop's time) unless a test serving it over real
    sockets gives it a WallClock."""

    def __init__(
        self, data_dir: Path, seed: int = 7, array: bool = False, clock: Clock | None = None
    ) -> None:
        self.data_dir = data_dir
        self.seed = seed
        self.clock = clock if clock is not None else SimClock(T0)
        self.runtime = Runtime.simulated(self.clock, seed, "lab")
        """Everything the lab's vCenter, hosts and array draw follows from it."""
        self.array = (
            StorageArray(data_dir.with_name(f"{data_dir.name}-array"), self.runtime.child("array"))
            if array
            else None
        )
        self.engine = InProcessEngine(self.runtime.child("hosts"), self.array)
        self.vc: VCenter | None = None
        self.client: VCenterClient | None = None
        self.token = ""
        self._starts = 0

    # lifecycle

    async def boot(self, spec: ClusterSpec) -> Lab:
        """Starts a vCenter on data_dir and this lab's engine, and logs in (once: the
        session outlives a restart, as vCenter keeps it; a first call checks it)."""
        if self.array is not None:
            spec = prepare_array(self.array, spec)
        self.spec = spec
        inventory = Inventory(self.data_dir / INVENTORY_FILE)
        self._starts += 1  # each start of vCenter draws on from a runtime of its own
        runtime = self.runtime.child(f"vcenter-{self._starts}")
        storage = {}
        if self.array is not None:
            storage = dict(
                array=ArrayRef("", ""), storage_provider=LocalStorageProvider(self.array)
            )
        self.vc = VCenter(self.data_dir, inventory, self.engine, runtime, **storage)
        await self.vc.start(spec)
        if not self.token:
            self.token = await self.login()
        self.client = VCenterClient.in_process(self.vc.table, self.token)
        await self.client.status()
        return self

    def anonymous(self) -> VCenterClient:
        """A client of this vCenter without a session."""
        return VCenterClient.in_process(self.vc.table)

    async def login(self, user_name: str = ADMINISTRATOR, password: str | None = None) -> str:
        """A new session (the administrator's initial password unless given)."""
        if password is None:
            password = self.vc.sessions.initial_password()
        return await self.anonymous().login(user_name, password)

    async def stop(self) -> None:
        if self.vc is not None:
            vc, self.vc = self.vc, None
            await vc.stop()

    async def close(self) -> None:
        """Stops vCenter, then the hosts and the array (a restart keeps them)."""
        await self.stop()
        for name in list(self.engine.hosts()):
            self.engine.crash(name)
        if self.array is not None:
            self.array.close()

    async def restart(self) -> None:
        """Stops this vCenter and starts a new one on the same data dir and engine."""
        await self.stop()
        await self.boot(self.spec)

    # calls

    async def wait(self, task: common_pb2.Task) -> common_pb2.Task:
        return await self.client.wait(task, timeout=10)

    async def create(
        self, name: str, cpus: int = 1, memory_mb: int = 1024, host: str = ""
    ) -> common_pb2.Task:
        return await self.wait(await self.client.create_vm(name, cpus, memory_mb, host))

    async def power_on(self, name: str) -> common_pb2.Task:
        return await self.wait(await self.client.power_on(name))

    async def power_off(self, name: str) -> common_pb2.Task:
        return await self.wait(await self.client.power_off(name))

    async def destroy(self, name: str) -> common_pb2.Task:
        return await self.wait(await self.client.destroy_vm(name))

    async def add_host(self, name: str, thumbprint: str = "") -> common_pb2.Task:
        return await self.wait(await self.client.add_host(name, thumbprint))

    async def remove_host(self, name: str) -> common_pb2.Task:
        return await self.wait(await self.client.remove_host(name))

    # views

    async def vms(self) -> dict[str, pb.Vm]:
        """ListVms: running VMs with disks carry their guests' acknowledged writes."""
        return {vm.name: vm for vm in await self.client.vms()}

    async def hosts(self) -> dict[str, pb.Host]:
        return {h.name: h for h in await self.client.hosts()}

    async def tasks(self) -> list[common_pb2.Task]:
        return await self.client.tasks(limit=10_000)

    async def events(self, after: int = 0) -> list[common_pb2.Event]:
        return await self.client.events(after, limit=10_000)

    async def last_event_key(self) -> int:
        """The newest event's key (0 before the first)."""
        page = await self.client.event_page(limit=1, newest=True)
        return page.events[-1].key if page.events else 0

    async def snapshot(self) -> tuple:
        """What a rejected request must leave unchanged."""
        host_vms = {
            name: [(vm.name, vm.powered_on) for vm in hostd.kernel.vms()]
            for name, hostd in self.engine.hosts().items()
        }
        return (
            await self.client.vms(),
            len(await self.tasks()),
            len(await self.events()),
            host_vms,
        )

    def host_power_states(self) -> dict[str, int]:
        """Every VM's power state as its host knows it."""
        return {
            vm.name: ON if vm.powered_on else OFF
            for hostd in self.engine.hosts().values()
            for vm in hostd.kernel.vms()
        }

    def drop_connection(self, name: str) -> None:
        """Breaks vCenter's open line to a host, as a crashed host's TCP connection would."""
        self.engine.drop_connections(name)


async def host_call(engine: InProcessEngine, host: str, method: str, request: Message) -> Message:
    """One call to a running host's hostd as root (what vCenter does as vpxuser),
    through its dispatch table: the session check and message copies a remote caller
    gets, faults as they arrive over the wire."""
    line = LocalTransport(engine.running(host).table)
    login = hpb.HostLoginRequest(user_name="root", password=engine.spec(host).root_password)
    session = (await line.call("Login", login, None)).session
    return await line.call(method, request, session)


def running_on(engine: InProcessEngine, vm: str) -> list[str]:
    """The hosts whose kernel runs vm now (a correct cluster has at most one)."""
    return [
        host
        for host, hostd in sorted(engine.hosts().items())
        for config in hostd.kernel.vms()
        if config.name == vm and config.powered_on
    ]


def small_cluster(hosts: int = 2, memory_mb: int = 8192, cpu_cores: int = 4) -> ClusterSpec:
    return ClusterSpec(
        hosts=tuple(
            HostSpec(f"esxi-{i:02d}", cpu_cores=cpu_cores, memory_mb=memory_mb)
            for i in range(1, hosts + 1)
        )
    )
