"""VM autostart across a datacenter power-down: what `vsim down` and `vsim up` do to VMs.

ESXi's autostart manager powers a host's VMs off when the host shuts down and on again
when it boots. A whole `vsim up` cluster stops and starts as one datacenter, so vCenter
does it for every host: `power_down` powers off each running VM cleanly (its guest's
writes finish and are acknowledged, its disks close and their on-disk locks are
released) and remembers it in the inventory; `power_up`, at the next start, powers on
each remembered VM once its host is connected. A vCenter that merely restarts (the
hosts run on, as under docker-compose) touches no VM.

The list survives a crash in the middle: it is written before the first power-off and
trimmed only once a VM has been started again (or can never be: destroyed, running).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from vsim.faults import VimFault
from vsim.v1 import common_pb2
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.tasks import TaskManager
from vsim.vcenter.virtual_machine import ON, VmManager

log = logging.getLogger(__name__)

META_KEY = "autostart"
USER = "vpxd-autostart"
"""Who the power operations are done as, in tasks and events."""
WAIT = 600.0
"""How long a power-down or power-up waits for its VMs' tasks."""


@dataclass
class Outcome:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """VM name: fault name and message."""


class AutoStart:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        vms: VmManager,
        tasks: TaskManager,
        events: EventLog,
    ) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._vms = vms
        self._tasks = tasks
        self._events = events

    def pending(self) -> list[str]:
        """The VMs to power on at the next start."""
        return json.loads(self._inventory.meta(META_KEY) or "[]")

    def _remember(self, names: list[str]) -> None:
        self._inventory.set_meta(META_KEY, json.dumps(sorted(set(names))))

    async def power_down(self, timeout: float = WAIT) -> Outcome:
        """Powers off every powered-on VM of every connected host and remembers it;
        a power-off not done within timeout seconds (of vCenter's clock) is reported
        failed."""
        connected = set(self._hosts.connected_names())
        running = [v.name for v in self._inventory.vms() if v.power_state == ON]
        self._remember(self.pending() + running)
        outcome = Outcome()
        started = {}
        for name in running:
            vm = self._inventory.vm(name)
            if vm.host not in connected:
                outcome.failed[name] = f"HostNotConnected: {vm.host} is not connected"
                continue
            self._start(self._vms.power_off, name, started, outcome)
        await self._settle(started, outcome, timeout)
        return outcome

    async def power_up(self) -> Outcome:
        """Powers on the remembered VMs whose hosts are connected; the others stay
        remembered for a later start."""
        outcome = Outcome()
        keep, started = [], {}
        for name in self.pending():
            vm = self._inventory.vm(name)
            if vm is None or vm.power_state == ON:
                continue  # destroyed, or running already
            if vm.host not in self._hosts.connected_names():
                keep.append(name)
                continue
            self._start(self._vms.power_on, name, started, outcome)
        await self._settle(started, outcome, WAIT)
        self._remember(keep)
        for name, reason in outcome.failed.items():
            self._events.post(
                "VmAutoStartFailedEvent", f"{name} was not powered on again: {reason}", vm=name
            )
        return outcome

    @staticmethod
    def _start(power, name: str, started: dict[str, common_pb2.Task], outcome: Outcome) -> None:
        try:
            started[name] = power(name, USER)
        except VimFault as fault:
            outcome.failed[name] = f"{fault.name}: {fault.message}"

    async def _settle(
        self, started: dict[str, common_pb2.Task], outcome: Outcome, timeout: float
    ) -> None:
        async def wait(name: str, task: common_pb2.Task) -> None:
            done = await self._tasks.wait(task.id, timeout)
            if done.state == common_pb2.TASK_STATE_SUCCESS:
                outcome.done.append(name)
            elif done.state == common_pb2.TASK_STATE_ERROR:
                outcome.failed[name] = f"{done.error.name}: {done.error.message}"
            else:
                outcome.failed[name] = f"still {common_pb2.TaskState.Name(done.state)}"

        await asyncio.gather(*(wait(n, t) for n, t in started.items()))
        outcome.done.sort()
        if outcome.failed:
            log.warning("autostart: %s", outcome.failed)
