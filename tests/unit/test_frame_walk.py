"""The one frame walk, run by both kinds of driver: in-process over the hosts' cores
(`run`, what `Network` does) and awaited (`run_async`, what vCenter does over RPC),
on the same cores. The traces agree; the awaited one keeps the switch's port order
however the hosts' answers come back, leaves out only a receiving host's flooded-copy
discards, and turns a host the driver cannot reach into a drop at its switch port."""

from __future__ import annotations

import asyncio

from vsim.ethernet_frame import BROADCAST_MAC, Frame
from vsim.fabric.frame_walk import HostPart, Trace, Unreachable, run_async
from vsim.fabric.network import Network, host_part
from vsim.fabric.physical_switch import DROP_HOST_UNREACHABLE, PhysicalSwitch
from vsim.host.kernel.net.vswitch import HostNetworkSystem
from vsim.port_stats import DROP_NO_PORT, DROP_OWN_MAC

A, B, C = "00:50:56:00:00:01", "00:50:56:00:00:02", "00:50:56:00:00:03"
HOSTS = ("esxi-01", "esxi-02", "esxi-03", "esxi-04")


def lab() -> Network:
    """Four hosts on one trunk each; a on esxi-01, b on esxi-02 and esxi-04's c, all
    in VLAN 10; esxi-03 has no port in it."""
    network = Network(PhysicalSwitch())
    for name in HOSTS:
        system = HostNetworkSystem(name)
        system.add_vswitch("vSwitch0", ("vmnic0",))
        system.add_port_group("ten", "vSwitch0", 10)
        network.hosts[name] = system
        network.switch.connect(name, "vmnic0")
    network.hosts["esxi-01"].connect_vnic("a", "ethernet0", "ten", A)
    network.hosts["esxi-02"].connect_vnic("b", "ethernet0", "ten", B)
    network.hosts["esxi-04"].connect_vnic("c", "ethernet0", "ten", C)
    return network


class Awaited:
    """The same cores behind awaits; the earlier a host's switch port, the later its
    answer comes back; `down` hosts do not answer."""

    def __init__(self, network: Network, flooded: frozenset[str], down: set[str]) -> None:
        self.network = network
        self.flooded_copy_discards = flooded
        self.down = down
        self.answered: list[str] = []

    async def send(self, host: str, vm: str, nic: str, frame: Frame) -> HostPart:
        await asyncio.sleep(0)
        return host_part(host, self.network.hosts[host].send(vm, nic, frame))

    async def receive(self, host: str, uplink: str, frame: Frame) -> HostPart | Unreachable:
        for _ in range(len(HOSTS) - HOSTS.index(host)):
            await asyncio.sleep(0)
        self.answered.append(host)
        if host in self.down:
            return Unreachable(f"{host} does not answer")
        return host_part(host, self.network.hosts[host].receive(uplink, frame))


async def awaited(network: Network, frame: Frame, **driver) -> tuple[Trace, list[str]]:
    hosts = Awaited(network, **{"flooded": frozenset(), "down": set(), **driver})
    trace = await run_async(network.switch, hosts, "esxi-01", "a", "ethernet0", frame)
    return trace, hosts.answered


async def test_both_runners_leave_the_same_trace():
    for frame in (Frame(A, B), Frame(A, A), Frame(A, C, vlan=20), Frame(A, BROADCAST_MAC)):
        in_process = lab().send("a", frame)
        trace, answered = await awaited(lab(), frame)
        assert trace == in_process
    # The hosts answered last to first; the trace still reads in port order.
    assert answered == ["esxi-04", "esxi-03", "esxi-02"]
    assert trace.receivers() == [("esxi-02", "b", "ethernet0"), ("esxi-04", "c", "ethernet0")]
    assert [h for h, _u, _f in trace.wire] == ["esxi-01", "esxi-02", "esxi-03", "esxi-04"]
    assert [(d.host, d.reason) for d in trace.dropped] == [("esxi-03", DROP_NO_PORT)]


async def test_only_a_receiving_hosts_flooded_copy_discards_are_left_out():
    network = lab()
    everything = network.send("a", Frame(A, B))
    assert [(d.host, d.reason) for d in everything.dropped] == [
        ("esxi-03", DROP_NO_PORT),
        ("esxi-04", DROP_NO_PORT),
    ]
    flooded = frozenset({DROP_NO_PORT, DROP_OWN_MAC})
    trace, _ = await awaited(network, Frame(A, B), flooded=flooded)
    assert trace.receivers() == [("esxi-02", "b", "ethernet0")] and trace.dropped == ()
    # The sender's own drops always stay: they are not flooding.
    own, _ = await awaited(network, Frame(A, A), flooded=flooded)
    assert [(d.host, d.reason) for d in own.dropped] == [("esxi-01", DROP_OWN_MAC)]


async def test_an_unreachable_host_loses_its_copy_at_its_switch_port():
    trace, _ = await awaited(lab(), Frame(A, BROADCAST_MAC), down={"esxi-02"})
    assert trace.receivers() == [("esxi-04", "c", "ethernet0")]
    lost = [d for d in trace.dropped if d.reason == DROP_HOST_UNREACHABLE]
    assert [(d.host, d.where, d.detail, d.switch) for d in lost] == [
        ("esxi-02", "pswitch-01:esxi-02/vmnic0", "esxi-02 does not answer", "pswitch-01")
    ]
    assert trace.dropped[0] == lost[0]  # esxi-02's port comes before esxi-03's
    # In-process, a host missing from the network is down.
    network = lab()
    del network.hosts["esxi-02"]
    down = network.send("a", Frame(A, BROADCAST_MAC))
    assert [d.detail for d in down.dropped if d.reason == DROP_HOST_UNREACHABLE] == [
        "esxi-02 is not running"
    ]
