"""`python -m vsim.cluster.health HOST:PORT`: exit 0 if the vsim server there answers
gRPC health checking with SERVING (docker-compose's health checks; the image has no
grpc_health_probe). The server's certificate is trusted as presented, as a probe on
the container's own loopback may."""

from __future__ import annotations

import asyncio
import sys

from grpc_health.v1 import health_pb2, health_pb2_grpc

from vsim.rpc import open_channel


async def serving(endpoint: str, timeout: float = 5.0) -> bool:
    channel, _ = await open_channel(endpoint, timeout)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()


def main() -> None:
    try:
        ok = asyncio.run(serving(sys.argv[1]))
    except Exception as e:  # noqa: BLE001 - any failure is "not healthy", said once
        print(f"unhealthy: {e}", file=sys.stderr)
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
