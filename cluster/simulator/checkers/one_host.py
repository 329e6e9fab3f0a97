"""Invariant: no VM runs on two hosts at once (DESIGN.md section 7, 1).

Read from the hosts themselves (each running boot's kernel), once a simulated second
and before every crash; VM starts and stops go into the history as they are seen. A
VM stunned for a vMotion's switchover is not running (its guest does nothing); one
arriving by vMotion runs from its resume. Nor does a VM whose host may have lost its
disk's lock (its volume lost for want of heartbeats, its NFS lock not renewed in
time): another host may take the lock, and the first host kills the VM once it knows
the lock is gone; until then it cannot write.
"""

from __future__ import annotations

from vsim.cluster.simulator.checkers import Checker


class OneHostChecker(Checker):
    name = "one host per VM"

    def __init__(self, dc, history) -> None:
        super().__init__(dc, history)
        self._running: dict[str, str] = {}
        """VM name -> the host it was last seen running on."""

    def sample(self) -> None:
        seen: dict[str, list[str]] = {}
        for host, hostd in sorted(self.dc.engine.hosts().items()):
            for vm in hostd.kernel.vms():
                # A source's VM stunned for a vMotion's switchover does not run: its
                # guest does nothing until it resumes on one side or the other.
                vmx = hostd.vmx.get(vm.name)
                if vmx is not None and vmx.disks and vmx.lock_in_doubt():
                    continue
                if vm.powered_on and hostd.kernel.memory.speed(vm.name) > 0:
                    seen.setdefault(vm.name, []).append(host)
        for vm, hosts in sorted(seen.items()):
            if len(hosts) > 1:
                self.violate(f"{vm} runs on {' and '.join(hosts)} at once")
            if self._running.get(vm) != hosts[0]:
                self.history.record("vm-start", f"{vm} on {hosts[0]}")
        for vm, host in sorted(self._running.items()):
            if vm not in seen:
                self.history.record("vm-stop", f"{vm} on {host}")
        self._running = {vm: hosts[0] for vm, hosts in seen.items()}
