"""The vNIC firewall's rules: ordered allow/deny rules on one VM network adapter, as
plain values.

Owns the rules' validation and canonical form (any accepted spelling in, one out),
their plain-data and JSON forms, and what a rule means: the first rule that matches
a frame wins; when none matches, the firewall's default action (allow) applies. The
rules travel with the VM's configuration (vCenter checks them, hosts hold them, the
CLI checks what the user typed), so they live here; the decision for one frame is the
host's (host/kernel/net/vnic_firewall.py).

Matching, for a frame seen from the VM's side:
- direction: "in" (to the VM), "out" (from the VM) or "both";
- protocol: "any", "tcp", "udp" or "icmp" ("any" also matches non-IP frames);
- address: the *remote* side (the source IP of an inbound frame, the destination IP of
  an outbound one) in an IPv4 address or CIDR block, or "any"; a frame without an IP
  address matches only "any";
- port: the frame's destination port (the service port: the VM's own port on the way
  in, the remote service's port on the way out), one port or an inclusive range
  "low-high", or "any"; a rule with a port matches only TCP and UDP frames.

Never does: decide a frame (the host does), keep connection state, look at MAC
addresses or VLANs (the vSwitch's security policy does).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from vsim.faults import InvalidArgument

ALLOW = "allow"
DENY = "deny"
ACTIONS = (ALLOW, DENY)
IN = "in"
OUT = "out"
BOTH = "both"
DIRECTIONS = (IN, OUT, BOTH)
ANY = "any"
RULE_PROTOCOLS = (ANY, "tcp", "udp", "icmp")
PORTED_PROTOCOLS = frozenset({"tcp", "udp"})
"""The protocols whose frames carry ports; a rule with a port matches only these."""
DEFAULT_ACTION = ALLOW
"""What happens to a frame no rule matches."""
MAX_PORT = 65535
MAX_RULE_NAME = 80
_PORT_RANGE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_RULE_KEYS = ("action", "direction", "protocol", "address", "port", "name")


def _one_of(value: object, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise InvalidArgument(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return value.lower()


def _address(value: object) -> tuple[str, int, int]:
    """Canonical text, network and mask of a rule's address ("any": mask 0)."""
    if not isinstance(value, str):
        raise InvalidArgument(
            f"address must be a string (an IPv4 address, CIDR or 'any'), got {value!r}"
        )
    if value.lower() == ANY:
        return ANY, 0, 0
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise InvalidArgument(
            f"address {value!r} is not an IPv4 address or CIDR block ({e}); write e.g. "
            "10.0.0.5, 10.0.0.0/24 or any"
        ) from None
    text = str(network.network_address) if network.prefixlen == 32 else str(network)
    return text, int(network.network_address), int(network.netmask)


