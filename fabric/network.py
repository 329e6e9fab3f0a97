"""Several hosts' network cores and one physical switch, run together in-process.

`Network` holds the hosts' `HostNetworkSystem` cores and a `PhysicalSwitch`, finds
where a VM's adapter is connected, cables links in and out (the host's NIC and its
switch port together), and runs a frame from a VM's vNIC to completion with the one
walk of `frame_walk`, calling each host's core directly. It is what the tests and the
benchmarks use; vCenter runs the same walk over the hosts' RPCs. A host missing from
`hosts` is down: the copies the switch delivers to it are lost (DROP_HOST_UNREACHABLE).
Every drop a host reports is in the trace, the flooded copies it discards included.

Never does: I/O or time; look inside a vSwitch beyond its public calls.
"""

from __future__ import annotations

from collections.abc import Mapping

from vsim.ethernet_frame import Frame
from vsim.fabric.frame_walk import HostPart, Reception, Trace, TraceDrop, Unreachable, run
from vsim.fabric.physical_switch import PhysicalSwitch
from vsim.faults import InvalidState, NotFound
from vsim.host.kernel.net.forwarding import Delivery
from vsim.host.kernel.net.vswitch import HostNetworkSystem


def host_part(host: str, delivery: Delivery) -> HostPart:
    """A vSwitch's Delivery as the walk reads it."""
    received, _sent, dropped = delivery
    return HostPart(
        tuple(Reception(host, v.vm, v.nic, f) for v, f in received) if received else (),
        tuple(TraceDrop(host, d.where, d.reason, d.detail) for d in dropped) if dropped else (),
        delivery.sent,
    )


class _Cores:
    """The walk's driver: each host's network core, called directly."""

    flooded_copy_discards: frozenset[str] = frozenset()

    def __init__(self, network: Network) -> None:
        self._network = network

    def send(self, host: str, vm: str, nic: str, frame: Frame) -> HostPart:
        return host_part(host, self._network._host(host).send(vm, nic, frame))

    def receive(self, host: str, uplink: str, frame: Frame) -> HostPart | Unreachable:
        system = self._network.hosts.get(host)
        if system is None:
            return Unreachable(f"{host} is not running")
        return host_part(host, system.receive(uplink, frame))


class Network:
    """Several hosts' network cores and one physical switch, run together in-process."""

    def __init__(
        self,
        switch: PhysicalSwitch | None = None,
        hosts: Mapping[str, HostNetworkSystem] | None = None,
    ) -> None:
        self.switch = switch if switch is not None else PhysicalSwitch()
        self.hosts: dict[str, HostNetworkSystem] = dict(hosts or {})
        """Host name -> its network core; a host missing here is down."""
        self._driver = _Cores(self)

    def _host(self, name: str) -> HostNetworkSystem:
        try:
            return self.hosts[name]
        except KeyError:
            raise NotFound(f"no host named {name!r} in this network") from None

    def locate(self, vm: str, nic: str = "ethernet0") -> str:
        """The host where vm's adapter `nic` is connected. Looks at every host's vNICs
        (a helper for tests; `send(..., host=)` skips it)."""
        found = [
            name
            for name, system in self.hosts.items()
            if any(v.vm == vm and v.nic == nic for v in system.vnics())
        ]
        if not found:
            raise NotFound(f"{vm}/{nic} is connected on no host of this network")
        if len(found) > 1:
            raise InvalidState(f"{vm}/{nic} is connected on several hosts: {', '.join(found)}")
        return found[0]

    def set_link(self, host: str, uplink: str, up: bool) -> None:
        """Cable in or out: the host's NIC link and its switch port go down or up together."""
        system = self._host(host)
        self.switch.set_enabled(host, uplink, up)
        system.set_link_state(uplink, up)

    def send(
        self, vm: str, frame: Frame, *, nic: str = "ethernet0", host: str | None = None
    ) -> Trace:
        """The guest of vm sends `frame` from adapter `nic`; the frame is run to the end
        through its host's vSwitch, the switch and every other host's vSwitch."""
        host = self.locate(vm, nic) if host is None else host
        return run(self.switch, self._driver, host, vm, nic, frame)
