"""The security policy of a standard vSwitch or port group (vSphere's
HostNetworkSecurityPolicy), and a new standard vSwitch's policy.

A value the hosts enforce on every frame, vCenter forwards and the CLI offers as
options, so it lives here. A vSwitch's policy is complete (every field True =
accept or False = reject); a port group's holds only its overrides (None inherits
the vSwitch's).

Never does: enforce anything (the host's vSwitch does).
"""

from __future__ import annotations

from dataclasses import dataclass

from vsim.faults import InvalidArgument

SECURITY_FIELDS = ("allow_promiscuous", "mac_changes", "forged_transmits")
"""SecurityPolicy's fields, in vSphere's order."""


@dataclass(frozen=True)
class SecurityPolicy:
    """HostNetworkSecurityPolicy. True = accept, False = reject, None = inherit
    (a port group's override; a vSwitch's policy has no None)."""

    allow_promiscuous: bool | None = None
    """Promiscuous mode: the port also sees frames for other ports in its VLAN(s)."""
    mac_changes: bool | None = None
    """MAC address changes: the port keeps receiving after the guest changes its MAC."""
    forged_transmits: bool | None = None
    """Forged transmits: the guest may send with a source MAC that is not its own."""

    def checked(self, complete: bool) -> SecurityPolicy:
        """Itself, if every field is a bool (or None where `complete` is False)."""
        if not isinstance(self, SecurityPolicy):
            raise InvalidArgument(f"a security policy must be a SecurityPolicy, got {self!r}")
        for name in SECURITY_FIELDS:
            value = getattr(self, name)
            if value is None and complete:
                raise InvalidArgument(f"a vSwitch's security policy needs {name} (True or False)")
            if value is not None and not isinstance(value, bool):
                raise InvalidArgument(
                    f"security policy {name} must be True, False or None, got {value!r}"
                )
        return self

    def over(self, base: SecurityPolicy) -> SecurityPolicy:
        """This override applied on top of `base`."""
        return SecurityPolicy(
            base.allow_promiscuous if self.allow_promiscuous is None else self.allow_promiscuous,
            base.mac_changes if self.mac_changes is None else self.mac_changes,
            base.forged_transmits if self.forged_transmits is None else self.forged_transmits,
        )


STANDARD_SWITCH_SECURITY = SecurityPolicy(
    allow_promiscuous=False, mac_changes=True, forged_transmits=True
)
"""A new standard vSwitch's policy: promiscuous reject, MAC changes and forged transmits accept."""
