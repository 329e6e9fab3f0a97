"""Invariant: every guest disk write acknowledged before a fault reads back after
recovery (DESIGN.md section 7, 2).

What the guest was told is read from each running VM's VMX once a simulated second
and just before every crash (the moment a crash would lose it); after the run has
settled, every VM still in the inventory with a disk is read back through vCenter's
VerifyVmDisk against the highest write it had acknowledged: none may be missing or
corrupt. A disk whose lock is held by a host that lost it is read again once the
lock has gone stale, as a person would retry.
"""

from __future__ import annotations

from vsim.cluster.simulator.checkers import Checker
from vsim.faults import CannotAccessFile, FileLocked, VimFault
from vsim.host.storage.nfs_lock import STALE_AFTER

READ_TRIES = 3


class AckedWritesChecker(Checker):
    name = "acknowledged writes survive"

    def __init__(self, dc, history) -> None:
        super().__init__(dc, history)
        self.acked: dict[tuple[str, str], int] = {}
        """(VM name, VM UUID) -> the highest write its guest was told was done."""
        self.verified = 0

    def sample(self) -> None:
        for hostd in self.dc.engine.hosts().values():
            for vmx in hostd.vmx.values():
                key = (vmx.name, str(vmx.vm_uuid))
                if vmx.acked_seq > self.acked.get(key, 0):
                    self.acked[key] = vmx.acked_seq

    async def final(self) -> None:
        client = self.dc.client()
        vms = {vm.name: vm for vm in await client.vms()}
        for (name, vm_uuid), acked in sorted(self.acked.items()):
            vm = vms.get(name)
            if vm is None or vm.uuid != vm_uuid or not vm.disks:
                continue  # destroyed (or a new VM of that name): nothing to keep
            report = None
            for attempt in range(READ_TRIES):
                try:
                    report = await client.verify_disk(name, acked)
                    break
                except (FileLocked, CannotAccessFile) as fault:
                    # Held by a host that lost it: readable once other hosts have
                    # watched the lock stand still long enough (NFS 35 s, VMFS 16 s);
                    # or the path failed this once.
                    if attempt == READ_TRIES - 1:
                        self.violate(f"{name}'s disk cannot be read back: {fault}")
                    await self.dc.clock.sleep(STALE_AFTER + 5)
                except VimFault as fault:
                    self.violate(f"{name}'s disk cannot be read back: {fault}")
                    break
            if report is None:
                continue
            self.verified += 1
            if report.missing or report.corrupt:
                self.violate(
                    f"{name}: {report.missing} acknowledged writes missing and "
                    f"{report.corrupt} blocks corrupt (acknowledged up to {acked}, "
                    f"found up to {report.highest_seq})"
                )
