"""The storage array as vCenter's administrator manages it: LUNs (size, id, which
hosts they are masked to, the datastore on each), masking per host, NFS exports.

vCenter carries each change out on the array through its storage provider (the
array's management key) and names hosts, not initiators: a host's initiator is its
IQN (`initiator_name`). It keeps masking right as the inventory changes: a host that
joins gets the LUNs of the VMFS datastores it is to mount, as an administrator would
map a new host, and a LUN is never masked from a host of the inventory while a
datastore lives on it. The array is the truth for LUNs and exports; vCenter records
only its datastores.
"""

from __future__ import annotations

import logging

from vsim import validate
from vsim.faults import InvalidArgument, InvalidState, NotFound, ResourceInUse, VimFault
from vsim.iscsi import initiator_name
from vsim.storage.array import DEFAULT_LUN_BYTES, MAX_LUNS
from vsim.v1 import storage_pb2 as spb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.storage_provider import StorageProvider

log = logging.getLogger("vsim.vcenter.storage_array")


class StorageArrayManager:
    def __init__(
        self, inventory: Inventory, events: EventLog, provider: StorageProvider | None
    ) -> None:
        self._inventory = inventory
        self._events = events
        self.provider = provider

    async def _call(self, method: str, request: object) -> object:
        if self.provider is None:
            raise InvalidState(
                "this vCenter has no management access to a storage array (it was started "
                "without the array's management key); manage the array on the array itself"
            )
        return await self.provider.call(method, request)

    # LUNs

    async def create_lun(self, request: pb.CreateArrayLunRequest, user: str) -> pb.ArrayLun:
        size = request.size_bytes or DEFAULT_LUN_BYTES
        lun_id = request.id if request.HasField("id") else None
        if lun_id is not None:
            validate.int_range(lun_id, 0, MAX_LUNS - 1, "id")
        hosts = self._hosts(request.hosts) if request.hosts else self._all_hosts()
        create = spb.CreateLunRequest(
            size_bytes=size, initiators=[initiator_name(h) for h in hosts]
        )
        if lun_id is not None:
            create.id = lun_id
        made = await self._call("CreateLun", create)
        self._events.post(
            "StorageArrayLunCreatedEvent",
            f"Created LUN {made.id} ({made.size_bytes} bytes) on the storage array, masked to "
            f"{', '.join(hosts) or 'no host'}",
            user=user,
        )
        return self._lun(made)

    async def list_luns(self) -> list[pb.ArrayLun]:
        state = await self._call("GetArray", spb.GetArrayRequest())
        return [self._lun(lun) for lun in state.luns]

    async def map_lun(self, request: pb.ArrayLunMappingRequest, user: str) -> pb.ArrayLun:
        hosts = self._hosts(request.hosts)
        await self.require_lun(request.lun)
        initiators = [initiator_name(h) for h in hosts]
        mapped = await self._call(
            "MapLun", spb.MapLunRequest(lun=request.lun, initiators=initiators)
        )
        self._events.post(
            "StorageArrayLunMappedEvent",
            f"Mapped LUN {request.lun} to {', '.join(hosts)}",
            user=user,
        )
        return self._lun(mapped)

    async def unmap_lun(self, request: pb.ArrayLunMappingRequest, user: str) -> pb.ArrayLun:
        if not request.hosts:
            raise InvalidArgument("name the hosts to unmap the LUN from")
        for host in request.hosts:
            validate.host_name(host, "hosts")
        await self.require_lun(request.lun)
        datastore = self._datastore_on_lun(request.lun)
        mounting = [h for h in request.hosts if self._inventory.host(h) is not None]
        if datastore and mounting:
            # Pulling a mounted LUN away is a permanent device loss for the host's VMs.
            raise ResourceInUse(
                f"LUN {request.lun} backs datastore {datastore}, which "
                f"{', '.join(mounting)} mount; remove the datastore first "
                f"(vsim datastore remove {datastore})",
                datastore=datastore,
            )
        initiators = [initiator_name(h) for h in request.hosts]
        left = await self._call(
            "UnmapLun", spb.MapLunRequest(lun=request.lun, initiators=initiators)
        )
        self._events.post(
            "StorageArrayLunUnmappedEvent",
            f"Unmapped LUN {request.lun} from {', '.join(request.hosts)}",
            user=user,
        )
        return self._lun(left)

    async def map_datastore_luns(self, host: str) -> None:
        """Masks to the host the LUNs of the inventory's VMFS datastores that it does
        not see yet (it joined after they were made). It runs while the host
        connects, so any fault of the array (a refusal, a wrong key, no connection) is
        only logged, and the mount that needs the LUN then reports it."""
        luns = {d.lun for d in self._inventory.datastores() if d.type == "vmfs"}
        if self.provider is None or not luns:
            return
        initiator = initiator_name(host)
        try:
            state = await self._call("GetArray", spb.GetArrayRequest())
            for lun in state.luns:
                if lun.id in luns and initiator not in lun.initiators:
                    await self._call(
                        "MapLun", spb.MapLunRequest(lun=lun.id, initiators=[initiator])
                    )
                    self._events.post(
                        "StorageArrayLunMappedEvent",
                        f"Mapped LUN {lun.id} ({self._datastore_on_lun(lun.id)}) to {host}, "
                        "which mounts its datastore",
                        host=host,
                    )
        except VimFault as fault:  # the array refused or is out of reach: only log
            log.warning("cannot map the datastores' LUNs to %s: %s", host, fault)

    async def require_lun(self, lun_id: int) -> None:
        validate.int_range(lun_id, 0, MAX_LUNS - 1, "lun")
        state = await self._call("GetArray", spb.GetArrayRequest())
        if lun_id not in {lun.id for lun in state.luns}:
            raise NotFound(
                f"the storage array has no LUN {lun_id} (see vsim array lun list; "
                "vsim array lun create makes one)"
            )

    def _hosts(self, names: list[str]) -> list[str]:
        if not names:
            raise InvalidArgument("name at least one host")
        for name in names:
            validate.host_name(name, "hosts")
            if self._inventory.host(name) is None:
                raise NotFound(f"no host named {name[:80]!r} in the inventory")
        return sorted(set(names))

    def _all_hosts(self) -> list[str]:
        return [h.name for h in self._inventory.hosts()]

    def _datastore_on_lun(self, lun_id: int) -> str:
        return next(
            (d.name for d in self._inventory.datastores() if d.type == "vmfs" and d.lun == lun_id),
            "",
        )

    # faults (the fault service's: the array's disks and program)

    async def array_state(self) -> spb.ArrayInfo:
        """The array's LUNs and exports as it reports them, latencies included."""
        return await self._call("GetArray", spb.GetArrayRequest())

    async def set_latency(self, lun: int | None, export: str, seconds: float) -> spb.ArrayInfo:
        """Every command to the LUN (or operation on the export) is `seconds` late."""
        request = spb.SetLatencyRequest(export=export, seconds=seconds)
        if lun is not None:
            request.lun = lun
        return await self._call("SetLatency", request)

    async def restart(self) -> spb.RestartArrayResponse:
        """The array program restarts inside itself (reservations dropped)."""
        return await self._call("RestartArray", spb.RestartArrayRequest())

    def _lun(self, lun: spb.LunInfo) -> pb.ArrayLun:
        by_initiator = {initiator_name(h): h for h in self._all_hosts()}
        return pb.ArrayLun(
            id=lun.id,
            size_bytes=lun.size_bytes,
            serial=lun.serial,
            name=lun.name,
            hosts=sorted(by_initiator[i] for i in lun.initiators if i in by_initiator),
            initiators=list(lun.initiators),
            datastore=self._datastore_on_lun(lun.id),
        )

    # exports

    async def create_export(
        self, request: pb.CreateArrayExportRequest, user: str
    ) -> pb.ArrayExport:
        for client in request.clients:
            validate.text(client, "clients", 255)
        made = await self._call(
            "CreateExport",
            spb.CreateExportRequest(
                name=request.name,
                read_only=request.read_only,
                async_writes=request.async_writes,
                root_squash=request.root_squash,
                clients=request.clients,
            ),
        )
        self._events.post(
            "StorageArrayExportCreatedEvent",
            f"Created NFS export {made.name} on the storage array ({export_options(made)})",
            user=user,
        )
        return self._export(made)

    async def list_exports(self) -> list[pb.ArrayExport]:
        state = await self._call("GetArray", spb.GetArrayRequest())
        return [self._export(e) for e in state.exports]

    def _export(self, export: spb.ExportInfo) -> pb.ArrayExport:
        datastore = next(
            (
                d.name
                for d in self._inventory.datastores()
                if d.type == "nfs" and d.export == export.name
            ),
            "",
        )
        return pb.ArrayExport(
            name=export.name,
            read_only=export.read_only,
            async_writes=export.async_writes,
            root_squash=export.root_squash,
            clients=list(export.clients),
            datastore=datastore,
        )


def export_options(export: spb.ExportInfo | pb.ArrayExport) -> str:
    """The export's options as /etc/exports writes them."""
    return ",".join(
        [
            "ro" if export.read_only else "rw",
            "async" if export.async_writes else "sync",
            "root_squash" if export.root_squash else "no_root_squash",
        ]
    )
