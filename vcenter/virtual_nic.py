"""A VM's network adapters as vCenter configures them: names, port groups, MAC
addresses and the vNIC firewall rules that travel with the VM.

Owns the checks of a `VmNic` (what passes is held in canonical form: that is what the
inventory stores and the host receives; its firewall is checked and completed by the
translation the host uses too, `vsim.network_messages`, so both hold one rule set),
the adapters a removal leaves (`without_nic`), and vCenter's MAC allocation
(`MacPool`): a MAC left empty is drawn from vCenter's generated range with vCenter's
rng, so a seeded run assigns the same MACs. A MAC is unique in the whole inventory and
among the requests still under way (a create and a NIC add that run at once cannot
both take one).

Never does: talk to a host (whether a port group exists on the VM's host is the
reconfigure task's question) or write the inventory.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from vsim import validate
from vsim.ethernet_frame import unicast_mac
from vsim.faults import AlreadyExists, InvalidArgument, NotFound
from vsim.network_messages import firewall_default, firewall_rule
from vsim.v1 import kernel_pb2 as kpb
from vsim.vcenter.inventory import Inventory

DEFAULT_NIC = "ethernet0"
"""The adapter a request means when it names none."""

MAX_NICS_PER_VM = 10
"""Virtual NICs per VM (vSphere configuration maximums): ethernet0..ethernet9."""
NIC_NAMES = tuple(f"ethernet{i}" for i in range(MAX_NICS_PER_VM))
"""The .vmx names of a VM's adapters, in the order vCenter hands them out."""
VMWARE_OUI = 0x005056
"""00:50:56, VMware's organizationally unique identifier."""
GENERATED_MAC_FIRST = 0x800000
GENERATED_MAC_LAST = 0xBFFFFF
"""vCenter-generated MACs: 00:50:56:80:00:00-00:50:56:bf:ff:ff (the VPX range)."""
MAX_FIREWALL_RULES = 1024
"""Rules per vNIC: vsim's bound (vSphere sets none), to keep a request's size sane."""
MAX_MAC_DRAWS = 64
"""Draws before giving up on a free generated MAC (the range holds 4,194,304)."""


def generated_mac(low24: int) -> str:
    value = (VMWARE_OUI << 24) | low24
    return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


class MacPool:
    """Which MACs are taken: the inventory's, and those held by requests under way.

    A request takes a ticket (`ticket(vm)`), holds or draws MACs under it, and
    releases the ticket when its task ends, whatever the outcome."""

    def __init__(self, inventory: Inventory, rng: random.Random) -> None:
        self._inventory = inventory
        self._rng = rng
        self._held: dict[str, tuple[int, str]] = {}  # MAC -> (ticket, VM)
        self._tickets = 0

    def ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    def holder(self, mac: str) -> str | None:
        """Who has the MAC: "vm/nic" from the inventory, or a VM being configured."""
        owner = self._inventory.nic_owner(mac)
        if owner is not None:
            return f"{owner[0]}/{owner[1]}"
        held = self._held.get(mac)
        return f"{held[1]} (being configured)" if held is not None else None

    def hold(self, mac: str, ticket: int, vm: str) -> None:
        """Reserves a MAC; AlreadyExists if another adapter has it."""
        owner = self.holder(mac)
        if owner is not None:
            raise AlreadyExists(
                f"MAC {mac} is already used by {owner}; give another MAC or leave it "
                "empty for vCenter to assign one"
            )
        self._held[mac] = (ticket, vm)

    def draw(self, ticket: int, vm: str) -> str:
        """A free generated MAC, reserved."""
        for _ in range(MAX_MAC_DRAWS):
            mac = generated_mac(self._rng.randint(GENERATED_MAC_FIRST, GENERATED_MAC_LAST))
            if self.holder(mac) is None:
                self._held[mac] = (ticket, vm)
                return mac
        raise AlreadyExists("vCenter found no free generated MAC address; give MACs by hand")

    def release(self, ticket: int) -> None:
        """Drops a ticket's MACs (its task ended: they are in the inventory now, or
        were never used)."""
        for mac in [m for m, (t, _) in self._held.items() if t == ticket]:
            del self._held[mac]


