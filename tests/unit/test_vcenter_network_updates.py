"""UpdateVirtualSwitch and UpdatePortGroup (vSphere's HostNetworkSystem) through
vCenter and the SDK client, on the in-process engine: a vSwitch gets other uplinks
(its failover order) and policy fields, a port group another VLAN and overrides (or
inherits again), running VMs' ports follow at once, the host keeps it all across a
reboot (esx.conf), and a bad request is refused with a clear fault and changes
nothing. Then the same from the CLI (`vsim network vswitch|portgroup update`)."""

from __future__ import annotations

import pytest
from test_cli_json import Vsim, vsim  # noqa: F401 - the fixture
from test_vcenter_datastores import cluster  # noqa: F401 - the fixture
from vclab import SUCCESS, Lab, small_cluster

from vsim.cluster.client import VCenterClient
from vsim.faults import AlreadyExists, InvalidArgument, NotFound, VimFault
from vsim.v1 import kernel_pb2 as kpb
from vsim.vcenter.sessions import ADMINISTRATOR

QUIET = kpb.VmResources(
    memory_workload=kpb.GuestMemoryWorkload(
        working_set_pct=1, boot_touch_pct=1, dirty_rate=0, touch_rate=0
    )
)
"""A guest that touches almost no memory: power-ons stay cheap."""
STRANGER = "00:50:56:ff:00:01"


def client(lab: Lab) -> VCenterClient:
    return VCenterClient.in_process(lab.vc.table, lab.token)


def vswitches(network: kpb.HostNetwork) -> dict[str, kpb.VirtualSwitch]:
    return {v.name: v for v in network.vswitches}


def port_groups(network: kpb.HostNetwork) -> dict[str, kpb.PortGroup]:
    return {p.name: p for p in network.port_groups}


def policy(message: kpb.SecurityPolicy) -> tuple[bool | None, ...]:
    fields = ("allow_promiscuous", "mac_changes", "forged_transmits")
    return tuple(getattr(message, f) if message.HasField(f) else None for f in fields)


async def test_a_vswitch_gets_other_uplinks_and_policy_fields(lab: Lab):
    async with client(lab) as vc:
        await vc.add_virtual_switch("esxi-01", "vSwitch1", ["vmnic1"])
        await vc.add_port_group("esxi-01", "Prod", "vSwitch1", 10)
        network = await vc.update_virtual_switch("esxi-01", "vSwitch1", ["vmnic2", "vmnic1"])
        changed = vswitches(network)["vSwitch1"]
        assert (list(changed.uplinks), changed.active_uplink) == (["vmnic2", "vmnic1"], "vmnic2")
        assert policy(changed.security) == (False, True, True)  # the policy stayed
        # Only the fields given change; the port group's ports follow at once.
        promiscuous = kpb.SecurityPolicy(allow_promiscuous=True)
        network = await vc.update_virtual_switch("esxi-01", "vSwitch1", security=promiscuous)
        changed = vswitches(network)["vSwitch1"]
        assert list(changed.uplinks) == ["vmnic2", "vmnic1"]  # the uplinks stayed
        assert policy(changed.security) == (True, True, True)
        prod = port_groups(network)["Prod"]
        assert policy(prod.security) == (None, None, None)
        assert policy(prod.computed_security) == (True, True, True)
        # No uplinks: the NICs are free for another vSwitch.
        network = await vc.update_virtual_switch("esxi-01", "vSwitch1", [])
        assert list(vswitches(network)["vSwitch1"].uplinks) == []
        network = await vc.add_virtual_switch("esxi-01", "vSwitch2", ["vmnic1", "vmnic2"])
        assert [u.vswitch for u in network.uplinks] == ["vSwitch0", "vSwitch2", "vSwitch2", ""]
        await vc.update_virtual_switch("esxi-01", "vSwitch1", ["vmnic3"])
    events = [e for e in (await lab.events()) if e.type == "HostVirtualSwitchReconfiguredEvent"]
    assert [e.message for e in events] == [
        "Reconfigured vSwitch vSwitch1 on esxi-01: uplinks vmnic2, vmnic1",
        "Reconfigured vSwitch vSwitch1 on esxi-01: promiscuous mode accept",
        "Reconfigured vSwitch vSwitch1 on esxi-01: uplinks none",
        "Reconfigured vSwitch vSwitch1 on esxi-01: uplinks vmnic3",
    ]
    assert {(e.host, e.user) for e in events} == {("esxi-01", ADMINISTRATOR)}
    # The host keeps its vSwitches in esx.conf: a reboot brings the changes back.
    lab.engine.crash("esxi-01")
    await lab.engine.reboot("esxi-01")
    rebooted = lab.engine.running("esxi-01").kernel.network
    assert rebooted.vswitch("vSwitch1").uplinks == ("vmnic3",)
    assert rebooted.vswitch("vSwitch1").security.allow_promiscuous is True
    assert rebooted.vswitch("vSwitch2").uplinks == ("vmnic1", "vmnic2")


