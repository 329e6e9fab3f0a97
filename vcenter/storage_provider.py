"""vCenter's management line to the storage array, as a storage provider (VASA) is
in vSphere: LUNs, masking and exports are made by the array, and vCenter asks it to
on behalf of an administrator.

The array authorises management with its management key (see storage/service.py),
which vCenter holds and the hosts never get: hosts name their own initiator, so a
host that could manage the array could map itself any LUN. A provider calls the
array's StorageArray RPCs by name with that key, over gRPC (a remote array) or
in this process (the in-process engine's array), through the same checks.
"""

from __future__ import annotations

from typing import Any, Protocol

from vsim import dispatch
from vsim.faults import HostConnectFault, InvalidState, RequestTimeout
from vsim.rpc import RpcClient, open_channel
from vsim.storage.array import StorageArray
from vsim.storage.service import ArrayService
from vsim.v1 import storage_pb2

SERVICE = storage_pb2.DESCRIPTOR.services_by_name["StorageArray"]
CALL_TIMEOUT = 30.0


class StorageProvider(Protocol):
    async def call(self, method: str, request: Any) -> Any:
        """Calls a StorageArray management RPC with the management key."""
        ...

    async def close(self) -> None: ...


class RemoteStorageProvider:
    """The array over gRPC+TLS, pinned to the thumbprint vCenter was given; the line
    is opened at the first call and again after the array went away."""

    def __init__(self, endpoint: str, thumbprint: str, key: str) -> None:
        self.endpoint = endpoint
        self._thumbprint = thumbprint
        self._key = key
        self._rpc: RpcClient | None = None

    async def call(self, method: str, request: Any) -> Any:
        try:
            if self._rpc is None:
                channel, _ = await open_channel(
                    self.endpoint,
                    pinned=self._thumbprint or None,
                    hint="the array was re-created; give vCenter its new thumbprint",
                )
                self._rpc = RpcClient(channel, SERVICE, timeout=CALL_TIMEOUT)
            return await self._rpc.call(method, request, self._key)
        except (HostConnectFault, RequestTimeout) as fault:
            await self.close()
            raise InvalidState(
                f"the storage array at {self.endpoint} does not answer ({fault.message}); "
                "nothing was changed on it"
            ) from None

    async def close(self) -> None:
        rpc, self._rpc = self._rpc, None
        if rpc is not None:
            await rpc.close()


class LocalStorageProvider:
    """An array in this process (the in-process engine), through the array's dispatch
    table as over gRPC: the same key check, copies and error mapping."""

    def __init__(self, array: StorageArray) -> None:
        self._table = ArrayService(array).table
        self._key = array.management_key

    async def call(self, method: str, request: Any) -> Any:
        return await dispatch.call(self._table, method, request, self._key)

    async def close(self) -> None:
        pass
