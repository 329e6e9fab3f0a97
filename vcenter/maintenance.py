"""Maintenance mode: EnterMaintenanceMode_Task and ExitMaintenanceMode_Task.

A host enters maintenance mode only when it runs nothing. With `evacuate`, vCenter
first moves each powered-on VM off by vMotion (a MigrateVM_Task of its own, a subtask
of the host's), to another connected host placed by free memory; a destination that
refuses it (a check, its admission control, a failed migration) is followed by the
next. If a VM cannot move anywhere the task fails naming it and why, and the host
stays out of maintenance mode. Powered-off VMs stay registered where they are. While
the task runs and while the host is in maintenance mode, vCenter powers nothing on
there and sends it no migration; the host itself refuses both too (it keeps the mode
in esx.conf across reboots).
"""

from __future__ import annotations

import asyncio

from vsim import validate
from vsim.faults import InvalidState, MigrationFault, VimFault
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import CONNECTED, HostManager
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.tasks import TaskManager
from vsim.vcenter.vmotion import VMotion

ON = pb.POWER_STATE_POWERED_ON


class HostMaintenance:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        tasks: TaskManager,
        events: EventLog,
        vmotion: VMotion,
    ) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._tasks = tasks
        self._events = events
        self._vmotion = vmotion

    def enter(self, request: pb.EnterMaintenanceModeRequest, user: str) -> common_pb2.Task:
        validate.host_name(request.name, "name")
        name = request.name
        record = self._hosts.connected(name)
        if record.in_maintenance:
            raise InvalidState(f"{name} is already in maintenance mode")
        running = [vm.name for vm in self._inventory.vms(host=name) if vm.power_state == ON]
        if running and not request.evacuate:
            raise InvalidState(
                f"{name} runs {len(running)} powered-on VM(s) ({', '.join(running[:5])}); "
                "migrate or power them off, or enter maintenance mode with evacuate"
            )

        async def work(task: common_pb2.Task) -> str:
            self._hosts.entering_maintenance.add(name)
            self._events.post(
                "EnteringMaintenanceModeEvent",
                f"Host {name} is entering maintenance mode",
                user=user,
                host=name,
            )
            try:
                await self._evacuate(task, name, running, user)
                info = await self._hosts.call(
                    name, "EnterMaintenanceMode", hpb.MaintenanceModeRequest()
                )
                with self._inventory.transaction():
                    self._inventory.update_host(name, in_maintenance=int(info.in_maintenance_mode))
                    self._events.post(
                        "EnteredMaintenanceModeEvent",
                        f"Host {name} is in maintenance mode",
                        user=user,
                        host=name,
                    )
            finally:
                self._hosts.entering_maintenance.discard(name)
            return name

        return self._tasks.start(
            "EnterMaintenanceMode_Task",
            name,
            user,
            work,
            kind="host",
            also=tuple(("vm", vm) for vm in running),
        )

    def exit(self, name: str, user: str) -> common_pb2.Task:
        validate.host_name(name, "name")
        if not self._hosts.connected(name).in_maintenance:
            raise InvalidState(f"{name} is not in maintenance mode")

        async def work(task: common_pb2.Task) -> str:
            await self._hosts.call(name, "ExitMaintenanceMode", hpb.MaintenanceModeRequest())
            with self._inventory.transaction():
                self._inventory.update_host(name, in_maintenance=0)
                self._events.post(
                    "ExitMaintenanceModeEvent",
                    f"Host {name} has exited maintenance mode",
                    user=user,
                    host=name,
                )
            return name

        return self._tasks.start("ExitMaintenanceMode_Task", name, user, work, kind="host")

    # evacuation

    async def _evacuate(self, task: common_pb2.Task, name: str, vms: list[str], user: str) -> None:
        """Moves every VM in `vms` off host `name`, at once (vCenter's limits queue
        what does not fit); raises MigrationFault naming each VM that could not move."""
        placed: dict[str, int] = {}  # destination -> MB this evacuation sends it
        order = sorted(vms, key=lambda v: (-self._inventory.require_vm(v).memory_mb, v))
        reach = await self._datastores_reached(self._candidates(name))
        plans = [(vm, self._destinations(name, vm, placed, reach)) for vm in order]
        moved = 0

        async def move(vm: str, destinations: list[str]) -> str | None:
            nonlocal moved
            reasons = []
            for destination in destinations:
                request = pb.MigrateVmRequest(name=vm, host=destination)
                try:
                    child = self._vmotion.migrate(request, user, parent=task.id)
                except VimFault as fault:
                    reasons.append(f"{destination}: {fault.name}: {fault.message}")
                    continue
                done = await self._tasks.finished(child.id)
                if done.state == common_pb2.TASK_STATE_SUCCESS:
                    moved += 1
                    task.progress = 90 * moved // len(vms)
                    return None
                reasons.append(f"{destination}: {done.error.name}: {done.error.message}")
                if self._inventory.require_vm(vm).host != name:
                    return None  # it moved after all (the hosts said so)
            if not destinations:
                datastore = self._inventory.require_vm(vm).datastore
                reaching = f" that reaches datastore {datastore}" if datastore else ""
                reasons.append(f"no other connected host out of maintenance mode{reaching}")
            return f"{vm} ({'; '.join(reasons)})"

        failures = [f for f in await asyncio.gather(*(move(vm, d) for vm, d in plans)) if f]
        if failures:
            raise MigrationFault(
                f"{name} cannot enter maintenance mode: {len(failures)} VM(s) cannot move "
                f"off it: {', '.join(failures)}"
            )

    def _candidates(self, source: str) -> list[pb.Host]:
        """The hosts a VM may be evacuated to: connected, in no maintenance mode."""
        return [
            h
            for h in self._hosts.list()
            if h.name != source
            and h.connection_state == CONNECTED
            and not h.in_maintenance_mode
            and h.name not in self._hosts.entering_maintenance
        ]

    async def _datastores_reached(self, hosts: list[pb.Host]) -> dict[str, set[str]]:
        """Each host's datastores, mounted and accessible, as it reports them (none
        for a host that does not answer)."""

        async def reached(host: str) -> set[str]:
            try:
                reply = await self._hosts.call(
                    host, "ListDatastores", hpb.HostListDatastoresRequest()
                )
            except VimFault:
                return set()
            return {d.name for d in reply.datastores if d.accessible}

        names = [h.name for h in hosts]
        return dict(zip(names, await asyncio.gather(*(reached(h) for h in names)), strict=True))

    def _destinations(
        self, source: str, vm_name: str, placed: dict[str, int], reach: dict[str, set[str]]
    ) -> list[str]:
        """The hosts to try for one VM: those that reach its datastore, the one with
        the most free memory (after what this evacuation already sends each) first;
        the first is counted as chosen."""
        vm = self._inventory.require_vm(vm_name)
        free = {
            h.name: h.memory_mb - h.memory_used_mb - placed.get(h.name, 0)
            for h in self._candidates(source)
            if not vm.datastore or vm.datastore in reach.get(h.name, set())
        }
        ranked = sorted(free, key=lambda h: (-free[h], h))
        if ranked:
            placed[ranked[0]] = placed.get(ranked[0], 0) + vm.memory_mb
        return ranked
