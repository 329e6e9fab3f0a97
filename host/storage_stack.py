"""The host kernel's storage stack: its mounted datastores (VMFS volumes on LUNs,
NFS exports) and the background work they need (VMFS heartbeats every 3 s, NFS lock
renewals every 10 s). Ports come in from the shell: block devices and NFS clients
over the array's gRPC for a Ray host, in-process ones for the simulator."""

from __future__ import annotations

import asyncio
import random
import uuid

from vsim.clock import Clock
from vsim.faults import FileLocked, InvalidArgument, NotFound
from vsim.host.nfs_lock import NfsClient, NfsLockManager
from vsim.host.vmfs import BlockDevice, VmfsVolume
from vsim.storage.vmfs_format import LockMode


def initiator_name(host_name: str) -> str:
    """The host's iSCSI qualified name, as ESXi names its software initiator."""
    return f"iqn.1998-01.com.vmware:{host_name}"


class StorageStack:
    def __init__(self, host: uuid.UUID, host_name: str, clock: Clock, rng: random.Random):
        self.host = host
        self.host_name = host_name
        self.clock = clock
        self.rng = rng
        self.vmfs: dict[str, VmfsVolume] = {}
        self.nfs: dict[str, NfsLockManager] = {}
        self._loops: dict[str, asyncio.Task] = {}

    async def mount_vmfs(self, label: str, device: BlockDevice) -> VmfsVolume:
        if label in self.vmfs or label in self.nfs:
            raise InvalidArgument(f"a datastore named {label} is already mounted")
        volume = VmfsVolume(device, self.host, self.clock, self.rng)
        await volume.mount()
        self.vmfs[label] = volume
        self._loops[label] = asyncio.get_running_loop().create_task(volume.heartbeat_forever())
        return volume

    async def mount_nfs(self, label: str, client: NfsClient) -> NfsLockManager:
        if label in self.vmfs or label in self.nfs:
            raise InvalidArgument(f"a datastore named {label} is already mounted")
        manager = NfsLockManager(client, self.host, self.host_name, self.clock)
        self.nfs[label] = manager
        self._loops[label] = asyncio.get_running_loop().create_task(manager.renew_forever())
        return manager

    def volume(self, label: str) -> VmfsVolume:
        if label not in self.vmfs:
            raise NotFound(f"no VMFS datastore {label} is mounted on {self.host_name}")
        return self.vmfs[label]

    def nfs_mount(self, label: str) -> NfsLockManager:
        if label not in self.nfs:
            raise NotFound(f"no NFS datastore {label} is mounted on {self.host_name}")
        return self.nfs[label]

    async def try_lock(self, label: str, target: int, path: str, mode: str = "EXCLUSIVE") -> str:
        """Takes a lock (a VMFS lock record index, or an NFS file's fileid); returns
        "" when granted, else who holds it."""
        try:
            if label in self.vmfs:
                await self.vmfs[label].lock(target, path, LockMode[mode])
            else:
                await self.nfs_mount(label).lock("", target, path)
        except FileLocked as e:
            return e.properties.get("holder") or "unknown"
        return ""

    async def lock_load(self, label: str, target: int, seconds: float) -> dict[str, int]:
        """Takes and releases one lock as fast as it can for `seconds` of this host's
        clock (a load generator for stress tests and bench/locks.py)."""
        deadline = self.clock.now() + seconds
        counts = {"acquired": 0, "refused": 0}
        while self.clock.now() < deadline:
            if await self.try_lock(label, target, f"load-{target}"):
                counts["refused"] += 1
                await asyncio.sleep(0)
                continue
            counts["acquired"] += 1
            await self.unlock(label, target)
        return counts

    async def unlock(self, label: str, target: int) -> None:
        if label in self.vmfs:
            await self.vmfs[label].unlock(target)
        else:
            await self.nfs_mount(label).unlock("", target)

    def stats(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for label, volume in self.vmfs.items():
            out[label] = dict(volume.stats) | {"lost_access": int(volume.lost_access)}
        for label, manager in self.nfs.items():
            out[label] = dict(manager.stats)
        return out

    async def close(self) -> None:
        for task in self._loops.values():
            task.cancel()
        self._loops.clear()
