"""vCenter's checks of a VM's configuration, without a host: MACs stay unique over
any history of creates, NIC adds, NIC removals (a removed adapter's MAC may be given
again), VM removals and requests that never finish (checked against a model of who
owns which MAC), and vCenter accepts exactly the resource
settings the host's VMkernel accepts."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsim.faults import AlreadyExists, InvalidArgument, NotFound, VimFault
from vsim.network_messages import firewall_default, firewall_from_proto
from vsim.resource_messages import resources_from_proto
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.inventory import HostRecord, Inventory, MachineRecord
from vsim.vcenter.virtual_nic import (
    GENERATED_MAC_FIRST,
    GENERATED_MAC_LAST,
    NIC_NAMES,
    MacPool,
    checked_nics,
    firewall_rules,
    generated_mac,
    without_nic,
)
from vsim.vcenter.vm_resources import checked_resources

GIVEN_MACS = ["00:50:56:00:00:01", "00:50:56:00:00:02", "00:50:56:00:00:03"]
"""Given MACs collide often; the spellings differ (case, dashes) as users write them."""
SPELLINGS = [str.lower, str.upper, lambda m: m.replace(":", "-")]
VMS = ["vm-a", "vm-b", "vm-c"]


def inventory_with_host(path: Path) -> Inventory:
    inventory = Inventory(path)
    inventory.add_machine(MachineRecord("esxi-01", "{}", b""))
    inventory.add_host(HostRecord("esxi-01", b"", "", "", 1))
    return inventory


def is_generated(mac: str) -> bool:
    value = int(mac.replace(":", ""), 16)
    return value >> 24 == 0x005056 and GENERATED_MAC_FIRST <= value & 0xFFFFFF <= (
        GENERATED_MAC_LAST
    )


def new_nics(rng: random.Random, count: int) -> list[kpb.VmNic]:
    nics = []
    for _ in range(count):
        mac = ""
        if rng.random() < 0.6:
            mac = rng.choice(SPELLINGS)(rng.choice(GIVEN_MACS))
        nics.append(kpb.VmNic(port_group="VM Network", mac=mac))
    return nics


class Model:
    """Who owns which MAC, as the history so far implies."""

    def __init__(self) -> None:
        self.nics: dict[str, list[tuple[str, str]]] = {}  # VM -> [(name, mac)]

    def owners(self) -> dict[str, tuple[str, str]]:
        return {mac: (vm, name) for vm, nics in self.nics.items() for name, mac in nics}

    def refusal(self, vm: str, current: list[tuple[str, str]], new: list[kpb.VmNic]):
        """The fault a request must be refused with, or None."""
        if len(current) + len(new) > len(NIC_NAMES):
            return InvalidArgument
        taken = self.owners()
        seen: set[str] = set()
        for nic in new:
            if nic.mac:
                mac = nic.mac.lower().replace("-", ":")
                if mac in taken or mac in seen:
                    return AlreadyExists
                seen.add(mac)
        return None


def check(inventory: Inventory, pool: MacPool, model: Model) -> None:
    vms = {vm.name: vm for vm in inventory.vms()}
    assert {name: [(n.name, n.mac) for n in vm.nics] for name, vm in vms.items()} == {
        vm: sorted(nics) for vm, nics in model.nics.items()
    }
    owners = model.owners()
    assert sum(len(n) for n in model.nics.values()) == len(owners), "a MAC is used twice"
    for mac, owner in owners.items():
        assert inventory.nic_owner(mac) == owner
        assert mac in GIVEN_MACS or is_generated(mac)
    for nics in model.nics.values():
        names = [name for name, _ in nics]
        assert len(set(names)) == len(names) and set(names) <= set(NIC_NAMES)
    assert pool._held == {}, "every request released what it held"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1))
def test_macs_stay_unique_over_any_history(tmp_path_factory, seed: int):
    rng = random.Random(seed)
    inventory = inventory_with_host(tmp_path_factory.mktemp("inv") / "inventory.sqlite")
    pool = MacPool(inventory, random.Random(seed))
    model = Model()
    try:
        for _ in range(30):
            ops = ["create", "add", "add", "remove", "remove_nic", "remove_nic", "abandon"]
            op, vm = rng.choice(ops), rng.choice(VMS)
            current = model.nics.get(vm, [])
            if op == "remove_nic" and vm in model.nics:
                remove_nic(inventory, model, rng, vm, current)
            elif op == "remove":
                inventory.remove_vm(vm)
                model.nics.pop(vm, None)
            elif op == "abandon":
                # A request that holds MACs and then fails (its task's host refused):
                # while it runs nobody else gets them; afterwards they are free.
                ticket = pool.ticket()
                try:
                    held = checked_nics(vm, [], new_nics(rng, 2), pool, ticket)
                except VimFault:
                    continue
                for nic in held:
                    with pytest.raises(AlreadyExists, match="being configured"):
                        pool.hold(nic.mac, pool.ticket(), "other")
                pool.release(ticket)
            elif op == "create" and vm not in model.nics or op == "add" and vm in model.nics:
                run_request(inventory, pool, model, rng, vm, current, op)
            check(inventory, pool, model)
    finally:
        inventory.close()


def remove_nic(inventory, model, rng, vm: str, current) -> None:
    """RemoveVmNic of one of its adapters, or of one it does not have."""
    name = rng.choice([*(n for n, _ in current), "ethernet9", ""])
    nics = inventory.require_vm(vm).nics
    try:
        left, removed = without_nic(vm, nics, name)
    except VimFault as fault:
        assert name not in {n for n, _ in current}, f"removing {vm}/{name}: {fault}"
        assert type(fault) is (InvalidArgument if not name else NotFound)
        return
    assert (removed.name, removed.mac) in current
    record = pb.Vm(name=vm, host="esxi-01", uuid="u", cpus=1, memory_mb=256, nics=left)
    inventory.set_vm_config(record)
    model.nics[vm] = [(n, m) for n, m in current if n != name]
    assert inventory.nic_owner(removed.mac) is None  # free to be given again


def run_request(inventory, pool, model, rng, vm: str, current, op: str) -> None:
    new = new_nics(rng, rng.randint(1, 3) if op == "create" else 1)
    expected = model.refusal(vm, current, new)
    ticket = pool.ticket()
    existing = [kpb.VmNic(name=n, port_group="VM Network", mac=m) for n, m in current]
    try:
        nics = checked_nics(vm, existing, new, pool, ticket)
    except VimFault as fault:
        assert type(fault) is expected, f"{op} {vm}: {fault}"
        assert pool._held == {}
        return
    assert expected is None, f"{op} {vm} should have been refused with {expected.__name__}"
    record = pb.Vm(name=vm, host="esxi-01", uuid="u", cpus=1, memory_mb=256, nics=nics)
    if op == "create":
        inventory.add_vm(record)
    else:
        inventory.set_vm_config(record)
    pool.release(ticket)
    model.nics[vm] = sorted((n.name, n.mac) for n in nics)


def test_generated_macs_cover_the_vpx_range():
    assert generated_mac(GENERATED_MAC_FIRST) == "00:50:56:80:00:00"
    assert generated_mac(GENERATED_MAC_LAST) == "00:50:56:bf:ff:ff"


# resources: vCenter accepts what the host accepts


MEMORY_MB = 1024
FIELDS = ("working_set_pct", "boot_touch_pct", "zero_pct", "common_pct", "dirty_rate", "touch_rate")


@st.composite
def allocation(draw, most: int) -> kpb.ResourceAllocation:
    reservation = draw(st.integers(0, most))
    limit = draw(st.none() | st.just(-1) | st.integers(reservation, reservation + 1000))
    return kpb.ResourceAllocation(
        shares=draw(st.integers(0, 5000)), reservation=reservation, limit=limit
    )


@st.composite
def valid_resources(draw) -> kpb.VmResources:
    workload = kpb.GuestMemoryWorkload()
    for name in FIELDS:
        value = draw(st.none() | st.floats(0, 50 if name.endswith("pct") else 1e6))
        if value is not None:
            setattr(workload, name, value)
    return kpb.VmResources(
        cpu=draw(allocation(3000)),
        memory=draw(allocation(MEMORY_MB)),
        cpu_load_pct=draw(st.integers(0, 100)),
        page_sharing_salt=draw(st.text(max_size=5)),
        memory_workload=workload,
        disk_shares=draw(st.integers(0, 5000)),
        disk_iops_limit=draw(st.none() | st.just(-1) | st.integers(1, 10**6)),
    )


def _set(path: str, value):
    def apply(message: kpb.VmResources) -> None:
        *parents, name = path.split(".")
        target = message
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)

    return apply


def _limit_below_reservation(message: kpb.VmResources) -> None:
    message.cpu.reservation = max(message.cpu.reservation, 1)
    message.cpu.limit = message.cpu.reservation - 1


MUTATIONS = {
    "negative cpu shares": _set("cpu.shares", -1),
    "negative memory shares": _set("memory.shares", -5),
    "negative reservation": _set("cpu.reservation", -2),
    "limit below reservation": _limit_below_reservation,
    "negative limit": _set("memory.limit", -7),
    "reservation above memory": _set("memory.reservation", MEMORY_MB + 1),
    "cpu load above 100": _set("cpu_load_pct", 101),
    "negative cpu load": _set("cpu_load_pct", -1),
    "percent above 100": _set("memory_workload.working_set_pct", 100.5),
    "percent not a number": _set("memory_workload.common_pct", float("nan")),
    "zero and common above 100": lambda m: (
        _set("memory_workload.zero_pct", 60.0)(m),
        _set("memory_workload.common_pct", 50.0)(m),
    ),
    "infinite page rate": _set("memory_workload.dirty_rate", float("inf")),
    "negative page rate": _set("memory_workload.touch_rate", -1.0),
    "salt too long": _set("page_sharing_salt", "s" * 257),
    "negative disk shares": _set("disk_shares", -1),
    "zero IOPS limit": _set("disk_iops_limit", 0),
}


def host_accepts(message: kpb.VmResources, memory_mb: int, guest_os: str) -> bool:
    try:
        resources_from_proto(message, guest_os).validated(2, memory_mb)
    except InvalidArgument:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(
    message=valid_resources(),
    mutation=st.none() | st.sampled_from(sorted(MUTATIONS)),
    guest_os=st.sampled_from(["windows2019srv_64Guest", "rhel9_64Guest"]),
)
def test_vcenter_accepts_exactly_the_resources_the_host_accepts(message, mutation, guest_os):
    if mutation is not None:
        MUTATIONS[mutation](message)
    try:
        checked = checked_resources(message, MEMORY_MB, guest_os)
    except InvalidArgument:
        assert mutation is not None, "a valid setting was refused"
        assert not host_accepts(message, MEMORY_MB, guest_os), "vCenter refuses what hosts take"
        return
    assert mutation is None, f"accepted with {mutation}"
    assert host_accepts(message, MEMORY_MB, guest_os)
    # What vCenter stores means to the host what the request meant.
    assert resources_from_proto(checked, guest_os) == resources_from_proto(message, guest_os)
    for allocation_ in (checked.cpu, checked.memory):
        assert not allocation_.HasField("limit") or allocation_.limit >= 0
    # The stored form is canonical: checking it again changes nothing.
    assert checked_resources(checked, MEMORY_MB, guest_os) == checked


# firewalls: vCenter stores what the host would hold

RULE_VALUES = {
    "action": ["allow", "DENY", "", "drop"],
    "direction": ["", "in", "Out", "both", "sideways"],
    "protocol": ["", "any", "TCP", "udp", "icmp", "gre"],
    "address": ["", "any", "10.0.0.5", "10.0.0.0/24", "10.0.0.1/8", "300.0.0.1"],
    "port": ["", "any", "22", "1024-65535", "70000", "9-1", "x"],
    "name": ["", "ssh", "n" * 81],
}


def host_firewall(rules: list[kpb.FirewallRule], default: str):
    try:
        return firewall_from_proto(rules, default)
    except InvalidArgument:
        return None


@settings(max_examples=300, deadline=None)
@given(
    rules=st.lists(
        st.fixed_dictionaries({k: st.sampled_from(v) for k, v in RULE_VALUES.items()}),
        max_size=4,
    ),
    default=st.sampled_from(["", "allow", "Deny", "reject"]),
)
def test_vcenter_accepts_exactly_the_firewalls_the_host_accepts(rules, default):
    messages = [kpb.FirewallRule(**rule) for rule in rules]
    host = host_firewall(messages, default)
    try:
        checked = firewall_rules(messages, "vm/ethernet0")
        checked_default = firewall_default(default, "vm/ethernet0")
    except InvalidArgument as fault:
        assert host is None, f"vCenter refuses what hosts take: {fault}"
        assert fault.message.startswith("vm/ethernet0"), "a refusal names the adapter"
        return
    assert host is not None, "vCenter takes what hosts refuse"
    # What vCenter stores means to the host what the request meant, and is canonical.
    assert firewall_from_proto(checked, checked_default) == host
    assert firewall_rules(checked, "vm/ethernet0") == checked
    assert firewall_default(checked_default, "vm/ethernet0") == checked_default
