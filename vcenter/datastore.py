"""Datastores as vCenter manages them: VMFS on a LUN of the array (formatted by one
host, mounted by all), NFS exports mounted by all, removing them, and what the hosts
report of them.

vCenter records only what a datastore is (type, LUN or export, lock mode); whether
a host has it mounted and can reach it is asked of the hosts, which are the truth.
A LUN or export backs at most one datastore. Removing a datastore unmounts it and
forgets it, as vSphere's unmount and remove from inventory do: its files stay on the
LUN or export, and a VMFS datastore created on that LUN again mounts the volume that
is there (vSphere's "keep the existing signature") instead of formatting it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass, replace

from vsim import validate
from vsim.faults import (
    AlreadyExists,
    CannotAccessFile,
    DuplicateName,
    HostNotConnected,
    InvalidArgument,
    InvalidState,
    NotFound,
    ResourceInUse,
    TaskInProgress,
    VimFault,
)
from vsim.runtime import random_uuid
from vsim.storage_io_control import SIOC_THRESHOLD_RANGE_MS
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import HostCall, HostManager
from vsim.vcenter.inventory import DatastoreRecord, Inventory
from vsim.vcenter.storage_array import StorageArrayManager
from vsim.vcenter.tasks import TaskManager

log = logging.getLogger("vsim.vcenter.datastores")
DATASTORE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,41}")
LOCK_MODES = ("ats+scsi", "ats-only")


@dataclass(frozen=True)
class ArrayRef:
    """Where the hosts find the storage array: its endpoint and pinned thumbprint
    ("" for an array in this process)."""

    endpoint: str
    thumbprint: str
    management_key: str = ""
    """The array's management key, which vCenter manages the array with ("": it
    cannot). Never given to the hosts."""
    management_endpoint: str = ""
    """Where vCenter reaches the array's management ("": the endpoint), when vCenter
    and the hosts reach the array on different networks."""


class DatastoreManager:
    def __init__(
        self,
        inventory: Inventory,
        hosts: HostManager,
        tasks: TaskManager,
        events: EventLog,
        rng: random.Random,
        array: ArrayRef | None,
        array_manager: StorageArrayManager | None = None,
    ) -> None:
        self._inventory = inventory
        self._array_manager = array_manager
        self._hosts = hosts
        self._tasks = tasks
        self._events = events
        self._rng = rng
        self.array = array

    def _target(self, record: DatastoreRecord) -> hpb.ArrayTarget:
        assert self.array is not None
        return hpb.ArrayTarget(
            endpoint=self.array.endpoint,
            thumbprint=self.array.thumbprint,
            lun=max(record.lun, 0),
            export=record.export,
        )

    def _check_new(self, name: str) -> list[str]:
        if not DATASTORE_NAME.fullmatch(name):
            raise InvalidArgument(
                f"datastore name {name[:60]!r} must be 1-42 of a-z 0-9 . _ - (e.g. vmfs-01)"
            )
        if self._inventory.datastore(name) is not None:
            raise DuplicateName(f"a datastore named {name} exists")
        if self.array is None:
            raise InvalidState("this vCenter has no storage array to make datastores on")
        connected = self._hosts.connected_names()
        if not connected:
            raise InvalidState("no connected host to mount the datastore on")
        return connected

    def create_vmfs(self, request: pb.CreateVmfsDatastoreRequest, user: str) -> common_pb2.Task:
        hosts = self._check_new(request.name)
        mode = request.lock_mode or "ats+scsi"
        if mode not in LOCK_MODES:
            raise InvalidArgument(f"lock_mode must be ats+scsi or ats-only, got {mode[:40]!r}")
        validate.int_range(request.lun, 0, 255, "lun")
        for other in self._inventory.datastores():
            if other.type == "vmfs" and other.lun == request.lun:
                raise AlreadyExists(
                    f"LUN {request.lun} is already datastore {other.name}; a second mount "
                    "of one volume is refused",
                    datastore=other.name,
                )
        record = DatastoreRecord(
            request.name,
            "vmfs",
            request.lun,
            "",
            mode,
            str(random_uuid(self._rng)),
        )

        async def work(task: common_pb2.Task) -> str:
            if self._array_manager is not None and self._array_manager.provider is not None:
                await self._array_manager.require_lun(record.lun)
            found = await self._hosts.call(hosts[0], "QueryVmfsVolume", self._target(record))
            if found.found:
                # The volume of a removed datastore (or another vCenter's): mounted
                # as it is, files and all, never formatted over.
                kept = replace(record, lock_mode=found.lock_mode, uuid=found.uuid)
                return await self._mount_everywhere(
                    kept,
                    hosts,
                    user,
                    "VmfsDatastoreCreatedEvent",
                    f"the existing VMFS volume {found.label} ({found.lock_mode}) on LUN "
                    f"{record.lun}, kept",
                )
            format_request = hpb.FormatVmfsRequest(
                label=record.name,
                target=self._target(record),
                lock_mode=mode,
                uuid=record.uuid,
            )
            await self._hosts.call(hosts[0], "FormatVmfs", format_request)
            return await self._mount_everywhere(record, hosts, user, "VmfsDatastoreCreatedEvent")

        return self._tasks.start("CreateVmfsDatastore", record.name, user, work, kind="datastore")

    def create_nas(self, request: pb.CreateNasDatastoreRequest, user: str) -> common_pb2.Task:
        hosts = self._check_new(request.name)
        if not 0 < len(request.export) <= 63:
            raise InvalidArgument("export must name an NFS export of the array")
        for other in self._inventory.datastores():
            if other.type == "nfs" and other.export == request.export:
                raise AlreadyExists(
                    f"export {request.export} is already mounted as datastore {other.name}",
                    datastore=other.name,
                )
        record = DatastoreRecord(request.name, "nfs", -1, request.export)

        async def work(task: common_pb2.Task) -> str:
            return await self._mount_everywhere(record, hosts, user, "NasDatastoreCreatedEvent")

        return self._tasks.start("CreateNasDatastore", record.name, user, work, kind="datastore")

    async def _mount_everywhere(
        self, record: DatastoreRecord, hosts: list[str], user: str, event: str, what: str = ""
    ) -> str:
        outcomes = await asyncio.gather(
            *(self._mount(host, record) for host in hosts), return_exceptions=True
        )
        failures = {h: o for h, o in zip(hosts, outcomes, strict=True) if o is not None}
        if len(failures) == len(hosts):
            first = next(iter(failures.values()))
            if isinstance(first, VimFault):
                raise first
            raise InvalidState(f"no host could mount {record.name}: {first}")
        with self._inventory.transaction():
            self._inventory.add_datastore(record)
            mounted = [h for h in hosts if h not in failures]
            self._events.post(
                event,
                f"Created datastore {record.name} ({record.type}"
                + (f", {what}" if what else "")
                + "), mounted on "
                f"{', '.join(mounted)}" + (f"; not on {', '.join(failures)}" if failures else ""),
                user=user,
            )
        return record.name

    async def _mount(
        self, host: str, record: DatastoreRecord, call: HostCall | None = None
    ) -> None:
        request = hpb.MountDatastoreRequest(
            name=record.name,
            type=record.type,
            target=self._target(record),
            sioc_threshold_ms=record.sioc_threshold_ms,
        )
        await (call or self._caller(host))("MountDatastore", request)

    def _caller(self, host: str) -> HostCall:
        return lambda method, request: self._hosts.call(host, method, request)

    async def remount(self, host: str, call: HostCall) -> bool:
        """Mounts on a host the datastores it lacks (it rebooted, or just came), and
        gives it the Storage I/O Control threshold of those it has; `call` reaches the
        host while it is being connected. False if one could not be mounted (its
        storage path is down, say): the host's heartbeat tries again."""
        records = self._inventory.datastores()
        if self.array is None:
            return True
        reply = await call("ListDatastores", hpb.HostListDatastoresRequest())
        mounted = {d.name for d in reply.datastores}
        known = {r.name for r in records}
        for gone in sorted(mounted - known):  # removed while the host did not answer
            try:
                await call("UnmountDatastore", hpb.UnmountDatastoreRequest(name=gone))
            except VimFault as fault:
                log.warning("cannot unmount removed datastore %s from %s: %s", gone, host, fault)
        if self._array_manager is not None and any(r.name not in mounted for r in records):
            await self._array_manager.map_datastore_luns(host)
        everything = True
        for record in records:
            try:
                if record.name not in mounted:
                    await self._mount(host, record, call)
                else:  # it may have missed a change while it did not answer
                    await self._set_sioc(host, record.name, record.sioc_threshold_ms, call)
            except VimFault as fault:
                # The host's own message names the datastore and itself already.
                said = (
                    fault.message
                    if record.name in fault.message
                    else (f"cannot mount {record.name} on {host}: {fault.message}")
                )
                log.warning("%s (%s)", said, fault.name)
                everything = False
        return everything

    def remove(self, name: str, user: str) -> common_pb2.Task:
        """Unmounts the datastore from every connected host and forgets it; refused
        while any VM of the inventory has its files there. A host that does not answer
        unmounts it when it is back (remount)."""
        record = self._inventory.datastore(name)
        if record is None:
            raise NotFound(f"no datastore named {name[:80]!r}")
        users = sorted(vm.name for vm in self._inventory.vms() if vm.datastore == name)
        if users:
            raise ResourceInUse(
                f"datastore {name} holds the files of {', '.join(users)}; destroy them (or "
                "move them away) before removing it",
                vms=",".join(users),
            )
        if self._tasks.busy("datastore", name):
            raise TaskInProgress(f"a task on datastore {name} is under way; try again after it")
        hosts = self._hosts.connected_names()

        async def unmount(host: str) -> None:
            request = hpb.UnmountDatastoreRequest(name=name)
            try:
                await self._hosts.call(host, "UnmountDatastore", request)
            except (NotFound, HostNotConnected):  # not mounted there, or unmounted when back
                pass

        async def work(task: common_pb2.Task) -> str:
            outcomes = await asyncio.gather(*(unmount(h) for h in hosts), return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome  # kept: removing again unmounts what is left
            with self._inventory.transaction():
                self._inventory.remove_datastore(name)
                where = f"LUN {record.lun}" if record.type == "vmfs" else f"export {record.export}"
                self._events.post(
                    "DatastoreRemovedEvent",
                    f"Removed datastore {name} ({record.type}) from the inventory, unmounted "
                    f"from {', '.join(hosts) or 'no host'}; its files stay on {where}",
                    user=user,
                )
            return name

        return self._tasks.start("RemoveDatastore", name, user, work, kind="datastore")

    async def _set_sioc(
        self, host: str, datastore: str, threshold_ms: float, call: HostCall | None = None
    ) -> None:
        change = hpb.SiocThresholdRequest(datastore=datastore, threshold_ms=threshold_ms)
        await (call or self._caller(host))("SetSiocThreshold", change)

    async def lock(self, request: pb.LockRequest, method: str) -> pb.LockInfo:
        """Asks a connected host that has the datastore mounted to query (or break)
        the lock on a file."""
        if self._inventory.datastore(request.datastore) is None:
            raise NotFound(f"no datastore named {request.datastore[:60]!r}")
        if not request.path or len(request.path) > 1024:
            raise InvalidArgument("path must name a file on the datastore (1-1024 characters)")
        host_request = hpb.HostLockRequest(datastore=request.datastore, path=request.path)
        names = self._hosts.names_by_uuid()
        last: VimFault | None = None
        for host in self._hosts.connected_names():
            try:
                reply = await self._hosts.call(host, method, host_request)
            except (NotFound, HostNotConnected, CannotAccessFile) as fault:  # try another
                last = fault
                continue
            return pb.LockInfo(
                datastore=request.datastore,
                path=request.path,
                mode=reply.mode,
                observed_by=host,
                broken=reply.broken,
                holders=[
                    pb.LockHolder(
                        host=names.get(h.host_uuid, ""),
                        host_uuid=h.host_uuid,
                        heartbeat_slot=h.heartbeat_slot,
                        seconds_since_heartbeat_change=h.seconds_unchanged,
                        live=h.live,
                    )
                    for h in reply.holders
                ],
            )
        raise last or InvalidState(f"no connected host has {request.datastore} mounted")

    async def configure_sioc(
        self, request: pb.ConfigureStorageIoControlRequest, user: str
    ) -> pb.Datastore:
        """The datastore's congestion threshold on every connected host that mounts it
        (the rest get it when they mount it)."""
        record = self._inventory.datastore(request.datastore)
        if record is None:
            raise NotFound(f"no datastore named {request.datastore[:80]!r}")
        low, high = SIOC_THRESHOLD_RANGE_MS
        if not low <= request.threshold_ms <= high:
            raise InvalidArgument(
                f"a congestion threshold is {low:g}-{high:g} ms, got {request.threshold_ms:g}"
            )
        hosts = self._hosts.connected_names()
        outcomes = await asyncio.gather(
            *(self._set_sioc(h, record.name, request.threshold_ms) for h in hosts),
            return_exceptions=True,
        )
        for host, outcome in zip(hosts, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, NotFound):
                # The host gets it when it is attached again (remount).
                log.warning("cannot set SIOC on %s for %s: %s", host, record.name, outcome)
        with self._inventory.transaction():
            self._inventory.set_sioc_threshold(record.name, request.threshold_ms)
            self._events.post(
                "DatastoreIORMReconfiguredEvent",
                f"Storage I/O Control of {record.name}: congestion threshold "
                f"{request.threshold_ms:g} ms",
                user=user,
            )
        return next(d for d in await self.list() if d.name == record.name)

    async def list(self) -> list[pb.Datastore]:
        hosts = self._hosts.connected_names()

        async def reported(host: str) -> list[hpb.HostDatastore]:
            try:
                reply = await self._hosts.call(
                    host, "ListDatastores", hpb.HostListDatastoresRequest()
                )
            except VimFault:
                return []
            return list(reply.datastores)

        replies = await asyncio.gather(*(reported(h) for h in hosts))
        # host -> {datastore name: what the host reports of it}
        views = {host: {d.name: d for d in seen} for host, seen in zip(hosts, replies, strict=True)}
        datastores = []
        for record in self._inventory.datastores():
            datastore = pb.Datastore(
                name=record.name,
                type=record.type,
                lock_mode=record.lock_mode,
                lun=record.lun,
                export=record.export,
                sioc_threshold_ms=record.sioc_threshold_ms,
            )
            for host, seen in views.items():
                d = seen.get(record.name)
                if d is None:
                    continue
                datastore.mounts.append(
                    pb.DatastoreMount(
                        host=host, accessible=d.accessible, heartbeat_slot=d.heartbeat_slot
                    )
                )
                if d.accessible and not datastore.capacity_bytes:
                    datastore.capacity_bytes = d.capacity_bytes
                    datastore.free_bytes = d.free_bytes
            datastores.append(datastore)
        return datastores
