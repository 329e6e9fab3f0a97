"""The ESXi host as a Ray actor: a thin shell around the kernel core and hostd.

One actor per host (`num_cpus=0`, named after the host, detached so it outlives a
vCenter restart). It is given root's password hash, never the password. It keeps
its certificate and local accounts in its data dir, and serves hostd (the HostAgent
service, with health and reflection) on its own TLS port from the actor's loop.
The host itself is assembled by host/boot.py, as in the in-process engine; this
shell adds only the boot lock, the TLS server, Ray's naming and the host's uplinks.
Everything reaches the host through hostd's API, behind its session check.

The uplinks (host/uplinks.py) are what the fault service breaks on a live host,
through Ray rather than hostd (so a host whose management network is cut can still
be mended): hostd's server crosses management, the host's lines to the array cross
storage, and a hang stalls both.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import socket
import struct
from pathlib import Path
from typing import Any

from vsim.clock import Clock, WallClock
from vsim.faults import HostConnectFault
from vsim.host.boot import LocalDisk, boot_host
from vsim.host.fdm.service import GATEWAY, RESTART_CALL_S
from vsim.host.fdm.service import SERVICE as FDM_SERVICE
from vsim.host.hostd.migration import SERVICE as MIGRATION_SERVICE
from vsim.host.storage.array_client import GrpcStoragePorts
from vsim.host.uplinks import Uplinks, over_uplink
from vsim.rpc import RpcClient, open_channel, start_server
from vsim.runtime import Runtime
from vsim.spec import HostSpec
from vsim.tls import load_or_create_identity

VMOTION_ADDRESS_ENV = "VSIM_VMOTION_ADDRESS"
"""The host's address on the vMotion network, where its container has one (set per
host in docker-compose.yml); otherwise its management address."""
BOOT_LOCK = "boot.lock"
BOOT_LOCK_WAIT = 15.0
"""Seconds a boot waits for the previous one's process to be gone (a killed actor's
worker exits moments after ray.kill returns)."""


async def hold_boot_lock(directory: Path, name: str, clock: Clock) -> int:
    """One boot of a host at a time: an exclusive flock on its data dir, held for the
    actor's life (the kernel drops it when the process dies). The host's identity
    lives in that dir, so no second boot vCenter would accept can run beside this
    one: what lets a boot break at once the NFS locks of an earlier one
    (host/storage/nfs_lock.py) and take back its VMFS heartbeat slot."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / BOOT_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = clock.now() + BOOT_LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if clock.now() > deadline:
                os.close(fd)
                raise HostConnectFault(
                    f"another boot of {name} is running (it holds {directory / BOOT_LOCK})"
                ) from None
            await clock.sleep(0.1)


class _PeerLine:
    """A gRPC line to another host's service (a migration's to HostVMotion, the HA
    agent's to HostFdm); each call crosses this host's uplink on `network` first."""

    def __init__(self, rpc: RpcClient, token: str, uplinks: Uplinks, network: str) -> None:
        self._rpc, self._token, self._uplinks, self._network = rpc, token, uplinks, network

    async def call(self, method: str, request: Any) -> Any:
        await self._uplinks.cross(self._network)
        return await self._rpc.call(method, request, self._token)

    async def close(self) -> None:
        await self._rpc.channel.close()


def default_gateway() -> str:
    """The default route's gateway (/proc/net/route), or loopback where there is none
    (`vsim up`: every host on one machine)."""
    try:
        lines = Path("/proc/net/route").read_text().splitlines()[1:]
    except OSError:
        return "127.0.0.1"
    for line in lines:
        fields = line.split()
        if len(fields) > 2 and fields[1] == "00000000" and fields[2] != "00000000":
            return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    return "127.0.0.1"


