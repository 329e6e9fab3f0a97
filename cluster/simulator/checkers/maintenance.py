"""Invariant: a host in maintenance mode runs no VM and receives none: nothing
powered on there and no vMotion arriving, from the instant its kernel says it is in
maintenance mode until it says it is out (the host keeps the mode; vCenter mirrors
it)."""

from __future__ import annotations

from vsim.cluster.simulator.checkers import Checker


class MaintenanceChecker(Checker):
    name = "a host in maintenance runs no VM"

    def __init__(self, dc, history) -> None:
        super().__init__(dc, history)
        self._in: set[str] = set()

    def sample(self) -> None:
        now_in = set()
        for host, hostd in sorted(self.dc.engine.hosts().items()):
            kernel = hostd.kernel
            if not kernel.in_maintenance:
                continue
            now_in.add(host)
            if host not in self._in:
                self.history.record("maintenance", f"{host} is in maintenance mode")
            busy = [vm.name for vm in kernel.vms() if vm.powered_on or kernel.arriving(vm.name)]
            if busy:
                self.violate(f"{host} is in maintenance mode and runs {', '.join(busy)}")
        for host in sorted(self._in - now_in):
            self.history.record("maintenance", f"{host} is out of maintenance mode (or down)")
        self._in = now_in

    def vmotion(self, source: str, destination: str, method: str, moment: str) -> None:
        hostd = self.dc.engine.running(destination)
        if moment == "landed" and hostd is not None and hostd.kernel.in_maintenance:
            self.violate(f"{destination} is in maintenance mode and took {method} from {source}")
