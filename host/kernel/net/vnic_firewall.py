"""The vNIC firewall's decision for one frame, as the vSwitch asks it on egress from
the VM ("out") and on ingress to the VM ("in").

The rules are plain values (`vsim.vnic_firewall`: what they mean, how they are
checked); here they are applied: the first rule that matches wins; when none matches,
the firewall's default action decides.

Never does: keep connection state (it is stateless, as the rule list alone decides:
replies need a rule of their own), look at MAC addresses or VLANs (the vSwitch's
security policy does), or depend on the vSwitch.
"""

from __future__ import annotations

from typing import NamedTuple

from vsim.ethernet_frame import ipv4_int
from vsim.faults import InvalidArgument
from vsim.vnic_firewall import (
    ALLOW,
    ANY,
    BOTH,
    IN,
    OUT,
    PORTED_PROTOCOLS,
    FirewallRule,
    VnicFirewall,
)


class Decision(NamedTuple):
    """What the firewall did with one frame."""

    allowed: bool
    rule: int | None
    """Index of the rule that decided, or None when the default action did."""


def matches(
    rule: FirewallRule, direction: str, protocol: str, remote_ip: int | None, port: int
) -> bool:
    """Whether a frame going `direction` ("in"/"out") matches the rule."""
    if rule.direction != BOTH and rule.direction != direction:
        return False
    if rule.protocol != ANY and rule.protocol != protocol:
        return False
    if rule.mask and (remote_ip is None or remote_ip & rule.mask != rule.net):
        return False
    if rule.low >= 0 and (protocol not in PORTED_PROTOCOLS or not rule.low <= port <= rule.high):
        return False
    return True


def decide(
    firewall: VnicFirewall, direction: str, protocol: str, remote_ip: str, port: int
) -> Decision:
    """The decision for a frame going `direction` ("in": to the VM, "out": from it)
    with this protocol, remote IP ("" for none) and destination port."""
    if direction not in (IN, OUT):
        raise InvalidArgument(f"direction must be in or out, got {direction!r}")
    remote = ipv4_int(remote_ip)
    for i, rule in enumerate(firewall.rules):
        if matches(rule, direction, protocol, remote, port):
            return Decision(rule.action == ALLOW, i)
    return Decision(firewall.default_action == ALLOW, None)


def describe(firewall: VnicFirewall, decision: Decision) -> str:
    """A person's account of a decision, e.g. "rule 2 'no ssh' (deny tcp any port 22)"."""
    if decision.rule is None:
        return f"the default action ({firewall.default_action})"
    rule = firewall.rules[decision.rule]
    label = f" {rule.name!r}" if rule.name else ""
    return (
        f"rule {decision.rule}{label} ({rule.action} {rule.direction} {rule.protocol} "
        f"{rule.address} port {rule.port})"
    )
