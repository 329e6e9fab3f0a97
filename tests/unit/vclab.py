"""A vCenter core on the in-process engine, as the unit tests drive it (no Ray, no
sockets): `Lab` boots one on a SimClock and wraps the RPC-named calls."""

from __future__ import annotations

import random
from pathlib import Path

from vsim.clock import SimClock
from vsim.cluster.inprocess import InProcessEngine
from vsim.spec import ClusterSpec, HostSpec
from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.service import INVENTORY_FILE, VCenter
from vsim.vcenter.sessions import ADMINISTRATOR, Session

T0 = 1_700_000_000.0
"""Where every test's SimClock starts."""

SUCCESS = common_pb2.TASK_STATE_SUCCESS
ERROR = common_pb2.TASK_STATE_ERROR
ON = pb.POWER_STATE_POWERED_ON
OFF = pb.POWER_STATE_POWERED_OFF
CONNECTED = pb.CONNECTION_STATE_CONNECTED
NOT_RESPONDING = pb.CONNECTION_STATE_NOT_RESPONDING


class Rpc:
    """vCenter's RPC handlers by name (its dispatch table's), called with a `Session`
    as the core's methods once were: no session check and no copies. How these tests
    reach the RPCs until they move to `VCenterClient.in_process`."""

    def __init__(self, vc: VCenter) -> None:
        self._entries = vc.table.entries

    def __getattr__(self, method: str):
        return self._entries[method].handler


def rpc(vc: VCenter) -> Rpc:
    return Rpc(vc)


class Lab:
    """One vCenter core on the in-process engine, with an administrator session."""

    def __init__(self, data_dir: Path, seed: int = 7) -> None:
        self.data_dir = data_dir
        self.seed = seed
        self.clock = SimClock(T0)
        self.engine = InProcessEngine(self.clock)
        self.vc: VCenter | None = None
        self.session: Session | None = None
        self.token = ""

    # lifecycle

    async def boot(self, spec: ClusterSpec) -> Lab:
        """Starts a vCenter on data_dir and this lab's engine, and logs in."""
        self.spec = spec
        inventory = Inventory(self.data_dir / INVENTORY_FILE)
        self.vc = VCenter(
            self.data_dir, inventory, self.engine, self.clock, random.Random(self.seed)
        )
        await self.vc.start(spec)
        if not self.token:
            self.token = await self.login()
        self.session = self.vc.table.authenticate(self.token, "ListVms")
        return self

    async def login(self) -> str:
        password = self.vc.sessions.initial_password()
        reply = await self.vc.Login(
            pb.LoginRequest(user_name=ADMINISTRATOR, password=password), None
        )
        return reply.session

    async def stop(self) -> None:
        if self.vc is not None:
            vc, self.vc = self.vc, None
            await vc.stop()

    async def restart(self) -> None:
        """Stops this vCenter and starts a new one on the same data dir and engine."""
        await self.stop()
        await self.boot(self.spec)

    # calls

    async def wait(self, task: common_pb2.Task) -> common_pb2.Task:
        return await self.vc.WaitForTask(
            pb.WaitForTaskRequest(id=task.id, timeout_seconds=10), self.session
        )

    async def create(
        self, name: str, cpus: int = 1, memory_mb: int = 1024, host: str = ""
    ) -> common_pb2.Task:
        request = pb.CreateVmRequest(name=name, cpus=cpus, memory_mb=memory_mb, host=host)
        return await self.wait(rpc(self.vc).CreateVm(request, self.session))

    async def power_on(self, name: str) -> common_pb2.Task:
        return await self.wait(rpc(self.vc).PowerOnVm(pb.VmRequest(name=name), self.session))

    async def power_off(self, name: str) -> common_pb2.Task:
        return await self.wait(rpc(self.vc).PowerOffVm(pb.VmRequest(name=name), self.session))

    async def destroy(self, name: str) -> common_pb2.Task:
        return await self.wait(rpc(self.vc).DestroyVm(pb.VmRequest(name=name), self.session))

    async def add_host(self, name: str, thumbprint: str = "") -> common_pb2.Task:
        request = pb.AddHostRequest(name=name, ssl_thumbprint=thumbprint)
        return await self.wait(self.vc.AddHost(request, self.session))

    async def remove_host(self, name: str) -> common_pb2.Task:
        return await self.wait(self.vc.RemoveHost(pb.RemoveHostRequest(name=name), self.session))

    # views

    def vms(self) -> dict[str, pb.Vm]:
        """The inventory's VMs (ListVms also asks the hosts for their guests' writes)."""
        return {vm.name: vm for vm in self.vc.vms.list("")}

    def hosts(self) -> dict[str, pb.Host]:
        return {
            h.name: h for h in rpc(self.vc).ListHosts(pb.ListHostsRequest(), self.session).hosts
        }

    def tasks(self) -> list[common_pb2.Task]:
        return list(self.vc.ListTasks(pb.ListTasksRequest(limit=10_000), self.session).tasks)

    def events(self, after: int = 0) -> list[common_pb2.Event]:
        request = pb.ListEventsRequest(after_key=after, limit=10_000)
        return list(self.vc.ListEvents(request, self.session).events)

    def last_event_key(self) -> int:
        return self.vc.inventory.last_event_key()

    def snapshot(self) -> tuple:
        """What a rejected request must leave unchanged."""
        host_vms = {
            name: [(vm.name, vm.powered_on) for vm in hostd.kernel.vms()]
            for name, hostd in self.engine.hosts().items()
        }
        return (
            self.vc.vms.list(""),
            len(self.tasks()),
            len(self.events()),
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
        link = self.vc.hosts._links[name]
        link.port._hostd = None


def small_cluster(hosts: int = 2, memory_mb: int = 8192, cpu_cores: int = 4) -> ClusterSpec:
    return ClusterSpec(
        hosts=tuple(
            HostSpec(f"esxi-{i:02d}", cpu_cores=cpu_cores, memory_mb=memory_mb)
            for i in range(1, hosts + 1)
        )
    )
