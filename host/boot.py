"""Booting an ESXi host: the one place a host's parts are put together.

A boot builds, in this order, the local accounts (root's password set on first boot),
the storage stack (this boot's id drawn from the runtime, so each boot writes its own
NFS lock owner), the VMkernel (memory, CPU, network, resource pools and passthrough
read back from esx.conf; swap files of a crashed boot cleared) and hostd on top of
them, all on one runtime: the boot's clock, its seeded rng, its session tokens and the
tasks it runs (heartbeats, renewals, the kernel's ticks, guests, disk I/O), which end
with it. The Ray actor, the in-process engine and the deterministic simulator all
boot a host here, so each runs the same host with the same settings and adds only its
shell: a boot lock and a TLS server, or an in-memory line to vCenter.

It never chooses a runtime, where the disk lives or how the array is reached: those
come from the caller, which is what lets one host run on real or virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vsim.host.fdm.service import FdmConnector, GatewayPing
from vsim.host.hostd.accounts import AccountStore, FileAccountStore, HostAccounts
from vsim.host.hostd.esx_conf import ConfigStore, FileConfigStore
from vsim.host.hostd.migration import PeerConnector
from vsim.host.hostd.service import Hostd
from vsim.host.kernel.vmkernel import HostKernel
from vsim.host.storage.storage_stack import StoragePorts, StorageStack
from vsim.runtime import Runtime
from vsim.spec import HostSpec


@dataclass(frozen=True)
class LocalDisk:
    """What a host keeps across its boots, as an ESXi host's local disk does."""

    accounts: AccountStore
    """Local accounts and their password hashes (/etc/shadow)."""
    config: ConfigStore
    """esx.conf: the network, memory settings, resource pools and passthrough devices."""
    swap_dir: Path
    """Host-local swap: a .vswp per powered-on VM."""

    @classmethod
    def in_directory(cls, data_dir: Path) -> LocalDisk:
        """The disk as files in the host's data dir (the Ray actor's)."""
        return cls(
            FileAccountStore(data_dir / "accounts.json"),
            FileConfigStore(data_dir / "esx.conf.json"),
            data_dir / "vswp",
        )


def boot_host(
    spec: HostSpec,
    disk: LocalDisk,
    root_password_hash: str,
    runtime: Runtime,
    storage_ports: StoragePorts | None,
    peers: PeerConnector | None = None,
    fdm_peers: FdmConnector | None = None,
    gateway: GatewayPing | None = None,
) -> Hostd:
    """One boot of a host: its hostd, holding the kernel, storage stack and accounts.

    `runtime` is this boot's alone (its boot id is drawn from it; a crash halts its
    tasks); `storage_ports` are how the host reaches the array (None: no array,
    datastores cannot be mounted); `peers`, how it reaches other hosts over its
    vMotion network; `fdm_peers` and `gateway`, how its HA agent reaches the other
    agents and pings the isolation address over its management network."""
    accounts = HostAccounts(disk.accounts, root_password_hash, runtime.secure_random)
    storage = StorageStack(spec.host_uuid, spec.name, runtime, storage_ports)
    kernel = HostKernel(spec, runtime.clock, disk.swap_dir, disk.config)
    return Hostd(
        kernel, accounts, storage, runtime, peers=peers, fdm_peers=fdm_peers, gateway=gateway
    )
