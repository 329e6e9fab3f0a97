"""Translation between the network's shared values and their kernel.proto messages:
Ethernet frames (`Frame`), a vNIC's firewall (`VnicFirewall`) and a vSwitch's or port
group's security policy (`SecurityPolicy`).

Shared by hostd (its RPCs), vCenter (which carries frames between hosts and checks a
VM's firewall rules with the host's own rules before it forwards them) and the CLI
(which checks what the user typed the same way). Every field is checked on the way in
by the value it becomes; an empty field takes that value's default (a rule's
direction both, protocol, address and port any; the default action allow).
"""

from __future__ import annotations

from collections.abc import Iterable

from vsim.ethernet_frame import Frame
from vsim.faults import InvalidArgument
from vsim.security_policy import SECURITY_FIELDS, SecurityPolicy
from vsim.v1 import kernel_pb2 as kpb
from vsim.vnic_firewall import ANY, BOTH, DEFAULT_ACTION, FirewallRule, VnicFirewall


def frame_from_proto(message: kpb.Frame, src_mac: str = "") -> Frame:
    """The frame; an empty source MAC is `src_mac` (the sending adapter's)."""
    return Frame(
        src_mac=message.src_mac or src_mac,
        dst_mac=message.dst_mac,
        vlan=message.vlan or None,
        protocol=message.protocol or "other",
        src_ip=message.src_ip,
        dst_ip=message.dst_ip,
        src_port=message.src_port,
        dst_port=message.dst_port,
        payload=message.payload,
    )


def frame_to_proto(frame: Frame) -> kpb.Frame:
    return kpb.Frame(
        src_mac=frame.src_mac,
        dst_mac=frame.dst_mac,
        vlan=frame.vlan or 0,
        protocol=frame.protocol,
        src_ip=frame.src_ip,
        dst_ip=frame.dst_ip,
        src_port=frame.src_port,
        dst_port=frame.dst_port,
        payload=frame.payload,
    )


def firewall_from_proto(rules: Iterable[kpb.FirewallRule], default: str) -> VnicFirewall:
    return VnicFirewall(
        tuple(
            FirewallRule(
                action=r.action,
                direction=r.direction or BOTH,
                protocol=r.protocol or ANY,
                address=r.address or ANY,
                port=r.port or ANY,
                name=r.name,
            )
            for r in rules
        ),
        default or DEFAULT_ACTION,
    )


def firewall_to_proto(firewall: VnicFirewall) -> tuple[list[kpb.FirewallRule], str]:
    rules = [
        kpb.FirewallRule(
            action=r.action,
            direction=r.direction,
            protocol=r.protocol,
            address=r.address,
            port=str(r.port),
            name=r.name,
        )
        for r in firewall.rules
    ]
    return rules, firewall.default_action


def firewall_rule(rule: kpb.FirewallRule, where: str) -> kpb.FirewallRule:
    """The rule in canonical form, as a host holds it (empty fields take the
    defaults: both, any); InvalidArgument prefixed with `where` otherwise."""
    try:
        (checked,), _ = firewall_to_proto(firewall_from_proto([rule], ""))
    except InvalidArgument as fault:
        raise InvalidArgument(f"{where}: {fault.message}") from None
    return checked


def firewall_default(action: str, where: str) -> str:
    """The default action in canonical form, as a host holds it (empty: allow)."""
    try:
        return firewall_from_proto([], action).default_action
    except InvalidArgument as fault:
        raise InvalidArgument(f"{where}: {fault.message}") from None


def security_from_proto(message: kpb.SecurityPolicy) -> SecurityPolicy:
    """The fields the message sets; an unset one is None (inherit, or the default)."""

    def value(name: str) -> bool | None:
        return getattr(message, name) if message.HasField(name) else None

    return SecurityPolicy(
        value("allow_promiscuous"), value("mac_changes"), value("forged_transmits")
    )


def security_to_proto(policy: SecurityPolicy) -> kpb.SecurityPolicy:
    message = kpb.SecurityPolicy()
    for name in SECURITY_FIELDS:
        if getattr(policy, name) is not None:
            setattr(message, name, getattr(policy, name))
    return message


def security_changes(
    message: kpb.SecurityPolicy, inherit: Iterable[str] = ()
) -> dict[str, bool | None]:
    """What an update does to a policy, by field: True/False for a field `message`
    sets, None for one named in `inherit` (a port group's override goes; it inherits
    its vSwitch's again). InvalidArgument for a name that is no field, or a field
    both set and inherited."""
    changes: dict[str, bool | None] = {
        name: getattr(message, name) for name in SECURITY_FIELDS if message.HasField(name)
    }
    for name in inherit:
        if name not in SECURITY_FIELDS:
            raise InvalidArgument(
                f"cannot inherit {name[:40]!r}: the security settings are "
                + ", ".join(SECURITY_FIELDS)
            )
        if name in changes:
            raise InvalidArgument(f"{name} is both set and inherited; give one")
        changes[name] = None
    return changes
