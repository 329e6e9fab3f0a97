"""Invariant: a failed vMotion loses no VM, and a vMotion moves the VM whole
(DESIGN.md section 7, 5; never on two hosts at once is the one-host checker's).

- At the switchover, the instant the destination resumes the guest, its memory
  there equals the source's page for page (every page the guest touched, by its
  64-bit content fingerprint): what pre-copy sent, round after round while the guest
  dirtied it, and the stun's last pages.
- When vCenter reports a live migration failed (VmFailedMigrateEvent), the VM is
  powered on on its source and runs on no other host, unless its source crashed
  during the migration (the VM is lost with its host, as in vSphere). It may be
  stunned there still: a source that lost its storage keeps the guest stunned until
  its disks open again; or killed there for a lost disk lock, as ESXi kills it.
- Once the run has settled, no powered-on VM is left stunned (liveness).
- When vCenter reports one done (VmMigratedEvent), the VM runs on the destination
  and no longer on the source, unless the destination crashed after it resumed it.

The checks run at the instants they name, told by the engine's vMotion tap and by
vCenter's event log (each vCenter the run starts).
"""

from __future__ import annotations

import re

import numpy as np

from vsim.cluster.simulator.checkers import Checker
from vsim.faults import NotFound

_MIGRATING = re.compile(r"Migrating (\S+) from (\S+) to (\S+)$")


class VMotionChecker(Checker):
    name = "vmotion moves the whole VM"

    def __init__(self, dc, history) -> None:
        super().__init__(dc, history)
        self._begun: dict[str, tuple[str, object, str, object]] = {}
        """VM -> (source, its boot, destination, its boot) as the migration began."""
        self._resumed: dict[tuple[str, str, str], float] = {}
        """(VM, source, destination) -> when its switchover landed (a switchover
        asked again, its reply lost, lands once more: the guest may have run since)."""
        dc.vcenter_started.append(lambda vcenter: vcenter.events.listeners.append(self._event))

    def vmotion(self, source: str, destination: str, method: str, moment: str) -> None:
        if (method, moment) != ("Switchover", "landed"):
            return
        engine = self.dc.engine
        there, here = engine.running(destination), engine.running(source)
        if there is None or here is None:
            return
        now = self.history.now()
        for vm in there.kernel.vms():
            if not vm.powered_on or there.kernel.memory.speed(vm.name) == 0:
                continue
            try:
                stunned = here.kernel.vm(vm.name)
            except NotFound:  # not this migration's VM
                continue
            if not stunned.powered_on or here.kernel.memory.speed(vm.name) != 0:
                continue
            key = (vm.name, source, destination)
            if self._resumed.setdefault(key, now) != now:
                continue
            self._compare(vm.name, here.kernel.memory, there.kernel.memory, source, destination)

    def _compare(self, vm: str, source_memory, destination_memory, source: str, destination: str):
        pages = np.union1d(source_memory.touched_pages(vm), destination_memory.touched_pages(vm))
        before = source_memory.guest_content(vm, pages)
        after = destination_memory.guest_content(vm, pages)
        differ = np.flatnonzero(before != after)
        if len(differ):
            self.violate(
                f"{vm} resumed on {destination} with {len(differ)} of {len(pages)} pages "
                f"unlike {source}'s at the stun (first PPN {int(pages[differ[0]])})"
            )
        else:
            self.history.record(
                "vmotion", f"{vm} resumed on {destination}: {len(pages)} pages as on {source}"
            )

    def _event(self, event) -> None:
        engine = self.dc.engine
        if event.type == "VmBeingHotMigratedEvent":
            match = _MIGRATING.search(event.message)
            if match:
                vm, source, destination = match.groups()
                self._begun[vm] = (
                    source,
                    engine.running(source),
                    destination,
                    engine.running(destination),
                )
            return
        if event.type not in ("VmFailedMigrateEvent", "VmMigratedEvent"):
            return
        begun = self._begun.pop(event.vm, None)
        if begun is None or event.message.endswith("(powered off)"):
            return  # a cold migration, or one begun before this vCenter started
        source, source_boot, destination, destination_boot = begun
        for key in [k for k in self._resumed if k[0] == event.vm]:
            del self._resumed[key]
        runs = self._running_on(event.vm)
        if event.type == "VmFailedMigrateEvent":
            if engine.running(source) is not source_boot:
                self.history.record("vmotion", f"{event.vm} lost with {source}, which crashed")
                return
            if not runs and self._powered_on(source, event.vm):
                runs = [source]  # stunned, waiting for its disks
            if not runs and event.vm in source_boot.lock_losers:
                self.history.record("vmotion", f"{event.vm} killed on {source}: its lock was lost")
                return
            if runs != [source]:
                self.violate(
                    f"the failed migration of {event.vm} to {destination} left it running on "
                    f"{' and '.join(runs) or 'no host'}, not on its source {source}"
                )
        elif engine.running(destination) is not destination_boot:
            self.history.record("vmotion", f"{event.vm} lost with {destination}, which crashed")
        elif runs != [destination]:
            self.violate(
                f"{event.vm} migrated from {source} to {destination} but runs on "
                f"{' and '.join(runs) or 'no host'}"
            )

    def _powered_on(self, host: str, vm: str) -> bool:
        hostd = self.dc.engine.running(host)
        return hostd is not None and any(v.name == vm and v.powered_on for v in hostd.kernel.vms())

    async def final(self) -> None:
        for host, hostd in sorted(self.dc.engine.hosts().items()):
            for vm in hostd.kernel.vms():
                if vm.powered_on and hostd.kernel.memory.speed(vm.name) == 0:
                    self.violate(f"{vm.name} is still stunned on {host} after the run settled")

    def _running_on(self, vm: str) -> list[str]:
        hosts = []
        for host, hostd in sorted(self.dc.engine.hosts().items()):
            for candidate in hostd.kernel.vms():
                if candidate.name == vm and candidate.powered_on:
                    if hostd.kernel.memory.speed(vm) > 0:
                        hosts.append(host)
        return hosts
