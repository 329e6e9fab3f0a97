"""The hosts table's use counters (kept by SQLite triggers) always equal what the vms
table says, over any sequence of VM changes."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.inventory import HostRecord, Inventory, MachineRecord

HOSTS = ["esxi-01", "esxi-02"]
ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF

step = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5), st.sampled_from(HOSTS), st.integers(1, 64)),
    st.tuples(st.just("power"), st.integers(0, 5), st.sampled_from([ON, OFF])),
    st.tuples(st.just("remove"), st.integers(0, 5)),
)


def expected(inventory: Inventory) -> dict[str, tuple[int, int, int]]:
    usage = {h: [0, 0, 0] for h in HOSTS}
    for vm in inventory.vms():
        on = vm.power_state == ON
        usage[vm.host][0] += 1
        usage[vm.host][1] += on
        usage[vm.host][2] += on * vm.memory_mb
    return {h: tuple(u) for h, u in usage.items()}


def counters(inventory: Inventory) -> dict[str, tuple[int, int, int]]:
    return {h.name: (h.vms, h.vms_powered_on, h.memory_used_mb) for h in inventory.hosts()}


@settings(max_examples=60, deadline=None)
@given(st.lists(step, max_size=40))
def test_host_counters_follow_every_vm_change(steps):
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Inventory(Path(tmp) / "inventory.sqlite")
        for host in HOSTS:
            inventory.add_machine(MachineRecord(host, "{}", b""))
            inventory.add_host(HostRecord(host, b"", "", "", 1))
        for op, index, *rest in steps:
            name = f"vm-{index:03d}"
            exists = inventory.vm(name) is not None
            if op == "add" and not exists:
                host, memory = rest
                inventory.add_vm(pb.Vm(name=name, host=host, cpus=1, memory_mb=memory * 4,
                                       power_state=OFF, uuid="u", guest_os="g"))  # fmt: skip
            elif op == "power" and exists:
                inventory.set_power_state(name, rest[0])
            elif op == "remove" and exists:
                inventory.remove_vm(name)
            assert counters(inventory) == expected(inventory)
        assert inventory.counts() == (
            len(inventory.vms()),
            sum(vm.power_state == ON for vm in inventory.vms()),
        )
        inventory.remove_host("esxi-01")
        assert [h.name for h in inventory.hosts()] == ["esxi-02"]
        assert all(vm.host == "esxi-02" for vm in inventory.vms())
        inventory.close()
