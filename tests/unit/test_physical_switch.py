"""The physical switch between hosts, and frames run across several hosts' vSwitches
and the switch by `Network`: cross-host delivery, VLAN isolation through trunks and
access ports, no path between vSwitches of one host except over the wire, and a
property over random topologies checked against a plain model of the rules."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.ethernet_frame import BROADCAST_MAC, Frame
from vsim.fabric.network import Network
from vsim.fabric.physical_switch import (
    ALL_VLANS,
    DROP_HOST_UNREACHABLE,
    DROP_NOT_CABLED,
    DROP_PORT_DISABLED,
    PhysicalSwitch,
)
from vsim.fabric.physical_switch import DROP_VLAN as SWITCH_DROP_VLAN
from vsim.faults import AlreadyExists, InvalidArgument, NotFound
from vsim.host.kernel.net.vswitch import HostNetworkSystem
from vsim.port_stats import DROP_NO_PATH, DROP_NO_PORT, DROP_STANDBY
from vsim.security_policy import SecurityPolicy

A, B, C, D = (f"00:50:56:00:00:0{i}" for i in range(1, 5))


def lab(*hosts: str, vlans=None) -> Network:
    """Hosts with vSwitch0 on vmnic0 (cabled as a trunk) and port groups ten (VLAN 10),
    twenty (VLAN 20) and untagged (VLAN 0)."""
    network = Network(PhysicalSwitch())
    for name in hosts:
        system = HostNetworkSystem(name)
        system.add_vswitch("vSwitch0", ("vmnic0",))
        for pg, vlan in (("ten", 10), ("twenty", 20), ("untagged", 0)):
            system.add_port_group(pg, "vSwitch0", vlan)
        network.hosts[name] = system
        network.switch.connect(name, "vmnic0", vlans=vlans)
    return network


def who(trace) -> list[tuple[str, str]]:
    return [(r.host, r.vm) for r in trace.received]


def test_a_frame_crosses_the_switch_to_a_vm_on_another_host():
    net = lab("esxi-01", "esxi-02", "esxi-03")
    net.hosts["esxi-01"].connect_vnic("vm-a", "ethernet0", "ten", A)
    net.hosts["esxi-02"].connect_vnic("vm-b", "ethernet0", "ten", B)
    net.hosts["esxi-03"].connect_vnic("vm-c", "ethernet0", "ten", C)
    trace = net.send("vm-a", Frame(A, B, protocol="tcp", dst_port=80))
    assert who(trace) == [("esxi-02", "vm-b")]
    assert trace.received[0].frame.vlan is None
    # On the wire: tagged 10 out of esxi-01, flooded to both other hosts, where
    # esxi-03 has no port for B.
    assert [(h, u, f.vlan) for h, u, f in trace.wire] == [
        ("esxi-01", "vmnic0", 10),
        ("esxi-02", "vmnic0", 10),
        ("esxi-03", "vmnic0", 10),
    ]
    assert [(d.host, d.reason) for d in trace.dropped] == [("esxi-03", DROP_NO_PORT)]
    assert net.switch.stats("esxi-01", "vmnic0").rx == 1
    assert net.switch.stats("esxi-02", "vmnic0").tx == 1
    broadcast = net.send("vm-a", Frame(A, BROADCAST_MAC))
    assert sorted(who(broadcast)) == [("esxi-02", "vm-b"), ("esxi-03", "vm-c")]
    json.dumps(broadcast.to_dict())  # plain data for the CLI


def test_vlans_stay_apart_across_hosts():
    net = lab("esxi-01", "esxi-02")
    net.hosts["esxi-01"].connect_vnic("vm-a", "ethernet0", "ten", A)
    net.hosts["esxi-02"].connect_vnic("vm-b", "ethernet0", "twenty", B)
    net.hosts["esxi-02"].connect_vnic("vm-u", "ethernet0", "untagged", C)
    for dst in (B, C, BROADCAST_MAC):
        trace = net.send("vm-a", Frame(A, dst))
        assert who(trace) == []
        assert DROP_NO_PORT in trace.reasons()


def test_a_switch_port_that_does_not_trunk_a_vlan_blocks_it():
    net = lab("esxi-01", "esxi-02")
    net.hosts["esxi-01"].connect_vnic("vm-a", "ethernet0", "ten", A)
    net.hosts["esxi-01"].connect_vnic("vm-x", "ethernet0", "twenty", C)
    net.hosts["esxi-02"].connect_vnic("vm-b", "ethernet0", "ten", B)
    net.hosts["esxi-02"].connect_vnic("vm-y", "ethernet0", "twenty", D)
    net.switch.configure("esxi-02", "vmnic0", vlans={0, 20})
    blocked = net.send("vm-a", Frame(A, B))
    assert who(blocked) == []
    assert [(d.where, d.reason) for d in blocked.dropped] == [
        ("pswitch-01:esxi-02/vmnic0", SWITCH_DROP_VLAN)
    ]
    assert who(net.send("vm-x", Frame(C, D))) == [("esxi-02", "vm-y")]
    # On the way in too: esxi-02's VLAN 10 frames do not enter the switch at all.
    into = net.send("vm-b", Frame(B, A))
    assert who(into) == [] and len(into.wire) == 1
    assert [d.where for d in into.dropped] == ["pswitch-01:esxi-02/vmnic0"]
    assert net.switch.stats("esxi-02", "vmnic0").dropped == {SWITCH_DROP_VLAN: 2}
    assert net.switch.stats("esxi-02", "vmnic0").rx == 0


def test_access_ports_untag_into_vlan_0_port_groups():
    net = lab("esxi-01", "esxi-02")
    net.switch.configure("esxi-02", "vmnic0", access_vlan=10)
    net.hosts["esxi-01"].connect_vnic("vm-a", "ethernet0", "ten", A)
    net.hosts["esxi-02"].connect_vnic("vm-u", "ethernet0", "untagged", B)
    net.hosts["esxi-02"].connect_vnic("vm-t", "ethernet0", "ten", C)
    trace = net.send("vm-a", Frame(A, BROADCAST_MAC))
    assert who(trace) == [("esxi-02", "vm-u")]  # EST: the switch port does the tagging
    assert trace.wire[-1][2].vlan is None
    back = net.send("vm-u", Frame(B, A))
    assert who(back) == [("esxi-01", "vm-a")]
    assert [(h, f.vlan) for h, _u, f in back.wire] == [("esxi-02", None), ("esxi-01", 10)]
    # A tagged frame into an access port is dropped there.
    tagged = net.send("vm-t", Frame(C, A))
    assert who(tagged) == [] and tagged.reasons() == {SWITCH_DROP_VLAN: 1}


def test_two_vswitches_of_one_host_meet_only_over_the_physical_network():
    net = lab("esxi-01")
    system = net.hosts["esxi-01"]
    system.add_vswitch("vSwitch1", ("vmnic1",))
    system.add_port_group("ten-b", "vSwitch1", 10)
    system.connect_vnic("vm-a", "ethernet0", "ten", A)
    system.connect_vnic("vm-b", "ethernet0", "ten-b", B)
    # vmnic1 has no cable: no path. The frame leaves by vmnic0 and goes nowhere.
    lost = net.send("vm-a", Frame(A, B))
    assert who(lost) == [] and [(h, u) for h, u, _f in lost.wire] == [("esxi-01", "vmnic0")]
    uncabled = net.send("vm-b", Frame(B, A))
    assert who(uncabled) == [] and uncabled.reasons() == {DROP_NOT_CABLED: 1}
    net.switch.connect("esxi-01", "vmnic1")
    over = net.send("vm-a", Frame(A, B))
    assert who(over) == [("esxi-01", "vm-b")]
    assert ("esxi-01", "vmnic1") in [(h, u) for h, u, _f in over.wire]
    # Without an uplink, vSwitch1 is an island.
    system.update_vswitch("vSwitch1", uplinks=())
    assert who(net.send("vm-a", Frame(A, B))) == []
    island = net.send("vm-b", Frame(B, A))
    assert who(island) == [] and island.reasons() == {DROP_NO_PATH: 1} and island.wire == ()


def test_cut_links_down_hosts_and_standby_uplinks():
    net = lab("esxi-01", "esxi-02")
    net.hosts["esxi-02"].update_vswitch("vSwitch0", uplinks=("vmnic0", "vmnic1"))
    net.switch.connect("esxi-02", "vmnic1")
    net.hosts["esxi-01"].connect_vnic("vm-a", "ethernet0", "ten", A)
    net.hosts["esxi-02"].connect_vnic("vm-b", "ethernet0", "ten", B)
    trace = net.send("vm-a", Frame(A, B))
    assert who(trace) == [("esxi-02", "vm-b")]  # once, though both uplinks got a copy
    assert trace.reasons() == {DROP_STANDBY: 1}
    net.set_link("esxi-02", "vmnic0", False)  # failover to vmnic1
    failover = net.send("vm-a", Frame(A, B))
    assert who(failover) == [("esxi-02", "vm-b")]
    assert failover.reasons() == {DROP_PORT_DISABLED: 1}
    net.set_link("esxi-02", "vmnic1", False)
    assert who(net.send("vm-a", Frame(A, B))) == []
    net.set_link("esxi-02", "vmnic0", True)
    del net.hosts["esxi-02"]  # the host is down
    down = net.send("vm-a", Frame(A, B))
    assert who(down) == [] and DROP_HOST_UNREACHABLE in down.reasons()


def test_switch_configuration_is_validated_and_changes_nothing_when_refused():
    switch = PhysicalSwitch()
    switch.connect("esxi-01", "vmnic0", vlans=range(1, 11))
    before = switch.ports()
    with pytest.raises(AlreadyExists):
        switch.connect("esxi-01", "vmnic0")
    for kwargs in (
        {"vlans": {4095}},
        {"vlans": {-1}},
        {"vlans": {"10"}},
        {"vlans": 10},
        {"access_vlan": 4095},
        {"access_vlan": True},
        {"vlans": {1}, "access_vlan": 1},
    ):
        with pytest.raises(InvalidArgument):
            switch.configure("esxi-01", "vmnic0", **kwargs)
    for host, uplink in (("ESXi 01", "vmnic0"), ("esxi-02", "eth0")):
        with pytest.raises(InvalidArgument):
            switch.connect(host, uplink)
    with pytest.raises(NotFound):
        switch.configure("esxi-09", "vmnic0")
    assert switch.ports() == before
    assert switch.port("esxi-01", "vmnic0").vlans == frozenset(range(1, 11))
    assert switch.configure("esxi-01", "vmnic0").vlans == ALL_VLANS
    switch.disconnect("esxi-01", "vmnic0")
    assert switch.ports() == []


def test_network_finds_the_senders_host():
    net = lab("esxi-01", "esxi-02")
    net.hosts["esxi-02"].connect_vnic("vm-b", "ethernet1", "ten", B)
    assert net.locate("vm-b", "ethernet1") == "esxi-02"
    with pytest.raises(NotFound):
        net.send("vm-b", Frame(B, A))  # it has no ethernet0
    with pytest.raises(NotFound):
        net.send("vm-b", Frame(B, A), nic="ethernet1", host="esxi-07")


# ---- the property: random topologies, policies and frames against a plain model

VLAN_CHOICES = (0, 10, 10, 20, 4095)


@st.composite
def topologies(draw):
    """A network of 1-3 hosts, each with 1-2 vSwitches of 0-2 uplinks, port groups
    on random VLANs and policies, vNICs, and random switch ports."""
    net = Network(PhysicalSwitch())
    mac_seq = iter(range(1, 1000))
    vm_seq = iter(range(1, 1000))
    for h in range(draw(st.integers(1, 3))):
        name = f"esxi-0{h + 1}"
        system = net.hosts[name] = HostNetworkSystem(name)
        nic_seq = iter(range(10))
        for s in range(draw(st.sampled_from([1, 2, 2]))):
            switch = f"vSwitch{s}"
            count = draw(st.sampled_from([0, 1, 1, 2]))
            uplinks = tuple(f"vmnic{next(nic_seq)}" for _ in range(count))
            policy = SecurityPolicy(draw(st.booleans()), draw(st.booleans()), draw(st.booleans()))
            system.add_vswitch(switch, uplinks, policy)
            for uplink in uplinks:
                cable(draw, net, name, uplink)
            for g in range(draw(st.integers(1, 2))):
                pg = f"pg-{s}-{g}"
                override = SecurityPolicy(
                    *(draw(st.sampled_from([None, True, False])) for _ in range(3))
                )
                system.add_port_group(pg, switch, draw(st.sampled_from(VLAN_CHOICES)), override)
                for _ in range(draw(st.integers(1, 2))):
                    vm = f"vm-{next(vm_seq):03d}"
                    system.connect_vnic(vm, "ethernet0", pg, f"00:50:56:00:01:{next(mac_seq):02x}")
    return net


def cable(draw, net: Network, host: str, uplink: str) -> None:
    kind = draw(st.sampled_from(["trunk", "trunk", "pruned", "access", "none"]))
    if kind == "trunk":
        net.switch.connect(host, uplink)
    elif kind == "pruned":
        net.switch.connect(host, uplink, vlans=draw(st.sets(st.sampled_from([0, 10, 20]))))
    elif kind == "access":
        net.switch.connect(host, uplink, access_vlan=draw(st.sampled_from([0, 10, 20])))
    else:
        return
    if draw(st.integers(0, 5)) == 0:
        net.switch.set_enabled(host, uplink, False)
    if draw(st.integers(0, 5)) == 0:
        net.hosts[host].set_link_state(uplink, False)


def everyone(net: Network):
    return [(h, v) for h, system in net.hosts.items() for v in system.vnics()]


def sees(port, vlan: int) -> bool:
    return port.vlan in (vlan, 4095)


def known_by(port) -> str:
    return port.effective_mac if port.security.mac_changes else port.mac


def blocked(port) -> bool:
    return not port.security.mac_changes and port.effective_mac != port.mac


def takes(port, vlan: int, dst: str) -> bool:
    group = int(dst[:2], 16) & 1
    addressed = group or known_by(port) == dst or port.security.allow_promiscuous
    return sees(port, vlan) and bool(addressed) and not blocked(port)


def active_uplink(system: HostNetworkSystem, switch: str) -> str | None:
    uplinks = next(s.uplinks for s in system.vswitches() if s.name == switch)
    return next((u for u in uplinks if system.link_up(u)), None)


def model(net: Network, host: str, vm: str, frame: Frame) -> dict[tuple[str, str], int | None]:
    """Who must receive the frame, and the tag each must see; by brute force."""
    system = net.hosts[host]
    me = system.vnic(vm)
    if me.vlan != 4095 and frame.vlan is not None:
        return {}
    if not me.security.forged_transmits and frame.src_mac != me.effective_mac:
        return {}
    vlan = (frame.vlan or 0) if me.vlan == 4095 else me.vlan
    want: dict[tuple[str, str], int | None] = {}
    local = [p for p in system.vnics() if p.vswitch == me.vswitch]
    for p in local:
        if p.vm != vm and takes(p, vlan, frame.dst_mac):
            want[(host, p.vm)] = (vlan or None) if p.vlan == 4095 else None
    stays = not frame.is_group and any(
        sees(p, vlan) and known_by(p) == frame.dst_mac for p in local
    )
    uplink = active_uplink(system, me.vswitch)
    ports = {(p.host, p.uplink): p for p in net.switch.ports()}
    entry = ports.get((host, uplink))
    if stays or entry is None or not entry.enabled:
        return want
    if entry.access_vlan is not None:
        if vlan != 0:
            return want
        wire_vlan = entry.access_vlan
    elif vlan in entry.vlans:
        wire_vlan = vlan
    else:
        return want
    for (to_host, to_uplink), port in ports.items():
        if port is entry or not port.enabled or not port.carries(wire_vlan):
            continue
        there = net.hosts[to_host]
        owner = [s.name for s in there.vswitches() if to_uplink in s.uplinks]
        if not owner or active_uplink(there, owner[0]) != to_uplink:
            continue
        host_vlan = 0 if port.access_vlan is not None else wire_vlan
        for p in there.vnics():
            if p.vswitch == owner[0] and takes(p, host_vlan, frame.dst_mac):
                want[(to_host, p.vm)] = (host_vlan or None) if p.vlan == 4095 else None
    return want


STRANGER = "00:50:56:ff:00:01"


@st.composite
def frames(draw, net: Network):
    host, sender = draw(st.sampled_from(everyone(net)))
    _, target = draw(st.sampled_from(everyone(net)))
    dst = draw(
        st.sampled_from(
            [target.mac, target.effective_mac, BROADCAST_MAC, "01:00:5e:00:00:01", STRANGER]
        )
    )
    src = draw(st.sampled_from([sender.effective_mac, sender.effective_mac, STRANGER]))
    tag = draw(st.sampled_from([None, None, None, 10, 20, 30]))
    return host, sender.vm, Frame(src, dst, vlan=tag)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_frames_reach_exactly_the_ports_the_rules_allow(data):
    net = data.draw(topologies())
    for _ in range(data.draw(st.integers(1, 16))):
        step = data.draw(st.sampled_from(["frame", "frame", "frame", "mac", "policy", "link"]))
        if step == "mac":  # a guest changes its MAC, maybe to another port's, or back
            host, port = data.draw(st.sampled_from(everyone(net)))
            _, other = data.draw(st.sampled_from(everyone(net)))
            mac = data.draw(st.sampled_from([port.mac, other.mac, STRANGER]))
            try:
                net.hosts[host].set_effective_mac(port.vm, "ethernet0", mac)
            except InvalidArgument:  # only another adapter's address on its vSwitch
                assert [
                    v
                    for v in net.hosts[host].vnics()
                    if v.vswitch == port.vswitch
                    and (v.vm, v.nic) != (port.vm, port.nic)
                    and mac in (v.mac, v.effective_mac)
                ]
        elif step == "policy":
            host, port = data.draw(st.sampled_from(everyone(net)))
            net.hosts[host].update_port_group(
                port.port_group,
                vlan=data.draw(st.sampled_from(VLAN_CHOICES)),
                security=SecurityPolicy(
                    *(data.draw(st.sampled_from([None, True, False])) for _ in range(3))
                ),
            )
        elif step == "link" and net.switch.ports():
            port = data.draw(st.sampled_from(net.switch.ports()))
            net.set_link(port.host, port.uplink, data.draw(st.booleans()))
        else:
            host, vm, frame = data.draw(frames(net))
            check_trace(net, host, vm, frame)


def check_trace(net: Network, host: str, vm: str, frame: Frame) -> None:
    want = model(net, host, vm, frame)
    trace = net.send(vm, frame, host=host)
    got = [((r.host, r.vm), r.frame.vlan) for r in trace.received]
    # Each port receives a frame at most once, and exactly the model's ports do.
    assert len(got) == len({k for k, _ in got}), trace
    assert dict(got) == want, (trace, want)
    sender = net.hosts[host].vnic(vm)
    vlan = (frame.vlan or 0) if sender.vlan == 4095 else sender.vlan
    for r in trace.received:
        port = net.hosts[r.host].vnic(r.vm)
        # Never the sender; never a port whose MAC change is being refused.
        assert (r.host, r.vm) != (host, vm)
        assert not blocked(port)
        # Only the destination, a broadcast/multicast, or a promiscuous port.
        assert frame.is_group or known_by(port) == frame.dst_mac or port.security.allow_promiscuous
        # Only the frame's own VLAN on the sender's vSwitch; another vSwitch of the
        # sender's host only through the physical switch.
        if r.host == host and port.vswitch == sender.vswitch:
            assert sees(port, vlan)
        elif r.host == host:
            uplink = active_uplink(net.hosts[host], port.vswitch)
            assert (host, uplink) in [(h, u) for h, u, _f in trace.wire[1:]]
        # The tag only ever reaches a VGT guest.
        if port.vlan != 4095:
            assert r.frame.vlan is None
