"""What the users of a simulated datacenter do, drawn from the run's seed, through
vCenter's public API only (the SDK client over vCenter's dispatch table, as over
gRPC): create, power on and off, clone, reconfigure and destroy VMs with disks on
VMFS (ats+scsi and ats-only) and NFS, their guests writing; datastores created;
hosts removed and added back; VMs migrated (vMotion, or cold); hosts put in
maintenance mode (evacuated by vMotion) and taken out; stale locks broken by hand;
and bad requests. A few
users work at once, on the same VMs, so operations race.

Each operation and its outcome go into the history. A fault in reply is an outcome
like any other (hosts die, vCenter restarts); a SystemError is a component that
crashed, and is reported to the no-crash checker.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable

from vsim.cluster.simulator.checkers.no_crash import NoCrashChecker
from vsim.cluster.simulator.datacenter import DATASTORES, SimulatedDatacenter
from vsim.cluster.simulator.history import History
from vsim.faults import SystemError_, VimFault
from vsim.runtime import Timeout
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb

USERS = 3
TASK_WAIT = 300.0
"""Simulated seconds a user waits for a task before giving up on it (it goes on)."""
CALL_WAIT = 400.0
"""Simulated seconds any one call may take before the user stops waiting."""
LIGHT_GUEST = kpb.GuestMemoryWorkload(
    working_set_pct=10, boot_touch_pct=10, dirty_rate=8, touch_rate=32
)
"""A mostly idle server's memory use: the disk writes are what the checkers watch."""
WEIGHTS = {
    "create": 22,
    "power-on": 22,
    "power-off": 12,
    "destroy": 6,
    "clone": 5,
    "migrate": 8,
    "reconfigure": 6,
    "host-cycle": 2,
    "maintenance": 2,
    "datastore": 2,
    "break-lock": 3,
    "bad-input": 6,
    "look": 8,
}


