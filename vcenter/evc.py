"""Enhanced vMotion Compatibility: the cluster's EVC mode.

An EVC mode is a CPU generation (vsim/cpu_features.py). With one set, every host
shows its VMs that generation's features, whatever its own CPU, so a VM powered on
anywhere in the cluster can move to any of its hosts. A mode is refused
(EVCAdmissionFailed) if a host's CPU lacks one of its features, or if a powered-on VM
uses a feature the mode does not have (it would lose it under its feet: power it off
first); raising the mode, or turning it off, takes nothing from running VMs.
"""

from __future__ import annotations

from vsim import cpu_features
from vsim.faults import EVCAdmissionFailed
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.events import EventLog
from vsim.vcenter.host_system import EVC_META, HostManager
from vsim.vcenter.inventory import Inventory

ON = pb.POWER_STATE_POWERED_ON


class ClusterEvc:
    def __init__(self, inventory: Inventory, hosts: HostManager, events: EventLog) -> None:
        self._inventory = inventory
        self._hosts = hosts
        self._events = events

    def configure(self, request: pb.ConfigureEvcRequest, user: str) -> None:
        mode = request.mode
        if mode:
            cpu_features.check(mode, "EVC mode")
            for host in self._inventory.hosts():
                model = self._hosts.public_spec(host.name).cpu_model
                lacking = cpu_features.missing(mode, model)
                if lacking:
                    raise EVCAdmissionFailed(
                        f"{host.name}'s CPU ({model}) lacks {', '.join(lacking[:8])} of EVC "
                        f"mode {mode}; choose a mode every host's CPU has",
                        host=host.name,
                    )
            for vm in self._inventory.vms():
                if vm.power_state != ON:
                    continue
                seen = vm.cpu_features or self._hosts.guest_cpu(vm.host)
                taken = cpu_features.missing(seen, mode)
                if taken:
                    raise EVCAdmissionFailed(
                        f"{vm.name} runs with CPU features EVC mode {mode} does not have "
                        f"({', '.join(taken[:8])}); power it off first, or choose a mode "
                        f"at least {seen}",
                        vm=vm.name,
                    )
        previous = self._hosts.evc_mode()
        if mode == previous:
            return
        with self._inventory.transaction():
            self._inventory.set_meta(EVC_META, mode)
            if mode:
                text = f"EVC mode of the cluster set to {mode}" + (
                    f" (was {previous})" if previous else ""
                )
            else:
                text = f"EVC turned off for the cluster (was {previous})"
            self._events.post("ClusterReconfiguredEvent", text, user=user)
