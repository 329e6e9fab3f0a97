"""The array process: the StorageArray service over TLS, with health and reflection.
`vsim up` embeds it; docker-compose runs it as a container of its own."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
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


RESTART_GRACE = 0.2
"""Seconds the calls in flight get to finish when the array program restarts (the
RestartArray reply among them); the rest are cut off with their connections."""


@dataclass
class RunningArray:
    array: StorageArray
    server: grpc.aio.Server
    identity: Identity
    endpoint: str
    service: ArrayService
    bind: str
    port: int
    _restarting: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def restart_server(self) -> None:
        """The array program's restart, as the network sees it: the server stops
        (every connection drops; a command still waiting is cut off) and listens on
        the same port again, and the hosts' channels connect anew."""
        async with self._restarting:
            await self.server.stop(grace=RESTART_GRACE)
            self.server, _ = await start_server(
                self.identity, self.bind, self.port, [self.service.table]
            )

    async def stop(self) -> None:
        async with self._restarting:
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
    running = RunningArray(array, server, identity, f"{bind}:{bound}", service, bind, bound)
    service.on_restart = running.restart_server
    return running
