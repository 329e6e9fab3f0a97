"""The gRPC chokepoint (vsim/rpc.py) over real gRPC+TLS on loopback, without Ray:
bytes that are not the RPC's message are INVALID_ARGUMENT with InvalidRequest on
every server (vCenter, hostd, the array), and malformed session tokens, in text or
binary metadata, are UNAUTHENTICATED with NotAuthenticated saying what is wrong."""

from __future__ import annotations

import grpc
import pytest
from vclab import Lab

from vsim.cluster.client import VCenterClient
from vsim.faults import InvalidRequest, NotAuthenticated, from_rpc_error
from vsim.rpc import SESSION_KEY, RpcClient, open_channel, start_server
from vsim.storage.server import start_array
from vsim.tls import make_identity
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.server import SERVICE as VCENTER
from vsim.vcenter.sessions import ADMINISTRATOR

pytestmark = pytest.mark.real_loop  # real gRPC servers and TLS on loopback

HOST_AGENT = hpb.DESCRIPTOR.services_by_name["HostAgent"]
NOT_A_MESSAGE = b"\xff\xff\xff\xff"
"""A field tag whose varint never ends: no message parses from it."""
BAD_UTF8 = b"\x0a\x02\xc3\x28"
"""Field 1 (a string in every request used here) holding invalid UTF-8."""


@pytest.fixture
async def servers(lab: Lab, tmp_path):
    """vCenter and esxi-01's hostd behind real TLS gRPC servers, and an array."""
    started = []
    endpoints = {}
    for name, core in [("vcenter", lab.vc), ("hostd", lab.engine.running("esxi-01"))]:
        server, port = await start_server(make_identity(name), "127.0.0.1", 0, [core.table])
        started.append(server)
        endpoints[name] = f"127.0.0.1:{port}"
    array = await start_array(tmp_path / "array")
    endpoints["array"] = array.endpoint
    channels = {}
    for name, endpoint in endpoints.items():
        channels[name], _ = await open_channel(endpoint)
    yield channels
    for channel in channels.values():
        await channel.close()
    for server in started:
        await server.stop(None)
    await array.stop()


async def raw_call(channel: grpc.aio.Channel, path: str, data: bytes, metadata=()) -> grpc.RpcError:
    """Sends bytes as they are to path; the error the call ended with."""
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as failed:
        await call(data, metadata=metadata, timeout=10)
    return failed.value


@pytest.mark.parametrize("data", [NOT_A_MESSAGE, BAD_UTF8], ids=["corrupt", "bad-utf8"])
@pytest.mark.parametrize(
    "server, path, message",
    [
        ("vcenter", "/vsim.v1.VCenter/GetVm", "vsim.v1.VmRequest"),
        ("vcenter", "/vsim.v1.VCenter/Login", "vsim.v1.LoginRequest"),
        ("hostd", "/vsim.v1.HostAgent/Login", "vsim.v1.HostLoginRequest"),
        ("hostd", "/vsim.v1.HostAgent/UnregisterVm", "vsim.v1.HostVmRequest"),
        ("array", "/vsim.v1.StorageArray/Inquiry", "vsim.v1.ScsiRequest"),
    ],
)
async def test_bytes_that_are_not_the_message_are_invalid_argument_on_every_server(
    servers, server: str, path: str, message: str, data: bytes
):
    error = await raw_call(servers[server], path, data)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    fault = from_rpc_error(error)
    assert isinstance(fault, InvalidRequest)
    assert f"not a valid {message} message" in fault.message


async def test_a_streaming_call_with_undecodable_bytes_is_invalid_argument(servers):
    call = servers["vcenter"].unary_stream(
        "/vsim.v1.VCenter/WatchEvents", request_serializer=None, response_deserializer=None
    )
    with pytest.raises(grpc.RpcError) as failed:
        async for _ in call(NOT_A_MESSAGE, timeout=10):
            pass
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(from_rpc_error(failed.value), InvalidRequest)


@pytest.mark.parametrize(
    "server, path",
    [
        ("vcenter", "/vsim.v1.VCenter/ListHosts"),
        ("hostd", "/vsim.v1.HostAgent/ListVms"),
    ],
)
@pytest.mark.parametrize(
    "token, problem",
    [
        ("tök".encode() + b"x" * 40, "non-ASCII"),
        (b"\xff\xfe" * 30, "non-ASCII"),
        (b"x" * 43 + b"\x00", "44 characters long"),
    ],
    ids=["utf-8", "latin-1", "nul"],
)
async def test_a_malformed_binary_session_token_is_unauthenticated(
    servers, server: str, path: str, token: bytes, problem: str
):
    metadata = ((SESSION_KEY + "-bin", token),)
    error = await raw_call(servers[server], path, b"", metadata)
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    fault = from_rpc_error(error)
    assert isinstance(fault, NotAuthenticated)
    assert "malformed" in fault.message and problem in fault.message


async def test_a_non_ascii_session_is_refused_by_the_client_as_not_authenticated(servers):
    """gRPC cannot send non-ASCII text metadata (it failed with a raw ExecuteBatchError)."""
    rpc = RpcClient(servers["vcenter"], VCENTER)
    with pytest.raises(NotAuthenticated, match="malformed .*non-ASCII"):
        await rpc.call("ListHosts", pb.ListHostsRequest(), "tök" + "x" * 40)
    with pytest.raises(NotAuthenticated, match="malformed .*non-ASCII"):
        async for _ in rpc.stream("WatchEvents", pb.WatchEventsRequest(), "ключ" * 11):
            pass


async def test_login_works_whatever_session_the_client_still_holds(servers, lab: Lab):
    client = VCenterClient(
        RpcClient(servers["vcenter"], VCENTER), "vcenter", "", session="tök-damaged"
    )
    token = await client.login(ADMINISTRATOR, lab.vc.sessions.initial_password())
    assert client.session == token
    assert [h.name for h in await client.hosts()] == ["esxi-01", "esxi-02", "esxi-03"]
