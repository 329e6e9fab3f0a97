"""ReconfigVM_Task: changing a VM's resources, adding or removing a vNIC, replacing a
vNIC's firewall rules, and giving a VM a DirectPath I/O (PCI passthrough) device or
taking one from it.

Each request is checked in full when asked (a bad one fails at once, with nothing
held and nothing changed), then runs as a task: the VM's host gets the whole new
configuration (ReconfigureVm; it applies what vSphere applies to a running VM at
once: shares, reservations under admission control, limits, firewall rules, a NIC
added or removed; page sharing and salt from the next power-on; DirectPath only
when powered off), and only once the host has accepted it are the inventory and the
event written, in one transaction. Never does: change the inventory before the host
has the change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from vsim.faults import AlreadyExists, InvalidArgument, InvalidPowerState, NotFound
from vsim.network_messages import firewall_default
from vsim.pci_device import MAX_PASSTHRU_DEVICES_PER_VM, pci_id
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager, host_vm
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.network_system import NetworkSystem
from vsim.vcenter.tasks import TaskManager
from vsim.vcenter.virtual_nic import (
    DEFAULT_NIC,
    MacPool,
    checked_nics,
    find_nic,
    firewall_rules,
    without_nic,
)
from vsim.vcenter.vm_resources import checked_resources

ON = pb.POWER_STATE_POWERED_ON
TASK = "ReconfigVM_Task"


class VmReconfigurer:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        tasks: TaskManager,
        events: EventLog,
        macs: MacPool,
        network: NetworkSystem,
    ) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._tasks = tasks
        self._events = events
        self._macs = macs
        self._network = network

    def _vm(self, name: str) -> pb.Vm:
        vm = self._inventory.require_vm(name)
        self._hosts.connected(vm.host)
        return vm

    def resources(self, request: pb.ReconfigureVmResourcesRequest, user: str) -> common_pb2.Task:
        before = self._vm(request.name)
        after = _copy(before)
        after.resources.CopyFrom(
            checked_resources(request.resources, before.memory_mb, before.guest_os)
        )
        return self._start(before, after, user, "resources")

    def add_nic(self, request: pb.AddVmNicRequest, user: str) -> common_pb2.Task:
        before = self._vm(request.vm)
        ticket = self._macs.ticket()
        nics = checked_nics(before.name, before.nics, [request.nic], self._macs, ticket)
        after = _copy(before)
        del after.nics[:]
        after.nics.extend(nics)
        added = nics[-1]
        change = f"added {added.name} ({added.mac}) on port group {added.port_group!r}"

        def check() -> Awaitable[None]:
            return self._network.require_port_groups(before.host, [added.port_group])

        return self._start(before, after, user, change, ticket, check)

    def set_firewall(self, request: pb.SetVmFirewallRequest, user: str) -> common_pb2.Task:
        before = self._vm(request.vm)
        name = request.nic or DEFAULT_NIC
        find_nic(before.nics, before.name, name)
        where = f"{before.name}/{name}"
        rules = firewall_rules(request.rules, where)
        default = firewall_default(request.default_action, where)
        after = _copy(before)
        nic = find_nic(after.nics, after.name, name)
        del nic.firewall[:]
        nic.firewall.extend(rules)
        nic.firewall_default = default
        change = f"firewall of {name}: {len(rules)} rules, default {default}"
        return self._start(before, after, user, change)

    def remove_nic(self, request: pb.RemoveVmNicRequest, user: str) -> common_pb2.Task:
        """Hot-removes the adapter from a running VM (its port on the vSwitch goes);
        its firewall rules go with it, and its MAC is free once the task is done."""
        before = self._vm(request.vm)
        left, removed = without_nic(before.name, before.nics, request.nic)
        after = _copy(before)
        del after.nics[:]
        after.nics.extend(left)
        change = f"removed {removed.name} ({removed.mac}) from port group {removed.port_group!r}"
        return self._start(before, after, user, change)

    def assign_pci_device(self, request: pb.AssignPciDeviceRequest, user: str) -> common_pb2.Task:
        before = self._vm(request.vm)
        device = pci_id(request.id, "id")
        if before.power_state == ON:
            raise InvalidPowerState(
                f"{before.name} is powered on; power it off to add a DirectPath I/O device"
            )
        if device in before.pci_devices:
            raise AlreadyExists(f"{before.name} already has PCI device {device}")
        if len(before.pci_devices) >= MAX_PASSTHRU_DEVICES_PER_VM:
            raise InvalidArgument(
                f"{before.name} has {len(before.pci_devices)} DirectPath I/O devices, the most "
                "a VM can have"
            )
        after = _copy(before)
        after.pci_devices.append(device)
        return self._start(before, after, user, f"added PCI device {device}")

    def remove_pci_device(self, request: pb.RemovePciDeviceRequest, user: str) -> common_pb2.Task:
        """Takes a DirectPath device from a powered-off VM; the host frees it for
        another VM."""
        before = self._vm(request.vm)
        device = pci_id(request.id, "id")
        if device not in before.pci_devices:
            raise NotFound(
                f"{before.name} has no PCI device {device} (it has: "
                + (", ".join(before.pci_devices) or "none")
                + ")"
            )
        if before.power_state == ON:
            raise InvalidPowerState(
                f"{before.name} is powered on; power it off to remove DirectPath I/O device "
                f"{device} (DirectPath devices are not hot-removed)"
            )
        after = _copy(before)
        del after.pci_devices[:]
        after.pci_devices.extend(d for d in before.pci_devices if d != device)
        return self._start(before, after, user, f"removed PCI device {device}")

    def _start(
        self,
        before: pb.Vm,
        after: pb.Vm,
        user: str,
        change: str,
        ticket: int | None = None,
        check: Callable[[], Awaitable[None]] | None = None,
    ) -> common_pb2.Task:
        """Runs the reconfiguration as a task; `ticket`'s MACs are released when it
        ends, `check` runs in the task before the host is asked."""
        name, host = before.name, before.host

        async def work(task: common_pb2.Task) -> str:
            try:
                if check is not None:
                    await check()
                await self._reconfigure(before, after, user, change)
                return name
            finally:
                if ticket is not None:
                    self._macs.release(ticket)

        try:
            return self._tasks.start(TASK, name, user, work, kind="vm", within=("host", host))
        except BaseException:
            if ticket is not None:
                self._macs.release(ticket)
            raise

    async def _reconfigure(self, before: pb.Vm, after: pb.Vm, user: str, change: str) -> None:
        host = before.host
        await self._hosts.call(host, "ReconfigureVm", hpb.ReconfigureVmRequest(vm=host_vm(after)))
        try:
            with self._inventory.transaction():
                self._inventory.set_vm_config(after)
                self._events.post(
                    "VmReconfiguredEvent",
                    f"Reconfigured {after.name} on {host}: {change}",
                    user=user,
                    host=host,
                    vm=after.name,
                )
        except Exception:
            # Not recorded: give the host back the configuration the inventory has.
            undo = hpb.ReconfigureVmRequest(vm=host_vm(before))
            await self._hosts.call(host, "ReconfigureVm", undo)
            raise


def _copy(vm: pb.Vm) -> pb.Vm:
    return pb.Vm.FromString(vm.SerializeToString())


def nic_template(nic: kpb.VmNic) -> kpb.VmNic:
    """A clone's adapter: the same name, port group and firewall, a new MAC."""
    return kpb.VmNic(
        name=nic.name,
        port_group=nic.port_group,
        firewall=nic.firewall,
        firewall_default=nic.firewall_default,
    )
