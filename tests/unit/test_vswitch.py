"""One host's standard vSwitches: port groups and VLANs, the security policy, the vNIC
firewall on the data path, uplinks and teaming, removals (a vSwitch only without port
groups, its uplinks then free; a disconnected vNIC's port and MAC), and configuration
faults that change nothing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.ethernet_frame import BROADCAST_MAC, Frame
from vsim.faults import AlreadyExists, InvalidArgument, NotFound, ResourceInUse, VimFault
from vsim.host.kernel.net.forwarding import VnicId
from vsim.host.kernel.net.vswitch import HostNetworkSystem
from vsim.port_stats import (
    DROP_FIREWALL,
    DROP_FORGED_TRANSMIT,
    DROP_LINK_DOWN,
    DROP_MAC_CHANGE,
    DROP_NO_PATH,
    DROP_NO_PORT,
    DROP_NO_VSWITCH,
    DROP_OWN_MAC,
    DROP_STANDBY,
    DROP_VLAN,
)
from vsim.security_policy import SecurityPolicy
from vsim.vnic_firewall import FirewallRule, VnicFirewall

A, B, C, D = (f"00:50:56:00:00:0{i}" for i in range(1, 5))
STRANGER = "00:50:56:aa:bb:cc"
MULTICAST = "01:00:5e:00:00:fb"


def host(
    *port_groups: tuple[str, int], uplinks: tuple[str, ...] = ("vmnic0",)
) -> HostNetworkSystem:
    system = HostNetworkSystem("esxi-01")
    system.add_vswitch("vSwitch0", uplinks)
    for name, vlan in port_groups:
        system.add_port_group(name, "vSwitch0", vlan)
    return system


def receivers(delivery) -> list[str]:
    return [vm for (vm, _nic), _frame in delivery.received]


def reasons(delivery) -> list[str]:
    return [d.reason for d in delivery.dropped]


def snapshot(system: HostNetworkSystem) -> tuple:
    return (system.vswitches(), system.port_groups(), system.vnics())


# ---- forwarding and VLANs


def test_unicast_goes_to_the_port_with_that_mac_only_and_stays_on_the_vswitch():
    net = host(("pg", 10))
    for vm, mac in (("vm-a", A), ("vm-b", B), ("vm-c", C)):
        net.connect_vnic(vm, "ethernet0", "pg", mac)
    delivery = net.send("vm-a", "ethernet0", Frame(A, B))
    assert receivers(delivery) == ["vm-b"]
    assert delivery.sent == () and delivery.dropped == ()
    assert delivery.received[0][1].vlan is None  # VST: the guest never sees the tag
    assert net.stats("vm-a").tx == 1 and net.stats("vm-b").rx == 1 and net.stats("vm-c").rx == 0
    assert net.uplink_stats("vmnic0").tx == 0


def test_unknown_unicast_and_broadcast_leave_by_the_uplink_tagged_with_the_vst_vlan():
    net = host(("pg", 10), ("other", 20))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    net.connect_vnic("vm-b", "ethernet0", "pg", B)
    net.connect_vnic("vm-c", "ethernet0", "other", C)
    unknown = net.send("vm-a", "ethernet0", Frame(A, STRANGER))
    assert receivers(unknown) == []
    assert [(u, f.vlan) for u, f in unknown.sent] == [("vmnic0", 10)]
    broadcast = net.send("vm-a", "ethernet0", Frame(A, BROADCAST_MAC))
    assert receivers(broadcast) == ["vm-b"]  # not the sender, not VLAN 20
    assert [(u, f.vlan) for u, f in broadcast.sent] == [("vmnic0", 10)]
    multicast = net.send("vm-a", "ethernet0", Frame(A, MULTICAST))
    assert receivers(multicast) == ["vm-b"] and len(multicast.sent) == 1
    assert net.uplink_stats("vmnic0").tx == 3


def test_vlan_0_port_groups_send_untagged_frames():
    net = host(("VM Network", 0))
    net.connect_vnic("vm-a", "ethernet0", "VM Network", A)
    delivery = net.send("vm-a", "ethernet0", Frame(A, BROADCAST_MAC))
    assert [f.vlan for _u, f in delivery.sent] == [None]


def test_port_groups_on_different_vlans_never_see_each_others_frames():
    net = host(("ten", 10), ("twenty", 20))
    net.connect_vnic("vm-a", "ethernet0", "ten", A)
    net.connect_vnic("vm-b", "ethernet0", "twenty", B)
    # Even addressed to vm-b's own MAC, a VLAN 10 frame does not reach VLAN 20.
    for dst in (B, BROADCAST_MAC, MULTICAST):
        delivery = net.send("vm-a", "ethernet0", Frame(A, dst))
        assert receivers(delivery) == []
        assert [f.vlan for _u, f in delivery.sent] == [10]
    assert net.stats("vm-b").rx == 0


def test_a_guest_tagged_frame_on_a_vst_or_untagged_port_group_is_dropped():
    net = host(("ten", 10), ("none", 0))
    net.connect_vnic("vm-a", "ethernet0", "ten", A)
    net.connect_vnic("vm-b", "ethernet0", "ten", B)
    net.connect_vnic("vm-c", "ethernet0", "none", C)
    for vm, src in (("vm-a", A), ("vm-c", C)):
        delivery = net.send(vm, "ethernet0", Frame(src, BROADCAST_MAC, vlan=10))
        assert receivers(delivery) == [] and delivery.sent == ()
        assert reasons(delivery) == [DROP_VLAN]
        assert net.stats(vm).dropped == {DROP_VLAN: 1} and net.stats(vm).tx == 0


def test_vgt_port_group_passes_guest_tags_and_receives_every_vlan_with_its_tag():
    net = host(("trunk", 4095), ("ten", 10), ("twenty", 20), ("none", 0))
    net.connect_vnic("router", "ethernet0", "trunk", A)
    net.connect_vnic("vm-10", "ethernet0", "ten", B)
    net.connect_vnic("vm-20", "ethernet0", "twenty", C)
    net.connect_vnic("vm-0", "ethernet0", "none", D)
    # The guest picks the VLAN with its tag; the VST port gets it untagged.
    out = net.send("router", "ethernet0", Frame(A, C, vlan=20))
    assert receivers(out) == ["vm-20"] and out.received[0][1].vlan is None
    out = net.send("router", "ethernet0", Frame(A, BROADCAST_MAC, vlan=10))
    assert receivers(out) == ["vm-10"]
    assert [(u, f.vlan) for u, f in out.sent] == [("vmnic0", 10)]
    untagged = net.send("router", "ethernet0", Frame(A, BROADCAST_MAC))
    assert receivers(untagged) == ["vm-0"]
    # Frames from every VLAN reach the VGT port with their tag kept.
    for vm, src, vlan in (("vm-10", B, 10), ("vm-20", C, 20), ("vm-0", D, None)):
        delivery = net.send(vm, "ethernet0", Frame(src, A))
        assert [(r, f.vlan) for (r, _n), f in delivery.received] == [("router", vlan)]


def test_a_unicast_to_the_senders_own_mac_is_not_reflected():
    net = host(("pg", 10))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    delivery = net.send("vm-a", "ethernet0", Frame(A, A))
    assert receivers(delivery) == [] and delivery.sent == ()
    assert reasons(delivery) == [DROP_OWN_MAC]


# ---- security policy


def test_forged_transmits_reject_drops_frames_with_another_source_mac():
    net = host(("pg", 10))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    net.connect_vnic("vm-b", "ethernet0", "pg", B)
    # Standard-switch default is accept: the forged frame goes through.
    assert receivers(net.send("vm-a", "ethernet0", Frame(STRANGER, B))) == ["vm-b"]
    net.update_port_group("pg", security=SecurityPolicy(forged_transmits=False))
    forged = net.send("vm-a", "ethernet0", Frame(STRANGER, B))
    assert receivers(forged) == [] and forged.sent == ()
    assert reasons(forged) == [DROP_FORGED_TRANSMIT]
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, B))) == ["vm-b"]
    # The effective MAC counts: after a MAC change the new source is not forged.
    net.set_effective_mac("vm-a", "ethernet0", STRANGER)
    assert receivers(net.send("vm-a", "ethernet0", Frame(STRANGER, B))) == ["vm-b"]
    assert reasons(net.send("vm-a", "ethernet0", Frame(A, B))) == [DROP_FORGED_TRANSMIT]
    assert net.stats("vm-a").dropped == {DROP_FORGED_TRANSMIT: 2}


def test_mac_changes_reject_stops_all_inbound_frames_until_the_guest_changes_back():
    net = host(("pg", 10))
    net.update_vswitch(
        "vSwitch0",
        security=SecurityPolicy(allow_promiscuous=False, mac_changes=False, forged_transmits=True),
    )
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    net.connect_vnic("vm-b", "ethernet0", "pg", B)
    net.set_effective_mac("vm-b", "ethernet0", STRANGER)
    for dst in (B, STRANGER, BROADCAST_MAC):
        delivery = net.send("vm-a", "ethernet0", Frame(A, dst))
        assert "vm-b" not in receivers(delivery)
    assert net.stats("vm-b").dropped[DROP_MAC_CHANGE] == 2  # to B and the broadcast
    # Also nothing from the physical network.
    assert receivers(net.receive("vmnic0", Frame(C, B, vlan=10))) == []
    net.set_effective_mac("vm-b", "ethernet0", B)
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, B))) == ["vm-b"]
    assert receivers(net.receive("vmnic0", Frame(C, BROADCAST_MAC, vlan=10))) == ["vm-a", "vm-b"]


def test_mac_changes_accept_moves_the_port_to_its_new_mac_and_back():
    net = host(("pg", 10))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    net.connect_vnic("vm-b", "ethernet0", "pg", B)
    net.set_effective_mac("vm-b", "ethernet0", STRANGER)
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, STRANGER))) == ["vm-b"]
    old = net.send("vm-a", "ethernet0", Frame(A, B))
    assert receivers(old) == [] and len(old.sent) == 1  # the old MAC is unknown now
    net.set_effective_mac("vm-b", "ethernet0", B)
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, B))) == ["vm-b"]
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, STRANGER))) == []


def test_promiscuous_port_sees_others_unicast_in_its_vlan_but_never_another_vlan():
    net = host(("ten", 10), ("twenty", 20), ("sniff", 10))
    net.connect_vnic("vm-a", "ethernet0", "ten", A)
    net.connect_vnic("vm-b", "ethernet0", "ten", B)
    net.connect_vnic("vm-x", "ethernet0", "twenty", C)
    net.connect_vnic("ids", "ethernet0", "sniff", D)
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, B))) == ["vm-b"]
    net.update_port_group("sniff", security=SecurityPolicy(allow_promiscuous=True))
    assert sorted(receivers(net.send("vm-a", "ethernet0", Frame(A, B)))) == ["ids", "vm-b"]
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, STRANGER))) == ["ids"]
    assert receivers(net.receive("vmnic0", Frame(STRANGER, A, vlan=10))) == ["vm-a", "ids"]
    assert receivers(net.send("vm-x", "ethernet0", Frame(C, STRANGER))) == []
    assert receivers(net.receive("vmnic0", Frame(STRANGER, C, vlan=20))) == ["vm-x"]
    # It gets a broadcast once, not once as member and once as sniffer.
    assert sorted(receivers(net.send("vm-a", "ethernet0", Frame(A, BROADCAST_MAC)))) == [
        "ids",
        "vm-b",
    ]


def test_promiscuous_vgt_port_sees_every_vlan_and_the_vswitch_policy_is_inherited():
    net = host(("ten", 10), ("twenty", 20), ("trunk", 4095))
    net.connect_vnic("vm-a", "ethernet0", "ten", A)
    net.connect_vnic("vm-x", "ethernet0", "twenty", C)
    net.connect_vnic("ids", "ethernet0", "trunk", D)
    net.update_vswitch(
        "vSwitch0",
        security=SecurityPolicy(allow_promiscuous=True, mac_changes=True, forged_transmits=True),
    )
    assert net.effective_security("trunk").allow_promiscuous is True
    seen = net.send("vm-x", "ethernet0", Frame(C, STRANGER))
    assert [(r, f.vlan) for (r, _n), f in seen.received] == [("ids", 20)]
    # A port group's override beats the vSwitch's policy.
    net.update_port_group("ten", security=SecurityPolicy(allow_promiscuous=False))
    assert receivers(net.send("vm-x", "ethernet0", Frame(C, STRANGER))) == ["ids"]
    assert "vm-a" not in receivers(net.send("ids", "ethernet0", Frame(D, STRANGER, vlan=10)))


# ---- the vNIC firewall on the data path


def test_the_vnic_firewall_filters_egress_and_ingress_first_match_wins():
    net = host(("pg", 10))
    web = VnicFirewall(
        (
            FirewallRule("allow", "in", "tcp", "10.0.0.0/24", 443),
            FirewallRule("deny", "in", "tcp", "any", "any", name="no other tcp in"),
            FirewallRule("deny", "out", "udp", "any", 53),
        )
    )
    net.connect_vnic("client", "ethernet0", "pg", A)
    net.connect_vnic("web", "ethernet0", "pg", B, firewall=web)

    def tcp(port: int, src_ip: str = "10.0.0.7") -> Frame:
        return Frame(A, B, protocol="tcp", src_ip=src_ip, dst_ip="10.0.0.9", dst_port=port)

    assert receivers(net.send("client", "ethernet0", tcp(443))) == ["web"]
    denied = net.send("client", "ethernet0", tcp(22))
    assert receivers(denied) == [] and reasons(denied) == [DROP_FIREWALL]
    assert "no other tcp in" in denied.dropped[0].detail
    assert receivers(net.send("client", "ethernet0", tcp(443, src_ip="192.168.1.1"))) == []
    dns = Frame(B, A, protocol="udp", src_ip="10.0.0.9", dst_ip="10.0.0.7", dst_port=53)
    out = net.send("web", "ethernet0", dns)
    assert receivers(out) == [] and out.sent == () and reasons(out) == [DROP_FIREWALL]
    assert net.stats("web").dropped == {DROP_FIREWALL: 3} and net.stats("web").tx == 0
    net.set_firewall("web", "ethernet0", None)
    assert receivers(net.send("client", "ethernet0", tcp(22))) == ["web"]


# ---- uplinks, teaming and the physical side


def test_no_path_between_two_vswitches_of_one_host():
    net = host(("pg0", 10))
    net.add_vswitch("vSwitch1")  # no uplink
    net.add_port_group("pg1", "vSwitch1", 10)
    net.connect_vnic("vm-a", "ethernet0", "pg0", A)
    net.connect_vnic("vm-b", "ethernet0", "pg1", B)
    to_b = net.send("vm-a", "ethernet0", Frame(A, B))
    assert receivers(to_b) == [] and [u for u, _f in to_b.sent] == ["vmnic0"]
    to_a = net.send("vm-b", "ethernet0", Frame(B, A))
    assert receivers(to_a) == [] and to_a.sent == () and reasons(to_a) == [DROP_NO_PATH]
    assert receivers(net.send("vm-b", "ethernet0", Frame(B, BROADCAST_MAC))) == []


def test_frames_from_the_uplink_go_to_local_ports_and_never_back_out():
    net = host(("pg", 10), uplinks=("vmnic0", "vmnic1"))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    delivery = net.receive("vmnic0", Frame(STRANGER, BROADCAST_MAC, vlan=10))
    assert receivers(delivery) == ["vm-a"] and delivery.sent == ()
    unknown = net.receive("vmnic0", Frame(STRANGER, C, vlan=10))
    assert unknown.sent == () and reasons(unknown) == [DROP_NO_PORT]
    assert reasons(net.receive("vmnic0", Frame(STRANGER, A, vlan=20))) == [DROP_NO_PORT]
    assert reasons(net.receive("vmnic7", Frame(STRANGER, A, vlan=10))) == [DROP_NO_VSWITCH]
    assert net.uplink_stats("vmnic0").rx == 1
    assert net.uplink_stats("vmnic0").dropped == {DROP_NO_PORT: 2}


def test_explicit_failover_order_one_active_uplink_standby_drops():
    net = host(("pg", 10), uplinks=("vmnic0", "vmnic1"))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    assert net.vswitch("vSwitch0").active_uplink == "vmnic0"
    assert [u for u, _f in net.send("vm-a", "ethernet0", Frame(A, C)).sent] == ["vmnic0"]
    assert reasons(net.receive("vmnic1", Frame(C, A, vlan=10))) == [DROP_STANDBY]
    net.set_link_state("vmnic0", False)
    assert net.vswitch("vSwitch0").active_uplink == "vmnic1"
    assert [u for u, _f in net.send("vm-a", "ethernet0", Frame(A, C)).sent] == ["vmnic1"]
    assert receivers(net.receive("vmnic1", Frame(C, A, vlan=10))) == ["vm-a"]
    assert reasons(net.receive("vmnic0", Frame(C, A, vlan=10))) == [DROP_LINK_DOWN]
    net.set_link_state("vmnic1", False)
    assert reasons(net.send("vm-a", "ethernet0", Frame(A, C))) == [DROP_NO_PATH]
    net.set_link_state("vmnic0", True)
    assert net.vswitch("vSwitch0").active_uplink == "vmnic0"


def test_an_uplink_belongs_to_one_vswitch():
    net = host(("pg", 0), uplinks=("vmnic0",))
    net.add_vswitch("vSwitch1", ("vmnic1",))
    before = snapshot(net)
    with pytest.raises(AlreadyExists, match="vSwitch0"):
        net.update_vswitch("vSwitch1", uplinks=("vmnic1", "vmnic0"))
    with pytest.raises(AlreadyExists, match="vSwitch0"):
        net.add_vswitch("vSwitch2", ("vmnic2", "vmnic0"))
    with pytest.raises(AlreadyExists, match="vSwitch1"):
        net.add_vswitch("vSwitch2", ("vmnic1",))
    with pytest.raises(InvalidArgument, match="twice"):
        net.update_vswitch("vSwitch1", uplinks=("vmnic1", "vmnic1"))
    with pytest.raises(InvalidArgument):
        net.update_vswitch("vSwitch1", uplinks=("vmnic1", "eth0"))
    with pytest.raises(InvalidArgument):
        net.update_vswitch("vSwitch1", uplinks="vmnic2")
    with pytest.raises(InvalidArgument):  # half a policy: the uplinks do not change either
        net.update_vswitch("vSwitch1", uplinks=("vmnic2",), security=SecurityPolicy(True))
    with pytest.raises(NotFound):
        net.update_vswitch("vSwitch9", uplinks=())
    assert snapshot(net) == before
    assert net.update_vswitch("vSwitch0", uplinks=()).active_uplink is None
    assert net.update_vswitch("vSwitch1", uplinks=("vmnic1", "vmnic0")).uplinks == (
        "vmnic1",
        "vmnic0",
    )
    # The new order is the failover order; a NIC left out is free again.
    reordered = net.update_vswitch("vSwitch1", uplinks=("vmnic0", "vmnic2"))
    assert (reordered.uplinks, reordered.active_uplink) == (("vmnic0", "vmnic2"), "vmnic0")
    assert net.add_vswitch("vSwitch2", ("vmnic1",)).uplinks == ("vmnic1",)


def test_duplicate_mac_on_one_vswitch_is_refused_and_changes_nothing():
    net = host(("ten", 10), ("twenty", 20))
    net.add_vswitch("vSwitch1")
    net.add_port_group("other", "vSwitch1")
    net.connect_vnic("vm-a", "ethernet0", "ten", A)
    before = snapshot(net)
    with pytest.raises(AlreadyExists, match="vm-a/ethernet0"):
        net.connect_vnic("vm-b", "ethernet0", "twenty", A.upper())
    with pytest.raises(AlreadyExists):
        net.connect_vnic("vm-a", "ethernet0", "twenty", B)
    for bad in ("00:50:56:00:00", "zz:50:56:00:00:01", "01:00:5e:00:00:01", BROADCAST_MAC):
        with pytest.raises(InvalidArgument):
            net.connect_vnic("vm-b", "ethernet0", "twenty", bad)
    with pytest.raises(InvalidArgument):
        net.connect_vnic("vm-b", "nic0", "twenty", B)
    with pytest.raises(NotFound):
        net.connect_vnic("vm-b", "ethernet0", "nowhere", B)
    assert snapshot(net) == before
    # Another vSwitch is another broadcast domain: the same MAC is allowed there.
    assert net.connect_vnic("vm-b", "ethernet0", "other", A).vswitch == "vSwitch1"
    assert receivers(net.send("vm-b", "ethernet0", Frame(A, BROADCAST_MAC))) == []


def test_bad_vlan_is_refused_and_changes_nothing():
    net = host(("pg", 10))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    before = snapshot(net)
    for bad in (-1, 4096, 10_000, "10", 1.5, True, None):
        with pytest.raises(InvalidArgument):
            net.add_port_group("new", "vSwitch0", bad)
        if bad is not None:
            with pytest.raises(InvalidArgument):
                net.update_port_group("pg", vlan=bad)
    assert snapshot(net) == before
    assert receivers(net.receive("vmnic0", Frame(B, A, vlan=10))) == ["vm-a"]


def test_port_group_names_are_unique_per_host_and_in_use_ones_stay():
    net = host(("VM Network", 0))
    net.add_vswitch("vSwitch1")
    with pytest.raises(AlreadyExists, match="vSwitch0"):
        net.add_port_group("VM Network", "vSwitch1", 5)
    net.connect_vnic("vm-a", "ethernet0", "VM Network", A)
    before = snapshot(net)
    with pytest.raises(ResourceInUse, match="vm-a/ethernet0"):
        net.remove_port_group("VM Network")
    with pytest.raises(ResourceInUse, match="'VM Network'; remove them first"):
        net.remove_vswitch("vSwitch0")
    assert snapshot(net) == before
    net.disconnect_vnic("vm-a", "ethernet0")
    with pytest.raises(ResourceInUse, match="'VM Network'"):  # the port group, not its ports
        net.remove_vswitch("vSwitch0")
    net.remove_port_group("VM Network")
    net.remove_vswitch("vSwitch0")
    assert net.port_groups() == [] and [s.name for s in net.vswitches()] == ["vSwitch1"]
    with pytest.raises(NotFound, match="vSwitch0"):
        net.remove_vswitch("vSwitch0")


def test_a_removed_vswitchs_uplinks_are_free_for_another_vswitch():
    net = host(uplinks=("vmnic0", "vmnic1"))
    net.add_vswitch("vSwitch1", ("vmnic2",))
    with pytest.raises(AlreadyExists, match="vSwitch0"):
        net.update_vswitch("vSwitch1", uplinks=("vmnic2", "vmnic1"))
    net.remove_vswitch("vSwitch0")
    assert net.update_vswitch("vSwitch1", uplinks=("vmnic2", "vmnic1")).uplinks == (
        "vmnic2",
        "vmnic1",
    )
    assert net.add_vswitch("vSwitch2", ("vmnic0",)).active_uplink == "vmnic0"
    # Frames on a NIC that was the removed vSwitch's go to whoever owns it now.
    net.add_port_group("pg", "vSwitch2")
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    assert receivers(net.receive("vmnic0", Frame(B, A))) == ["vm-a"]


def test_a_disconnected_vnics_port_is_gone_and_its_mac_free():
    """A NIC hot-removed from a running VM: frames to it are dropped as no_port, it
    sends nothing, and another adapter may have its MAC."""
    net = host(("pg", 10))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    net.connect_vnic("vm-a", "ethernet1", "pg", B)
    net.connect_vnic("vm-c", "ethernet0", "pg", C)
    assert receivers(net.receive("vmnic0", Frame(D, B, vlan=10))) == ["vm-a"]
    removed = net.disconnect_vnic("vm-a", "ethernet1")
    assert (removed.nic, removed.mac) == ("ethernet1", B)
    assert reasons(net.receive("vmnic0", Frame(D, B, vlan=10))) == [DROP_NO_PORT]
    assert net.uplink_stats("vmnic0").dropped == {DROP_NO_PORT: 1}
    # From a local VM it is unknown unicast now: out through the uplink, to nobody here.
    local = net.send("vm-c", "ethernet0", Frame(C, B))
    assert receivers(local) == [] and [u for u, _f in local.sent] == ["vmnic0"]
    with pytest.raises(NotFound, match="vm-a/ethernet1"):
        net.send("vm-a", "ethernet1", Frame(B, C))
    with pytest.raises(NotFound, match="vm-a/ethernet1"):
        net.stats("vm-a", "ethernet1")
    assert [(v.vm, v.nic) for v in net.vnics()] == [("vm-a", "ethernet0"), ("vm-c", "ethernet0")]
    net.connect_vnic("vm-d", "ethernet0", "pg", B)  # the MAC may be given again
    assert receivers(net.receive("vmnic0", Frame(D, B, vlan=10))) == ["vm-d"]


def test_changing_a_port_groups_vlan_moves_its_connected_ports():
    net = host(("pg", 10), ("twenty", 20))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    net.connect_vnic("vm-b", "ethernet0", "twenty", B)
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, B))) == []
    net.update_port_group("pg", vlan=20)
    assert net.vnic("vm-a").vlan == 20
    assert receivers(net.send("vm-a", "ethernet0", Frame(A, B))) == ["vm-b"]
    assert receivers(net.receive("vmnic0", Frame(C, A, vlan=10))) == []


def test_frames_are_validated_and_canonical():
    frame = Frame("00-50-56-00-00-0A", "FF:FF:FF:FF:FF:FF", vlan=0)
    assert (frame.src_mac, frame.dst_mac, frame.vlan) == ("00:50:56:00:00:0a", BROADCAST_MAC, None)
    assert frame.is_group and frame.with_vlan(7).vlan == 7 and frame.with_vlan(0).vlan is None
    for bad in (
        {"vlan": 4095},
        {"vlan": -1},
        {"protocol": "sctp"},
        {"src_ip": "10.0.0.256"},
        {"dst_port": 70000},
        {"payload": "text"},
        {"src_mac": "nope"},
    ):
        with pytest.raises(InvalidArgument):
            Frame(**{"src_mac": A, "dst_mac": B, **bad})
    with pytest.raises(NotFound):
        host().send("vm-z", "ethernet0", Frame(A, B))


def test_statistics_count_each_frame_once_where_it_stopped():
    net = host(("pg", 10))
    net.connect_vnic("vm-a", "ethernet0", "pg", A)
    net.connect_vnic("vm-b", "ethernet0", "pg", B)
    net.update_port_group("pg", security=SecurityPolicy(forged_transmits=False))
    net.send("vm-a", "ethernet0", Frame(A, B))
    net.send("vm-a", "ethernet0", Frame(A, BROADCAST_MAC))
    net.send("vm-a", "ethernet0", Frame(C, B))
    a, b = net.stats("vm-a"), net.stats("vm-b")
    assert (a.tx, a.rx, a.dropped, a.dropped_total) == (2, 0, {DROP_FORGED_TRANSMIT: 1}, 1)
    assert (b.tx, b.rx, b.dropped) == (0, 2, {})
    assert net.uplink_stats("vmnic0").tx == 1


# ---- every configuration change is all-or-nothing


# Mostly valid values, with a few invalid ones among them.
VLANS = st.sampled_from([0, 10, 10, 20, 4095, 4095, -1, 4096])
SETTING = st.sampled_from([None, True, False])
POLICY = st.builds(SecurityPolicy, SETTING, SETTING, st.sampled_from([None, True, False, "yes"]))
FULL_POLICY = st.builds(
    SecurityPolicy, st.booleans(), st.booleans(), st.sampled_from([True, False, None])
)
SWITCHES = st.sampled_from(["vSwitch0", "vSwitch1", "vSwitch1", "vSwitch9"])
GROUPS = st.sampled_from(["pg-a", "pg-b", "pg-c", "pg-a", "pg-b", ""])
VMS = st.sampled_from(["vm-1", "vm-2", "vm-3", "vm-4"])
UPLINKS = st.lists(st.sampled_from(["vmnic0", "vmnic1", "vmnic2", "eth0"]), max_size=3).map(tuple)
OPS = st.one_of(
    st.tuples(st.just("add_vswitch"), st.sampled_from(["vSwitch2", "vSwitch0", "bad name"])),
    st.tuples(st.just("update_uplinks"), SWITCHES, UPLINKS),
    st.tuples(st.just("add_port_group"), GROUPS, SWITCHES, VLANS, POLICY),
    st.tuples(st.just("update_port_group"), GROUPS, VLANS, POLICY),
    st.tuples(st.just("remove_port_group"), GROUPS),
    st.tuples(st.just("remove_vswitch"), SWITCHES),
    st.tuples(
        st.just("connect_vnic"),
        VMS,
        GROUPS,
        st.sampled_from([A, B, C, D, A.upper(), "01:00:5e:00:00:01", "xx"]),
    ),
    st.tuples(st.just("disconnect_vnic"), VMS),
    st.tuples(st.just("set_effective_mac"), VMS, st.sampled_from([A, B, STRANGER, BROADCAST_MAC])),
    st.tuples(st.just("update_security"), SWITCHES, FULL_POLICY),
)


def apply(net: HostNetworkSystem, op: tuple) -> None:
    kind, *args = op
    if kind == "add_vswitch":
        net.add_vswitch(args[0])
    elif kind in ("connect_vnic",):
        net.connect_vnic(args[0], "ethernet0", args[1], args[2])
    elif kind in ("disconnect_vnic", "set_effective_mac"):
        getattr(net, kind)(args[0], "ethernet0", *args[1:])
    elif kind == "update_port_group":
        net.update_port_group(args[0], vlan=args[1], security=args[2])
    elif kind == "update_uplinks":
        net.update_vswitch(args[0], uplinks=args[1])
    elif kind == "update_security":
        net.update_vswitch(args[0], security=args[1])
    else:
        getattr(net, kind)(*args)


@settings(max_examples=500, deadline=None)
@given(ops=st.lists(OPS, min_size=5, max_size=40))
def test_a_failed_change_changes_nothing_and_the_rules_always_hold(ops):
    net = HostNetworkSystem("esxi-01")
    net.add_vswitch("vSwitch0", ("vmnic0",))
    net.add_vswitch("vSwitch1")
    net.add_port_group("pg-a", "vSwitch0", 10)
    net.add_port_group("pg-b", "vSwitch1", 4095)
    for op in ops:
        before = snapshot(net)
        try:
            apply(net, op)
        except VimFault:
            assert snapshot(net) == before, op
        switches, groups, vnics = snapshot(net)
        uplinks = [u for s in switches for u in s.uplinks]
        assert len(uplinks) == len(set(uplinks))  # an uplink belongs to one vSwitch
        assert len({g.name for g in groups}) == len(groups)
        names = {s.name for s in switches}
        assert {g.vswitch for g in groups} | {v.vswitch for v in vnics} <= names  # none orphaned
        assert all(0 <= g.vlan <= 4095 for g in groups)
        macs = [(v.vswitch, v.mac) for v in vnics]
        assert len(macs) == len(set(macs))  # configured MACs unique per vSwitch
        for v in vnics:
            assert v.vlan == net.port_group(v.port_group).vlan
            assert v.security == net.effective_security(v.port_group)
            assert v.mac[1] not in "13579bdf"
        for s in switches:
            policy = s.security
            assert None not in (
                policy.allow_promiscuous,
                policy.mac_changes,
                policy.forged_transmits,
            )
    # Forwarding follows the final configuration: a broadcast from each vNIC reaches
    # exactly the receivable ports of its vSwitch and VLAN.
    for sender in net.vnics():
        frame = Frame(sender.effective_mac, BROADCAST_MAC)
        got = {VnicId(*r) for r, _f in net.send(sender.vm, "ethernet0", frame).received}
        vlan = 0 if sender.vlan == 4095 else sender.vlan
        want = {
            VnicId(v.vm, v.nic)
            for v in net.vnics()
            if v.vswitch == sender.vswitch
            and (v.vm, v.nic) != (sender.vm, sender.nic)
            and v.vlan in (vlan, 4095)
            and (v.security.mac_changes or v.effective_mac == v.mac)
        }
        assert got == want


def test_a_guest_cannot_take_another_adapters_mac():
    network = HostNetworkSystem("esxi-01")
    network.add_vswitch("vSwitch0", ("vmnic0",))
    network.add_port_group("VM Network", "vSwitch0")
    network.connect_vnic("a", "ethernet0", "VM Network", "00:50:56:80:00:0a")
    network.connect_vnic("b", "ethernet0", "VM Network", "00:50:56:80:00:0b")
    with pytest.raises(InvalidArgument, match="b/ethernet0"):
        network.set_effective_mac("a", "ethernet0", "00:50:56:80:00:0b")
    assert network.vnic("a").effective_mac == "00:50:56:80:00:0a"
    network.set_effective_mac("a", "ethernet0", "00:50:56:80:00:aa")
    with pytest.raises(InvalidArgument, match="a/ethernet0"):
        network.set_effective_mac("b", "ethernet0", "00:50:56:80:00:aa")
