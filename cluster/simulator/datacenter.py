"""The simulated datacenter: the same vCenter, hosts and array `vsim up` runs, in one
process, on one seeded runtime and the virtual loop's clock.

vCenter is the real core (its SQLite inventory in the run's directory), reached
through its dispatch table as a gRPC client would; the hosts are the in-process
engine's, each reaching the real `StorageArray` (LUN files and exports in the run's
directory) over its storage network; every draw of every component comes from the
run's seed. vCenter can be stopped and started again inside a run on the same data
dir, and the array restarted, as their processes would be.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vsim.clock import SimClock
from vsim.cluster.array_setup import prepare_array
from vsim.cluster.client import VCenterClient
from vsim.cluster.inprocess import InProcessEngine, StorageTap
from vsim.runtime import Runtime
from vsim.spec import ClusterSpec, DatastoreSpec, HostSpec, host_name
from vsim.storage.array import StorageArray
from vsim.vcenter.datastore import ArrayRef
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.service import INVENTORY_FILE, VCenter
from vsim.vcenter.sessions import ADMINISTRATOR
from vsim.vcenter.storage_provider import LocalStorageProvider

T0 = 1_700_000_000.0
"""Where every run's clock starts (a fixed date: timelines do not depend on today)."""
HOST_MEMORY_MB = 16 * 1024
HOST_CORES = 8
KERNEL_PERIOD_S = 5.0
"""The simulated hosts' kernel period: their guests' memory and CPU are divided every
5 s, not every second, which costs a fifth as much (the checkers watch disks, locks
and VMs, which do not depend on it)."""
DATASTORES = (
    DatastoreSpec("vmfs-01", "vmfs", size_bytes=256 * 1024**2, lock_mode="ats+scsi"),
    DatastoreSpec("vmfs-02", "vmfs", size_bytes=256 * 1024**2, lock_mode="ats-only"),
    DatastoreSpec("nfs-01", "nfs"),
)
"""A VMFS datastore of each locking mode and an NFS one."""


def cluster_spec(hosts: int) -> ClusterSpec:
    return ClusterSpec(
        hosts=tuple(
            HostSpec(
                host_name(i),
                cpu_cores=HOST_CORES,
                memory_mb=HOST_MEMORY_MB,
                kernel_period_s=KERNEL_PERIOD_S,
            )
            for i in range(1, hosts + 1)
        ),
        datastores=DATASTORES,
    )


class SimulatedDatacenter:
    def __init__(
        self, directory: Path, seed: int, hosts: int, storage_tap: StorageTap | None = None
    ) -> None:
        self.directory = directory
        self.seed = seed
        self.clock = SimClock(T0)
        self.runtime = Runtime.simulated(self.clock, seed, "sim")
        self.array = StorageArray(directory / "array", self.runtime.child("array"))
        self.engine = InProcessEngine(self.runtime.child("hosts"), self.array, storage_tap)
        self.spec = prepare_array(self.array, cluster_spec(hosts))
        self.vcenter: VCenter | None = None
        self._token = ""
        self._starts = 0
        self.vcenter_started: list[Callable[[VCenter], None]] = []
        """Called with each vCenter the run starts, before it starts (a checker
        listens to its events)."""

    @property
    def host_names(self) -> list[str]:
        return [h.name for h in self.spec.hosts]

    async def start_vcenter(self) -> None:
        """Starts vCenter on the run's data dir (the first time, the cluster spec is
        realised; later, the inventory is read back and the hosts reattached)."""
        self._starts += 1
        (self.directory / "vcenter").mkdir(parents=True, exist_ok=True)
        inventory = Inventory(self.directory / "vcenter" / INVENTORY_FILE)
        self.vcenter = VCenter(
            self.directory / "vcenter",
            inventory,
            self.engine,
            self.runtime.child(f"vcenter-{self._starts}"),
            array=ArrayRef("", ""),
            storage_provider=LocalStorageProvider(self.array),
        )
        for started in self.vcenter_started:
            started(self.vcenter)
        await self.vcenter.start(self.spec)
        if not self._token:
            anonymous = VCenterClient.in_process(self.vcenter.table)
            self._token = await anonymous.login(
                ADMINISTRATOR, self.vcenter.sessions.initial_password()
            )

    async def stop_vcenter(self) -> None:
        if self.vcenter is not None:
            vcenter, self.vcenter = self.vcenter, None
            await vcenter.stop()

    def client(self) -> VCenterClient | None:
        """An administrator's client of the running vCenter (None while it is down);
        the session outlives a restart, as vCenter keeps it."""
        if self.vcenter is None:
            return None
        return VCenterClient.in_process(self.vcenter.table, self._token)

    async def close(self) -> None:
        await self.stop_vcenter()
        for name in list(self.engine.hosts()):
            self.engine.crash(name)
        await self.engine.runtime.stop()
        self.array.close()
