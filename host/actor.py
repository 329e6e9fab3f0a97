"""The ESXi host as a Ray actor: a thin shell around the kernel core and hostd.

One actor per host (`num_cpus=0`, named after the host, detached so it outlives a
vCenter restart). It is given root's password hash, never the password. It keeps
its certificate and local accounts in its data dir, and serves hostd (the HostAgent
service, with health and reflection) on its own TLS port from the actor's loop.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from vsim.clock import WallClock
from vsim.cluster.spec import HostSpec
from vsim.host.accounts import FileAccountStore, HostAccounts
from vsim.host.hostd import Hostd
from vsim.host.kernel import HostKernel
from vsim.rpc import start_server
from vsim.tls import load_or_create_identity
from vsim.v1 import host_agent_pb2

SERVICE = host_agent_pb2.DESCRIPTOR.services_by_name["HostAgent"]


class EsxiHost:
    def __init__(
        self,
        spec_json: str,
        root_password_hash: str,
        data_dir: str,
        clock_speed: float = 1.0,
        bind: str = "127.0.0.1",
        advertise: str = "127.0.0.1",
    ) -> None:
        spec = HostSpec(**json.loads(spec_json))
        self._dir = Path(data_dir)
        self._bind, self._advertise = bind, advertise
        accounts = HostAccounts(FileAccountStore(self._dir / "accounts.json"), root_password_hash)
        self.identity = load_or_create_identity(self._dir / "ssl", spec.name)
        self.hostd = Hostd(HostKernel(spec, WallClock(clock_speed)), accounts)
        self._server: Any = None
        self._endpoint = ""
        self._booting = asyncio.Lock()

    async def boot(self) -> dict[str, str]:
        """Starts hostd (once); returns where it listens and its thumbprint."""
        async with self._booting:
            if self._server is None:
                self._server, port = await start_server(
                    self.identity, self._bind, 0, [(SERVICE, self.hostd, self.hostd.authenticate)]
                )
                self._endpoint = f"{self._advertise}:{port}"
        return {"endpoint": self._endpoint, "thumbprint": self.identity.thumbprint}

    async def info(self) -> dict[str, str]:
        """Where hostd listens ("" before boot) and the host's thumbprint."""
        return {"endpoint": self._endpoint, "thumbprint": self.identity.thumbprint}

    async def shutdown(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
