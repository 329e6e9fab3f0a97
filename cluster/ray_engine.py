"""The Ray engine: each host is a detached Ray actor in this vCenter's namespace.

vCenter reaches a host's hostd over gRPC+TLS (its endpoint comes from the actor); Ray
itself is used to boot, find and retire hosts. Actors are detached, so a restarted
vCenter finds them by name; when Ray itself restarted, `provision` boots them again
from the recorded spec, with the certificate and accounts kept in their data dirs.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import ray

from vsim.clock import Clock
from vsim.faults import HostConnectFault, InvalidState, VimFault, fault_from_proto
from vsim.host.actor import EsxiHost
from vsim.host.hostd.client import GrpcHostPort
from vsim.passwords import hash_password
from vsim.spec import HostSpec

EsxiHostActor = ray.remote(EsxiHost)
NAME_RELEASE_TRIES = 50
BOOT_TIMEOUT = 120.0
"""Real seconds a host actor has to be placed and start hostd."""


def ray_namespace(instance: str) -> str:
    """The Ray namespace of a vCenter instance's host actors."""
    return f"vsim-{instance}"


def ray_engines(
    hosts_bind: str = "127.0.0.1", hosts_advertise: str = "127.0.0.1"
) -> Callable[[str, Path, Clock], RayEngine]:
    """`start_vcenter`'s engine factory for Ray (which must be initialised): each
    instance's hosts in their own namespace (hosts_bind/hosts_advertise: see RayEngine)."""

    def engine(instance: str, data_dir: Path, clock: Clock) -> RayEngine:
        return RayEngine(
            ray_namespace(instance), data_dir, clock.speed, hosts_bind, hosts_advertise
        )

    return engine


