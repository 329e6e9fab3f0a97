"""VMs as vCenter manages them: create (with placement), power on/off, destroy.

Each operation is checked when asked (so a bad request fails at once and changes
nothing) and then runs as a task that asks the VM's host to act, and records the
outcome (inventory row, event) in one transaction only once the host has done it.
"""

from __future__ import annotations

import random
import uuid

from vsim import validate
from vsim.faults import DuplicateName, InvalidPowerState, InvalidState, NotFound
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import CONNECTED, HostManager, host_vm
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.tasks import TaskManager

ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF
DEFAULT_GUEST_OS = "otherGuest64"


class VmManager:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        tasks: TaskManager,
        events: EventLog,
        rng: random.Random,
    ) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._tasks = tasks
        self._events = events
        self._rng = rng
        self._creating: set[str] = set()

    def get(self, name: str) -> pb.Vm:
        vm = self._inventory.vm(name)
        if vm is None:
            raise NotFound(f"no VM named {name[:80]!r} in the inventory")
        return vm

    def list(self, host: str) -> list[pb.Vm]:
        if host:
            self._hosts.record(host)
        return self._inventory.vms(host or None)

    def create(self, request: pb.CreateVmRequest, user: str) -> common_pb2.Task:
        validate.vm_name(request.name)
        validate.vcpus(request.cpus)
        validate.memory_mb(request.memory_mb)
        validate.text(request.guest_os, "guest_os", 64)
        if self._inventory.vm(request.name) is not None or request.name in self._creating:
            raise DuplicateName(f"a VM named {request.name!r} already exists")
        host = self._place(request)
        vm = pb.Vm(
            name=request.name,
            host=host,
            cpus=request.cpus,
            memory_mb=request.memory_mb,
            power_state=OFF,
            uuid=str(uuid.UUID(int=self._rng.getrandbits(128), version=4)),
            guest_os=request.guest_os or DEFAULT_GUEST_OS,
        )

        async def work(task: common_pb2.Task) -> str:
            try:
                await self._hosts.call(host, "RegisterVm", hpb.RegisterVmRequest(vm=host_vm(vm)))
                try:
                    with self._inventory.transaction():
                        self._inventory.add_vm(vm)
                        self._events.post(
                            "VmCreatedEvent",
                            f"Created {vm.name} on {host}",
                            user=user,
                            host=host,
                            vm=vm.name,
                        )
                except Exception:
                    # Not recorded: take it off the host again, so a retry can succeed.
                    await self._hosts.call(host, "UnregisterVm", hpb.HostVmRequest(name=vm.name))
                    raise
            finally:
                self._creating.discard(vm.name)
            return vm.name

        task = self._tasks.start(
            "CreateVM_Task", vm.name, user, work, kind="vm", within=("host", host)
        )
        self._creating.add(vm.name)
        return task

    def _place(self, request: pb.CreateVmRequest) -> str:
        """The requested host, or the connected host with the most free memory."""
        if request.host:
            validate.host_name(request.host, "host")
            self._hosts.connected(request.host)
            return request.host
        candidates = [
            (h.memory_mb - h.memory_used_mb, h.name)
            for h in self._hosts.list()
            if h.connection_state == CONNECTED
        ]
        if not candidates:
            raise InvalidState("no connected host to place the VM on; add a host first")
        return min(candidates, key=lambda c: (-c[0], c[1]))[1]

    def power_on(self, name: str, user: str) -> common_pb2.Task:
        return self._power(name, user, ON)

    def power_off(self, name: str, user: str) -> common_pb2.Task:
        return self._power(name, user, OFF)

    def _power(self, name: str, user: str, state: int) -> common_pb2.Task:
        vm = self.get(name)
        word = "on" if state == ON else "off"
        if vm.power_state == state:
            raise InvalidPowerState(f"{name} is already powered {word}")
        self._hosts.connected(vm.host)
        method = "PowerOnVm" if state == ON else "PowerOffVm"

        async def work(task: common_pb2.Task) -> str:
            await self._hosts.call(vm.host, method, hpb.HostVmRequest(name=name))
            with self._inventory.transaction():
                self._inventory.set_power_state(name, state)
                self._events.post(
                    f"VmPowered{word.capitalize()}Event",
                    f"{name} on {vm.host} is powered {word}",
                    user=user,
                    host=vm.host,
                    vm=name,
                )
            return name

        task_name = "PowerOnVM_Task" if state == ON else "PowerOffVM_Task"
        return self._tasks.start(task_name, name, user, work, kind="vm", within=("host", vm.host))

    def destroy(self, name: str, user: str) -> common_pb2.Task:
        vm = self.get(name)
        if vm.power_state == ON:
            raise InvalidPowerState(f"{name} is powered on; power it off before destroying it")
        self._hosts.connected(vm.host)

        async def work(task: common_pb2.Task) -> str:
            try:
                await self._hosts.call(vm.host, "UnregisterVm", hpb.HostVmRequest(name=name))
            except NotFound:
                pass  # the host had already lost it: nothing to undo there
            with self._inventory.transaction():
                self._inventory.remove_vm(name)
                self._events.post(
                    "VmRemovedEvent",
                    f"Removed {name} from {vm.host}",
                    user=user,
                    host=vm.host,
                    vm=name,
                )
            return name

        return self._tasks.start(
            "Destroy_Task", name, user, work, kind="vm", within=("host", vm.host)
        )