async def running(vc: VCenterClient, name: str, host: str, port_group: str) -> None:
    vm = dict(memory_mb=256, host=host, resources=QUIET, nics=[kpb.VmNic(port_group=port_group)])
    assert (await vc.wait(await vc.create_vm(name, **vm))).state == SUCCESS
    assert (await vc.wait(await vc.power_on(name))).state == SUCCESS


async def test_a_port_groups_vlan_and_overrides_change_and_running_vms_follow(make_lab):
    lab = await make_lab(small_cluster(hosts=2))
    async with client(lab) as vc:
        for host in ("esxi-01", "esxi-02"):
            await vc.add_port_group(host, "Prod", "vSwitch0", 10)
        await running(vc, "a", "esxi-01", "Prod")
        await running(vc, "b", "esxi-02", "Prod")

        async def receivers(**frame) -> list[str]:
            trace = await vc.send_test_frame("a", kpb.Frame(**frame), dst_vm="b")
            return [r.vm for r in trace.received]

        assert await receivers() == ["b"]
        network = await vc.update_port_group("esxi-02", "Prod", vlan=20)
        assert port_groups(network)["Prod"].vlan == 20
        assert await receivers() == []  # b's port is in VLAN 20 now
        await vc.update_port_group("esxi-02", "Prod", vlan=10)
        assert await receivers() == ["b"]
        # Overrides: set one, the others stay inherited; then inherit it again.
        reject = kpb.SecurityPolicy(forged_transmits=False)
        network = await vc.update_port_group("esxi-01", "Prod", security=reject)
        prod = port_groups(network)["Prod"]
        assert (prod.vlan, policy(prod.security)) == (10, (None, None, False))
        assert policy(prod.computed_security) == (False, True, False)
        forged = await vc.send_test_frame("a", kpb.Frame(src_mac=STRANGER), dst_vm="b")
        assert [(d.host, d.reason) for d in forged.dropped] == [("esxi-01", "forged_transmit")]
        network = await vc.update_port_group("esxi-01", "Prod", inherit=["forged_transmits"])
        assert policy(port_groups(network)["Prod"].security) == (None, None, None)
        assert await receivers(src_mac=STRANGER) == ["b"]
    events = await lab.events()
    messages = [e.message for e in events if e.type == "HostPortGroupReconfiguredEvent"]
    assert messages == [
        "Reconfigured port group 'Prod' on esxi-02: VLAN 20",
        "Reconfigured port group 'Prod' on esxi-02: VLAN 10",
        "Reconfigured port group 'Prod' on esxi-01: forged transmits reject",
        "Reconfigured port group 'Prod' on esxi-01: forged transmits inherited",
    ]
    # Kept in esx.conf across a reboot of the host.
    lab.engine.crash("esxi-02")
    await lab.engine.reboot("esxi-02")
    assert lab.engine.running("esxi-02").kernel.network.port_group("Prod").vlan == 10


def vswitch_update(name: str = "vSwitch1", uplinks=None, **security) -> dict:
    return {"name": name, "uplinks": uplinks, "security": kpb.SecurityPolicy(**security)}


def port_group_update(name: str = "Prod", vlan=None, inherit=(), **security) -> dict:
    return {
        "name": name,
        "vlan": vlan,
        "security": kpb.SecurityPolicy(**security),
        "inherit": inherit,
    }


