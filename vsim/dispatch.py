"""One dispatch table per server, and the one path every call takes through it.

A `DispatchTable` maps each RPC of a service (from its proto descriptor) to the
handler that answers it and what the caller needs (`Need`): no session, any
session, the server's administrator role, or vCenter's vpxuser. The server's
`Gate` turns a session token into the caller its handlers see, judging the entry's
need; a later privilege or lockdown rule is one more field on `Entry` that the gate
reads, not a check written into handlers.

`call` and `stream` run one call: copy the request (as a wire would), admit the
caller, run the handler (plain or async) and map every failure: a VimFault passes,
anything else becomes SystemError_ with one log line. The gRPC server (vsim/rpc.py),
the in-process engine and `LocalTransport` (the SDK client without sockets) all go
through them, so both engines fail the same way. Nothing here imports gRPC.
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf import descriptor, message_factory
from google.protobuf.message import DecodeError, Message

from vsim.faults import InvalidRequest, SystemError_, VimFault, fault_from_proto
from vsim.passwords import check_token

log = logging.getLogger("vsim.rpc")
F = TypeVar("F", bound=Callable[..., Any])


class Need(enum.Enum):
    """What a caller must be to make a call."""

    PUBLIC = "public"
    """No session (Login, and the array's SCSI and NFS, which trust the network)."""
    SESSION = "session"
    """Any logged-in caller."""
    ADMINISTRATOR = "administrator"
    """A caller with the server's administrator role (or the array's management key)."""
    VPXUSER = "vpxuser"
    """vCenter's own account on a host."""


PUBLIC, SESSION, ADMINISTRATOR, VPXUSER = Need


@dataclass(frozen=True)
class Entry:
    """One RPC: who may call it, who answers it, and its message types."""

    name: str
    need: Need
    handler: Callable[[Any, Any], Any]
    """handler(request, caller): the response (or an awaitable of it, or an async
    iterator of them for a streaming RPC), or raises a VimFault."""
    request_type: type[Message]
    response_type: type[Message]
    streaming: bool


class Gate(Protocol):
    """A server's session check: the caller its handlers see, or a VimFault."""

    judges: frozenset[Need]
    """The needs this server can judge; a table asking for another is refused."""

    def admit(self, token: str | None, entry: Entry) -> Any: ...


def needs(need: Need) -> Callable[[F], F]:
    """Marks a core's method, named like its RPC, with what a caller needs; see
    `DispatchTable.of_methods`."""

    def mark(method: F) -> F:
        method.__vsim_need__ = need  # type: ignore[attr-defined]
        return method

    return mark


class DispatchTable:
    """Every RPC of one service, each declared exactly once."""

    def __init__(
        self,
        service: descriptor.ServiceDescriptor,
        gate: Gate,
        handlers: Mapping[str, tuple[Need, Callable[[Any, Any], Any]]],
    ) -> None:
        declared = {m.name for m in service.methods}
        missing, unknown = declared - set(handlers), set(handlers) - declared
        if missing or unknown:
            raise ValueError(
                f"the table of {service.full_name} must declare each RPC once: "
                f"missing {sorted(missing)}, not in the service {sorted(unknown)}"
            )
        self.service = service
        self.gate = gate
        self.entries: dict[str, Entry] = {}
        for method in service.methods:
            need, handler = handlers[method.name]
            if need not in gate.judges:
                raise ValueError(f"{method.name} needs {need.value}, which this gate cannot judge")
            self.entries[method.name] = Entry(
                method.name,
                need,
                handler,
                message_factory.GetMessageClass(method.input_type),
                message_factory.GetMessageClass(method.output_type),
                method.server_streaming,
            )

    @classmethod
    def of_methods(
        cls, service: descriptor.ServiceDescriptor, gate: Gate, core: Any
    ) -> DispatchTable:
        """The table of a core whose methods are named like the RPCs and marked
        with `needs`."""
        handlers = {}
        for method in service.methods:
            handler = getattr(core, method.name, None)
            need = getattr(handler, "__vsim_need__", None)
            if need is None:
                raise ValueError(f"{type(core).__name__}.{method.name} is missing or unmarked")
            handlers[method.name] = (need, handler)
        return cls(service, gate, handlers)

    def entry(self, method: str) -> Entry:
        try:
            return self.entries[method]
        except KeyError:
            raise InvalidRequest(
                f"{self.service.full_name} has no method {method[:80]!r}"
            ) from None

    def authenticate(self, token: str | None, method: str) -> Any:
        """The caller of `method` with this token, as a call would be admitted."""
        return self.gate.admit(token, self.entry(method))


def decode(entry: Entry, data: bytes) -> Message:
    """The request parsed from bytes; InvalidRequest (not a DecodeError) for bytes
    that are not the RPC's message."""
    try:
        return entry.request_type.FromString(data)
    except DecodeError:
        raise InvalidRequest(
            f"the request to {entry.name} is not a valid "
            f"{entry.request_type.DESCRIPTOR.full_name} message ({len(data)} bytes that "
            "do not parse); send the message the service's .proto declares for this method"
        ) from None


def internal(method: str, exc: Exception) -> VimFault:
    """What an unexpected exception becomes: a SystemError, and the traceback logged."""
    log.exception("unexpected error in %s", method)
    return SystemError_(f"internal error in {method} ({type(exc).__name__}); see the server log")


def _request(entry: Entry, request: Message | bytes) -> Message:
    data = request if isinstance(request, bytes) else request.SerializeToString()
    return decode(entry, data)


def _checked(entry: Entry, response: Any) -> Message:
    if not isinstance(response, entry.response_type):
        raise TypeError(f"{entry.name} answered {type(response).__name__}")
    return response


async def serve(table: DispatchTable, method: str, request: Message | bytes, token: str | None):
    """One unary call as the server runs it: the handler's own response."""
    entry = table.entry(method)
    try:
        decoded = _request(entry, request)  # bad bytes are InvalidRequest, session or not
        result = entry.handler(decoded, table.gate.admit(token, entry))
        return _checked(entry, await result if inspect.isawaitable(result) else result)
    except VimFault:
        raise
    except Exception as exc:  # noqa: BLE001 - the chokepoint maps everything
        raise internal(method, exc) from None


async def serve_stream(
    table: DispatchTable, method: str, request: Message | bytes, token: str | None
) -> AsyncIterator[Message]:
    """One streaming call as the server runs it."""
    entry = table.entry(method)
    try:
        decoded = _request(entry, request)
        async for item in entry.handler(decoded, table.gate.admit(token, entry)):
            yield _checked(entry, item)
    except VimFault:
        raise
    except Exception as exc:  # noqa: BLE001
        raise internal(method, exc) from None


def _copy(message: Message) -> Message:
    return type(message).FromString(message.SerializeToString())


def _as_received(fault: VimFault) -> VimFault:
    """The fault as a client decodes it from the wire (name, message, properties)."""
    return fault_from_proto(fault.to_proto())


async def call(table: DispatchTable, method: str, request: Message, token: str | None) -> Message:
    """One call in this process, as over gRPC: the request and the response are
    copies, and a failure arrives as the fault a remote caller would decode."""
    try:
        return _copy(await serve(table, method, request, token))
    except VimFault as fault:
        raise _as_received(fault) from None


async def stream(
    table: DispatchTable, method: str, request: Message, token: str | None
) -> AsyncIterator[Message]:
    """One streaming call in this process, as over gRPC."""
    items = serve_stream(table, method, request, token)
    try:
        async for item in items:
            yield _copy(item)
    except VimFault as fault:
        raise _as_received(fault) from None
    finally:
        await items.aclose()


class Transport(Protocol):
    """How a typed client reaches a service: `vsim.rpc.RpcClient` over gRPC, or
    `LocalTransport` in this process."""

    async def call(
        self, method: str, request: Any, session: str | None, timeout: float | None = None
    ) -> Any: ...

    def stream(self, method: str, request: Any, session: str | None) -> AsyncIterator[Any]: ...

    async def close(self) -> None: ...


class LocalTransport:
    """A service's table in this process, reached as over gRPC but without sockets:
    the same copies, session check, error mapping and faults. A session token is
    judged as `vsim.rpc.metadata` judges it before sending. There is no deadline: the
    handlers' own waits (on their clock) bound a call."""

    def __init__(self, table: DispatchTable) -> None:
        self.table = table

    async def call(
        self, method: str, request: Any, session: str | None, timeout: float | None = None
    ) -> Any:
        return await call(self.table, method, request, _sent(session))

    async def stream(self, method: str, request: Any, session: str | None) -> AsyncIterator[Any]:
        async for item in stream(self.table, method, request, _sent(session)):
            yield item

    async def close(self) -> None:
        pass


def _sent(session: str | None) -> str | None:
    return check_token(session) if session else None
