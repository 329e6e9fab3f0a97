"""Names through the vCenter API: '.', '..' and invisible or text-reordering
characters are refused with InvalidArgument for every kind of name, before anything
changes, by the one rule in vsim/validate.py."""

from __future__ import annotations

import inspect

import pytest
from vclab import SUCCESS, Lab, rpc

from vsim.faults import InvalidArgument
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb

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
    "VM": lambda vc, s, n: rpc(vc).CreateVm(pb.CreateVmRequest(name=n, cpus=1, memory_mb=64), s),
    "linked clone": lambda vc, s, n: rpc(vc).LinkedCloneVm(
        pb.LinkedCloneVmRequest(source="vm-001", name=n), s
    ),
    "host": lambda vc, s, n: vc.AddHost(pb.AddHostRequest(name=n), s),
    "datastore": lambda vc, s, n: rpc(vc).CreateNasDatastore(
        pb.CreateNasDatastoreRequest(name=n, export="nfs-01"), s
    ),
    "resource pool": lambda vc, s, n: rpc(vc).CreateResourcePool(
        pb.HostResourcePoolRequest(host="esxi-01", pool=kpb.ResourcePoolSpec(name=n)), s
    ),
    "port group": lambda vc, s, n: rpc(vc).AddPortGroup(
        pb.HostPortGroupRequest(
            host="esxi-01", port_group=kpb.PortGroup(name=n, vswitch="vSwitch0")
        ),
        s,
    ),
    "vSwitch": lambda vc, s, n: rpc(vc).AddVirtualSwitch(
        pb.HostVirtualSwitchRequest(host="esxi-01", vswitch=kpb.VirtualSwitch(name=n)), s
    ),
    "VM's port group": lambda vc, s, n: rpc(vc).CreateVm(
        pb.CreateVmRequest(name="vm-nic", cpus=1, memory_mb=64, nics=[kpb.VmNic(port_group=n)]),
        s,
    ),
}


async def network(lab: Lab) -> kpb.HostNetwork:
    return await rpc(lab.vc).GetHostNetwork(pb.HostRequest(name="esxi-01"), lab.session)


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize("bad", list(BAD_NAMES))
async def test_every_kind_of_name_refuses_dots_and_invisible_characters(
    lab: Lab, surface: str, bad: str
):
    assert (await lab.create("vm-001")).state == SUCCESS
    before, network_before = lab.snapshot(), await network(lab)
    with pytest.raises(InvalidArgument) as excinfo:
        result = SURFACES[surface](lab.vc, lab.session, BAD_NAMES[bad])
        if inspect.isawaitable(result):
            await result
    message = excinfo.value.message
    assert message.isprintable() and len(message) < 300
    assert lab.snapshot() == before
    assert await network(lab) == network_before
    assert lab.vc.tasks._busy == {}
