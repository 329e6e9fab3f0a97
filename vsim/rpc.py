"""The one chokepoint every vsim gRPC server goes through.

`serve_core` exposes a plain-Python core whose methods are named like the RPCs of a
service: each call is authenticated (unless public), dispatched, and any failure
mapped to a gRPC status carrying the vSphere fault. Handlers never see gRPC and a
client never sees a traceback. `start_server` adds TLS, health checking and
reflection, as every vsim server has them (imported there: a client, such as each
CLI command, loads only what calling needs).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError

from vsim.faults import (
    HostConnectFault,
    InvalidArgument,
    InvalidRequest,
    SSLVerifyFault,
    SystemError_,
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
log = logging.getLogger("vsim.rpc")

Authenticate = Callable[[str | None, str], Any]


def session_token(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's session token from metadata, as text: a value gRPC could not
    decode as UTF-8 arrives as latin-1 text, and a binary `vsim-session-bin` entry is
    read as latin-1 too. Each server's authenticate judges the token's shape (and
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


def _internal(method: str, exc: Exception) -> VimFault:
    log.exception("unexpected error in %s", method)
    return SystemError_(f"internal error in {method} ({type(exc).__name__}); see the server log")


def _decoder(name: str, request_cls: Any) -> Callable[[bytes], Any]:
    """Parses a request's bytes inside the chokepoint, so bytes that are not the RPC's
    message get InvalidRequest (INVALID_ARGUMENT), not gRPC's UNKNOWN DecodeError."""
    type_name = request_cls.DESCRIPTOR.full_name

    def decode(data: bytes) -> Any:
        try:
            return request_cls.FromString(data)
        except DecodeError:
            raise InvalidRequest(
                f"the request to {name} is not a valid {type_name} message "
                f"({len(data)} bytes that do not parse); send the message the "
                "service's .proto declares for this method"
            ) from None

    return decode


def _unary(core: Any, name: str, authenticate: Authenticate, decode: Callable) -> Callable:
    handler = getattr(core, name)

    async def call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(data)
            session = authenticate(session_token(context), name)
            result = handler(request, session)
            return await result if inspect.isawaitable(result) else result
        except VimFault as fault:
            await _abort(context, fault)
        except Exception as exc:  # noqa: BLE001 - the chokepoint maps everything
            await _abort(context, _internal(name, exc))

    return call


def _streaming(core: Any, name: str, authenticate: Authenticate, decode: Callable) -> Callable:
    handler = getattr(core, name)

    async def call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = decode(data)
            session = authenticate(session_token(context), name)
            async for item in handler(request, session):
                yield item
        except VimFault as fault:
            await _abort(context, fault)
        except Exception as exc:  # noqa: BLE001
            await _abort(context, _internal(name, exc))

    return call


def serve_core(
    server: grpc.aio.Server,
    service: descriptor.ServiceDescriptor,
    core: Any,
    authenticate: Authenticate,
) -> None:
    """Registers every method of `service` on `server`, dispatched to `core`."""
    handlers = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        make = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else (grpc.unary_unary_rpc_method_handler)
        )
        wrap = _streaming if method.server_streaming else _unary
        handlers[method.name] = make(
            wrap(core, method.name, authenticate, _decoder(method.name, request_cls)),
            request_deserializer=None,  # raw bytes: the chokepoint parses them
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


async def start_server(
    identity: Identity,
    bind: str,
    port: int,
    services: list[tuple[descriptor.ServiceDescriptor, Any, Authenticate]],
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
    for service, core, authenticate in services:
        serve_core(server, service, core, authenticate)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = [s.full_name for s, _, _ in services]
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
