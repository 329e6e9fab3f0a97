"""The StorageArray service: one method per RPC over the array core.

SCSI and NFS outcomes travel in the response (a RESERVATION CONFLICT is an answer,
not a failure); management requests the array refuses fail with InvalidArgument.
Each SCSI command and NFS operation first waits out its LUN's or export's injected
latency on the array's clock; one the array restarted under fails with
HostConnectFault (its connection dropped, it was not carried out).
Management calls (LUNs, masking, exports, the array's state and counters) need the
array's management key as their session (`@needs(ADMINISTRATOR)`): hosts reach SCSI
and NFS only. `ArrayService.table` is the service's one dispatch table.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from vsim.dispatch import ADMINISTRATOR, PUBLIC, DispatchTable, Entry, Need, needs
from vsim.faults import HostConnectFault, InvalidArgument, NoPermission, NotAuthenticated
from vsim.storage.array import DEFAULT_LUN_BYTES, ArrayError, ConnectionDropped, StorageArray
from vsim.storage.lun import Lun
from vsim.storage.nfs_export import (
    Attributes,
    Caller,
    CreateMode,
    ExportOptions,
    NfsError,
    NfsExport,
)
from vsim.storage.scsi import ScsiError
from vsim.v1 import storage_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["StorageArray"]


def _scsi(command: Callable[[], pb.ScsiResponse]) -> pb.ScsiResponse:
    try:
        return command()
    except ScsiError as e:
        status = pb.ScsiStatus(status=e.status, detail=e.detail)
        if e.sense is not None:
            status.sense_key, status.asc, status.ascq = e.sense.key, e.sense.asc, e.sense.ascq
        return pb.ScsiResponse(status=status, data=e.data)
    except ArrayError as e:
        raise InvalidArgument(str(e)) from None


def _nfs(operation: Callable[[], pb.NfsResponse]) -> pb.NfsResponse:
    try:
        return operation()
    except NfsError as e:
        return pb.NfsResponse(status=int(e.status), message=e.message)


def _attributes(a: Attributes) -> pb.NfsAttributes:
    return pb.NfsAttributes(
        fileid=a.fileid, type=a.kind, size=a.size, mtime_ns=a.mtime_ns, ctime_ns=a.ctime_ns
    )


class ArrayService:
    judges = frozenset({Need.PUBLIC, Need.ADMINISTRATOR})
    """SCSI and NFS are public, management takes the key (see `admit`)."""

    def __init__(self, array: StorageArray) -> None:
        self.array = array
        self.on_restart: Callable[[], Awaitable[None]] | None = None
        """What else a restart does where the array serves over a network: its server
        goes down and up again, so every connection to it drops (`RunningArray`)."""
        self.table = DispatchTable.of_methods(SERVICE, self, self)
        """Every StorageArray RPC, as the gRPC server and vCenter's in-process
        provider call it."""

    def admit(self, token: str | None, entry: Entry) -> None:
        """SCSI and NFS trust the storage network, as an iSCSI target without CHAP and
        an NFS server with AUTH_SYS do: initiators and clients say who they are. So
        management, which decides what an initiator sees, takes the management key."""
        if entry.need is Need.PUBLIC:
            return None
        if not token:
            raise NotAuthenticated(
                f"{entry.name} is a management call: it needs the array's management key "
                f"(in {self.array.data_dir}/management.key) as its session"
            )
        if not self.array.is_manager(token):
            raise NoPermission(f"{entry.name}: the management key is not this array's")
        return None

    @staticmethod
    async def _arrive(wait: Awaitable[None]) -> None:
        """A command's injected latency; a restart meanwhile drops it."""
        try:
            await wait
        except ConnectionDropped as e:
            raise HostConnectFault(str(e)) from None

    # SCSI

    def _lun(self, r: pb.ScsiRequest) -> Lun:
        return self.array.lun(r.initiator, r.lun)

    @needs(PUBLIC)
    def ReportLuns(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        return _scsi(lambda: pb.ScsiResponse(luns=self.array.report_luns(r.initiator)))

    @needs(PUBLIC)
    async def Inquiry(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))

        def run() -> pb.ScsiResponse:
            i = self._lun(r).inquiry(r.initiator)
            return pb.ScsiResponse(vendor=i.vendor, product=i.product, serial=i.serial, ats=i.ats)

        return _scsi(run)

    @needs(PUBLIC)
    async def ReadCapacity(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))

        def run() -> pb.ScsiResponse:
            last_lba, block_length = self._lun(r).read_capacity(r.initiator)
            return pb.ScsiResponse(last_lba=last_lba, block_length=block_length)

        return _scsi(run)

    @needs(PUBLIC)
    async def Read(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))
        return _scsi(lambda: pb.ScsiResponse(data=self._lun(r).read(r.initiator, r.lba, r.blocks)))

    @needs(PUBLIC)
    async def Write(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))
        return _scsi(lambda: self._done(self._lun(r).write(r.initiator, r.lba, r.data)))

    @needs(PUBLIC)
    async def CompareAndWrite(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))
        return _scsi(
            lambda: self._done(self._lun(r).compare_and_write(r.initiator, r.lba, r.verify, r.data))
        )

    @needs(PUBLIC)
    async def Reserve(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))
        return _scsi(lambda: self._done(self._lun(r).reserve(r.initiator)))

    @needs(PUBLIC)
    async def Release(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))
        return _scsi(lambda: self._done(self._lun(r).release(r.initiator)))

    @needs(PUBLIC)
    async def LunReset(self, r: pb.ScsiRequest, _: Any) -> pb.ScsiResponse:
        await self._arrive(self.array.lun_command(r.lun))
        return _scsi(lambda: self._done(self._lun(r).reset(r.initiator)))

    @staticmethod
    def _done(_: None) -> pb.ScsiResponse:
        return pb.ScsiResponse()

    # NFS

    def _export(self, r: pb.NfsRequest) -> tuple[NfsExport, Caller]:
        if not 0 < len(r.client) <= 255 or not r.client.isprintable():
            raise InvalidArgument("client must be 1-255 printable characters naming the caller")
        return self.array.export(r.export), Caller(r.client, r.uid)

    def _entry(self, handle_and_attributes: tuple[str, Attributes]) -> pb.NfsResponse:
        handle, attributes = handle_and_attributes
        return pb.NfsResponse(handle=handle, attributes=_attributes(attributes))

    @needs(PUBLIC)
    async def NfsLookup(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            return self._entry(export.lookup(caller, r.handle, r.name))

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsGetattr(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            return pb.NfsResponse(
                handle=r.handle, attributes=_attributes(export.getattr(caller, r.handle))
            )

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsCreate(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            try:
                mode = CreateMode(r.create_mode)
            except ValueError:
                raise InvalidArgument(
                    f"create_mode must be 0, 1 or 2, got {r.create_mode}"
                ) from None
            return self._entry(export.create(caller, r.handle, r.name, mode, r.verifier))

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsMkdir(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            return self._entry(export.mkdir(caller, r.handle, r.name))

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsRead(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            data, eof = export.read(caller, r.handle, r.offset, r.count)
            return pb.NfsResponse(data=data, eof=eof, count=len(data))

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsWrite(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            return pb.NfsResponse(count=export.write(caller, r.handle, r.offset, r.data, r.stable))

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsRemove(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            export.remove(caller, r.handle, r.name)
            return pb.NfsResponse()

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsRename(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            export.rename(caller, r.handle, r.name, r.to_handle, r.to_name)
            return pb.NfsResponse()

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsReaddir(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            entries = [
                pb.NfsEntry(name=name, attributes=_attributes(a))
                for name, a in export.readdir(caller, r.handle)
            ]
            return pb.NfsResponse(entries=entries)

        return _nfs(run)

    @needs(PUBLIC)
    async def NfsFsstat(self, r: pb.NfsRequest, _: Any) -> pb.NfsResponse:
        await self._arrive(self.array.export_operation(r.export))

        def run() -> pb.NfsResponse:
            export, caller = self._export(r)
            total, free = export.fsstat(caller)
            return pb.NfsResponse(total_bytes=total, free_bytes=free)

        return _nfs(run)

    # management

    @needs(ADMINISTRATOR)
    def CreateLun(self, r: pb.CreateLunRequest, _: Any) -> pb.LunInfo:
        try:
            lun = self.array.create_lun(
                r.size_bytes or DEFAULT_LUN_BYTES,
                tuple(r.initiators),
                r.name,
                r.id if r.HasField("id") else None,
            )
        except ArrayError as e:
            raise InvalidArgument(str(e)) from None
        return self._lun_info(lun.id)

    @needs(ADMINISTRATOR)
    def MapLun(self, r: pb.MapLunRequest, _: Any) -> pb.LunInfo:
        try:
            self.array.map_lun(r.lun, tuple(r.initiators))
        except ArrayError as e:
            raise InvalidArgument(str(e)) from None
        return self._lun_info(r.lun)

    @needs(ADMINISTRATOR)
    def UnmapLun(self, r: pb.MapLunRequest, _: Any) -> pb.LunInfo:
        try:
            self.array.unmap_lun(r.lun, tuple(r.initiators))
        except ArrayError as e:
            raise InvalidArgument(str(e)) from None
        return self._lun_info(r.lun)

    def _lun_info(self, lun_id: int) -> pb.LunInfo:
        lun = self.array.luns[lun_id]
        return pb.LunInfo(
            id=lun.id,
            size_bytes=lun.size_bytes,
            serial=lun.serial,
            initiators=sorted(self.array.masking[lun.id]),
            reserved_by=lun.reservation or "",
            name=self.array.lun_names.get(lun.id, ""),
            latency_seconds=self.array.lun_latency(lun.id),
        )

    @needs(ADMINISTRATOR)
    def CreateExport(self, r: pb.CreateExportRequest, _: Any) -> pb.ExportInfo:
        options = ExportOptions(
            rw=not r.read_only,
            sync=not r.async_writes,
            root_squash=r.root_squash,
            clients=tuple(r.clients) or ("*",),
        )
        try:
            export = self.array.create_export(r.name, options)
        except ArrayError as e:
            raise InvalidArgument(str(e)) from None
        return self._export_info(export)

    def _export_info(self, export: NfsExport) -> pb.ExportInfo:
        o = export.options
        return pb.ExportInfo(
            name=export.name,
            read_only=not o.rw,
            async_writes=not o.sync,
            root_squash=o.root_squash,
            clients=list(o.clients),
            latency_seconds=self.array.export_latency(export.name),
        )

    @needs(ADMINISTRATOR)
    def SetLatency(self, r: pb.SetLatencyRequest, _: Any) -> pb.ArrayInfo:
        if r.HasField("lun") == bool(r.export):
            raise InvalidArgument("SetLatency names exactly one of lun and export")
        try:
            if r.HasField("lun"):
                self.array.set_lun_latency(r.lun, r.seconds)
            else:
                self.array.set_export_latency(r.export, r.seconds)
        except ArrayError as e:
            raise InvalidArgument(str(e)) from None
        return self.GetArray(pb.GetArrayRequest(), None)

    @needs(ADMINISTRATOR)
    def RestartArray(self, r: pb.RestartArrayRequest, _: Any) -> pb.RestartArrayResponse:
        dropped = self.array.restart()
        if self.on_restart is not None:  # after this reply has gone out
            self.array.runtime.spawn(self.on_restart(), "restart-server")
        return pb.RestartArrayResponse(
            generation=self.array.generation, reservations_dropped=dropped
        )

    @needs(ADMINISTRATOR)
    def GetArray(self, r: pb.GetArrayRequest, _: Any) -> pb.ArrayInfo:
        return pb.ArrayInfo(
            luns=[self._lun_info(i) for i in sorted(self.array.luns)],
            exports=[self._export_info(e) for e in self.array.exports.values()],
        )

    @needs(ADMINISTRATOR)
    def GetStats(self, r: pb.GetStatsRequest, _: Any) -> pb.ArrayStats:
        scsi = [
            pb.InitiatorCounters(lun=lun.id, initiator=initiator, counters=dict(counters))
            for lun in self.array.luns.values()
            for initiator, counters in sorted(lun.stats.items())
        ]
        writes = [
            pb.WriteSizes(export=export.name, client=client, sizes=dict(sizes))
            for export in self.array.exports.values()
            for client, sizes in sorted(export.stats.write_sizes.items())
        ]
        return pb.ArrayStats(scsi=scsi, nfs_writes=writes)
