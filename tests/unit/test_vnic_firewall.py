"""The vNIC firewall: first match wins, a default action, direction/protocol/address/
port matching, validation, and rules that survive a JSON round trip (they travel
with the VM's configuration)."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.faults import InvalidArgument
from vsim.host.kernel.net.vnic_firewall import Decision, decide, describe, matches
from vsim.vnic_firewall import FirewallRule, VnicFirewall


def test_first_matching_rule_wins():
    allow_first = VnicFirewall(
        (FirewallRule("allow", "in", "tcp", port=22), FirewallRule("deny", "in", "tcp"))
    )
    deny_first = VnicFirewall(
        (FirewallRule("deny", "in", "tcp"), FirewallRule("allow", "in", "tcp", port=22))
    )
    assert decide(allow_first, "in", "tcp", "10.0.0.1", 22) == Decision(True, 0)
    assert decide(allow_first, "in", "tcp", "10.0.0.1", 80) == Decision(False, 1)
    assert decide(deny_first, "in", "tcp", "10.0.0.1", 22) == Decision(False, 0)


def test_the_default_action_decides_when_nothing_matches():
    rules = (FirewallRule("deny", "in", "udp"),)
    assert decide(VnicFirewall(rules), "in", "tcp", "10.0.0.1", 80) == Decision(True, None)
    closed = VnicFirewall(rules, default_action="deny")
    assert decide(closed, "in", "tcp", "10.0.0.1", 80) == Decision(False, None)
    assert decide(VnicFirewall(), "out", "other", "", 0).allowed


def test_direction_in_out_and_both():
    inbound = VnicFirewall((FirewallRule("deny", "in"),))
    outbound = VnicFirewall((FirewallRule("deny", "out"),))
    both = VnicFirewall((FirewallRule("deny"),))
    assert (
        not decide(inbound, "in", "tcp", "", 1).allowed
        and decide(inbound, "out", "tcp", "", 1).allowed
    )
    assert (
        decide(outbound, "in", "tcp", "", 1).allowed
        and not decide(outbound, "out", "tcp", "", 1).allowed
    )
    assert (
        not decide(both, "in", "udp", "", 1).allowed
        and not decide(both, "out", "udp", "", 1).allowed
    )
    with pytest.raises(InvalidArgument):
        decide(both, "both", "udp", "", 1)


def test_address_matches_the_remote_side_by_cidr_and_frames_without_ip_match_only_any():
    fw = VnicFirewall((FirewallRule("deny", address="192.168.0.0/16"),))
    assert not decide(fw, "in", "tcp", "192.168.44.1", 80).allowed
    assert decide(fw, "in", "tcp", "192.169.0.1", 80).allowed
    assert decide(fw, "in", "other", "", 0).allowed  # no IP: the CIDR rule does not match
    host = VnicFirewall((FirewallRule("deny", address="10.1.2.3/32"),))
    assert host.rules[0].address == "10.1.2.3"
    assert not decide(host, "out", "icmp", "10.1.2.3", 0).allowed
    assert decide(host, "out", "icmp", "10.1.2.4", 0).allowed
    everything = VnicFirewall((FirewallRule("deny"),))
    assert not decide(everything, "in", "other", "", 0).allowed


def test_ports_and_ranges_match_tcp_and_udp_destination_ports_only():
    fw = VnicFirewall((FirewallRule("deny", port="8000-8080"),))
    assert not decide(fw, "in", "tcp", "", 8000).allowed
    assert not decide(fw, "in", "udp", "", 8080).allowed
    assert decide(fw, "in", "tcp", "", 8081).allowed
    assert decide(fw, "in", "icmp", "", 8000).allowed  # icmp has no ports
    assert decide(fw, "in", "other", "", 8000).allowed
    assert FirewallRule("allow", port=" 443 ").port == "443"
    assert FirewallRule("allow", port="80-80").port == "80"


def test_bad_rules_are_refused_with_a_message_naming_the_field():
    bad = [
        ({"action": "permit"}, "action"),
        ({"action": "allow", "direction": "sideways"}, "direction"),
        ({"action": "allow", "protocol": "sctp"}, "protocol"),
        ({"action": "allow", "address": "10.0.0.1/8"}, "address"),
        ({"action": "allow", "address": "300.0.0.1"}, "address"),
        ({"action": "allow", "address": 10}, "address"),
        ({"action": "allow", "port": 70000}, "port"),
        ({"action": "allow", "port": "90-80"}, "port"),
        ({"action": "allow", "port": "http"}, "port"),
        ({"action": "allow", "port": True}, "port"),
        ({"action": "allow", "protocol": "icmp", "port": 7}, "icmp"),
        ({"action": "allow", "name": "x" * 81}, "name"),
    ]
    for fields, word in bad:
        with pytest.raises(InvalidArgument, match=word):
            FirewallRule(**fields)
    with pytest.raises(InvalidArgument, match="default_action"):
        VnicFirewall((), default_action="reject")
    with pytest.raises(InvalidArgument, match="rule 0"):
        VnicFirewall(({"action": "allow"},))


def test_json_that_is_not_a_rule_list_is_refused():
    for text in (
        "not json",
        "[]",
        '{"rules": {}}',
        '{"rules": [{"action": "allow", "colour": "red"}]}',
        '{"rules": [{"direction": "in"}]}',
        '{"rules": [], "policy": "allow"}',
        '{"rules": ["allow"]}',
    ):
        with pytest.raises(InvalidArgument):
            VnicFirewall.from_json(text)


def test_rules_are_canonical_and_describe_themselves():
    rule = FirewallRule("DENY", "In", "TCP", "10.0.0.0/24", 22, name="no ssh")
    assert (rule.action, rule.direction, rule.protocol, rule.port) == ("deny", "in", "tcp", "22")
    fw = VnicFirewall([rule])
    assert fw.rules == (rule,)  # kept as given, as a tuple
    text = describe(fw, decide(fw, "in", "tcp", "10.0.0.5", 22))
    assert "rule 0 'no ssh'" in text and "deny" in text
    assert "default" in describe(fw, decide(fw, "out", "tcp", "10.0.0.5", 22))


# ---- properties: JSON round trip and first-match against a plain model

RULES = st.builds(
    FirewallRule,
    action=st.sampled_from(["allow", "deny"]),
    direction=st.sampled_from(["in", "out", "both"]),
    protocol=st.sampled_from(["any", "tcp", "udp"]),
    address=st.sampled_from(["any", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "192.168.0.0/24"]),
    port=st.one_of(
        st.just("any"),
        st.integers(0, 100),
        st.tuples(st.integers(0, 100), st.integers(0, 100)).map(lambda t: f"{min(t)}-{max(t)}"),
    ),
    name=st.text(max_size=5),
)
FIREWALLS = st.builds(
    VnicFirewall, st.lists(RULES, max_size=6).map(tuple), st.sampled_from(["allow", "deny"])
)
PACKETS = st.tuples(
    st.sampled_from(["in", "out"]),
    st.sampled_from(["tcp", "udp", "icmp", "other"]),
    st.sampled_from(["", "10.1.2.3", "10.1.9.9", "10.200.0.1", "192.168.0.77", "8.8.8.8"]),
    st.integers(0, 100),
)


def model_decision(fw: VnicFirewall, direction: str, protocol: str, ip: str, port: int) -> bool:
    """First match, written out plainly with the ipaddress module."""
    for rule in fw.rules:
        if rule.direction not in ("both", direction):
            continue
        if rule.protocol not in ("any", protocol):
            continue
        if rule.address != "any" and (
            not ip or ipaddress.ip_address(ip) not in ipaddress.ip_network(rule.address)
        ):
            continue
        if rule.port != "any":
            low, _, high = rule.port.partition("-")
            if protocol not in ("tcp", "udp") or not int(low) <= port <= int(high or low):
                continue
        return rule.action == "allow"
    return fw.default_action == "allow"


@settings(max_examples=300, deadline=None)
@given(fw=FIREWALLS, packets=st.lists(PACKETS, min_size=1, max_size=10))
def test_decisions_follow_first_match_and_survive_the_json_round_trip(fw, packets):
    travelled = VnicFirewall.from_json(json.dumps(json.loads(fw.to_json())))
    assert travelled == fw
    for packet in packets:
        decision = decide(fw, *packet)
        assert decision.allowed == model_decision(fw, *packet)
        assert decide(travelled, *packet) == decision
        # The deciding rule matches and no earlier one does.
        direction, protocol, ip, port = packet
        remote = int(ipaddress.ip_address(ip)) if ip else None
        first = next(
            (i for i, r in enumerate(fw.rules) if matches(r, direction, protocol, remote, port)),
            None,
        )
        assert decision.rule == first
