"""One seed, one datacenter: two labs (vCenter, three hosts, the array) started with the
same seed and driven through the same calls make the same ids, disks, LUNs and boots,
and another seed makes other ones. Whatever still drew from the OS or the wall clock
(uuid4, secrets, an unseeded Random) would make the two runs differ here."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vclab import SUCCESS, Lab

from vsim.host.storage.vmdk import read_descriptor
from vsim.spec import ClusterSpec

DISKS = {"vm-a": ("esxi-01", "vmfs-01"), "vm-b": ("esxi-02", "nfs-01")}


async def run_clock(lab: Lab) -> None:
    """Moves the lab's virtual time on while the calls run (reservation backoffs and
    lock waits sleep on it), as the deterministic loop will do by itself."""
    while True:
        await lab.clock.advance(0.05)


async def seeded_run(directory: Path, seed: int) -> dict[str, object]:
    """What one lab of `seed` made: every id it drew, by kind."""
    lab = Lab(directory, seed, array=True)
    clock = asyncio.get_running_loop().create_task(run_clock(lab))
    try:
        await lab.boot(ClusterSpec.default(3))
        for name, (host, datastore) in DISKS.items():
            task = await lab.client.create_vm(
                name, memory_mb=256, host=host, datastore=datastore, disk_mb=8
            )
            assert (await lab.wait(task)).state == SUCCESS
        assert (await lab.power_on("vm-a")).state == SUCCESS
        disks = {}
        for name, (host, datastore) in DISKS.items():
            files = lab.engine.running(host).storage.files[datastore]
            descriptor = await read_descriptor(files, f"{name}/{name}.vmdk")
            disks[name] = (descriptor.cid, descriptor.disk_uuid)
        boots = {name: hostd.storage.boot for name, hostd in lab.engine.hosts().items()}
        lab.engine.crash("esxi-03")
        await lab.engine.reboot("esxi-03")
        vms = {vm.name: (vm.uuid, [n.mac for n in vm.nics]) for vm in (await lab.vms()).values()}
        return {
            "vcenter": (await lab.client.status()).instance_uuid,
            "vms": vms,
            "disks": disks,
            "luns": {lun.id: lun.serial for lun in lab.array.luns.values()},
            "boots": boots,
            "reboot": lab.engine.running("esxi-03").storage.boot,
            "thumbprints": {h.name: h.ssl_thumbprint for h in (await lab.hosts()).values()},
            "volume": lab.engine.running("esxi-01").storage.vmfs["vmfs-01"].superblock.uuid,
        }
    finally:
        clock.cancel()
        await lab.close()


async def test_two_labs_of_one_seed_make_the_same_datacenter(tmp_path: Path, fast_scrypt):
    first = await seeded_run(tmp_path / "first", 11)
    again = await seeded_run(tmp_path / "again", 11)
    assert again == first
    other = await seeded_run(tmp_path / "other", 12)
    for kind, made in first.items():
        assert other[kind] != made, f"the {kind} do not depend on the seed"
    # Each kind was made, and made apart: no two VMs, disks or boots alike.
    assert len({uuid for uuid, _ in first["vms"].values()}) == 2
    assert len({cid for cid, _ in first["disks"].values()}) == 2
    assert len(set(first["boots"].values()) | {first["reboot"]}) == 4
    assert len(first["luns"]) == 1
