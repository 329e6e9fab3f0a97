"""Invariant: once faults are mended and the run has settled, vCenter's inventory
agrees with the hosts (liveness): every host is connected, every VM vCenter lists is
registered on its host with the power state the host gives it, and no host runs a VM
vCenter does not know there (a VM whose power-on waits for its disks' locks, an HA
restart under way, is not settled yet)."""

from __future__ import annotations

from vsim.cluster.simulator.checkers import Checker
from vsim.v1 import vcenter_pb2 as pb


class InventoryChecker(Checker):
    name = "inventory agrees with hosts"

    async def final(self) -> None:
        # vCenter's HA round (every 5 s) is part of settling: what the agents did
        # last is in its inventory before the comparison.
        await self.dc.vcenter.ha.collect()
        client = self.dc.client()
        for host in await client.hosts():
            if host.connection_state != pb.CONNECTION_STATE_CONNECTED:
                state = pb.ConnectionState.Name(host.connection_state)
                self.violate(f"{host.name} is {state} after the run settled")
        on_hosts = {
            (host, vm.name): vm.powered_on
            for host, hostd in self.dc.engine.hosts().items()
            for vm in hostd.kernel.vms()
            # an HA restart under way is not settled
            if vm.name not in hostd.powering_on and vm.name not in hostd.fdm.restarting
        }
        listed = set()
        for vm in await client.vms():
            listed.add((vm.host, vm.name))
            powered_on = on_hosts.get((vm.host, vm.name))
            if powered_on is None:
                self.violate(f"{vm.name} is not registered on {vm.host}, where vCenter has it")
            elif powered_on != (vm.power_state == pb.POWER_STATE_POWERED_ON):
                state = pb.PowerState.Name(vm.power_state)
                self.violate(f"{vm.name} is {state} in vCenter but not so on {vm.host}")
        for host, name in sorted(set(on_hosts) - listed):
            self.violate(f"{host} runs {name}, which vCenter does not list there")
