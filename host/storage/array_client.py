"""A host's lines to the storage array over gRPC: its LUNs as block devices (one
initiator per host, like an iSCSI session) and its NFS mounts. SCSI and NFS outcomes
come back in-band and are raised here as ScsiError / NfsError, so the VMFS driver
and the NFS lock manager see the same errors as with an in-process array."""

from __future__ import annotations

from typing import Any

from vsim.faults import HostConnectFault, RequestTimeout, StoragePathLost
from vsim.host.uplinks import Uplinks
from vsim.rpc import RpcClient, open_channel
from vsim.storage.nfs_export import CreateMode, NfsError, NfsStatus
from vsim.storage.scsi import GOOD, ScsiError, Sense
from vsim.v1 import storage_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["StorageArray"]


class ArrayConnection:
    """One TLS channel to the array, pinned to the thumbprint the caller expects."""

    def __init__(self, rpc: RpcClient, thumbprint: str, uplinks: Uplinks | None = None) -> None:
        self.rpc = rpc
        self.thumbprint = thumbprint
        self.uplinks = uplinks

    @classmethod
    async def open(
        cls, endpoint: str, expected_thumbprint: str = "", uplinks: Uplinks | None = None
    ) -> ArrayConnection:
        channel, thumbprint = await open_channel(endpoint, pinned=expected_thumbprint or None)
        return cls(RpcClient(channel, SERVICE, timeout=30), thumbprint, uplinks)

    async def call(self, method: str, request: Any) -> Any:
        try:
            if self.uplinks is not None:  # a cut storage link fails every command, both ways
                await self.uplinks.cross("storage")
            reply = await self.rpc.call(method, request, None)
            if self.uplinks is not None:  # cut while the command was out: the reply is lost
                await self.uplinks.cross("storage")
            return reply
        except (HostConnectFault, RequestTimeout) as e:
            # The host's path to the array, not the caller's line to this host:
            # what hostd answers is a datastore it cannot reach.
            raise StoragePathLost(f"no path to the storage array: {e.message}") from None

    async def close(self) -> None:
        await self.rpc.close()


class GrpcStoragePorts:
    """The host's lines to arrays over gRPC, one pinned connection per array, over
    the host's storage uplink (`uplinks`: the live host's, which the fault service
    can cut)."""

    def __init__(self, uplinks: Uplinks | None = None) -> None:
        self._connections: dict[tuple[str, str], ArrayConnection] = {}
        self.uplinks = uplinks

    async def connection(self, endpoint: str, thumbprint: str) -> ArrayConnection:
        """A connection pinned to thumbprint (another pin gets its own, checked anew)."""
        key = (endpoint, thumbprint)
        if key not in self._connections:
            if self.uplinks is not None:
                await self.uplinks.cross("storage")
            self._connections[key] = await ArrayConnection.open(endpoint, thumbprint, self.uplinks)
        return self._connections[key]

    async def block_device(
        self, endpoint: str, thumbprint: str, lun: int, initiator: str
    ) -> ArrayBlockDevice:
        return ArrayBlockDevice(await self.connection(endpoint, thumbprint), initiator, lun)

    async def nfs_client(
        self, endpoint: str, thumbprint: str, export: str, client: str
    ) -> ArrayNfsClient:
        return ArrayNfsClient(await self.connection(endpoint, thumbprint), client, export)

    async def close(self) -> None:
        for connection in self._connections.values():
            await connection.close()
        self._connections.clear()


class ArrayBlockDevice:
    """A LUN as this host's initiator sees it (the VMFS driver's BlockDevice)."""

    def __init__(self, connection: ArrayConnection, initiator: str, lun: int) -> None:
        self.connection = connection
        self.initiator = initiator
        self.lun = lun

    async def _command(self, method: str, **fields: Any) -> pb.ScsiResponse:
        request = pb.ScsiRequest(initiator=self.initiator, lun=self.lun, **fields)
        reply = await self.connection.call(method, request)
        if reply.status.status != GOOD:
            s = reply.status
            sense = Sense(s.sense_key, s.asc, s.ascq, s.detail) if s.sense_key else None
            raise ScsiError(s.status, sense, s.detail, reply.data)
        return reply

    async def capacity(self) -> int:
        reply = await self._command("ReadCapacity")
        return (reply.last_lba + 1) * reply.block_length

    async def read(self, lba: int, blocks: int) -> bytes:
        return (await self._command("Read", lba=lba, blocks=blocks)).data

    async def write(self, lba: int, data: bytes) -> None:
        await self._command("Write", lba=lba, data=data)

    async def compare_and_write(self, lba: int, verify: bytes, data: bytes) -> None:
        await self._command("CompareAndWrite", lba=lba, verify=verify, data=data)

    async def reserve(self) -> None:
        await self._command("Reserve")

    async def release(self) -> None:
        await self._command("Release")

    async def lun_reset(self) -> None:
        await self._command("LunReset")


class ArrayNfsClient:
    """An NFS v3 mount of one export, as root from this host (the NfsClient of the
    NFS lock manager)."""

    def __init__(self, connection: ArrayConnection, client: str, export: str) -> None:
        self.connection = connection
        self.client = client
        self.export = export

    async def _op(self, method: str, **fields: Any) -> pb.NfsResponse:
        request = pb.NfsRequest(client=self.client, uid=0, export=self.export, **fields)
        reply = await self.connection.call(method, request)
        if reply.status:
            raise NfsError(NfsStatus(reply.status), reply.message)
        return reply

    async def fsstat(self) -> tuple[int, int]:
        reply = await self._op("NfsFsstat")
        return reply.total_bytes, reply.free_bytes

    async def lookup(self, directory: str, name: str) -> str:
        return (await self._op("NfsLookup", handle=directory, name=name)).handle

    async def entry(self, directory: str, name: str) -> tuple[str, str, int]:
        reply = await self._op("NfsLookup", handle=directory, name=name)
        return reply.handle, reply.attributes.type, reply.attributes.fileid

    async def create(self, directory: str, name: str, verifier: bytes = b"") -> str:
        mode = CreateMode.EXCLUSIVE if verifier else CreateMode.GUARDED
        reply = await self._op(
            "NfsCreate", handle=directory, name=name, create_mode=mode, verifier=verifier
        )
        return reply.handle

    async def getattr(self, handle: str) -> tuple[str, int]:
        attributes = (await self._op("NfsGetattr", handle=handle)).attributes
        return attributes.type, attributes.size

    async def mkdir(self, directory: str, name: str) -> str:
        return (await self._op("NfsMkdir", handle=directory, name=name)).handle

    async def readdir(self, directory: str) -> list[tuple[str, str, int]]:
        reply = await self._op("NfsReaddir", handle=directory)
        return [(e.name, e.attributes.type, e.attributes.size) for e in reply.entries]

    async def read(self, handle: str, count: int, offset: int = 0) -> bytes:
        return (await self._op("NfsRead", handle=handle, offset=offset, count=count)).data

    async def write(self, handle: str, data: bytes, offset: int = 0) -> None:
        await self._op("NfsWrite", handle=handle, offset=offset, data=data, stable=True)

    async def remove(self, directory: str, name: str) -> None:
        await self._op("NfsRemove", handle=directory, name=name)

    async def rename(self, from_dir: str, from_name: str, to_dir: str, to_name: str) -> None:
        await self._op(
            "NfsRename", handle=from_dir, name=from_name, to_handle=to_dir, to_name=to_name
        )