class RayEngine:
    kind = "ray"

    def __init__(
        self,
        namespace: str,
        data_dir: Path,
        clock_speed: float = 1.0,
        hosts_bind: str = "127.0.0.1",
        hosts_advertise: str = "127.0.0.1",
    ) -> None:
        """hosts_bind/hosts_advertise: where each host's hostd listens and the address
        it gives ("node": its Ray node's address, for hosts in their own containers)."""
        self.namespace = namespace
        self.data_dir = data_dir
        self.clock_speed = clock_speed
        self.hosts_bind = hosts_bind
        self.hosts_advertise = hosts_advertise
        self.machines = hosts_advertise == "node"
        self._specs: dict[str, HostSpec] = {}
        """What each host was provisioned with by this engine object (power_on_host
        boots a crashed host from it; vCenter provisions every host it starts with)."""
        self._crashed: set[str] = set()
        """Hosts the fault service crashed: off until powered on, even where vCenter's
        monitor would boot a host whose machine is up (docker-compose)."""

    def _actor(self, name: str):  # -> ray.actor.ActorHandle | None
        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return None

    def host_dir(self, name: str) -> Path:
        return self.data_dir / "hosts" / name

    async def provision(self, spec: HostSpec) -> str:
        self._specs[spec.name] = spec
        actor = self._actor(spec.name)
        if actor is None:
            actor = await self._create(spec)
        try:
            info = await asyncio.wait_for(actor.boot.remote(), BOOT_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - an actor that cannot be placed or boot
            raise HostConnectFault(
                f"{spec.name} did not boot within {BOOT_TIMEOUT:.0f} s: {type(e).__name__}"
            ) from None
        return info["thumbprint"]

    async def _create(self, spec: HostSpec):
        # scrypt is slow: once, and off the event loop (hosts boot concurrently).
        root_hash = await asyncio.to_thread(hash_password, spec.root_password)
        for _ in range(NAME_RELEASE_TRIES):
            try:
                return EsxiHostActor.options(
                    name=spec.name,
                    namespace=self.namespace,
                    lifetime="detached",
                    num_cpus=0,
                    max_restarts=0,
                    resources=self._placement(spec.name),
                ).remote(
                    replace(spec, root_password="").to_json(),
                    root_hash,
                    str(self.host_dir(spec.name)),
                    self.clock_speed,
                    self.hosts_bind,
                    self.hosts_advertise,
                )
            except ValueError:
                # The name of a just-killed actor is released asynchronously.
                await asyncio.sleep(0.1)
        raise HostConnectFault(f"cannot boot {spec.name}: its actor name stays taken")

    def _placement(self, name: str) -> dict[str, float]:
        """A Ray node offering a resource named after the host (a host's container,
        `ray start --resources '{"esxi-01": 1}'`) gets that host's actor, and no other.
        Hosts in containers wait for theirs to join; otherwise any node will do."""
        if self.machines or name in ray.cluster_resources():
            return {name: 1}
        return {}

    async def can_boot(self, name: str) -> bool:
        """Not while the fault service has it crashed; with machines: whether a live
        Ray node offers the host's resource (its container is up)."""
        if name in self._crashed:
            return False
        if not self.machines:
            return True

        def offered() -> bool:
            return any(n["Alive"] and n["Resources"].get(name, 0) >= 1 for n in ray.nodes())

        return await asyncio.to_thread(offered)

    async def is_running(self, name: str) -> bool:
        actor = self._actor(name)
        if actor is None:
            return False
        try:
            info = await asyncio.wait_for(actor.info.remote(), 10)
        except Exception:  # noqa: BLE001 - any failure means "not running"
            return False
        return bool(info["endpoint"])

    async def connect(self, name: str) -> GrpcHostPort:
        actor = self._actor(name)
        if actor is None:
            raise HostConnectFault(f"host {name} does not answer: it is not running")
        try:
            info = await asyncio.wait_for(actor.info.remote(), 30)
        except Exception as e:  # noqa: BLE001 - a dead or hung actor
            raise HostConnectFault(f"host {name} does not answer: {type(e).__name__}") from None
        if not info["endpoint"]:
            raise HostConnectFault(f"host {name} is still booting")
        return await GrpcHostPort.open(name, info["endpoint"])

    async def decommission(self, name: str) -> None:
        actor = self._actor(name)
        if actor is not None:
            try:
                await asyncio.wait_for(actor.shutdown.remote(), 10)
            except Exception:  # noqa: BLE001 - it is going away either way
                pass
            ray.kill(actor, no_restart=True)
        await asyncio.to_thread(shutil.rmtree, self.host_dir(name), True)

    # faults (the fault service's FaultEngine)

    def _running_actor(self, name: str):  # -> ray.actor.ActorHandle
        actor = self._actor(name)
        if actor is None:
            raise InvalidState(f"{name} is not running (crashed or powered off); power it on")
        return actor

    async def crash_host(self, name: str) -> None:
        """Pulls the plug: the actor's process dies at once, nothing is flushed or
        released (its VMFS heartbeat and locks stay on disk, going stale)."""
        ray.kill(self._running_actor(name), no_restart=True)
        self._crashed.add(name)

    async def hang_host(self, name: str, seconds: float) -> None:
        """hostd stops answering and the host's I/O stalls for `seconds` (0 ends it)."""
        await self._ask(name, self._running_actor(name).hang.remote(seconds))

    async def power_on_host(self, name: str) -> None:
        """Boots a crashed host again, with its certificate and accounts (its data
        dir); vCenter's monitor reattaches it."""
        if self._actor(name) is not None:
            raise InvalidState(f"{name} is running; only a crashed host can be powered on")
        spec = self._specs.get(name)
        if spec is None:
            raise InvalidState(f"this vCenter has not booted {name}, so cannot boot it again")
        self._crashed.discard(name)
        await self.provision(spec)

    async def set_link(self, name: str, network: str, up: bool) -> None:
        """Cuts or mends one network at the host's own ports (see host/uplinks.py)."""
        await self._ask(name, self._running_actor(name).set_link.remote(network, up))

    async def _ask(self, name: str, call) -> object:  # call: a Ray ObjectRef
        try:
            return await asyncio.wait_for(call, 30)
        except VimFault:
            raise
        except ray.exceptions.RayTaskError as e:
            cause = e.as_instanceof_cause()
            if isinstance(cause, VimFault):
                raise fault_from_proto(cause.to_proto()) from None
            failed = type(cause).__name__
            raise HostConnectFault(f"{name} did not take the fault: {failed}") from None
        except Exception as e:  # noqa: BLE001 - a dead or unplaceable actor
            raise HostConnectFault(f"{name} did not take the fault: {type(e).__name__}") from None

    async def close(self) -> None:
        pass
