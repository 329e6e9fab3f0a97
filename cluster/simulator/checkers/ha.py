"""Invariant (liveness, vSphere HA): a VM HA protected on a host that fails runs
again, on exactly one host, once faults are mended and the run has settled.

Watched: each VM running on a host at the instant it crashes, if the host's agent
protects it (HA on, the VM on a datastore, its restart priority not disabled). A VM
a user acts on afterwards (any event of theirs about it: powered off, migrated,
destroyed, reconfigured) is no longer HA's to bring back; nor one HA gave up on
(VmFailoverFailed, its five attempts spent), nor one whose host failed less than
RESTART_WINDOW before the end (a master may have to be elected first, the locks go
stale, a first attempt fail and the next come two minutes later). Never on two hosts
is the one-host checker's, always.
"""

from __future__ import annotations

from vsim.cluster.simulator.checkers import Checker

RESTART_WINDOW = 200.0
"""Simulated seconds from a host's crash within which HA brings its VMs back: a new
master's election (25 s), the verdict (15 s), the locks going stale (35 s on NFS) and
a first attempt's retry (120 s later)."""


class HaChecker(Checker):
    name = "HA restarts a failed host's VMs"

    def __init__(self, dc, history) -> None:
        super().__init__(dc, history)
        self._watched: dict[str, tuple[float, str]] = {}
        """VM -> (when its host crashed, the host)."""
        dc.vcenter_started.append(lambda vcenter: vcenter.events.listeners.append(self._event))

    def crashing(self, host: str) -> None:
        """The host is about to crash (the injector's last look)."""
        hostd = self.dc.engine.running(host)
        if hostd is None or hostd.fdm.agent is None:
            return
        protected = {
            v.vm.name
            for v in hostd.fdm.config.vms
            if v.vm.datastore and v.restart_priority != "disabled"
        }
        for vm in hostd.kernel.vms():
            if vm.powered_on and vm.name in protected:
                self._watched[vm.name] = (self.history.now(), host)
                self.history.record("ha", f"{vm.name} goes down with {host}: HA's to restart")

    def _event(self, event) -> None:
        if event.vm in self._watched and (event.user or event.type == "VmFailoverFailed"):
            del self._watched[event.vm]

    async def final(self) -> None:
        now = self.history.now()
        known = {vm.name for vm in await self.dc.client().vms()}
        for vm, (crashed, host) in sorted(self._watched.items()):
            if now - crashed < RESTART_WINDOW or vm not in known:
                continue  # too recent, or gone from the inventory (its host removed)
            runs = [
                name
                for name, hostd in sorted(self.dc.engine.hosts().items())
                for config in hostd.kernel.vms()
                if config.name == vm and config.powered_on
            ]
            if len(runs) != 1:
                self.violate(
                    f"{vm}, protected on {host} when it crashed {now - crashed:.0f} s ago, "
                    f"runs on {' and '.join(runs) or 'no host'}"
                )
