"""VMs as vCenter manages them: create (with placement, resources and NICs), linked
clones, power on/off, destroy, and what a running VM's guest sees of its disks.

Each operation is checked when asked (so a bad request fails at once and changes
nothing) and then runs as a task that asks the VM's host to act, and records the
outcome (inventory row, event) in one transaction only once the host has done it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from vsim import validate
from vsim.faults import (
    CannotAccessFile,
    DuplicateName,
    FileLocked,
    HostConnectFault,
    HostNotConnected,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    RequestTimeout,
    VimFault,
)
from vsim.runtime import Runtime
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HEARTBEAT_TIMEOUT, HostManager, host_vm
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.network_system import NetworkSystem
from vsim.vcenter.tasks import TaskManager
from vsim.vcenter.virtual_nic import MacPool, checked_nics
from vsim.vcenter.vm_reconfigure import nic_template
from vsim.vcenter.vm_resources import checked_resources

ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF
DEFAULT_GUEST_OS = "otherGuest64"
MAX_DISK_MB = 2 * 1024 * 1024
"""2 TiB, the largest disk vsim makes."""
MAX_GUEST_WRITE_IOPS = 10_000
MAX_DATASTORE_PATH = 256
HOST_ANSWER = HEARTBEAT_TIMEOUT
"""Seconds (simulated) a host has to report its running VMs' guests for GetVm and
ListVms."""

log = logging.getLogger(__name__)


class VmManager:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        tasks: TaskManager,
        events: EventLog,
        runtime: Runtime,
        macs: MacPool,
        network: NetworkSystem,
    ) -> None:
        """runtime: vCenter's (VM UUIDs, how long a host may take to answer)."""
        self.admission: Callable[[pb.Vm], None] | None = None
        """vSphere HA's admission control, asked before a power-on."""
        self._inventory = inventory
        self._hosts = hosts
        self._tasks = tasks
        self._events = events
        self._runtime = runtime
        self._macs = macs
        self._network = network

    def get(self, name: str) -> pb.Vm:
        return self._inventory.require_vm(name)

    def list(self, host: str) -> list[pb.Vm]:
        if host:
            self._hosts.record(host)
        return self._inventory.vms(host or None)

    def create(self, request: pb.CreateVmRequest, user: str) -> common_pb2.Task:
        validate.vm_name(request.name)
        validate.vcpus(request.cpus)
        validate.memory_mb(request.memory_mb)
        validate.text(request.guest_os, "guest_os", 64)
        validate.int_range(request.guest_write_iops, 0, MAX_GUEST_WRITE_IOPS, "guest_write_iops")
        validate.int_range(request.disk_mb, 0, MAX_DISK_MB, "disk_mb", "MB")
        if request.disk_mb and not request.datastore:
            raise InvalidArgument("a VM with a disk needs a datastore (--datastore)")
        if request.datastore and not request.disk_mb:
            raise InvalidArgument("give the disk's size (disk_mb) with its datastore")
        if request.guest_write_iops and not request.disk_mb:
            raise InvalidArgument("a guest writes to disk only if the VM has one (disk_mb)")
        if request.datastore:
            self._datastore(request.datastore)
        resources = checked_resources(request.resources, request.memory_mb, request.guest_os)
        self._check_new_name(request.name)
        vm = self._fresh(request.name, self._place(request.host), request)
        vm.resources.CopyFrom(resources)
        if request.disk_mb:
            vm.disks.append(
                common_pb2.VirtualDisk(
                    path=f"{vm.name}/{vm.name}.vmdk", capacity_bytes=request.disk_mb * 1024**2
                )
            )
        ticket = self._macs.ticket()
        vm.nics.extend(checked_nics(vm.name, [], request.nics, self._macs, ticket))

        async def check_network() -> None:
            await self._network.require_port_groups(vm.host, {n.port_group for n in vm.nics})

        return self._register_new(vm, user, "CreateVM_Task", check_network, ticket=ticket)

    def _fresh(self, name: str, host: str, config: pb.CreateVmRequest | pb.Vm) -> pb.Vm:
        """A new powered-off VM (with a new UUID, no disks yet) with config's hardware
        and storage settings."""
        return pb.Vm(
            name=name,
            host=host,
            cpus=config.cpus,
            memory_mb=config.memory_mb,
            power_state=OFF,
            uuid=str(self._runtime.uuid()),
            guest_os=config.guest_os or DEFAULT_GUEST_OS,
            datastore=config.datastore,
            guest_write_iops=config.guest_write_iops,
        )

    def _check_new_name(self, name: str) -> None:
        # A create or clone under way holds the name (its task keeps it busy).
        if self._inventory.vm(name) is not None or self._tasks.busy("vm", name):
            raise DuplicateName(f"a VM named {name!r} already exists")

    def _datastore(self, name: str) -> None:
        if self._inventory.datastore(name) is None:
            raise NotFound(f"no datastore named {name[:60]!r}")

    def _register_new(
        self,
        vm: pb.Vm,
        user: str,
        task_name: str,
        before: Callable[[], Awaitable[None]] | None = None,
        also: tuple[tuple[str, str], ...] = (),
        ticket: int | None = None,
        undo: Callable[[], Awaitable[None]] | None = None,
    ) -> common_pb2.Task:
        """Registers vm on its host (making its files there) and records it, as a task.
        `before` runs first in the task (checks on the host, a linked clone's snapshot
        of its source); if anything from `before` on fails, `undo` puts back what
        `before` changed. The MACs held under `ticket` are released when the task ends."""
        host = vm.host

        async def work(task: common_pb2.Task) -> str:
            try:
                return await register_or_undo()
            finally:
                if ticket is not None:
                    self._macs.release(ticket)

        async def register_or_undo() -> str:
            try:
                if before is not None:
                    await before()
                return await register()
            except BaseException:
                if undo is not None:
                    await undo()
                raise

        async def register() -> str:
            request = hpb.RegisterVmRequest(vm=host_vm(vm), create_files=bool(vm.disks))
            await self._hosts.call(host, "RegisterVm", request)
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
                unregister = hpb.HostVmRequest(name=vm.name, delete_files=True)
                await self._hosts.call(host, "UnregisterVm", unregister)
                raise
            return vm.name

        try:
            return self._tasks.start(
                task_name, vm.name, user, work, kind="vm", within=("host", host), also=also
            )
        except BaseException:
            if ticket is not None:
                self._macs.release(ticket)
            raise

    def linked_clone(self, request: pb.LinkedCloneVmRequest, user: str) -> common_pb2.Task:
        validate.vm_name(request.name)
        source = self.get(request.source)
        if not source.disks:
            raise InvalidState(f"{source.name} has no disks to clone")
        if source.power_state == ON:
            raise InvalidPowerState(f"{source.name} is powered on; power it off to clone it")
        self._check_new_name(request.name)
        self._hosts.connected(source.host)
        host = self._place(request.host)
        vm = self._fresh(request.name, host, source)
        for unit, disk in enumerate(source.disks):
            suffix = f"_{unit}" if unit else ""
            path = f"{vm.name}/{vm.name}{suffix}.vmdk"
            if len(path.encode()) > MAX_DATASTORE_PATH - len("-delta"):
                raise InvalidArgument(f"the clone's name {vm.name[:40]!r} makes its paths too long")
            vm.disks.append(common_pb2.VirtualDisk(path=path, capacity_bytes=disk.capacity_bytes))
        # The clone gets the source's resources and adapters (with MACs of its own);
        # not its DirectPath devices, which are the source's alone.
        vm.resources.CopyFrom(source.resources)
        ticket = self._macs.ticket()
        templates = [nic_template(nic) for nic in source.nics]
        vm.nics.extend(checked_nics(vm.name, [], templates, self._macs, ticket))
        moved: list[common_pb2.VirtualDisk] = []
        """The source's new tops, once it is on them: what a failure must undo."""

        async def snapshot_source() -> None:
            # Before the source changes, make sure the clone's host can hold the clone.
            await self._network.require_port_groups(host, {n.port_group for n in vm.nics})
            mounted = await self._hosts.call(
                host, "ListDatastores", hpb.HostListDatastoresRequest()
            )
            if not any(d.name == vm.datastore and d.accessible for d in mounted.datastores):
                raise InvalidState(f"{host} cannot reach datastore {vm.datastore}")
            # The source moves onto deltas of its own, so the base both share is
            # never written again.
            reply = await self._hosts.call(
                source.host, "SnapshotVmDisks", hpb.HostVmRequest(name=source.name)
            )
            before = {d.path: d for d in source.disks}
            for new_top in reply.vm.disks:
                old = before[new_top.parent]
                moved.append(
                    common_pb2.VirtualDisk(
                        path=new_top.path,
                        capacity_bytes=new_top.capacity_bytes,
                        parent=new_top.parent,
                        ancestors=[old.path, *old.ancestors],
                    )
                )
            for clone_disk, top in zip(vm.disks, moved, strict=True):
                clone_disk.parent = top.parent
                clone_disk.ancestors.extend(top.ancestors)
            with self._inventory.transaction():
                self._inventory.set_vm_disks(source.name, moved)

        async def restore_source() -> None:
            if moved:
                await self._restore_clone_source(source, moved)

        return self._register_new(
            vm,
            user,
            "CloneVM_Task",
            before=snapshot_source,
            also=(("vm", source.name),),
            ticket=ticket,
            undo=restore_source,
        )

    async def _restore_clone_source(
        self, source: pb.Vm, tops: list[common_pb2.VirtualDisk]
    ) -> None:
        """After a failed clone: the source goes back onto the disks it had (its host
        deletes the deltas it got), and the inventory records what the host has. A
        failure here is logged; the clone's own fault is the one reported."""
        disks = [
            common_pb2.VirtualDisk(path=d.path, capacity_bytes=d.capacity_bytes, parent=d.parent)
            for d in source.disks
        ]
        request = hpb.RevertVmDisksRequest(name=source.name, disks=disks)
        try:
            await self._hosts.call(source.host, "RevertVmDisks", request)
        except VimFault as fault:
            log.warning("%s stays on its new deltas after a failed clone: %s", source.name, fault)
            recorded = tops
        else:
            recorded = list(source.disks)
        try:
            with self._inventory.transaction():
                self._inventory.set_vm_disks(source.name, recorded)
        except Exception:  # noqa: BLE001 - the clone's fault is the one to report
            log.exception("recording %s's disks after a failed clone", source.name)

    async def verify_disk(self, request: pb.VerifyVmDiskRequest) -> common_pb2.GuestDiskReport:
        vm = self.get(request.name)
        if not vm.disks:
            raise InvalidState(f"{vm.name} has no disks")
        if request.acked_seq < 0:
            raise InvalidArgument(f"acked_seq must be >= 0, got {request.acked_seq}")
        host_request = hpb.VerifyGuestDiskRequest(vm=host_vm(vm), acked_seq=request.acked_seq)
        # Its own host first; if that one is down, any host that mounts the datastore
        # (it gets FileLocked until the dead host's disk lock has gone stale).
        hosts = [vm.host] + [h for h in self._hosts.connected_names() if h != vm.host]
        last: VimFault = HostNotConnected(f"no connected host can read {vm.name}'s disk")
        for host in hosts:
            try:
                return await self._hosts.call(host, "VerifyGuestDisk", host_request)
            except (
                HostNotConnected,
                HostConnectFault,
                RequestTimeout,
                NotFound,
                CannotAccessFile,
                FileLocked,
            ) as fault:
                last = fault  # that host cannot read it: the next one may
        raise last

    async def guest_luns(self, name: str) -> kpb.GuestLuns:
        """REPORT LUNS (with INQUIRY and READ CAPACITY) from the guest of a running VM."""
        vm = self.get(name)
        if vm.power_state != ON:
            raise InvalidPowerState(f"{name} is powered off; only a running guest sends SCSI")
        self._hosts.connected(vm.host)
        luns = await self._hosts.call(vm.host, "GuestReportLuns", hpb.HostVmRequest(name=name))
        luns.vm = luns.vm or name
        return luns

    async def get_live(self, name: str) -> pb.Vm:
        """The VM, with its guest's acknowledged writes when it runs on a connected host."""
        vm = self.get(name)
        await self._add_guest_writes([vm])
        return vm

    async def list_live(self, host: str) -> list[pb.Vm]:
        """The VMs (all, or those of host), each running one with a disk with its
        guest's acknowledged writes: one call to each host they run on, all at once."""
        vms = self.list(host)
        await self._add_guest_writes(vms)
        return vms

    async def _add_guest_writes(self, vms: list[pb.Vm]) -> None:
        hosts = sorted({vm.host for vm in vms if vm.power_state == ON and vm.disks})
        replies = await asyncio.gather(*(self._running_on(h) for h in hosts))
        running = {(h, r.name): r for h, reply in zip(hosts, replies, strict=True) for r in reply}
        for vm in vms:
            guest = running.get((vm.host, vm.name))
            if guest is not None:
                vm.guest_writes_acked = guest.guest_writes_acked
                vm.guest_write_retries = guest.guest_write_retries

    async def _running_on(self, host: str) -> list[hpb.HostVm]:
        """The VMs host runs, as it reports them; none if it does not answer in time
        (its VMs are then shown as the inventory has them)."""
        request = hpb.ListHostVmsRequest()
        try:
            reply = await self._runtime.wait_for(
                self._hosts.call(host, "ListVms", request), HOST_ANSWER
            )
        except (VimFault, TimeoutError):
            return []
        return list(reply.vms)

    async def hand_off_disks(self, name: str, destination: str) -> None:
        """vMotion's lock hand-off: the VM's host stops the guest's disk I/O and
        releases the disk locks; the destination (where the VM is registered too)
        opens the disks. If the destination cannot, the source takes them back and
        the guest goes on there: a failed hand-off never leaves the disks unowned."""
        vm = self.get(name)
        if not vm.disks:
            raise InvalidState(f"{name} has no disks")
        if destination == vm.host:
            raise InvalidArgument(f"{name} already runs on {destination}")
        self._hosts.connected(destination)
        request = hpb.HostVmRequest(name=name)
        await self._hosts.call(vm.host, "ReleaseVmDisks", request)
        try:
            await self._hosts.call(destination, "OpenVmDisks", request)
        except BaseException:
            await self._hosts.call(vm.host, "OpenVmDisks", request)
            raise

    def _place(self, requested: str) -> str:
        """The requested host, or the connected host out of maintenance mode with the
        most free memory."""
        if requested:
            validate.host_name(requested, "host")
            self._hosts.usable(requested)
            return requested
        usable = set(self._hosts.usable_names())
        candidates = [
            (h.memory_mb - h.memory_used_mb, h.name) for h in self._hosts.list() if h.name in usable
        ]
        if not candidates:
            raise InvalidState(
                "no connected host out of maintenance mode to place the VM on; add a host "
                "or exit maintenance mode on one"
            )
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
        if state == ON:
            self._hosts.usable(vm.host)
            if self.admission is not None:
                self.admission(vm)
        else:
            self._hosts.connected(vm.host)
        method = "PowerOnVm" if state == ON else "PowerOffVm"

        async def work(task: common_pb2.Task) -> str:
            await self._hosts.call(vm.host, method, hpb.HostVmRequest(name=name))
            with self._inventory.transaction():
                self._inventory.set_power_state(name, state)
                # What the user wants, which HA keeps: on until they power it off.
                record = self._inventory.require_vm(name)
                record.ha_protected = state == ON
                self._inventory.set_vm_config(record)
                if state == ON:  # the features its guest sees until it powers off
                    self._hosts.record_guest_cpu(name, vm.host)
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

        dependents = [
            other.name
            for other in self._inventory.vms()
            if other.name != name
            and other.datastore == vm.datastore
            and any(a.startswith(f"{name}/") for d in other.disks for a in d.ancestors)
        ]
        if dependents:
            raise InvalidState(
                f"{name}'s disks are the base of linked clones ({', '.join(dependents[:5])}); "
                "destroy those first"
            )

        async def work(task: common_pb2.Task) -> str:
            try:
                request = hpb.HostVmRequest(name=name, delete_files=True)
                await self._hosts.call(vm.host, "UnregisterVm", request)
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
