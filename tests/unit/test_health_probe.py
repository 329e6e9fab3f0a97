"""The compose health probe: SERVING is healthy, anything else (a status other than
SERVING, nothing listening) is not, with exit codes docker-compose reads."""

from __future__ import annotations

import socket

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from vsim.cluster.health import main, serving

pytestmark = pytest.mark.real_loop  # a real gRPC server and sockets


@pytest.fixture
async def plaintext_server():
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(None)


async def test_a_plaintext_server_is_healthy_only_while_serving(plaintext_server):
    servicer, endpoint = plaintext_server
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert await serving(endpoint, plaintext=True)
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert not await serving(endpoint, plaintext=True)


def test_nothing_listening_exits_1_with_a_reason(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(SystemExit) as exit_:
        main(["--plaintext", endpoint])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.startswith("unhealthy: ")
