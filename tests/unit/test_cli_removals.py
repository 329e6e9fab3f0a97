"""`vsim vm nic remove`, `vsim vm pci remove`, `vsim network portgroup remove` and
`vsim network vswitch remove` through the SDK client on the vCenter core: the RPC each
command makes, what it shows, and the faults a person sees when vSphere refuses."""

from __future__ import annotations

import pytest
from test_guest_mac import one_host, rows, vsim  # noqa: F401 - the fixture
from test_vcenter_kernel import create, get_vm, nic, quiet
from vclab import SUCCESS, Lab

from vsim.faults import InvalidPowerState, NotFound, ResourceInUse
from vsim.v1 import kernel_pb2 as kpb


async def test_cli_removes_a_nic_then_its_port_group_then_its_vswitch(one_host):  # noqa: F811
    lab: Lab = one_host
    await vsim(lab, "network", "vswitch", "add", "esxi-01", "vSwitch1", "--uplink", "vmnic1")
    await vsim(lab, "network", "portgroup", "add", "esxi-01", "Prod", "--vswitch", "vSwitch1")
    assert (await create(lab, "web", nics=[nic(), nic("Prod")])).state == SUCCESS
    assert (await lab.power_on("web")).state == SUCCESS
    with pytest.raises(ResourceInUse, match=r"web \(ethernet1\)"):
        await vsim(lab, "network", "portgroup", "remove", "esxi-01", "Prod")
    with pytest.raises(ResourceInUse, match="port groups 'Prod'"):
        await vsim(lab, "network", "vswitch", "remove", "esxi-01", "vSwitch1")

    vm, text, calls = await vsim(lab, "vm", "nic", "remove", "web", "ethernet1")
    assert calls == ["RemoveVmNic", "WaitForTask", "GetVm"]
    assert [n.name for n in vm.nics] == ["ethernet0"]
    assert list(rows(text)) == ["NAME", "ethernet0"]
    with pytest.raises(NotFound, match="has: ethernet0"):
        await vsim(lab, "vm", "nic", "remove", "web", "ethernet1")

    network, text, calls = await vsim(lab, "network", "portgroup", "remove", "esxi-01", "Prod")
    assert calls == ["RemovePortGroup"]
    assert "Prod" not in rows(text) and "VM Network" in rows(text)
    network, text, _ = await vsim(lab, "network", "vswitch", "remove", "esxi-01", "vSwitch1")
    assert [v.name for v in network.vswitches] == ["vSwitch0"]
    assert list(rows(text)) == ["NAME", "vSwitch0"]
    with pytest.raises(ResourceInUse, match="management vSwitch"):
        await vsim(lab, "network", "vswitch", "remove", "esxi-01", "vSwitch0")
    # vmnic1 is free for another vSwitch.
    _, text, _ = await vsim(lab, "network", "vswitch", "add", "esxi-01", "vSwitch2",
                            "--uplink", "vmnic1")  # fmt: skip
    assert "vmnic1" in rows(text)["vSwitch2"]


async def test_cli_removes_a_pci_device_from_a_powered_off_vm(one_host):  # noqa: F811
    lab: Lab = one_host
    gpu = "0000:3b:00.0"
    await vsim(lab, "host", "pci", "passthru", "esxi-01", gpu, "on")
    full = quiet(memory=kpb.ResourceAllocation(reservation=256))
    assert (await create(lab, "ml", memory=full.memory)).state == SUCCESS
    await vsim(lab, "vm", "pci", "add", "ml", gpu)
    assert (await lab.power_on("ml")).state == SUCCESS
    with pytest.raises(InvalidPowerState, match="power it off"):
        await vsim(lab, "vm", "pci", "remove", "ml", gpu)
    assert list((await get_vm(lab, "ml")).pci_devices) == [gpu]
    assert (await lab.power_off("ml")).state == SUCCESS
    task, text, calls = await vsim(lab, "vm", "pci", "remove", "ml", gpu)
    assert calls == ["RemovePciDevice", "WaitForTask"]
    assert task.state == SUCCESS and text == f"PCI device {gpu} removed from ml"
    devices, text, _ = await vsim(lab, "host", "pci", "list", "esxi-01")
    assert [d.vm for d in devices if d.id == gpu] == [""]  # free for another VM
