"""The VMkernel core: registration, power state and admission control."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsim.clock import SimClock
from vsim.faults import (
    AlreadyExists,
    InsufficientResourcesFault,
    InvalidArgument,
    InvalidPowerState,
    NotFound,
    VimFault,
)
from vsim.guest_workload import GuestWorkload
from vsim.host.kernel.vmkernel import HostKernel, VmConfig
from vsim.memory_settings import VmMemorySettings
from vsim.spec import HostSpec
from vsim.vm_resources import VmResources

CORES, MEMORY = 4, 8192


def make_kernel(cores: int = CORES, memory_mb: int = MEMORY) -> HostKernel:
    return HostKernel(
        HostSpec("esxi-01", cpu_cores=cores, memory_mb=memory_mb), SimClock(start=42.0)
    )


QUIET = GuestWorkload(working_set_pct=0, boot_touch_pct=0, dirty_rate=0, touch_rate=0)
"""A guest that touches one page: these tests are about the kernel's bookkeeping."""


def vm(name: str = "vm-001", cpus: int = 2, memory_mb: int = 1024) -> VmConfig:
    return VmConfig(
        name=name,
        uuid=f"uuid-{name}",
        cpus=cpus,
        memory_mb=memory_mb,
        resources=VmResources(workload=QUIET),
    )


def test_new_kernel_is_empty_and_remembers_boot_time():
    kernel = make_kernel()
    assert kernel.vms() == []
    assert kernel.memory_used_mb == 0
    assert kernel.memory_free_mb == MEMORY
    assert kernel.boot_time == 42.0


def test_kernel_rejects_an_invalid_host_spec():
    with pytest.raises(InvalidArgument):
        HostKernel(HostSpec("esxi-01", memory_mb=100), SimClock())


def test_register_adds_a_powered_off_vm():
    kernel = make_kernel()
    registered = kernel.register_vm(VmConfig("vm-001", "u", 2, 1024, powered_on=True))
    assert registered.powered_on is False
    assert kernel.vms() == [registered]
    assert kernel.vm("vm-001") == registered
    assert kernel.memory_used_mb == 0


def test_vms_are_listed_by_name():
    kernel = make_kernel()
    for name in ["vm-c", "vm-a", "vm-b"]:
        kernel.register_vm(vm(name))
    assert [v.name for v in kernel.vms()] == ["vm-a", "vm-b", "vm-c"]


def test_register_twice_is_already_exists():
    kernel = make_kernel()
    kernel.register_vm(vm())
    with pytest.raises(AlreadyExists):
        kernel.register_vm(vm(cpus=1))
    assert kernel.vm("vm-001").cpus == 2


@pytest.mark.parametrize(
    "config",
    [
        VmConfig("", "u", 1, 1024),
        VmConfig("a/b", "u", 1, 1024),
        VmConfig("x" * 81, "u", 1, 1024),
        VmConfig("vm", "u", 0, 1024),
        VmConfig("vm", "u", -1, 1024),
        VmConfig("vm", "u", 1, 0),
        VmConfig("vm", "u", 1, 1023),
        VmConfig("vm", "u", 1, -4),
    ],
)
def test_register_rejects_invalid_config(config: VmConfig):
    kernel = make_kernel()
    with pytest.raises(InvalidArgument):
        kernel.register_vm(config)
    assert kernel.vms() == []


def test_power_on_and_off_account_memory():
    kernel = make_kernel()
    kernel.register_vm(vm("vm-a", memory_mb=1024))
    kernel.register_vm(vm("vm-b", memory_mb=2048))
    assert kernel.power_on("vm-a").powered_on is True
    assert kernel.power_on("vm-b").powered_on is True
    assert kernel.memory_used_mb == 3072
    assert kernel.memory_free_mb == MEMORY - 3072
    assert kernel.powered_on_count() == 2
    assert kernel.power_off("vm-a").powered_on is False
    assert kernel.memory_used_mb == 2048
    assert kernel.powered_on_count() == 1


def test_unregister_removes_a_powered_off_vm():
    kernel = make_kernel()
    kernel.register_vm(vm())
    assert kernel.unregister_vm("vm-001").name == "vm-001"
    assert kernel.vms() == []
    with pytest.raises(NotFound):
        kernel.vm("vm-001")


@pytest.mark.parametrize("operation", ["power_on", "power_off", "unregister_vm", "vm"])
def test_operations_on_an_unknown_vm_are_not_found(operation: str):
    kernel = make_kernel()
    with pytest.raises(NotFound, match="nope"):
        getattr(kernel, operation)("nope")


def test_power_on_twice_is_invalid_power_state():
    kernel = make_kernel()
    kernel.register_vm(vm())
    kernel.power_on("vm-001")
    with pytest.raises(InvalidPowerState):
        kernel.power_on("vm-001")
    assert kernel.memory_used_mb == 1024


def test_power_off_a_powered_off_vm_is_invalid_power_state():
    kernel = make_kernel()
    kernel.register_vm(vm())
    with pytest.raises(InvalidPowerState):
        kernel.power_off("vm-001")
    assert kernel.memory_used_mb == 0


