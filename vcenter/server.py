"""The vCenter process: the core behind a TLS gRPC server with health and reflection.

`start_vcenter` opens (or creates) the instance in a data dir, connects it to the
engine its caller's factory makes for that instance (the launcher passes Ray's:
vCenter never imports an engine), brings the cluster spec up and starts serving.
Layout of the data dir: vcenter/ (inventory.sqlite, ssl/, vpxd.key,
initial-admin-password) and hosts/<name>/ (each host's certificate and accounts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from vsim.clock import Clock, WallClock
from vsim.dispatch import DispatchTable
from vsim.rpc import start_server
from vsim.runtime import Runtime
from vsim.spec import ClusterSpec
from vsim.tls import Identity, load_or_create_identity
from vsim.v1 import common_pb2, vcenter_pb2
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.engine import HostEngine
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.service import INVENTORY_FILE, VCenter, instance_uuid
from vsim.vcenter.sessions import SessionPolicy

SERVICE = vcenter_pb2.DESCRIPTOR.services_by_name["VCenter"]
DEFAULT_PORT = 50051
COMMON_NAME = "vcenter"


@dataclass
class RunningVCenter:
    core: VCenter
    server: grpc.aio.Server
    identity: Identity
    endpoint: str

    @property
    def thumbprint(self) -> str:
        return self.identity.thumbprint

    async def stop(self) -> None:
        await self.server.stop(grace=2.0)
        await self.core.stop()


EngineFactory = Callable[[str, Path, Clock], HostEngine]
"""Makes the hosts' engine for (instance UUID, data dir, clock) of a vCenter."""
ServiceFactory = Callable[[VCenter], list[DispatchTable]]
"""More services served beside VCenter on its port, made for the started core (the
launcher's fault service: it lives in cluster/, which vCenter does not import)."""


async def start_vcenter(
    data_dir: Path,
    spec: ClusterSpec,
    engines: EngineFactory,
    port: int = DEFAULT_PORT,
    bind: str = "127.0.0.1",
    clock: Clock | None = None,
    array: ArrayRef | None = None,
    on_event: Callable[[common_pb2.Event], None] | None = None,
    session_policy: SessionPolicy | None = None,
    services: ServiceFactory | None = None,
) -> RunningVCenter:
    """Starts (or restarts) the vCenter kept in data_dir on the engine `engines`
    makes for it (session_policy: the idle session timeout and the login lockout,
    vSphere's defaults if None).
    on_event sees every event from the start on (how `vsim up` shows its progress);
    services makes the tables of the services served beside VCenter (each with its
    own dispatch table, judged by vCenter's sessions)."""
    clock = clock or WallClock()
    # A live runtime: ids differ between runs and secrets come from the OS.
    runtime = Runtime.live(clock, "vcenter")
    home = data_dir / "vcenter"
    inventory = Inventory(home / INVENTORY_FILE)
    try:
        engine = engines(instance_uuid(inventory, runtime), data_dir, clock)
        identity = load_or_create_identity(home / "ssl", COMMON_NAME)
        core = VCenter(home, inventory, engine, runtime, array=array, session_policy=session_policy)
        if on_event is not None:
            core.events.listeners.append(on_event)
    except BaseException:
        inventory.close()
        raise
    try:
        await core.start(spec)
    except BaseException:
        await core.stop()  # closes what start opened: links, tasks, the inventory
        raise
    try:
        tables = [core.table, *(services(core) if services is not None else [])]
        server, bound = await start_server(identity, bind, port, tables)
    except BaseException:
        await core.stop()
        raise
    return RunningVCenter(core, server, identity, f"{bind}:{bound}")