@pytest.mark.parametrize(
    ("kind", "host", "change", "fault", "words"),
    [
        ("vswitch", "esxi-01", vswitch_update("vSwitch7", []), NotFound, "vSwitch7"),
        ("vswitch", "esxi-01", vswitch_update("", []), InvalidArgument, "name the vSwitch"),
        ("vswitch", "esxi-01", vswitch_update(uplinks=["eth0"]), InvalidArgument, "eth0"),
        ("vswitch", "esxi-01", vswitch_update(uplinks=["vmnic0"]), AlreadyExists, "vSwitch0"),
        ("vswitch", "esxi-01", vswitch_update(uplinks=["vmnic7"]), NotFound, "vmnic7"),
        ("vswitch", "esxi-01", vswitch_update(uplinks=["vmnic2"] * 2), InvalidArgument, "twice"),
        ("vswitch", "esxi-01", vswitch_update(), InvalidArgument, "nothing to change"),
        ("vswitch", "esxi-09", vswitch_update(uplinks=[]), NotFound, "esxi-09"),
        ("portgroup", "esxi-01", port_group_update(vlan=4096), InvalidArgument, "vlan"),
        ("portgroup", "esxi-01", port_group_update("Dev", vlan=1), NotFound, "Dev"),
        ("portgroup", "esxi-01", port_group_update("a/b", vlan=1), InvalidArgument, "'/'"),
        ("portgroup", "esxi-01", port_group_update(), InvalidArgument, "nothing to change"),
        ("portgroup", "esxi-01", port_group_update(inherit=["promisc"]), InvalidArgument,
         "allow_promiscuous, mac_changes, forged_transmits"),
        ("portgroup", "esxi-01", port_group_update(inherit=["mac_changes"], mac_changes=True),
         InvalidArgument, "both set and inherited"),
    ],
)  # fmt: skip
async def test_bad_network_updates_are_refused_and_change_nothing(
    lab: Lab, kind, host, change, fault, words
):
    async with client(lab) as vc:
        await vc.add_virtual_switch("esxi-01", "vSwitch1", ["vmnic1"])
        await vc.add_port_group("esxi-01", "Prod", "vSwitch1", 10)
        before, events = await vc.host_network("esxi-01"), len(await lab.events())
        update = vc.update_virtual_switch if kind == "vswitch" else vc.update_port_group
        with pytest.raises(fault, match=words) as refused:
            await update(host, **change)
        assert isinstance(refused.value, VimFault)
        assert await vc.host_network("esxi-01") == before
    assert len(await lab.events()) == events


async def test_the_cli_updates_vswitches_and_port_groups(vsim: Vsim):  # noqa: F811
    await vsim("network", "vswitch", "add", "esxi-01", "vSwitch1", "--uplink", "vmnic1")
    await vsim("network", "portgroup", "add", "esxi-01", "Lab", "--vswitch", "vSwitch1")
    network = await vsim(
        "network", "vswitch", "update", "esxi-01", "vSwitch1", "--uplink", "vmnic2",
        "--uplink", "vmnic1", "--promiscuous", "accept",
    )  # fmt: skip
    (changed,) = [v for v in network["vswitches"] if v["name"] == "vSwitch1"]
    assert (changed["uplinks"], changed["active_uplink"]) == (["vmnic2", "vmnic1"], "vmnic2")
    assert changed["security"] == {
        "allow_promiscuous": True,
        "mac_changes": True,
        "forged_transmits": True,
    }
    text = await vsim("network", "vswitch", "update", "esxi-01", "vSwitch1", "--no-uplinks",
                      table=True)  # fmt: skip
    assert "vSwitch1  -" in text  # no uplinks, no active one
    network = await vsim(
        "network", "portgroup", "update", "esxi-01", "Lab", "--vlan", "30",
        "--mac-changes", "reject", "--forged-transmits", "reject",
    )  # fmt: skip
    (lab,) = [p for p in network["port_groups"] if p["name"] == "Lab"]
    assert (lab["vlan"], lab["security"]) == (
        30,
        {"allow_promiscuous": "inherit", "mac_changes": False, "forged_transmits": False},
    )
    network = await vsim(
        "network", "portgroup", "update", "esxi-01", "Lab", "--forged-transmits", "inherit"
    )
    (lab,) = [p for p in network["port_groups"] if p["name"] == "Lab"]
    assert lab["security"] == {
        "allow_promiscuous": "inherit",
        "mac_changes": False,
        "forged_transmits": "inherit",
    }
    assert lab["computed_security"] == {
        "allow_promiscuous": True,
        "mac_changes": False,
        "forged_transmits": True,
    }
    with pytest.raises(InvalidArgument, match="nothing to change"):
        await vsim("network", "portgroup", "update", "esxi-01", "Lab")
    with pytest.raises(SystemExit):  # argparse: a vSwitch has nothing to inherit from
        await vsim("network", "vswitch", "update", "esxi-01", "vSwitch1", "--mac-changes",
                   "inherit")  # fmt: skip
    with pytest.raises(SystemExit):  # argparse: one or the other
        await vsim("network", "vswitch", "update", "esxi-01", "vSwitch1", "--no-uplinks",
                   "--uplink", "vmnic1")  # fmt: skip
