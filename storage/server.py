"""The array process: the StorageArray service over TLS, with health and reflection.
`vsim up` embeds it; docker-compose runs it as a container of its own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from vsim.clock import WallClock
from vsim.rpc import start_server
from vsim.runtime import Runtime
from vsim.storage.array import StorageArray
from vsim.storage.service import SERVICE, ArrayService
from vsim.tls import Identity, load_or_create_identity

__all__ = ["SERVICE", "RunningArray", "start_array"]

COMMON_NAME = "array"


@dataclass
class RunningArray:
    array: StorageArray
    server: grpc.aio.Server
    identity: Identity
    endpoint: str

    async def stop(self) -> None:
        await self.server.stop(grace=2.0)
        self.array.close()


async def start_array(data_dir: Path, port: int = 0, bind: str = "127.0.0.1") -> RunningArray:
    """Starts (or restarts) the array kept in data_dir, on a live runtime (its serials
    differ between runs, its management key comes from the OS)."""
    array = StorageArray(data_dir, Runtime.live(WallClock(), "array"))
    try:
        identity = load_or_create_identity(data_dir / "ssl", COMMON_NAME)
        service = ArrayService(array)
        server, bound = await start_server(identity, bind, port, [service.table])
    except BaseException:
        array.close()
        raise
    return RunningArray(array, server, identity, f"{bind}:{bound}")
