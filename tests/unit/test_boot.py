"""host/boot.py: one boot of a host from its spec, local disk and runtime, as the
Ray actor and the in-process engine both make it."""

from __future__ import annotations

from dataclasses import replace

from vsim import passwords
from vsim.clock import SimClock
from vsim.host.boot import LocalDisk, boot_host
from vsim.runtime import Runtime
from vsim.spec import HostSpec


def boot(tmp_path, seed: str, clock: SimClock | None = None):
    """A boot whose runtime is the child `seed` of a seed-1 runtime."""
    spec = HostSpec("esxi-01", uuid="6f1b2a7c-0000-4000-8000-000000000001")
    runtime = Runtime.simulated(clock or SimClock(1_700_000_000.0), 1).child(seed)
    return boot_host(
        spec,
        LocalDisk.in_directory(tmp_path / "esxi-01"),
        passwords.hash_password("root-password"),
        runtime,
        None,
    )


def test_a_boot_is_hostd_over_its_kernel_storage_and_accounts(tmp_path, fast_scrypt):
    hostd = boot(tmp_path, "esxi-01/boot-1")
    assert hostd.accounts.users() == ["root"]
    assert hostd.kernel.spec.name == hostd.storage.host_name == "esxi-01"
    assert hostd.storage.host == hostd.kernel.spec.host_uuid
    assert hostd.kernel.swap_dir == tmp_path / "esxi-01" / "vswp"
    assert hostd.accounts.user_of(hostd.accounts.login("root", "root-password")) == "root"


def test_the_boot_id_comes_from_the_boots_rng(tmp_path, fast_scrypt):
    first, again = boot(tmp_path, "esxi-01/boot-1"), boot(tmp_path, "esxi-01/boot-1")
    assert first.storage.boot == again.storage.boot
    assert boot(tmp_path, "esxi-01/boot-2").storage.boot != first.storage.boot


def test_accounts_and_esx_conf_outlive_a_boot(tmp_path, fast_scrypt):
    hostd = boot(tmp_path, "esxi-01/boot-1")
    hostd.accounts.set_account("ops", "ops-password", "Admin")
    memory = hostd.kernel.memory.settings
    hostd.kernel.set_memory_settings(replace(memory, share_scan_period=120.0))

    rebooted = boot(tmp_path, "esxi-01/boot-2")
    assert rebooted.accounts.users() == ["ops", "root"]
    assert rebooted.kernel.memory.settings.share_scan_period == 120