def test_unregister_a_powered_on_vm_is_invalid_power_state():
    kernel = make_kernel()
    kernel.register_vm(vm())
    kernel.power_on("vm-001")
    with pytest.raises(InvalidPowerState):
        kernel.unregister_vm("vm-001")
    assert kernel.vm("vm-001").powered_on is True


def test_admission_control_admits_a_vm_that_exactly_fits():
    kernel = make_kernel()
    kernel.register_vm(vm("vm-a", memory_mb=MEMORY - 1024))
    kernel.register_vm(vm("vm-b", memory_mb=1024, cpus=CORES))
    kernel.power_on("vm-a")
    kernel.power_on("vm-b")
    assert kernel.memory_free_mb == 0


def test_memory_is_overcommitted_but_reservations_must_fit():
    kernel = make_kernel()
    reserved = VmResources(memory=VmMemorySettings(reservation_mb=MEMORY - 1024), workload=QUIET)
    kernel.register_vm(replace(vm("vm-a", memory_mb=MEMORY - 1024), resources=reserved))
    kernel.register_vm(vm("vm-b", memory_mb=4096))
    wants = VmResources(memory=VmMemorySettings(reservation_mb=2048), workload=QUIET)
    kernel.register_vm(replace(vm("vm-c", memory_mb=2048), resources=wants))
    kernel.power_on("vm-a")
    kernel.power_on("vm-b")  # configured memory past the host's: overcommit is allowed
    assert kernel.memory_used_mb == MEMORY + 3072
    with pytest.raises(InsufficientResourcesFault, match="2048 MB reservation"):
        kernel.power_on("vm-c")
    assert kernel.vm("vm-c").powered_on is False
    assert kernel.memory.reserved_mb() == MEMORY - 1024
    assert "vm-c" not in kernel.cpu.vms()


def test_admission_control_refuses_a_vm_larger_than_the_host():
    kernel = make_kernel()
    kernel.register_vm(vm("vm-a", memory_mb=MEMORY + 4))
    with pytest.raises(InsufficientResourcesFault) as excinfo:
        kernel.power_on("vm-a")
    assert excinfo.value.properties["requested_mb"] == str(MEMORY + 4)
    assert kernel.vm("vm-a").powered_on is False
    assert kernel.memory_used_mb == 0


def test_admission_control_refuses_more_vcpus_than_cores():
    kernel = make_kernel()
    kernel.register_vm(vm(cpus=CORES + 1, memory_mb=4))
    with pytest.raises(InsufficientResourcesFault, match="virtual CPUs"):
        kernel.power_on("vm-001")
    assert kernel.vm("vm-001").powered_on is False
    assert kernel.memory_used_mb == 0


# A property over any sequence of operations.

NAMES = ["vm-a", "vm-b", "vm-c", "vm-d"]
operations = st.lists(
    st.tuples(
        st.sampled_from(["register", "power_on", "power_off", "unregister"]),
        st.sampled_from(NAMES),
        st.integers(min_value=1, max_value=CORES + 2),
        st.sampled_from([4, 1024, 2048, 4096, 6144, MEMORY, MEMORY + 4]),
    ),
    max_size=60,
)


def _expected_to_succeed(model: dict[str, tuple[int, int, bool]], op, name, cpus, mem) -> bool:
    """A plain model of the kernel's rules: name -> (cpus, memory, powered on)."""
    if op == "register":
        return name not in model
    if name not in model:
        return False
    vm_cpus, vm_mem, on = model[name]
    if op == "power_on":  # memory is overcommitted; only the hardware limits hold
        return not on and vm_cpus <= CORES and vm_mem <= MEMORY
    if op == "power_off":
        return on
    return not on  # unregister


@settings(max_examples=300, deadline=None)
@given(operations)
def test_kernel_memory_accounting_holds_over_any_sequence(ops):
    kernel = make_kernel()
    model: dict[str, tuple[int, int, bool]] = {}
    for op, name, cpus, mem in ops:
        before = (kernel.vms(), kernel.memory_used_mb)
        expected = _expected_to_succeed(model, op, name, cpus, mem)
        try:
            if op == "register":
                kernel.register_vm(replace(vm(name, cpus, mem), uuid=""))
            else:
                getattr(kernel, op if op != "unregister" else "unregister_vm")(name)
        except VimFault:
            assert not expected, f"{op} {name} failed but should have succeeded"
            assert (kernel.vms(), kernel.memory_used_mb) == before, "a failed op changed state"
        else:
            assert expected, f"{op} {name} succeeded but should have failed"
            if op == "register":
                model[name] = (cpus, mem, False)
            elif op == "unregister":
                del model[name]
            else:
                c, m, _ = model[name]
                model[name] = (c, m, op == "power_on")
        on = [v for v in kernel.vms() if v.powered_on]
        assert kernel.memory_used_mb == sum(v.memory_mb for v in on)
        kernel.memory.memory.check()
        assert kernel.memory_free_mb == MEMORY - kernel.memory_used_mb
        assert kernel.powered_on_count() == len(on)
        assert {v.name: (v.cpus, v.memory_mb, v.powered_on) for v in kernel.vms()} == model