def _port(value: object) -> tuple[str, int, int]:
    """Canonical text and inclusive bounds of a rule's port ("any": -1, -1)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidArgument(f"port must be a number, a range 'low-high' or 'any', got {value!r}")
    if isinstance(value, str) and value.lower() == ANY:
        return ANY, -1, -1
    found = _PORT_RANGE.fullmatch(str(value).strip())
    if not found:
        raise InvalidArgument(f"port must be a number, a range 'low-high' or 'any', got {value!r}")
    low = int(found[1])
    high = int(found[2]) if found[2] is not None else low
    if not 0 <= low <= high <= MAX_PORT:
        raise InvalidArgument(
            f"port {value!r} must be within 0-{MAX_PORT} with the low end first, e.g. 1024-65535"
        )
    return (str(low) if low == high else f"{low}-{high}"), low, high


@dataclass(frozen=True)
class FirewallRule:
    """One rule. Built with any accepted spelling; holds the canonical one."""

    action: str
    """"allow" or "deny"."""
    direction: str = BOTH
    """"in" (to the VM), "out" (from the VM) or "both"."""
    protocol: str = ANY
    """"any", "tcp", "udp" or "icmp"."""
    address: str = ANY
    """The remote side: an IPv4 address, a CIDR block (host bits zero) or "any"."""
    port: str | int = ANY
    """The destination (service) port: a number, "low-high" or "any"; held as text."""
    name: str = ""
    """A label for people (shown in traces); no meaning to matching."""
    # The address and port parsed once, for matching on the data path.
    net: int = field(init=False, repr=False, compare=False, default=0)
    """The address's network as an int (0 for any)."""
    mask: int = field(init=False, repr=False, compare=False, default=0)
    """Its netmask as an int; 0: any address, also none."""
    low: int = field(init=False, repr=False, compare=False, default=-1)
    """The port range's low end; -1: any port."""
    high: int = field(init=False, repr=False, compare=False, default=-1)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "action", _one_of(self.action, ACTIONS, "action"))
        set_(self, "direction", _one_of(self.direction, DIRECTIONS, "direction"))
        set_(self, "protocol", _one_of(self.protocol, RULE_PROTOCOLS, "protocol"))
        address, net, mask = _address(self.address)
        port, low, high = _port(self.port)
        if port != ANY and self.protocol == "icmp":
            raise InvalidArgument(
                f"an icmp rule cannot have a port (got port {port}); use port any"
            )
        if not isinstance(self.name, str) or len(self.name) > MAX_RULE_NAME:
            raise InvalidArgument(f"rule name must be text of at most {MAX_RULE_NAME} characters")
        for attr, value in (("address", address), ("port", port), ("net", net), ("mask", mask)):
            set_(self, attr, value)
        set_(self, "low", low)
        set_(self, "high", high)

    def to_dict(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in _RULE_KEYS}

    @classmethod
    def from_dict(cls, data: object) -> FirewallRule:
        if not isinstance(data, dict):
            raise InvalidArgument(f"a firewall rule must be an object, got {data!r}")
        unknown = sorted(set(data) - set(_RULE_KEYS))
        if unknown:
            raise InvalidArgument(
                f"unknown firewall rule field(s) {', '.join(map(str, unknown))}; "
                f"a rule has {', '.join(_RULE_KEYS)}"
            )
        if "action" not in data:
            raise InvalidArgument("a firewall rule needs an action (allow or deny)")
        return cls(**data)


@dataclass(frozen=True)
class VnicFirewall:
    """The rule list of one vNIC, in order, and the default action."""

    rules: tuple[FirewallRule, ...] = ()
    """Checked in order; the first match decides."""
    default_action: str = DEFAULT_ACTION
    """"allow" or "deny": the decision when no rule matches."""

    def __post_init__(self) -> None:
        if not isinstance(self.rules, tuple | list):
            raise InvalidArgument(f"rules must be a list of firewall rules, got {self.rules!r}")
        for i, rule in enumerate(self.rules):
            if not isinstance(rule, FirewallRule):
                raise InvalidArgument(f"rule {i} is not a firewall rule: {rule!r}")
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(
            self, "default_action", _one_of(self.default_action, ACTIONS, "default_action")
        )

    def to_dict(self) -> dict[str, Any]:
        return {"default_action": self.default_action, "rules": [r.to_dict() for r in self.rules]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: object) -> VnicFirewall:
        if not isinstance(data, dict):
            raise InvalidArgument(f"a vNIC firewall must be an object, got {data!r}")
        unknown = sorted(set(data) - {"rules", "default_action"})
        if unknown:
            raise InvalidArgument(
                f"unknown vNIC firewall field(s) {', '.join(map(str, unknown))}; "
                "it has rules and default_action"
            )
        rules = data.get("rules", [])
        if not isinstance(rules, list):
            raise InvalidArgument(f"rules must be a list, got {rules!r}")
        return cls(
            tuple(FirewallRule.from_dict(r) for r in rules),
            data.get("default_action", DEFAULT_ACTION),
        )

    @classmethod
    def from_json(cls, text: str) -> VnicFirewall:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as e:
            raise InvalidArgument(f"vNIC firewall rules are not valid JSON: {e}") from None
        return cls.from_dict(data)
