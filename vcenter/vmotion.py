"""MigrateVM_Task: vCenter's side of vMotion.

vCenter checks first and moves nothing if a check fails: the destination is another
connected host with as many cores as the VM has vCPUs (NotEnoughCpus); a running VM
has no DirectPath device (DisallowedMigrationDeviceAttached); the destination mounts
the VM's datastore and can reach it (InvalidDatastore), and it has every port group
the VM's adapters are on, with the same VLAN (MigrationFault naming the adapter). A
powered-off VM then migrates cold: unregistered on its source (its files stay) and
registered on the destination. A powered-on one migrates live:
vCenter makes the migration's ticket (an id and 32 random bytes) and gives it to both
hosts; the destination admits the VM (its own admission control answers
InsufficientResourcesFault), and the source pre-copies its memory straight to the
destination over the vMotion network and switches over (host/hostd/migration.py).
Any failure before the destination resumes leaves the VM running on its source; the
destination's partial copy is aborted. Whatever happens, the inventory ends saying
where the VM runs, as the hosts report it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from vsim import cpu_features, validate
from vsim.faults import (
    CpuIncompatible,
    DisallowedMigrationDeviceAttached,
    InvalidArgument,
    InvalidDatastore,
    MigrationFault,
    NotEnoughCpus,
    VimFault,
    VMotionNotConfigured,
)
from vsim.runtime import Runtime
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostManager, host_vm
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.tasks import TaskManager
from vsim.vmotion_ticket import KEY_BYTES, NONCE_BYTES, SECRET_BYTES

log = logging.getLogger("vsim.vcenter.vmotion")

ON = pb.POWER_STATE_POWERED_ON
ENCRYPTION = ("disabled", "opportunistic", "required")
"""Encrypted vMotion's settings: opportunistic encrypts when both hosts can (as each
reports: HostSpec.vmotion_encryption), required fails before anything moves when one
cannot."""
PRIORITIES = ("high", "default", "low")
"""vMotion priorities, highest first: the order queued migrations start in."""
HOST_LIMIT = 8
"""Concurrent vMotions a host takes part in when its vMotion link is 10 Gb/s or more."""
SLOW_HOST_LIMIT = 4
"""The same for a host whose vMotion link is slower (1 GbE)."""
FAST_LINK_MBPS = 10000
DATASTORE_BUDGET = 128
"""A datastore's cost budget for concurrent migrations; a vMotion costs 1."""


