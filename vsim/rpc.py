"""gRPC serving and calling for every vsim server.

`serve_core` serves a server's dispatch table (vsim/dispatch.py): each call runs
through `dispatch.serve`, the one path in-process calls take too, and a fault is
sent as a gRPC status carrying the vSphere fault. Handlers never see gRPC and a
client never sees a traceback. `start_server` adds TLS, health checking and
reflection, as every vsim server has them (imported there: a client, such as each
CLI command, loads only what calling needs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

from vsim.dispatch import DispatchTable, serve, serve_stream
from vsim.faults import (
    HostConnectFault,
    InvalidArgument,
    SSLVerifyFault,
    VimFault,
    from_rpc_error,
)
from vsim.passwords import check_token
from vsim.tls import (
    Identity,
    common_name_of,
    fetch_server_certificate,
    split_endpoint,
    thumbprint_of_pem,
)

SESSION_KEY = "vsim-session"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def session_token(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's session token from metadata, as text: a value gRPC could not
    decode as UTF-8 arrives as latin-1 text, and a binary `vsim-session-bin` entry is
    read as latin-1 too. Each server's gate (vsim/dispatch.py) judges the token's shape (and
    public methods and the array ignore it), so odd bytes never crash a call."""
    for key, value in context.invocation_metadata() or ():
        if key == SESSION_KEY:
            return value
        if key == SESSION_KEY + "-bin":
            return bytes(value).decode("latin-1")
    return None


async def _abort(context: grpc.aio.ServicerContext, fault: VimFault) -> None:
    from grpc_status import rpc_status

    await context.abort_with_status(rpc_status.to_status(fault.to_status()))


def _unary(table: DispatchTable, name: str) -> Callable:
    async def call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await serve(table, name, data, session_token(context))
        except VimFault as fault:
            await _abort(context, fault)

    return call


def _streaming(table: DispatchTable, name: str) -> Callable:
    async def call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            async for item in serve_stream(table, name, data, session_token(context)):
                yield item
        except VimFault as fault:
            await _abort(context, fault)

    return call


def serve_core(server: grpc.aio.Server, table: DispatchTable) -> None:
    """Registers every RPC of the table's service on `server`, run through the table
    (vsim/dispatch.py: the same path in-process calls take)."""
    handlers = {}
    for name, entry in table.entries.items():
        make = (
            grpc.unary_stream_rpc_method_handler
            if entry.streaming
            else grpc.unary_unary_rpc_method_handler
        )
        wrap = _streaming if entry.streaming else _unary
        handlers[name] = make(
            wrap(table, name),
            request_deserializer=None,  # raw bytes: the chokepoint parses them
            response_serializer=entry.response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(table.service.full_name, handlers),)
    )


async def start_server(
    identity: Identity,
    bind: str,
    port: int,
    tables: list[DispatchTable],
) -> tuple[grpc.aio.Server, int]:
    """A started TLS server with health checking and reflection; returns it and its port."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1._async import HealthServicer
    from grpc_reflection.v1alpha import reflection

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    for table in tables:
        serve_core(server, table)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [t.service.full_name for t in tables]
    reflection.enable_server_reflection(
        names
        + [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    credentials = grpc.ssl_server_credentials([(identity.key_pem, identity.cert_pem)])
    try:
        bound = server.add_secure_port(f"{bind}:{port}", credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {bind}:{port}: the port is in use or not allowed")
    await server.start()
    for name in names + [""]:
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, bound


def metadata(session: str | None) -> tuple[tuple[str, str], ...]:
    """The call's metadata. A malformed token is refused here with NotAuthenticated
    (gRPC itself cannot send non-ASCII text metadata and fails without a fault)."""
    return ((SESSION_KEY, check_token(session)),) if session else ()


async def open_channel(
    endpoint: str, timeout: float = 10.0, pinned: str | None = None, hint: str = ""
) -> tuple[grpc.aio.Channel, str]:
    """A TLS channel to endpoint that trusts exactly the certificate the server presents
    now, and that certificate's thumbprint. With `pinned`, a server presenting another
    certificate is refused (SSLVerifyFault carrying the presented thumbprint, and the
    hint of what to do) before anything is sent; a server that later presents another
    certificate fails the handshake, since only this one is trusted."""
    try:
        host, port = split_endpoint(endpoint)
        pem = await asyncio.to_thread(fetch_server_certificate, host, port, timeout)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None
    except OSError as e:
        raise HostConnectFault(f"cannot reach {endpoint}: {e}") from None
    presented = thumbprint_of_pem(pem)
    if pinned is not None and pinned != presented:
        raise SSLVerifyFault(
            f"the certificate of {endpoint} has changed: pinned thumbprint {pinned}, "
            f"presented {presented}" + (f". {hint}" if hint else ""),
            thumbprint=presented,
        )
    channel = grpc.aio.secure_channel(
        endpoint,
        grpc.ssl_channel_credentials(root_certificates=pem),
        options=[
            ("grpc.ssl_target_name_override", common_name_of(pem)),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    return channel, presented


class RpcClient:
    """Calls the methods of one service by name over a channel, with the session in
    metadata and every failure turned into the VimFault it carries."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        service: descriptor.ServiceDescriptor,
        timeout: float = 30.0,
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        self._methods: dict[str, Any] = {}
        for method in service.methods:
            response_cls = message_factory.GetMessageClass(method.output_type)
            make = channel.unary_stream if method.server_streaming else channel.unary_unary
            self._methods[method.name] = make(
                f"/{service.full_name}/{method.name}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_cls.FromString,
            )

    async def call(
        self, method: str, request: Any, session: str | None, timeout: float | None = None
    ) -> Any:
        sent = metadata(session)
        try:
            return await self._methods[method](
                request, metadata=sent, timeout=timeout or self.timeout
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def stream(self, method: str, request: Any, session: str | None) -> AsyncIterator[Any]:
        call = self._methods[method](request, metadata=metadata(session))
        try:
            async for item in call:
                yield item
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.channel.close()
