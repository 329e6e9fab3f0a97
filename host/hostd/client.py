"""vCenter's line to a host's hostd over gRPC and TLS (the Ray engine's HostPort)."""

from __future__ import annotations

from typing import Any

from vsim.rpc import RpcClient, open_channel
from vsim.v1 import host_agent_pb2

SERVICE = host_agent_pb2.DESCRIPTOR.services_by_name["HostAgent"]


class GrpcHostPort:
    def __init__(self, name: str, endpoint: str, thumbprint: str, client: RpcClient) -> None:
        self.name = name
        self.endpoint = endpoint
        self.thumbprint = thumbprint
        self._client = client

    @classmethod
    async def open(cls, name: str, endpoint: str) -> GrpcHostPort:
        channel, thumbprint = await open_channel(endpoint)
        return cls(name, endpoint, thumbprint, RpcClient(channel, SERVICE))

    async def call(self, method: str, request: Any, session: str | None) -> Any:
        return await self._client.call(method, request, session)

    async def close(self) -> None:
        await self._client.close()
