"""Names through the vCenter API: '.', '..' and invisible or text-reordering
characters are refused with InvalidArgument for every kind of name, before anything
changes, by the one rule in vsim/validate.py."""

from __future__ import annotations

import pytest
from vclab import SUCCESS, Lab

from vsim.faults import InvalidArgument
from vsim.v1 import kernel_pb2 as kpb

BAD_NAMES = {
    "dot": ".",
    "dot-dot": "..",
    "right-to-left override": "vm\u202e100-mv",
    "byte order mark": "\ufeffvm-100",
    "line separator": "vm\u2028100",
    "paragraph separator": "vm\u2029100",
    "zero-width space": "vm\u200b100",
}

SURFACES = {
    "VM": lambda c, n: c.create_vm(n, cpus=1, memory_mb=64),
    "linked clone": lambda c, n: c.linked_clone("vm-001", n),
    "host": lambda c, n: c.add_host(n),
    "datastore": lambda c, n: c.create_nas_datastore(n, "nfs-01"),
    "resource pool": lambda c, n: c.create_resource_pool("esxi-01", n),
    "port group": lambda c, n: c.add_port_group("esxi-01", n, vswitch="vSwitch0"),
    "vSwitch": lambda c, n: c.add_virtual_switch("esxi-01", n),
    "VM's port group": lambda c, n: c.create_vm(
        "vm-nic", cpus=1, memory_mb=64, nics=[kpb.VmNic(port_group=n)]
    ),
}


async def network(lab: Lab) -> kpb.HostNetwork:
    return await lab.client.host_network("esxi-01")


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize("bad", list(BAD_NAMES))
async def test_every_kind_of_name_refuses_dots_and_invisible_characters(
    lab: Lab, surface: str, bad: str
):
    assert (await lab.create("vm-001")).state == SUCCESS
    before, network_before = await lab.snapshot(), await network(lab)
    with pytest.raises(InvalidArgument) as excinfo:
        await SURFACES[surface](lab.client, BAD_NAMES[bad])
    message = excinfo.value.message
    assert message.isprintable() and len(message) < 300
    assert await lab.snapshot() == before
    assert await network(lab) == network_before
    assert lab.vc.tasks._busy == {}