class Workload:
    def __init__(
        self,
        dc: SimulatedDatacenter,
        history: History,
        rng: random.Random,
        crashes: NoCrashChecker,
        vms: int,
    ) -> None:
        self.dc = dc
        self.history = history
        self.rng = rng
        self.crashes = crashes
        self.initial_vms = vms
        self.vms: list[str] = []
        self.datastores = [d.name for d in DATASTORES]
        self.operations: Counter[str] = Counter()
        self._next_vm = 0
        self._next_datastore = 0
        self._removed: set[str] = set()

    # one call, as a user makes it

    async def _call(self, what: str, call: Callable[..., Awaitable]) -> object | None:
        """Runs one API call (given the client) with the user's patience; records its
        outcome. None when it failed or vCenter did not answer."""
        client = self.dc.client()
        while client is None:  # vCenter is down: the user tries again later
            await self.dc.clock.sleep(5)
            client = self.dc.client()
        self.operations[what.split()[0]] += 1
        try:
            async with Timeout(self.dc.clock, CALL_WAIT):
                result = await call(client)
        except SystemError_ as fault:
            self.crashes.system_error(what, str(fault))
            return None
        except VimFault as fault:
            self.history.record("call", f"{what} -> {fault.name}")
            return None
        except TimeoutError:
            self.history.record("call", f"{what} -> no answer")
            return None
        if isinstance(result, common_pb2.Task):
            state = common_pb2.TaskState.Name(result.state).removeprefix("TASK_STATE_")
            fault = f" {result.error.name}" if result.error.name else ""
            if result.error.name == "SystemError":
                self.crashes.system_error(what, result.error.message)
            self.history.record("task", f"{result.id} {what} -> {state}{fault}")
        return result

    async def _task(self, what: str, start: Callable[..., Awaitable]) -> bool:
        async def run(client) -> common_pb2.Task:
            return await client.wait(await start(client), timeout=TASK_WAIT)

        task = await self._call(what, run)
        return isinstance(task, common_pb2.Task) and task.state == common_pb2.TASK_STATE_SUCCESS

    # operations

    def _vm(self) -> str | None:
        return self.rng.choice(self.vms) if self.vms else None

    def _host(self) -> str:
        return self.rng.choice(self.dc.host_names)

    async def create(self) -> None:
        self._next_vm += 1
        name = f"vm-{self._next_vm:03d}"
        datastore = self.rng.choice(self.datastores + [""])
        host = self.rng.choice(self.dc.host_names + [""])
        iops = self.rng.choice((0, 1, 1, 2)) if datastore else 0
        resources = kpb.VmResources(memory_workload=LIGHT_GUEST)
        ok = await self._task(
            f"create {name} on {host or 'any'} {datastore or 'diskless'}",
            lambda c: c.create_vm(
                name,
                memory_mb=self.rng.choice((32, 64)),
                host=host,
                datastore=datastore,
                disk_mb=4 if datastore else 0,
                guest_write_iops=iops,
                resources=resources,
            ),
        )
        if ok:
            self.vms.append(name)

    async def power_on(self) -> None:
        if vm := self._vm():
            await self._task(f"power-on {vm}", lambda c: c.power_on(vm))

    async def power_off(self) -> None:
        if vm := self._vm():
            await self._task(f"power-off {vm}", lambda c: c.power_off(vm))

    async def destroy(self) -> None:
        """Most people power a VM off before deleting it; some forget (and are told)."""
        if vm := self._vm():
            if self.rng.random() < 0.8:
                await self._task(f"power-off {vm}", lambda c: c.power_off(vm))
            if await self._task(f"destroy {vm}", lambda c: c.destroy_vm(vm)):
                if vm in self.vms:
                    self.vms.remove(vm)

    async def clone(self) -> None:
        if source := self._vm():
            self._next_vm += 1
            name = f"vm-{self._next_vm:03d}"
            if await self._task(
                f"clone {source} as {name}", lambda c: c.linked_clone(source, name, self._host())
            ):
                self.vms.append(name)

    async def migrate(self) -> None:
        """vMotion of a running VM (or a cold migration of a powered-off one) to
        another host; users may race it with power operations on the same VM."""
        if vm := self._vm():
            host = self._host()
            await self._task(f"migrate {vm} to {host}", lambda c: c.migrate_vm(vm, host))

    async def reconfigure(self) -> None:
        if vm := self._vm():
            shares = self.rng.choice((500, 1000, 2000, 4000))
            resources = kpb.VmResources(
                cpu=kpb.ResourceAllocation(shares=shares), memory_workload=LIGHT_GUEST
            )
            await self._task(
                f"reconfigure {vm} cpu shares {shares}",
                lambda c: c.reconfigure_vm_resources(vm, resources),
            )

    async def host_cycle(self) -> None:
        """A host removed, and added back a little later with its thumbprint."""
        host = self._host()
        if host in self._removed:
            return
        if not await self._task(f"remove-host {host}", lambda c: c.remove_host(host)):
            return
        self._removed.add(host)
        await self.dc.clock.sleep(self.rng.uniform(5, 60))
        for _ in range(10):
            if await self._task(f"add-host {host}", lambda c: c.add_host(host)):
                break
            await self.dc.clock.sleep(30)
        self._removed.discard(host)

    async def maintenance(self) -> None:
        """A host put in maintenance mode, most often evacuated (else refused while it
        runs VMs), and taken out again a while later."""
        host = self._host()
        evacuate = self.rng.random() < 0.8
        what = f"enter-maintenance {host}{' evacuate' if evacuate else ''}"
        if not await self._task(what, lambda c: c.enter_maintenance_mode(host, evacuate)):
            return
        await self.dc.clock.sleep(self.rng.uniform(5, 90))
        for _ in range(10):
            if await self._task(
                f"exit-maintenance {host}", lambda c: c.exit_maintenance_mode(host)
            ):
                break
            await self.dc.clock.sleep(30)

    async def datastore(self) -> None:
        if self._next_datastore >= 2:
            return
        self._next_datastore += 1
        name = f"extra-{self._next_datastore:02d}"
        if self.rng.random() < 0.5:
            mode = self.rng.choice(("ats+scsi", "ats-only"))

            async def vmfs(client) -> common_pb2.Task:
                lun = await client.create_array_lun(64 * 1024**2)
                task = await client.create_vmfs_datastore(name, lun.id, mode)
                return await client.wait(task, timeout=TASK_WAIT)

            task = await self._call(f"datastore {name} vmfs {mode}", vmfs)
        else:

            async def nfs(client) -> common_pb2.Task:
                await client.create_array_export(name)
                return await client.wait(
                    await client.create_nas_datastore(name, name), timeout=TASK_WAIT
                )

            task = await self._call(f"datastore {name} nfs", nfs)
        if isinstance(task, common_pb2.Task) and task.state == common_pb2.TASK_STATE_SUCCESS:
            self.datastores.append(name)

    async def break_lock(self) -> None:
        """`vsim lock break` on a VM's disk, as an administrator tidying up does: if
        refused (its holder lives), tried once more a while later. Only a stale lock
        may ever be broken."""
        vm_name = self._vm()
        if vm_name is None:
            return
        vm = await self._call(f"get-vm {vm_name}", lambda c: c.vm(vm_name))
        if vm is None or not vm.disks:
            return
        disk = vm.disks[0]
        extent = disk.path[: -len(".vmdk")] + ("-delta.vmdk" if disk.parent else "-flat.vmdk")
        what = f"break-lock [{vm.datastore}] {extent}"
        for attempt in range(2):
            info = await self._call(what, lambda c: c.break_stale_lock(vm.datastore, extent))
            if info is not None:
                self.history.record("call", f"{what} -> {'broken' if info.broken else info.mode}")
                return
            if attempt == 0:
                await self.dc.clock.sleep(self.rng.choice((2.0, 40.0)))

    async def bad_input(self) -> None:
        """Requests a person gets wrong: each must get a clear fault, never a crash."""
        vm = self._vm() or "vm-001"
        bad = self.rng.choice(
            (
                ("create-bad name", lambda c: c.create_vm("bad/name")),
                ("create-bad memory", lambda c: c.create_vm("vm-x", memory_mb=-5)),
                ("create-bad host", lambda c: c.create_vm("vm-x", host="esxi-99")),
                ("create-bad datastore", lambda c: c.create_vm("vm-x", datastore="nope")),
                ("create-bad disk", lambda c: c.create_vm("vm-x", datastore="vmfs-01", disk_mb=-1)),
                ("power-on-bad unknown", lambda c: c.power_on("no-such-vm")),
                ("clone-bad self", lambda c: c.linked_clone(vm, vm)),
                ("verify-bad seq", lambda c: c.verify_disk(vm, -3)),
                ("lock-bad path", lambda c: c.lock_owner("vmfs-01", "../../etc")),
                ("remove-host-bad", lambda c: c.remove_host("")),
            )
        )
        await self._call(bad[0], bad[1])

    async def look(self) -> None:
        """Reads, as dashboards do: lists and one VM."""
        await self._call("list-vms", lambda c: c.vms())
        if vm := self._vm():
            await self._call(f"get-vm {vm}", lambda c: c.vm(vm))

    # the users

    async def setup(self) -> None:
        """vSphere HA turned on in most runs (its isolation response drawn), then the
        initial VMs, each on a datastore, most powered on."""
        if self.rng.random() < 0.75:
            response = self.rng.choice(("none", "none", "power-off"))
            failures = self.rng.choice((0, 1))
            await self._call(
                f"enable-ha host-failures {failures} isolation {response}",
                lambda c: c.configure_ha(host_failures=failures, isolation_response=response),
            )
        for _ in range(self.initial_vms):
            await self.create()
        for vm in list(self.vms):
            if self.rng.random() < 0.8:
                await self._task(f"power-on {vm}", lambda c, vm=vm: c.power_on(vm))

    async def run(self, seconds: float) -> None:
        """USERS users, each doing one thing after another until `seconds` pass."""
        end = self.dc.clock.now() + seconds
        kinds = list(WEIGHTS)
        weights = [WEIGHTS[k] for k in kinds]

        async def user() -> None:
            while self.dc.clock.now() < end:
                await self.dc.clock.sleep(self.rng.uniform(1, 20))
                if self.dc.clock.now() >= end:
                    return
                kind = self.rng.choices(kinds, weights)[0]
                await getattr(self, kind.replace("-", "_"))()

        await asyncio.gather(*(user() for _ in range(USERS)))