async def answers(address: str, seconds: float = 1.0) -> bool:
    """Whether an address answers on the network: a TCP connection to it (port 7, or
    the one given as host:port) accepted or refused; silence or no route is no
    answer. What an ICMP echo tells, without needing a raw socket."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "7")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), seconds)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    return True


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
        if advertise == "node":  # its own container: the address Ray knows it by
            import ray

            advertise = ray.util.get_node_ip_address()
        self._dir = Path(data_dir)
        self._name = spec.name
        self._boot_lock: int | None = None
        self._bind, self._advertise = bind, advertise
        self._clock = WallClock(clock_speed)
        # One actor is one boot. A live runtime: its boot id is random, as a real
        # host's is, and its session tokens come from the OS (the simulator seeds both).
        self.runtime = Runtime.live(self._clock, spec.name)
        self.uplinks = Uplinks(spec.name, self._clock)
        self.hostd = boot_host(
            spec,
            LocalDisk.in_directory(self._dir),
            root_password_hash,
            self.runtime,
            GrpcStoragePorts(self.uplinks),
            peers=self._connect_peer,
            fdm_peers=self._connect_fdm,
            gateway=self._ping_gateway,
        )
        self.identity = load_or_create_identity(self._dir / "ssl", spec.name)
        self._server: Any = None
        self._endpoint = ""
        self._booting = asyncio.Lock()

    async def boot(self) -> dict[str, str]:
        """Starts hostd (once); returns where it listens and its thumbprint."""
        async with self._booting:
            if self._boot_lock is None:  # before hostd can open a disk
                self._boot_lock = await hold_boot_lock(self._dir, self._name, self._clock)
            if self._server is None:
                tables = [
                    over_uplink(self.hostd.table, self.uplinks, "management"),
                    over_uplink(self.hostd.migrations.table, self.uplinks, "vmotion"),
                    over_uplink(self.hostd.fdm.table, self.uplinks, "management"),
                ]
                self._server, port = await start_server(self.identity, self._bind, 0, tables)
                self._endpoint = f"{self._advertise}:{port}"
                self.hostd.management_endpoint = self._endpoint
                # The same server on the host's vMotion address (its own network in
                # docker-compose; loopback under `vsim up`).
                vmotion = os.environ.get(VMOTION_ADDRESS_ENV) or self._advertise
                self.hostd.vmotion_endpoint = f"{vmotion}:{port}"
        return {"endpoint": self._endpoint, "thumbprint": self.identity.thumbprint}

    async def _connect_peer(self, endpoint: str, thumbprint: str, token: str) -> _PeerLine:
        """A line over this host's vMotion uplink to another host's HostVMotion
        service, its certificate pinned."""
        await self.uplinks.cross("vmotion")
        channel, _ = await open_channel(endpoint, pinned=thumbprint)
        rpc = RpcClient(channel, MIGRATION_SERVICE, timeout=60)
        return _PeerLine(rpc, token, self.uplinks, "vmotion")

    async def _connect_fdm(self, endpoint: str, thumbprint: str, token: str) -> _PeerLine:
        """A line over this host's management uplink to another host's HA agent, its
        certificate pinned."""
        await self.uplinks.cross("management")
        channel, _ = await open_channel(endpoint, pinned=thumbprint)
        rpc = RpcClient(channel, FDM_SERVICE, timeout=RESTART_CALL_S)
        return _PeerLine(rpc, token, self.uplinks, "management")

    async def _ping_gateway(self, address: str) -> bool:
        """The isolation address, pinged over the management uplink ("gateway": the
        default route's gateway)."""
        try:
            await self.uplinks.cross("management")
        except HostConnectFault:
            return False
        return await answers(default_gateway() if address == GATEWAY else address)

    async def info(self) -> dict[str, str]:
        """Where hostd listens ("" before boot) and the host's thumbprint."""
        return {"endpoint": self._endpoint, "thumbprint": self.identity.thumbprint}

    # faults (the fault service's, through Ray)

    async def hang(self, seconds: float) -> dict[str, object]:
        """hostd stops answering and the host's I/O stalls for `seconds` (0: ends it)."""
        self.uplinks.hang(seconds)
        return self.uplinks.state()

    async def set_link(self, network: str, up: bool) -> dict[str, object]:
        """Cuts or mends one of the host's networks; the others keep working."""
        self.uplinks.set_link(network, up)
        return self.uplinks.state()

    async def uplink_state(self) -> dict[str, object]:
        return self.uplinks.state()

    async def shutdown(self) -> None:
        await self.hostd.close()
        if self._server is not None:
            await self._server.stop(grace=1.0)
            self._server = None
