"""Booting an ESXi host: the one place a host's parts are put together.

A boot builds, in this order, the local accounts (root's password set on first boot),
the storage stack (this boot's id drawn from the rng, so each boot writes its own NFS
lock owner), the VMkernel (memory, CPU, network, resource pools and passthrough read
back from esx.conf; swap files of a crashed boot cleared) and hostd on top of them.
The Ray actor, the in-process engine and the deterministic simulator all boot a host
here, so each runs the same host with the same settings and adds only its shell: a
boot lock and a TLS server, or an in-memory line to vCenter.

It never chooses a clock, an rng, where the disk lives or how the array is reached:
those come from the caller, which is what lets one host run on real or virtual time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from vsim.clock import Clock
from vsim.host.hostd.accounts import AccountStore, FileAccountStore, HostAccounts
from vsim.host.hostd.esx_conf import ConfigStore, FileConfigStore
from vsim.host.hostd.service import Hostd
from vsim.host.kernel.vmkernel import HostKernel
from vsim.host.storage.storage_stack import StoragePorts, StorageStack
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
    clock: Clock,
    rng: random.Random,
    storage_ports: StoragePorts | None,
) -> Hostd:
    """One boot of a host: its hostd, holding the kernel, storage stack and accounts.

    `rng` is this boot's (its boot id is drawn from it); `storage_ports` are how the
    host reaches the array (None: no array, datastores cannot be mounted)."""
    accounts = HostAccounts(disk.accounts, root_password_hash)
    storage = StorageStack(spec.host_uuid, spec.name, clock, rng, storage_ports)
    kernel = HostKernel(spec, clock, disk.swap_dir, disk.config)
    return Hostd(kernel, accounts, storage)