def firewall_rules(rules: Sequence[kpb.FirewallRule], where: str) -> list[kpb.FirewallRule]:
    if len(rules) > MAX_FIREWALL_RULES:
        raise InvalidArgument(
            f"{where}: {len(rules)} firewall rules; a vNIC has at most {MAX_FIREWALL_RULES}"
        )
    # One rule at a time, so a refusal names the rule.
    return [firewall_rule(rule, f"{where} rule {i}") for i, rule in enumerate(rules)]


def find_nic(nics: Sequence[kpb.VmNic], vm: str, name: str) -> kpb.VmNic:
    for nic in nics:
        if nic.name == name:
            return nic
    have = ", ".join(n.name for n in nics) or "none"
    raise NotFound(f"{vm} has no network adapter {name[:40]!r} (it has: {have})")


def without_nic(vm: str, nics: Sequence[kpb.VmNic], name: str) -> tuple[list[kpb.VmNic], kpb.VmNic]:
    """The adapters left once `name` is removed, and the one removed. Its MAC is free
    again once the inventory holds the rest (nothing is held for a removal)."""
    if not name:
        raise InvalidArgument(
            f"name the adapter of {vm} to remove: "
            + (", ".join(n.name for n in nics) or "it has none")
        )
    removed = find_nic(nics, vm, name)
    left = [kpb.VmNic.FromString(n.SerializeToString()) for n in nics if n.name != name]
    return left, removed


def checked_nics(
    vm: str, current: Sequence[kpb.VmNic], new: Sequence[kpb.VmNic], pool: MacPool, ticket: int
) -> list[kpb.VmNic]:
    """`current` followed by `new` checked and completed: names (the next free
    ethernetN when empty), port groups, MACs (drawn when empty) and firewalls. The
    MACs of `new` are held under `ticket` until `pool.release(ticket)`; nothing is
    held if a check fails."""
    if len(current) + len(new) > MAX_NICS_PER_VM:
        raise InvalidArgument(
            f"{vm} would have {len(current) + len(new)} network adapters; a VM has at most "
            f"{MAX_NICS_PER_VM} (ethernet0-ethernet{MAX_NICS_PER_VM - 1})"
        )
    taken = {nic.name for nic in current} | {nic.name for nic in new}
    free = iter(n for n in NIC_NAMES if n not in taken)
    names = {nic.name for nic in current}
    macs = {nic.mac: f"{vm}/{nic.name}" for nic in current}
    done = [kpb.VmNic() for _ in new]
    for nic, out in zip(new, done, strict=True):
        out.name = nic.name or next(free)
        where = f"{vm}/{out.name}"
        if out.name not in NIC_NAMES:
            raise InvalidArgument(
                f"adapter name {nic.name[:40]!r} must be ethernet0-ethernet9 (or empty)"
            )
        if out.name in names:
            raise AlreadyExists(f"{vm} already has an adapter named {out.name}")
        names.add(out.name)
        out.port_group = validate.vm_name(nic.port_group, f"{where} port_group")
        out.firewall.extend(firewall_rules(nic.firewall, where))
        out.firewall_default = firewall_default(nic.firewall_default, where)
        if nic.mac:
            out.mac = unicast_mac(nic.mac, f"{where} mac")
            if out.mac in macs:
                raise AlreadyExists(f"MAC {out.mac} is given to both {macs[out.mac]} and {where}")
            macs[out.mac] = where
    _hold_macs(vm, done, pool, ticket)
    return [*(kpb.VmNic.FromString(n.SerializeToString()) for n in current), *done]


def _hold_macs(vm: str, new: list[kpb.VmNic], pool: MacPool, ticket: int) -> None:
    try:
        for nic in new:
            if nic.mac:
                pool.hold(nic.mac, ticket, vm)
        for nic in new:
            if not nic.mac:
                nic.mac = pool.draw(ticket, vm)
    except BaseException:
        pool.release(ticket)
        raise
