"""`python -m vsim.cluster.health [--plaintext] HOST:PORT`: exit 0 if the gRPC server
there answers health checking with SERVING (docker-compose's health checks; the image
has no grpc_health_probe). A vsim server's certificate is trusted as presented, as a
probe on the container's own loopback may; `--plaintext` is for servers without TLS
(the Ray head's GCS)."""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vsim.rpc import open_channel


async def serving(endpoint: str, timeout: float = 5.0, plaintext: bool = False) -> bool:
    if plaintext:
        channel = grpc.aio.insecure_channel(endpoint)
    else:
        channel, _ = await open_channel(endpoint, timeout)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vsim.cluster.health")
    parser.add_argument("--plaintext", action="store_true", help="no TLS (Ray's GCS)")
    parser.add_argument("endpoint", help="HOST:PORT")
    args = parser.parse_args(argv)
    try:
        ok = asyncio.run(serving(args.endpoint, plaintext=args.plaintext))
    except Exception as e:  # noqa: BLE001 - any failure is "not healthy", said once
        print(f"unhealthy: {e}", file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