class VMotion:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        tasks: TaskManager,
        events: EventLog,
        runtime: Runtime,
    ) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._tasks = tasks
        self._events = events
        self._runtime = runtime
        self._running: Counter[tuple[str, str]] = Counter()
        """Migrations under way per host (source and destination) and per datastore."""
        self._queued: list[tuple[int, int, list[tuple[str, str]]]] = []
        """Migrations waiting for room: (priority rank, arrival, what each holds)."""
        self._arrivals = 0
        self._freed = asyncio.Condition()
        self._host_limit: dict[str, int] = {}
        """Each host's limit, from its vMotion link's speed as last heard."""

    def _fits(self, held: list[tuple[str, str]]) -> bool:
        def limit(key: tuple[str, str]) -> int:
            kind, name = key
            return self._host_limit.get(name, HOST_LIMIT) if kind == "host" else DATASTORE_BUDGET

        return all(self._running[k] < limit(k) for k in held)

    @contextlib.asynccontextmanager
    async def _admitted(self, task: common_pb2.Task, vm: pb.Vm, destination: str, priority: str):
        """Holds the migration's place in vCenter's limits: at most HOST_LIMIT per host
        and DATASTORE_BUDGET per datastore at once. Beyond them the task is queued; a
        queued migration starts once it fits and no queued one of higher priority (or
        of its own, queued earlier) would fit in its place."""
        held = [("host", vm.host), ("host", destination)]
        held += [("datastore", vm.datastore)] if vm.datastore else []
        self._arrivals += 1
        me = (PRIORITIES.index(priority), self._arrivals, held)

        def my_turn() -> bool:
            ahead = (w for w in self._queued if w[:2] < me[:2])
            return self._fits(held) and not any(self._fits(w[2]) for w in ahead)

        async with self._freed:
            if not my_turn():
                task.state = common_pb2.TASK_STATE_QUEUED
                self._queued.append(me)
                try:
                    await self._freed.wait_for(my_turn)
                finally:
                    self._queued.remove(me)
                    self._freed.notify_all()  # who was behind it may go now
                task.state = common_pb2.TASK_STATE_RUNNING
            self._running.update(held)
        try:
            yield
        finally:
            async with self._freed:
                self._running.subtract(held)
                self._freed.notify_all()

    def migrate(self, request: pb.MigrateVmRequest, user: str, parent: str = "") -> common_pb2.Task:
        """Checks what can be checked at once (faults raised here move nothing) and
        starts MigrateVM_Task; `parent` is the task this migration is part of (a host
        entering maintenance mode)."""
        vm = self._inventory.require_vm(request.name)
        validate.host_name(request.host, "host")
        destination = request.host
        encryption = request.encryption or "opportunistic"
        if encryption not in ENCRYPTION:
            raise InvalidArgument(
                f"encryption is one of {', '.join(ENCRYPTION)}, got {request.encryption[:40]!r}"
            )
        priority = request.priority or "default"
        if priority not in PRIORITIES:
            raise InvalidArgument(
                f"priority is one of {', '.join(PRIORITIES)}, got {request.priority[:40]!r}"
            )
        if destination == vm.host:
            raise InvalidArgument(f"{vm.name} already runs on {destination}")
        self._hosts.usable(destination)
        self._hosts.connected(vm.host)
        source, hot = vm.host, vm.power_state == ON
        cores = self._hosts.public_spec(destination).cpu_cores
        if vm.cpus > cores:
            raise NotEnoughCpus(
                f"{vm.name} has {vm.cpus} virtual CPUs and {destination} has {cores} cores"
            )
        if hot:
            self._check_cpu(vm, destination)
        if hot and vm.pci_devices:
            raise DisallowedMigrationDeviceAttached(
                f"{vm.name} has DirectPath I/O device(s) {', '.join(vm.pci_devices)}, which "
                "cannot move with a running VM; power it off to migrate it cold"
            )

        async def work(task: common_pb2.Task) -> str:
            if not hot:
                return await move(task, {}, False)
            vmknics = await self._vmotion_nics(vm.host, destination)
            encrypted = self._encrypts(vm.name, encryption, vmknics)
            async with self._admitted(task, vm, destination, priority):
                return await move(task, vmknics, encrypted)

        async def move(
            task: common_pb2.Task, vmknics: dict[str, hpb.HostInfo], encrypted: bool
        ) -> str:
            began = self._runtime.now()
            await self._check(vm, destination)
            task.progress = 10
            if hot:
                self._events.post(
                    "VmBeingHotMigratedEvent",
                    f"Migrating {vm.name} from {source} to {destination}",
                    user=user,
                    host=source,
                    vm=vm.name,
                )
                if encrypted:
                    self._events.post(
                        "VmHotMigratingWithEncryptionEvent",
                        f"Migrating {vm.name} to {destination} with encryption",
                        user=user,
                        host=source,
                        vm=vm.name,
                    )
                try:
                    report = await self._hot(task, vm, destination, encrypted, vmknics)
                except VimFault as fault:
                    self._failed(vm, source, destination, user, fault)
                    raise
            else:
                report = hpb.VmotionReport()
                await self._cold(vm, destination)
            downtime = f", downtime {report.downtime_ms:.0f} ms" if hot else " (powered off)"
            self._events.post(
                "VmMigratedEvent",
                f"Migrated {vm.name} from {source} to {destination}{downtime}",
                user=user,
                host=destination,
                vm=vm.name,
            )
            task.migration.CopyFrom(
                common_pb2.MigrationResult(
                    source=source,
                    destination=destination,
                    hot=hot,
                    precopy_rounds=report.rounds,
                    memory_sent_bytes=report.memory_sent_bytes,
                    pages_resent=report.pages_resent,
                    sdps=report.sdps,
                    downtime_ms=report.downtime_ms,
                    total_s=self._runtime.now() - began,
                    encrypted=report.encrypted,
                )
            )
            return vm.name

        return self._tasks.start(
            "MigrateVM_Task",
            vm.name,
            user,
            work,
            kind="vm",
            within=("host", source),
            parent=parent,
        )

    # checks, before anything moves

    async def _check(self, vm: pb.Vm, destination: str) -> None:
        self._hosts.usable(destination)  # it may have begun entering maintenance mode
        if vm.datastore:
            reply = await self._hosts.call(
                destination, "ListDatastores", hpb.HostListDatastoresRequest()
            )
            mounted = {d.name: d.accessible for d in reply.datastores}
            if not mounted.get(vm.datastore, False):
                state = "not accessible" if vm.datastore in mounted else "not mounted"
                raise InvalidDatastore(
                    f"datastore {vm.datastore}, where {vm.name}'s files are, is {state} on "
                    f"{destination}",
                    datastore=vm.datastore,
                    host=destination,
                )
        if vm.nics:
            here = await self._port_groups(vm.host)
            there = await self._port_groups(destination)
            for nic in vm.nics:
                if nic.port_group not in there:
                    raise MigrationFault(
                        f"{vm.name}'s network adapter {nic.name} is on port group "
                        f"{nic.port_group!r}, which {destination} does not have"
                    )
                if here.get(nic.port_group) != there[nic.port_group]:
                    raise MigrationFault(
                        f"{vm.name}'s network adapter {nic.name} is on port group "
                        f"{nic.port_group!r}: VLAN {here.get(nic.port_group)} here, VLAN "
                        f"{there[nic.port_group]} on {destination}"
                    )

    def _check_cpu(self, vm: pb.Vm, destination: str) -> None:
        """A running VM keeps the CPU features it powered on with: the destination
        must offer every one to its guests (its CPU, or the cluster's EVC mode)."""
        needed = vm.cpu_features or self._hosts.guest_cpu(vm.host)
        offered = self._hosts.guest_cpu(destination)
        if cpu_features.vendor(needed) != cpu_features.vendor(offered):
            raise CpuIncompatible(
                f"{vm.name} runs with the features of an {cpu_features.vendor(needed)} CPU "
                f"({needed}) and {destination}'s is {cpu_features.vendor(offered)} "
                f"({offered}): a running VM never moves between the two; power it off to "
                "migrate it cold",
                host=destination,
            )
        lacking = cpu_features.missing(needed, offered)
        if lacking:
            more = f" and {len(lacking) - 8} more" if len(lacking) > 8 else ""
            shown = ", ".join(lacking[:8]) + more
            raise CpuIncompatible(
                f"{vm.name} runs with the CPU features of {needed} and {destination} offers "
                f"{offered}, which lacks {shown}; power it off to migrate it cold, or set "
                "the cluster's EVC mode to a generation every host has",
                host=destination,
            )

    async def _port_groups(self, host: str) -> dict[str, int]:
        network = await self._hosts.call(host, "GetNetwork", hpb.GetNetworkRequest())
        return {pg.name: pg.vlan for pg in network.port_groups}

    # the moves

    async def _cold(self, vm: pb.Vm, destination: str) -> None:
        """A powered-off VM: registered on the destination, then off its source."""
        await self._hosts.call(destination, "RegisterVm", hpb.RegisterVmRequest(vm=host_vm(vm)))
        try:
            await self._hosts.call(vm.host, "UnregisterVm", hpb.HostVmRequest(name=vm.name))
        except BaseException:
            await self._hosts.call(destination, "UnregisterVm", hpb.HostVmRequest(name=vm.name))
            raise
        with self._inventory.transaction():
            self._inventory.set_vm_host(vm.name, destination)

    @staticmethod
    def _encrypts(name: str, encryption: str, hosts: dict[str, hpb.HostInfo]) -> bool:
        """Whether the stream is sealed: never when disabled, else when both hosts
        can; `required` with a host that cannot is a MigrationFault, nothing moved."""
        unable = sorted(host for host, info in hosts.items() if not info.vmotion_encryption)
        if encryption == "required" and unable:
            raise MigrationFault(
                f"{name} must migrate with encryption and {' and '.join(unable)} cannot "
                "encrypt a vMotion stream; migrate it with encryption opportunistic or "
                "disabled, or to a host that can"
            )
        return encryption != "disabled" and not unable

    async def _vmotion_nics(self, *hosts: str) -> dict[str, hpb.HostInfo]:
        """Each host's vMotion adapter as it reports it (VMotionNotConfigured if one
        has none tagged for vMotion); notes each one's limit from its link's speed."""
        infos = {}
        for host in hosts:
            info = await self._hosts.call(host, "GetHostInfo", hpb.GetHostInfoRequest())
            if not info.vmotion_endpoint:
                raise VMotionNotConfigured(
                    f"{host} has no VMkernel adapter tagged for vMotion (tag vmk1 with "
                    f"`vsim network vmknic set {host} vmk1 --vmotion on`)"
                )
            fast = info.vmotion_link_mbps >= FAST_LINK_MBPS
            self._host_limit[host] = HOST_LIMIT if fast else SLOW_HOST_LIMIT
            infos[host] = info
        return infos

    async def _hot(
        self,
        task: common_pb2.Task,
        vm: pb.Vm,
        destination: str,
        encrypted: bool,
        vmknics: dict[str, hpb.HostInfo],
    ) -> hpb.VmotionReport:
        record = self._hosts.connected(destination)
        endpoints = {host: info.vmotion_endpoint for host, info in vmknics.items()}
        link_mbps = min(info.vmotion_link_mbps for info in vmknics.values())
        ticket = hpb.VmotionTicket(
            migration_id=task.id, secret=self._runtime.secret_bytes(SECRET_BYTES)
        )
        if encrypted:  # a one-time key and nonce, for these two hosts only
            ticket.key = self._runtime.secret_bytes(KEY_BYTES)
            ticket.nonce = self._runtime.secret_bytes(NONCE_BYTES)
        start = hpb.StartVmotionRequest(
            ticket=ticket,
            vm=vm.name,
            destination=destination,
            destination_endpoint=endpoints[destination],
            destination_thumbprint=record.thumbprint,
            link_gbps=link_mbps / 1000,
        )
        try:
            prepare = hpb.PrepareVmotionRequest(ticket=ticket, vm=host_vm(vm))
            await self._hosts.call(destination, "PrepareVmotion", prepare)
            task.progress = 20
            report = await self._hosts.call(vm.host, "StartVmotion", start)
        except VimFault as fault:
            # A lost answer (the source's, or the destination's to PrepareVmotion)
            # may hide a migration that went through: the hosts say where it runs.
            if not await self._runs_on(destination, vm.name):
                await self._abort(destination, ticket)
                raise
            log.warning("%s moved to %s though vCenter heard %s", vm.name, destination, fault)
            report = hpb.VmotionReport()
        with self._inventory.transaction():
            self._inventory.set_vm_host(vm.name, destination)
        return report

    async def _runs_on(self, host: str, name: str) -> bool:
        try:
            reply = await self._hosts.call(host, "ListVms", hpb.ListHostVmsRequest())
        except VimFault:
            return False
        return any(v.name == name and v.powered_on for v in reply.vms)

    async def _abort(self, destination: str, ticket: hpb.VmotionTicket) -> None:
        abort = hpb.AbortVmotionRequest(ticket=ticket)
        try:
            await self._hosts.call(destination, "AbortVmotion", abort)
        except VimFault as fault:  # it gives the copy up itself once nothing arrives
            log.warning("cannot abort %s on %s: %s", ticket.migration_id, destination, fault)

    def _failed(self, vm: pb.Vm, source: str, destination: str, user: str, fault: VimFault) -> None:
        self._events.post(
            "VmFailedMigrateEvent",
            f"Cannot migrate {vm.name} from {source} to {destination}: {fault.message}",
            user=user,
            host=source,
            vm=vm.name,
        )
