"""The vNIC firewall: ordered allow/deny rules on one VM network adapter.

Owns the rules as plain data (they are stored with the VM's configuration as JSON, so
they travel with the VM on vMotion), their validation, and the decision for one frame:
the first rule that matches wins; when none matches, the firewall's default action
(allow) applies. The vSwitch asks it on egress from the VM ("out") and on ingress to
the VM ("in").

Matching, for a frame seen from the VM's side:
- direction: "in" (to the VM), "out" (from the VM) or "both";
- protocol: "any", "tcp", "udp" or "icmp" ("any" also matches non-IP frames);
- address: the *remote* side (the source IP of an inbound frame, the destination IP of
  an outbound one) in an IPv4 address or CIDR block, or "any"; a frame without an IP
  address matches only "any";
- port: the frame's destination port (the service port: the VM's own port on the way
  in, the remote service's port on the way out), one port or an inclusive range
  "low-high", or "any"; a rule with a port matches only TCP and UDP frames.

Never does: keep connection state (it is stateless, as the rule list alone decides:
replies need a rule of their own), look at MAC addresses or VLANs (the vSwitch's
security policy does), or depend on the vSwitch.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

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


@lru_cache(maxsize=4096)
def ipv4_int(address: str) -> int | None:
    """The IPv4 address as an int; None for "" (no IP). Cached: frames repeat addresses."""
    if not address:
        return None
    try:
        return int(ipaddress.IPv4Address(address))
    except (ipaddress.AddressValueError, ValueError):
        raise InvalidArgument(
            f"{address!r} is not an IPv4 address (write four decimal octets, e.g. 10.0.0.5)"
        ) from None


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
    _net: int = field(init=False, repr=False, compare=False, default=0)
    _mask: int = field(init=False, repr=False, compare=False, default=0)
    _low: int = field(init=False, repr=False, compare=False, default=-1)
    _high: int = field(init=False, repr=False, compare=False, default=-1)

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
        for attr, value in (("address", address), ("port", port), ("_net", net), ("_mask", mask)):
            set_(self, attr, value)
        set_(self, "_low", low)
        set_(self, "_high", high)

    def matches(self, direction: str, protocol: str, remote_ip: int | None, port: int) -> bool:
        """Whether a frame going `direction` ("in"/"out") matches this rule."""
        if self.direction != BOTH and self.direction != direction:
            return False
        if self.protocol != ANY and self.protocol != protocol:
            return False
        if self._mask and (remote_ip is None or remote_ip & self._mask != self._net):
            return False
        if self._low >= 0 and (
            protocol not in PORTED_PROTOCOLS or not self._low <= port <= self._high
        ):
            return False
        return True

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


class Decision(NamedTuple):
    """What the firewall did with one frame."""

    allowed: bool
    rule: int | None
    """Index of the rule that decided, or None when the default action did."""


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

    def decide(self, direction: str, protocol: str, remote_ip: str, port: int) -> Decision:
        """The decision for a frame going `direction` ("in": to the VM, "out": from it)
        with this protocol, remote IP ("" for none) and destination port."""
        if direction not in (IN, OUT):
            raise InvalidArgument(f"direction must be in or out, got {direction!r}")
        remote = ipv4_int(remote_ip)
        for i, rule in enumerate(self.rules):
            if rule.matches(direction, protocol, remote, port):
                return Decision(rule.action == ALLOW, i)
        return Decision(self.default_action == ALLOW, None)

    def describe(self, decision: Decision) -> str:
        """A person's account of a decision, e.g. "rule 2 'no ssh' (deny tcp any port 22)"."""
        if decision.rule is None:
            return f"the default action ({self.default_action})"
        rule = self.rules[decision.rule]
        label = f" {rule.name!r}" if rule.name else ""
        return (
            f"rule {decision.rule}{label} ({rule.action} {rule.direction} {rule.protocol} "
            f"{rule.address} port {rule.port})"
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
