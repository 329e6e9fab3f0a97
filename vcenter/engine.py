"""What vCenter needs from an engine: hosts it can boot, find, reach and retire.

A `ClusterSpec` is realised by an engine: `RayEngine` (one Ray actor per host, hostd
on its own TLS port) or `InProcessEngine` (every host core in this process, no Ray,
no sockets). vCenter talks to either through the same two interfaces, so the rules
it and the hosts enforce are the same in both.
"""

from __future__ import annotations

from typing import Any, Protocol

from vsim.spec import HostSpec


class HostPort(Protocol):
    """vCenter's line to one host's hostd."""

    name: str
    endpoint: str
    thumbprint: str
    """SHA-256 thumbprint of the certificate the host presented on this connection."""

    async def call(self, method: str, request: Any, session: str | None) -> Any:
        """Calls the HostAgent RPC `method`; raises VimFault on failure."""

    async def close(self) -> None: ...


class HostEngine(Protocol):
    kind: str
    """"ray" or "in-process"."""
    machines: bool
    """Whether each host runs on a machine of its own (a Ray node per host, as in
    docker-compose): a host whose machine is down cannot boot, and one whose machine
    comes back is booted by vCenter's monitor, as a rebooted ESXi host reconnects."""

    async def provision(self, spec: HostSpec) -> str:
        """Boots the host if it is not running (a running host is left as it is), and
        returns the thumbprint the host reports through the engine's own channel (Ray,
        or this process), for vCenter to check against what the network presents."""

    async def is_running(self, name: str) -> bool: ...

    async def can_boot(self, name: str) -> bool:
        """Whether `provision` could boot the host now: its machine is up (always, for
        an engine without machines)."""

    async def connect(self, name: str) -> HostPort:
        """Opens a line to the host's hostd; HostConnectFault if it does not answer."""

    async def decommission(self, name: str) -> None:
        """Stops the host and forgets it; its data dir is removed."""

    async def close(self) -> None:
        """Releases what this engine object holds; running hosts keep running."""
