"""DirectPath I/O (`vsim.host.kernel.passthrough`): PCI ids, enabling passthrough, one VM per
device, refusals that change nothing, a guest that sees only its own devices, the
full memory reservation at power-on, and a random history of assign / unassign /
enable / disable / unregister checked step by step against a model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.faults import (
    AlreadyExists,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    ResourceInUse,
    VimFault,
)
from vsim.host.kernel.passthrough import GuestPciDevice, PassthruInfo, PciDevice, PciPassthruSystem
from vsim.host.kernel.vmkernel import VmConfig
from vsim.pci_device import MAX_PASSTHRU_DEVICES_PER_VM, pci_id

GPU = PciDevice("0000:3b:00.0", "NVIDIA Corporation", "GA100 [A100 PCIe 80GB]", 0x10DE, 0x20B5)
NIC = PciDevice("0000:5e:00.1", "Intel(R)", "Ethernet Controller E810-C", 0x8086, 0x1592)
NVME = PciDevice("0000:AF:1F.7", "Samsung", "NVMe SSD Controller PM173X", 0x144D, 0xA824)
USB = PciDevice("0000:00:14.0", "Intel Corporation", "USB 3.0 xHCI Controller", 0x8086, 0x8C31)


def host() -> PciPassthruSystem:
    return PciPassthruSystem([GPU, NIC, NVME, USB], enabled=[GPU.id, NIC.id, NVME.id])


def vm(name: str = "vm-001", memory_mb: int = 4096, powered_on: bool = False) -> VmConfig:
    return VmConfig(name, f"uuid-{name}", 2, memory_mb, powered_on=powered_on)


@dataclass(frozen=True)
class State:
    info: list[PassthruInfo]
    guests: dict[str, list[GuestPciDevice]]


def state(system: PciPassthruSystem, vms=("vm-001", "vm-002", "vm-003")) -> State:
    return State(system.passthru_info(), {v: system.guest_devices(v) for v in vms})


# PCI ids and the inventory


@pytest.mark.parametrize(
    ("given_id", "canonical"),
    [("0000:3b:00.0", "0000:3b:00.0"), ("0000:AF:1F.7", "0000:af:1f.7"), ("ffff:ff:00.3", None)],
)
def test_pci_ids_are_canonical_lower_case(given_id, canonical):
    assert pci_id(given_id) == (canonical or given_id)


@pytest.mark.parametrize(
    "bad",
    ["", "3b:00.0", "0000:3b:00", "0000:3b:20.0", "0000:3b:00.8", "0000:3g:00.0", " 0000:3b:00.0",
     "0000-3b-00-0", "00000:3b:00.0", None, 7],
)  # fmt: skip
def test_bad_pci_ids_are_invalid_argument(bad):
    system = host()
    before = state(system)
    with pytest.raises(InvalidArgument, match="not a PCI address"):
        pci_id(bad)
    with pytest.raises(InvalidArgument):
        system.assign(vm(), bad)
    with pytest.raises(InvalidArgument):
        system.update_passthru_config(bad, True)
    assert state(system) == before


def test_the_inventory_is_validated_and_listed_in_id_order():
    system = host()
    assert [d.id for d in system.devices()] == [USB.id, GPU.id, NIC.id, "0000:af:1f.7"]
    assert system.device("0000:af:1f.7").device_name == NVME.device_name
    assert [(i.id, i.enabled, i.vm) for i in system.passthru_info()] == [
        (USB.id, False, ""),
        (GPU.id, True, ""),
        (NIC.id, True, ""),
        ("0000:af:1f.7", True, ""),
    ]
    with pytest.raises(NotFound, match="no PCI device 0000:3b:00.1"):
        system.device("0000:3b:00.1")
    with pytest.raises(InvalidArgument, match="listed twice"):
        PciPassthruSystem([GPU, GPU])
    with pytest.raises(InvalidArgument, match="absent devices"):
        PciPassthruSystem([GPU], enabled=[NIC.id])
    with pytest.raises(InvalidArgument, match="vendor_id"):
        PciPassthruSystem([PciDevice("0000:3b:00.0", "x", "y", vendor_id=0x10000)])


# assignment


def test_an_enabled_device_goes_to_one_vm_and_the_second_is_told_who_has_it():
    system = host()
    seen = system.assign(vm("vm-001"), GPU.id)
    assert seen == GuestPciDevice("pciPassthru0", 0x10DE, 0x20B5, GPU.vendor_name, GPU.device_name)
    assert system.holder(GPU.id) == "vm-001"
    before = state(system)
    with pytest.raises(ResourceInUse, match="in use by vm-001") as refused:
        system.assign(vm("vm-002"), GPU.id)
    assert refused.value.properties == {"device": GPU.id, "vm": "vm-001"}
    with pytest.raises(AlreadyExists, match="vm-001 already has"):
        system.assign(vm("vm-001"), GPU.id)
    assert state(system) == before


def test_only_enabled_devices_can_be_assigned():
    system = host()
    with pytest.raises(InvalidState, match="not enabled for passthrough"):
        system.assign(vm(), USB.id)
    with pytest.raises(NotFound):
        system.assign(vm(), "0000:01:00.0")
    assert system.vm_devices("vm-001") == []
    system.update_passthru_config(USB.id, True)
    system.assign(vm(), USB.id)
    assert system.vm_devices("vm-001") == [USB.id]


def test_disabling_passthrough_is_refused_while_a_vm_has_the_device():
    system = host()
    system.assign(vm("vm-002"), NIC.id)
    with pytest.raises(InvalidState, match="assigned to vm-002"):
        system.update_passthru_config(NIC.id, False)
    assert system.passthru_info()[2] == PassthruInfo(NIC.id, True, "vm-002")
    system.unassign(vm("vm-002"), NIC.id)
    assert system.update_passthru_config(NIC.id, False) == PassthruInfo(NIC.id, False, "")
    assert system.update_passthru_config(NIC.id, True) == PassthruInfo(NIC.id, True, "")


def test_devices_are_added_and_removed_only_while_the_vm_is_powered_off():
    system = host()
    with pytest.raises(InvalidPowerState, match="power it off"):
        system.assign(vm(powered_on=True), GPU.id)
    system.assign(vm(), GPU.id)
    with pytest.raises(InvalidPowerState):
        system.unassign(vm(powered_on=True), GPU.id)
    assert system.holder(GPU.id) == "vm-001"


def test_a_device_left_out_of_a_reconfiguration_is_free_for_another_vm():
    """ReconfigVM without a device (vsim vm pci remove): only while powered off, then
    another VM may have it, and the VM keeps its other devices at their slots."""
    system = host()
    system.set_vm_devices(vm("vm-001"), [GPU.id, NIC.id])
    with pytest.raises(ResourceInUse, match="in use by vm-001"):
        system.assign(vm("vm-002"), GPU.id)
    before = state(system)
    with pytest.raises(InvalidPowerState, match="power it off"):
        system.set_vm_devices(vm("vm-001", powered_on=True), [NIC.id])
    assert state(system) == before
    assert system.set_vm_devices(vm("vm-001"), [NIC.id]) == [NIC.id]
    assert system.holder(GPU.id) is None
    assert [d.key for d in system.guest_devices("vm-001")] == ["pciPassthru1"]
    assert system.assign(vm("vm-002"), GPU.id).key == "pciPassthru0"
    assert system.passthru_info()[1] == PassthruInfo(GPU.id, True, "vm-002")


def test_unassign_only_what_the_vm_has():
    system = host()
    system.assign(vm("vm-001"), GPU.id)
    with pytest.raises(NotFound, match="vm-002 has no PCI device"):
        system.unassign(vm("vm-002"), GPU.id)
    with pytest.raises(NotFound):
        system.unassign(vm("vm-001"), NIC.id)
    assert system.holder(GPU.id) == "vm-001"


def test_a_guest_sees_only_its_own_devices_at_its_own_slots():
    system = host()
    system.assign(vm("vm-001"), GPU.id)
    system.assign(vm("vm-002"), NIC.id)
    system.assign(vm("vm-001"), NVME.id)
    assert [d.key for d in system.guest_devices("vm-001")] == ["pciPassthru0", "pciPassthru1"]
    assert [d.device_name for d in system.guest_devices("vm-001")] == [
        GPU.device_name,
        NVME.device_name,
    ]
    assert [d.device_name for d in system.guest_devices("vm-002")] == [NIC.device_name]
    assert system.guest_devices("vm-003") == []
    # A freed slot is the next one used; the others keep theirs.
    system.unassign(vm("vm-001"), GPU.id)
    system.update_passthru_config(USB.id, True)
    assert system.assign(vm("vm-001"), USB.id).key == "pciPassthru0"
    assert [d.key for d in system.guest_devices("vm-001")] == ["pciPassthru0", "pciPassthru1"]
    assert system.vm_devices("vm-001") == [USB.id, "0000:af:1f.7"]


def test_unregister_releases_the_vms_devices():
    system = host()
    system.assign(vm("vm-001"), GPU.id)
    system.assign(vm("vm-001"), NIC.id)
    system.assign(vm("vm-002"), NVME.id)
    assert system.release_vm("vm-001") == [GPU.id, NIC.id]
    assert system.guest_devices("vm-001") == []
    assert system.holder(GPU.id) is None
    assert system.holder("0000:af:1f.7") == "vm-002"
    assert system.release_vm("vm-001") == []
    system.assign(vm("vm-003"), GPU.id)  # free for another VM


def test_a_vm_has_at_most_the_configuration_maximum_of_devices():
    devices = [PciDevice(f"0000:{b:02x}:{d:02x}.0", "v", "d") for b in range(5) for d in range(32)]
    system = PciPassthruSystem(devices, enabled=[d.id for d in devices])
    for device in devices[:MAX_PASSTHRU_DEVICES_PER_VM]:
        system.assign(vm(), device.id)
    with pytest.raises(InvalidState, match="a VM may have at most 128"):
        system.assign(vm(), devices[MAX_PASSTHRU_DEVICES_PER_VM].id)
    assert len(system.guest_devices("vm-001")) == MAX_PASSTHRU_DEVICES_PER_VM


# power-on


def test_power_on_needs_the_full_memory_reservation_with_a_passthrough_device():
    system = host()
    system.check_power_on(vm(memory_mb=4096), 0)  # no devices: any reservation
    system.assign(vm(memory_mb=4096), GPU.id)
    with pytest.raises(InvalidState, match=r"should be equal to memsize\(4096\)") as refused:
        system.check_power_on(vm(memory_mb=4096), 4092)
    assert "reserve all 4096 MB" in refused.value.message
    assert refused.value.properties["reserved_mb"] == "4092"
    system.check_power_on(vm(memory_mb=4096), 4096)
    with pytest.raises(InvalidArgument, match="memory_reservation_mb"):
        system.check_power_on(vm(memory_mb=4096), 8192)
    with pytest.raises(InvalidArgument):
        system.check_power_on(vm(memory_mb=4096), -1)
    system.unassign(vm(), GPU.id)
    system.check_power_on(vm(memory_mb=4096), 0)


# random histories against a model

VMS = ["vm-001", "vm-002", "vm-003"]
IDS = [GPU.id, NIC.id, "0000:af:1f.7", USB.id, "0000:99:00.0", "0000:3b:00.9", "bad"]
vm_names = st.sampled_from([*VMS, "bad/name"])
ids = st.sampled_from(IDS)
operation = st.one_of(
    st.tuples(st.just("assign"), vm_names, ids, st.booleans()),
    st.tuples(st.just("unassign"), vm_names, ids, st.booleans()),
    st.tuples(st.just("config"), ids, st.booleans()),
    st.tuples(st.just("release"), vm_names),
)


class Model:
    def __init__(self) -> None:
        self.present = {GPU.id, NIC.id, "0000:af:1f.7", USB.id}
        self.enabled = {GPU.id, NIC.id, "0000:af:1f.7"}
        self.holder: dict[str, str] = {}

    def check(self, vm_name: str | None, pci: str) -> type[VimFault] | None:
        if vm_name == "bad/name" or pci in ("bad", "0000:3b:00.9"):
            return InvalidArgument
        if pci not in self.present:
            return NotFound
        return None

    def assign(self, vm_name: str, pci: str, on: bool) -> type[VimFault] | None:
        fault = self.check(vm_name, pci)
        if fault:
            return fault
        if on:
            return InvalidPowerState
        if pci in self.holder:
            return AlreadyExists if self.holder[pci] == vm_name else ResourceInUse
        if pci not in self.enabled:
            return InvalidState
        self.holder[pci] = vm_name
        return None

    def unassign(self, vm_name: str, pci: str, on: bool) -> type[VimFault] | None:
        fault = self.check(vm_name, pci)
        if fault:
            return fault
        if self.holder.get(pci) != vm_name:
            return NotFound
        if on:
            return InvalidPowerState
        del self.holder[pci]
        return None

    def config(self, pci: str, enabled: bool) -> type[VimFault] | None:
        fault = self.check(None, pci)
        if fault:
            return fault
        if not enabled and pci in self.holder:
            return InvalidState
        (self.enabled.add if enabled else self.enabled.discard)(pci)
        return None

    def release(self, vm_name: str) -> type[VimFault] | None:
        if vm_name == "bad/name":
            return InvalidArgument
        for pci in [p for p, v in self.holder.items() if v == vm_name]:
            del self.holder[pci]
        return None


def apply(system: PciPassthruSystem, op: tuple) -> None:
    kind = op[0]
    if kind == "assign":
        system.assign(vm(op[1], powered_on=op[3]), op[2])
    elif kind == "unassign":
        system.unassign(vm(op[1], powered_on=op[3]), op[2])
    elif kind == "config":
        system.update_passthru_config(op[1], op[2])
    else:
        system.release_vm(op[1])


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, min_size=5, max_size=60))
def test_random_histories_keep_one_vm_per_device_and_match_the_model(history):
    system, model = host(), Model()
    for step, op in enumerate(history):
        where = f"step {step}: {op}"
        before = state(system)
        want = getattr(model, op[0])(*op[1:])
        if want is None:
            apply(system, op)
        else:
            with pytest.raises(want):
                apply(system, op)
            assert state(system) == before, f"{where}: a refused request changed something"
        # The whole state, after every step: the model's, one VM per device, and each
        # guest sees exactly its own devices.
        info = {i.id: i for i in system.passthru_info()}
        assert {i: v.vm for i, v in info.items() if v.vm} == model.holder, where
        assert {i for i, v in info.items() if v.enabled} == model.enabled, where
        assert all(info[i].enabled for i in model.holder), where
        owners = [v for v in VMS for _ in system.vm_devices(v)]
        assert len(owners) == len(model.holder), f"{where}: a device has two VMs"
        for v in VMS:
            mine = sorted(p for p, h in model.holder.items() if h == v)
            assert sorted(system.vm_devices(v)) == mine, where
            seen = system.guest_devices(v)
            assert [d.device_name for d in seen] == [
                system.device(p).device_name for p in system.vm_devices(v)
            ], where
            assert len({d.key for d in seen}) == len(seen), where
