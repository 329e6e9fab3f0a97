"""The VMkernel through the vCenter core on the in-process engine: VMs with resources
and NICs (MACs assigned and unique), ReconfigVM_Task (live changes, refusals that
change nothing), firewall rules that persist and travel with the VM, hosts' vSwitches
and port groups, the physical switch, SendTestFrame across hosts, statistics, memory
settings, DirectPath devices and the guest's LUNs, and removing what was added (vNICs,
DirectPath devices, port groups, vSwitches).

Every test here goes through hostd's VMkernel RPCs (GetNetwork, ReconfigureVm,
SendFrame/ReceiveFrame, GetHostStats, ...): they need the host side of kernel.proto.
"""

from __future__ import annotations

import pytest
from test_vcenter_datastores import cluster, run  # noqa: F401 - the fixture
from vclab import ERROR, SUCCESS, Lab, small_cluster

from vsim.faults import (
    AlreadyExists,
    HostNotConnected,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    ResourceInUse,
)
from vsim.memory_settings import MemorySettings
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.virtual_nic import GENERATED_MAC_FIRST, GENERATED_MAC_LAST

QUIET = kpb.GuestMemoryWorkload(working_set_pct=1, boot_touch_pct=1, dirty_rate=0, touch_rate=0)
"""A guest that touches almost no memory: power-ons stay cheap."""
BROADCAST = "ff:ff:ff:ff:ff:ff"


def quiet(**fields) -> kpb.VmResources:
    return kpb.VmResources(memory_workload=QUIET, **fields)


def nic(port_group: str = "VM Network", mac: str = "", **fields) -> kpb.VmNic:
    return kpb.VmNic(port_group=port_group, mac=mac, **fields)


def rule(text: str) -> kpb.FirewallRule:
    action, direction, protocol, address, port = text.split()
    return kpb.FirewallRule(
        action=action, direction=direction, protocol=protocol, address=address, port=port
    )


async def create(
    lab: Lab, name: str, host: str = "esxi-01", nics=(), memory_mb: int = 256, **resources
):
    task = await lab.client.create_vm(
        name, cpus=1, memory_mb=memory_mb, host=host, resources=quiet(**resources), nics=nics
    )
    return await lab.wait(task)


async def call_task(lab: Lab, method: str, request):
    """An RPC that starts a task, with the request as built; the task once finished."""
    return await lab.wait(await lab.client.call(method, request))


async def get_vm(lab: Lab, name: str) -> pb.Vm:
    return await lab.client.vm(name)


async def on_host(lab: Lab, name: str):
    """The VM as its host's kernel has it."""
    return lab.engine.running((await get_vm(lab, name)).host).kernel.vm(name)


def generated(mac: str) -> bool:
    octets = [int(o, 16) for o in mac.split(":")]
    low = (octets[3] << 16) | (octets[4] << 8) | octets[5]
    return octets[:3] == [0x00, 0x50, 0x56] and GENERATED_MAC_FIRST <= low <= GENERATED_MAC_LAST


async def snapshot(lab: Lab) -> tuple:
    """What a refused or failed reconfiguration must leave unchanged: the inventory's
    VMs (all their configuration), events, and each host's VM configurations."""
    configs = {
        name: sorted(repr(vm) for vm in hostd.kernel.vms())
        for name, hostd in lab.engine.hosts().items()
    }
    return (await lab.vms()), len(await lab.events()), configs


# creating VMs with resources and NICs


async def test_create_vm_with_resources_and_nics_registers_them_on_its_host(lab: Lab):
    done = await create(
        lab,
        "web",
        nics=[nic(mac="00:50:56:01:02:03"), nic("Management Network")],
        cpu=kpb.ResourceAllocation(shares=4000, reservation=500, limit=2000),
        memory=kpb.ResourceAllocation(reservation=128),
        cpu_load_pct=30,
    )
    assert done.state == SUCCESS
    vm = await get_vm(lab, "web")
    assert [(n.name, n.port_group) for n in vm.nics] == [
        ("ethernet0", "VM Network"),
        ("ethernet1", "Management Network"),
    ]
    assert vm.nics[0].mac == "00:50:56:01:02:03"
    assert generated(vm.nics[1].mac)
    assert all(n.firewall_default == "allow" for n in vm.nics)
    assert (vm.resources.cpu.shares, vm.resources.cpu.limit, vm.resources.cpu_load_pct) == (
        4000,
        2000,
        30,
    )
    assert (await lab.vms())["web"] == vm  # ListVms carries the same configuration
    host = await on_host(lab, "web")
    assert [(n.name, n.port_group, n.mac) for n in host.nics] == [
        (n.name, n.port_group, n.mac) for n in vm.nics
    ]
    assert (host.resources.cpu_reservation_mhz, host.resources.memory.reservation_mb) == (500, 128)
    assert (await lab.power_on("web")).state == SUCCESS
    network = await lab.client.host_network("esxi-01")
    assert sorted((n.vm, n.nic, n.mac) for n in network.nics) == [
        ("web", n.name, n.mac) for n in vm.nics
    ]


async def test_generated_macs_follow_the_seed_and_never_repeat(make_lab):
    async def macs(seed: int) -> list[str]:
        lab = await make_lab(small_cluster(hosts=1), seed=seed)
        for i in range(4):
            assert (await create(lab, f"vm-{i}", nics=[nic(), nic()])).state == SUCCESS
        return [n.mac for vm in (await lab.vms()).values() for n in vm.nics]

    first, again, other = await macs(11), await macs(11), await macs(12)
    assert first == again != other
    assert len(set(first)) == 8 and all(generated(m) for m in first)


def new_vm(name: str = "x", **fields) -> pb.CreateVmRequest:
    return pb.CreateVmRequest(name=name, cpus=1, memory_mb=256, **fields)


def cpu(**fields) -> kpb.VmResources:
    return kpb.VmResources(cpu=kpb.ResourceAllocation(**fields))


def memory(**fields) -> kpb.VmResources:
    return kpb.VmResources(memory=kpb.ResourceAllocation(**fields))


def guest(**fields) -> kpb.VmResources:
    return kpb.VmResources(memory_workload=kpb.GuestMemoryWorkload(**fields))


def reconfigure(resources: kpb.VmResources, name: str = "a"):
    return pb.ReconfigureVmResourcesRequest(name=name, resources=resources)


def firewall(*rules: str | kpb.FirewallRule, **fields) -> pb.SetVmFirewallRequest:
    rules_ = [rule(r) if isinstance(r, str) else r for r in rules]
    return pb.SetVmFirewallRequest(vm="a", rules=rules_, **fields)


async def test_a_mac_in_use_is_refused_and_nothing_changes(lab: Lab):
    assert (await create(lab, "a", nics=[nic(mac="00:50:56:00:00:0a")])).state == SUCCESS
    before = await snapshot(lab)
    refused = [
        ("CreateVm", new_vm("b", nics=[nic(mac="00:50:56:00:00:0A")])),
        (
            "CreateVm",
            new_vm("b", nics=[nic(mac="00:50:56:00:00:0b"), nic(mac="00-50-56-00-00-0b")]),
        ),
        ("AddVmNic", pb.AddVmNicRequest(vm="a", nic=nic(mac="00:50:56:00:00:0a"))),
        ("AddVmNic", pb.AddVmNicRequest(vm="a", nic=nic(name="ethernet0"))),
    ]
    for method, request in refused:
        with pytest.raises(AlreadyExists):
            await lab.client.call(method, request)
        assert await snapshot(lab) == before
    assert lab.vc.macs._held == {}  # a refusal holds no MAC


@pytest.mark.parametrize(
    ("method", "request_", "fault", "words"),
    [
        ("CreateVm", new_vm(nics=[nic("")]), InvalidArgument, "port_group"),
        ("CreateVm", new_vm(nics=[nic(mac="01:00:5e:00:00:01")]), InvalidArgument, "multicast"),
        ("CreateVm", new_vm(nics=[nic(mac="00:50:56:zz:00:01")]), InvalidArgument, "not a MAC"),
        ("CreateVm", new_vm(nics=[nic(name="eth0")]), InvalidArgument, "ethernet0-ethernet9"),
        ("CreateVm", new_vm(nics=[nic()] * 11), InvalidArgument, "at most 10"),
        ("CreateVm", new_vm(resources=memory(reservation=512)), InvalidArgument, "0..256 MB"),
        ("CreateVm", new_vm(resources=cpu(reservation=100, limit=50)), InvalidArgument, "below"),
        ("CreateVm", new_vm(resources=cpu(shares=-5)), InvalidArgument, "shares must be > 0"),
        ("CreateVm", new_vm(resources=kpb.VmResources(cpu_load_pct=101)), InvalidArgument, "load"),
        ("CreateVm", new_vm(resources=guest(zero_pct=-1)), InvalidArgument, "zero_pct"),
        ("CreateVm", new_vm(resources=guest(zero_pct=80, common_pct=21)), InvalidArgument, "pass"),
        ("ReconfigureVmResources", reconfigure(memory(reservation=300)), InvalidArgument, "256"),
        ("ReconfigureVmResources", reconfigure(memory(limit=-2)), InvalidArgument, "unlimited"),
        ("ReconfigureVmResources", reconfigure(kpb.VmResources(), "nope"), NotFound, "nope"),
        ("SetVmFirewall", firewall(kpb.FirewallRule(action="drop")), InvalidArgument, "action"),
        ("SetVmFirewall", firewall("deny in tcp 10.0.0.1/8 22"), InvalidArgument, "rule 0"),
        ("SetVmFirewall", firewall("deny in icmp any 22"), InvalidArgument, "icmp"),
        ("SetVmFirewall", firewall("deny in tcp any 70000"), InvalidArgument, "65535"),
        ("SetVmFirewall", firewall(default_action="reject"), InvalidArgument, "allow, deny"),
        ("SetVmFirewall", firewall(nic="ethernet3"), NotFound, "ethernet3"),
        ("AssignPciDevice", pb.AssignPciDeviceRequest(vm="a", id="3b:00"), InvalidArgument, "PCI"),
        ("RemoveVmNic", pb.RemoveVmNicRequest(vm="a", nic="ethernet3"), NotFound, "has: ethernet0"),
        ("RemoveVmNic", pb.RemoveVmNicRequest(vm="a"), InvalidArgument, "name the adapter"),
        ("RemoveVmNic", pb.RemoveVmNicRequest(vm="nope", nic="ethernet0"), NotFound, "nope"),
        ("RemovePciDevice", pb.RemovePciDeviceRequest(vm="a", id="3b:00"), InvalidArgument, "PCI"),
        ("RemovePciDevice", pb.RemovePciDeviceRequest(vm="a", id="0000:3B:00.0"), NotFound, "none"),
    ],
)  # fmt: skip
async def test_bad_requests_are_refused_at_once_and_change_nothing(
    lab: Lab, method, request_, fault, words
):
    assert (await create(lab, "a", nics=[nic()])).state == SUCCESS
    before = await snapshot(lab)
    with pytest.raises(fault, match=words):
        await lab.client.call(method, request_)
    assert await snapshot(lab) == before
    assert lab.vc.macs._held == {}


# ReconfigVM_Task


async def test_reconfigure_applies_live_and_a_reservation_that_does_not_fit_changes_nothing(
    make_lab,
):
    lab = await make_lab(small_cluster(hosts=1, cpu_cores=4))  # 4 x 2600 MHz
    for name in ("a", "b"):
        assert (await create(lab, name, cpu_load_pct=100)).state == SUCCESS
        assert (await lab.power_on(name)).state == SUCCESS
    live = quiet(cpu=kpb.ResourceAllocation(reservation=6000, limit=8000), cpu_load_pct=100)
    request = pb.ReconfigureVmResourcesRequest(name="a", resources=live)
    done = await call_task(lab, "ReconfigureVmResources", request)
    assert (done.name, done.state) == ("ReconfigVM_Task", SUCCESS)
    assert (await get_vm(lab, "a")).resources.cpu.reservation == 6000
    stats = await lab.client.host_stats("esxi-01")
    assert stats.cpu.reserved == 6000  # applied to the running VM at once
    event = (await lab.events())[-1]
    assert (event.type, event.vm) == ("VmReconfiguredEvent", "a")

    before = await snapshot(lab)
    too_much = quiet(cpu=kpb.ResourceAllocation(reservation=6000), cpu_load_pct=100)
    request = pb.ReconfigureVmResourcesRequest(name="b", resources=too_much)
    failed = await call_task(lab, "ReconfigureVmResources", request)
    assert (failed.state, failed.error.name) == (ERROR, "InsufficientResourcesFault")
    assert await snapshot(lab) == before  # the inventory, the events and the host: unchanged
    assert (await get_vm(lab, "b")).resources.cpu.reservation == 0


async def test_add_nic_to_a_running_vm_connects_it_and_a_missing_port_group_changes_nothing(
    lab: Lab,
):
    assert (await create(lab, "a", nics=[nic()])).state == SUCCESS
    assert (await lab.power_on("a")).state == SUCCESS
    before = await snapshot(lab)
    missing = pb.AddVmNicRequest(vm="a", nic=nic("No Such Network"))
    failed = await call_task(lab, "AddVmNic", missing)
    assert (failed.state, failed.error.name) == (ERROR, "NotFound")
    assert "No Such Network" in failed.error.message
    assert await snapshot(lab) == before
    done = await call_task(lab, "AddVmNic", pb.AddVmNicRequest(vm="a", nic=nic()))
    assert done.state == SUCCESS
    vm = await get_vm(lab, "a")
    assert [n.name for n in vm.nics] == ["ethernet0", "ethernet1"]
    network = await lab.client.host_network(vm.host)
    assert sorted(n.nic for n in network.nics if n.vm == "a") == ["ethernet0", "ethernet1"]
    assert lab.vc.macs._held == {}  # released when the task ended


async def test_firewall_rules_persist_across_a_vcenter_restart_and_travel_with_the_vm(lab: Lab):
    assert (await create(lab, "a", nics=[nic()])).state == SUCCESS
    ssh = rule("DENY in tcp 10.0.0.0/8 22")
    ssh.name = "no ssh"
    high = kpb.FirewallRule(action="allow", port="1024-65535")
    request = firewall(ssh, high, default_action="deny")
    assert (await call_task(lab, "SetVmFirewall", request)).state == SUCCESS
    canonical = [
        ("deny", "in", "tcp", "10.0.0.0/8", "22", "no ssh"),
        ("allow", "both", "any", "any", "1024-65535", ""),
    ]

    def stored(vm: pb.Vm) -> tuple:
        (ethernet0,) = vm.nics
        rules = [
            (r.action, r.direction, r.protocol, r.address, r.port, r.name)
            for r in ethernet0.firewall
        ]
        return rules, ethernet0.firewall_default

    assert stored(await get_vm(lab, "a")) == (canonical, "deny")
    await lab.restart()
    assert stored(await get_vm(lab, "a")) == (canonical, "deny")
    # The host lost the VM (a reboot): vCenter registers it again, rules and all.
    host = (await get_vm(lab, "a")).host
    lab.engine.crash(host)
    lab.drop_connection(host)
    await lab.engine.reboot(host)
    await lab.vc.hosts.heartbeat_once()
    await lab.vc.hosts.heartbeat_once()
    (ethernet0,) = (await on_host(lab, "a")).nics
    assert ethernet0.firewall.default_action == "deny"
    assert [(r.action, r.address, r.port) for r in ethernet0.firewall.rules] == [
        ("deny", "10.0.0.0/8", "22"),
        ("allow", "any", "1024-65535"),
    ]


# hosts' networks and the physical switch


async def test_vswitch_and_port_group_add_and_a_bad_vlan_is_refused(lab: Lab):
    network = await lab.client.add_virtual_switch(
        "esxi-01", "vSwitch1", uplinks=["vmnic1", "vmnic2"]
    )
    assert [(v.name, list(v.uplinks)) for v in network.vswitches] == [
        ("vSwitch0", ["vmnic0"]),
        ("vSwitch1", ["vmnic1", "vmnic2"]),
    ]
    network = await lab.client.add_port_group("esxi-01", "Prod", vswitch="vSwitch1", vlan=10)
    assert ("Prod", "vSwitch1", 10) in [(p.name, p.vswitch, p.vlan) for p in network.port_groups]
    assert [e.type for e in (await lab.events())[-2:]] == [
        "HostVirtualSwitchAddedEvent",
        "HostPortGroupAddedEvent",
    ]
    before = await lab.client.host_network("esxi-01")
    events = len(await lab.events())

    def port_group(host: str, **fields) -> pb.HostPortGroupRequest:
        return pb.HostPortGroupRequest(host=host, port_group=kpb.PortGroup(**fields))

    def vswitch(**fields) -> pb.HostVirtualSwitchRequest:
        return pb.HostVirtualSwitchRequest(host="esxi-01", vswitch=kpb.VirtualSwitch(**fields))

    for method, request, fault in [
        ("AddPortGroup", port_group("esxi-01", name="x", vswitch="vS", vlan=4096), InvalidArgument),
        ("AddPortGroup", port_group("esxi-01", name="Prod", vswitch="vSwitch1"), AlreadyExists),
        ("AddPortGroup", port_group("esxi-09", name="x", vswitch="vSwitch1"), NotFound),
        ("AddVirtualSwitch", vswitch(name="vSwitch2", uplinks=["vmnic0"]), AlreadyExists),
        ("AddVirtualSwitch", vswitch(name="vSwitch2", uplinks=["eth0"]), InvalidArgument),
    ]:  # fmt: skip
        with pytest.raises(fault):
            await lab.client.call(method, request)
    assert await lab.client.host_network("esxi-01") == before
    assert len(await lab.events()) == events
    lab.engine.crash("esxi-02")
    lab.drop_connection("esxi-02")
    await lab.vc.hosts.heartbeat_once()
    with pytest.raises(HostNotConnected):
        await lab.client.host_network("esxi-02")


async def vlan_lab(make_lab) -> Lab:
    """a on esxi-01 and b on esxi-02 in VLAN 10, c on esxi-02 in VLAN 20; all running."""
    lab = await make_lab(small_cluster(hosts=2))
    for host in ("esxi-01", "esxi-02"):
        for name, vlan in (("Prod", 10), ("Dev", 20)):
            await lab.client.add_port_group(host, name, vswitch="vSwitch0", vlan=vlan)
    for name, host, pg in (
        ("a", "esxi-01", "Prod"),
        ("b", "esxi-02", "Prod"),
        ("c", "esxi-02", "Dev"),
    ):
        assert (await create(lab, name, host, nics=[nic(pg)])).state == SUCCESS
        assert (await lab.power_on(name)).state == SUCCESS
    return lab


async def send(lab: Lab, vm: str, dst_vm: str = "", **frame) -> kpb.FrameTrace:
    return await lab.client.send_test_frame(vm, kpb.Frame(**frame), dst_vm=dst_vm)


def receivers(trace: kpb.FrameTrace) -> list[tuple[str, str, str]]:
    return [(r.host, r.vm, r.nic) for r in trace.received]


def drops(trace: kpb.FrameTrace) -> set[tuple[str, str, str]]:
    return {(d.host, d.where, d.reason) for d in trace.dropped}


async def test_a_frame_reaches_the_vm_on_the_other_host_in_its_vlan_only(make_lab):
    lab = await vlan_lab(make_lab)
    trace = await send(lab, "a", dst_vm="b", protocol="tcp", dst_port=443)
    assert receivers(trace) == [("esxi-02", "b", "ethernet0")]
    assert (trace.host, trace.vm, trace.nic) == ("esxi-01", "a", "ethernet0")
    assert trace.frame.src_mac == (await get_vm(lab, "a")).nics[0].mac
    assert trace.frame.dst_mac == (await get_vm(lab, "b")).nics[0].mac
    trace = await send(lab, "a", dst_mac=BROADCAST)
    assert receivers(trace) == [("esxi-02", "b", "ethernet0")]  # c is in VLAN 20
    assert drops(trace) == set()  # the copies flooded to other NICs are not drops
    trace = await send(lab, "a", dst_vm="c")
    # In VLAN 10 nobody has c's MAC: every host discards its flooded copy, silently.
    assert (receivers(trace), drops(trace)) == ([], set())


async def test_a_switch_port_not_trunking_the_vlan_blocks_it(make_lab):
    lab = await vlan_lab(make_lab)
    configured = await lab.client.configure_physical_port("esxi-02", "vmnic0", vlans=[20, 0, 20])
    assert list(configured.vlans) == [0, 20]
    ports = await lab.client.physical_ports()
    assert len(ports) == 8  # two hosts x vmnic0..vmnic3
    assert [list(p.vlans) for p in ports if (p.host, p.uplink) == ("esxi-02", "vmnic0")] == [
        [0, 20]
    ]
    assert all(not p.vlans and not p.disabled for p in ports if p.host == "esxi-01")
    trace = await send(lab, "a", dst_vm="b")
    assert receivers(trace) == []
    assert drops(trace) == {("", "pswitch-01:esxi-02/vmnic0", "vlan")}
    (blocked,) = trace.dropped
    assert "VLAN 10" in blocked.detail
    await lab.restart()  # the port's setting is in the inventory
    trace = await send(lab, "a", dst_vm="b")
    assert receivers(trace) == []
    await lab.client.configure_physical_port("esxi-02", "vmnic0")
    assert receivers(await send(lab, "a", dst_vm="b")) == [("esxi-02", "b", "ethernet0")]
    await lab.client.configure_physical_port("esxi-01", "vmnic0", disabled=True)
    trace = await send(lab, "a", dst_vm="b")
    assert receivers(trace) == [] and ("", "pswitch-01:esxi-01/vmnic0", "port_disabled") in drops(
        trace
    )
    for host, uplink, vlans, fault in [
        ("esxi-02", "vmnic7", [], NotFound),
        ("esxi-02", "eth0", [], InvalidArgument),
        ("esxi-09", "vmnic0", [], NotFound),
        ("esxi-02", "vmnic0", [4095], InvalidArgument),
    ]:
        with pytest.raises(fault):
            await lab.client.configure_physical_port(host, uplink, vlans=vlans)


async def test_a_firewall_deny_drops_the_frame_with_reason_firewall(make_lab):
    lab = await vlan_lab(make_lab)
    request = pb.SetVmFirewallRequest(vm="b", rules=[rule("deny in tcp 10.0.0.0/8 22")])
    assert (await call_task(lab, "SetVmFirewall", request)).state == SUCCESS
    ssh = {"protocol": "tcp", "src_ip": "10.1.2.3", "dst_ip": "10.9.9.9", "dst_port": 22}
    trace = await send(lab, "a", dst_vm="b", **ssh)
    assert receivers(trace) == []
    (denied,) = trace.dropped
    assert denied.reason == "firewall"
    assert (denied.host, denied.where) == ("esxi-02", "b/ethernet0")
    assert "10.0.0.0/8" in denied.detail
    trace = await send(lab, "a", dst_vm="b", **{**ssh, "src_ip": "192.168.1.1"})
    assert receivers(trace) == [("esxi-02", "b", "ethernet0")]  # outside 10.0.0.0/8
    stats = await lab.client.vm_stats("b")
    assert stats.nics["ethernet0"].dropped["firewall"] == 1


async def test_send_test_frame_refusals(make_lab):
    lab = await vlan_lab(make_lab)
    assert (await create(lab, "off", nics=[nic()])).state == SUCCESS
    assert (await create(lab, "bare")).state == SUCCESS
    for vm, dst_vm, frame, fault in [
        ("off", "b", {}, InvalidPowerState),
        ("a", "", {}, InvalidArgument),  # no destination
        ("a", "b", {"dst_mac": BROADCAST}, InvalidArgument),  # both
        ("a", "bare", {}, InvalidState),
        ("a", "b", {"dst_port": 70000}, InvalidArgument),
        ("a", "b", {"payload": b"x" * 9001}, InvalidArgument),
        ("a", "nope", {}, NotFound),
    ]:
        with pytest.raises(fault):
            await send(lab, vm, dst_vm, **frame)
    with pytest.raises(NotFound, match="ethernet1"):
        await lab.client.send_test_frame("a", nic="ethernet1", dst_vm="b")


# statistics, memory settings, DirectPath


async def test_stats_of_a_running_vm(lab: Lab):
    assert (await create(lab, "busy", cpu_load_pct=100)).state == SUCCESS
    with pytest.raises(InvalidPowerState):
        await lab.client.vm_stats("busy")
    assert (await lab.power_on("busy")).state == SUCCESS
    await lab.clock.advance(5)
    stats = await lab.client.vm_stats("busy")
    assert (stats.name, stats.host) == ("busy", "esxi-01")
    assert stats.cpu.demand == 2600 and stats.cpu.usage > 0  # one vCPU, fully busy
    assert stats.memory.granted > 0
    host = await lab.client.host_stats("esxi-01")
    assert [v.name for v in host.vms] == ["busy"] and host.host == "esxi-01"
    with pytest.raises(NotFound):
        await lab.client.host_stats("esxi-09")


async def test_host_memory_settings_are_forwarded(lab: Lab):
    settings = await lab.client.update_host_memory_settings("esxi-01", share_force_salting=0)
    assert (settings.share_force_salting, settings.page_sharing_disabled) == (0, False)
    settings = await lab.client.update_host_memory_settings("esxi-01", page_sharing_disabled=True)
    assert (settings.share_force_salting, settings.page_sharing_disabled) == (0, True)
    assert (await lab.events())[-1].type == "HostMemorySettingsChangedEvent"
    events = len(await lab.events())
    for bad in [{"share_force_salting": 3}, {"share_scan_period": 0}, {}]:
        with pytest.raises(InvalidArgument):
            await lab.client.update_host_memory_settings("esxi-01", **bad)
    stats = await lab.client.host_stats("esxi-01")
    assert stats.memory_settings.share_force_salting == 0
    assert len(await lab.events()) == events


@pytest.mark.parametrize(
    "fields",
    [
        *({"share_force_salting": salting} for salting in (-1, 0, 1, 2, 3)),
        *(
            {"share_scan_period": period}
            for period in (-1.0, 0.0, float("nan"), float("inf"), 30.0, 36_000.0, 36_001.0)
        ),
    ],
    ids=repr,
)
async def test_vcenter_takes_exactly_the_memory_settings_the_host_takes(lab: Lab, fields):
    ((name, value),) = fields.items()
    events = len(await lab.events())
    try:
        MemorySettings(**fields).validated()
    except InvalidArgument:
        words = {"share_force_salting": "ShareForceSalting", "share_scan_period": name}[name]
        with pytest.raises(InvalidArgument, match=words):
            await lab.client.update_host_memory_settings("esxi-01", **fields)
        assert len(await lab.events()) == events
        return
    settings = await lab.client.update_host_memory_settings("esxi-01", **fields)
    assert getattr(settings, name) == value
    assert len(await lab.events()) == events + 1


async def test_directpath_device_assignment(lab: Lab):
    devices = await lab.client.call("ListPciDevices", pb.HostRequest(name="esxi-01"))
    gpu = devices.devices[0].id
    assert devices.host == "esxi-01" and not devices.devices[0].passthru_enabled
    assert (await create(lab, "ml", memory_mb=256)).state == SUCCESS
    request = pb.AssignPciDeviceRequest(vm="ml", id=gpu.upper())
    failed = await call_task(lab, "AssignPciDevice", request)
    assert (failed.state, failed.error.name) == (ERROR, "InvalidState")  # not enabled
    assert list((await get_vm(lab, "ml")).pci_devices) == []
    assert (await lab.client.update_passthru_config("esxi-01", gpu, True)).passthru_enabled
    assert (await call_task(lab, "AssignPciDevice", request)).state == SUCCESS
    assert list((await get_vm(lab, "ml")).pci_devices) == [gpu]
    with pytest.raises(AlreadyExists):
        await lab.client.assign_pci_device("ml", gpu.upper())
    listed = await lab.client.call("ListPciDevices", pb.HostRequest(name="esxi-01"))
    assert [d.vm for d in listed.devices if d.id == gpu] == ["ml"]
    full = quiet(memory=kpb.ResourceAllocation(reservation=256))
    reserve = pb.ReconfigureVmResourcesRequest(name="ml", resources=full)
    assert (await call_task(lab, "ReconfigureVmResources", reserve)).state == SUCCESS
    assert (await lab.power_on("ml")).state == SUCCESS
    with pytest.raises(InvalidPowerState):  # DirectPath changes only while powered off
        await lab.client.assign_pci_device("ml", "0000:af:00.0")


async def test_guest_report_luns_lists_exactly_its_disks(cluster):  # noqa: F811
    _, _, _, client = cluster
    for name, disk_mb in (("db", 8), ("other", 16)):
        task = await client.create_vm(
            name,
            cpus=1,
            memory_mb=256,
            host="esxi-01",
            datastore="vmfs-01",
            disk_mb=disk_mb,
            resources=quiet(),
        )
        assert (await run(client, task)).state == SUCCESS
    with pytest.raises(InvalidPowerState):
        await client.guest_report_luns("db")
    for name in ("db", "other"):
        assert (await run(client, await client.power_on(name))).state == SUCCESS
    luns = await client.guest_report_luns("db")
    assert luns.vm == "db"
    assert [(lun.address, lun.lun, lun.capacity_bytes) for lun in luns.luns] == [
        ("scsi0:0", 0, 8 * 1024**2)
    ]
    assert luns.luns[0].vendor.strip() == "VMware"
    for name in ("db", "other"):
        assert (await run(client, await client.power_off(name))).state == SUCCESS


async def test_a_linked_clone_takes_the_adapters_with_new_macs(cluster):  # noqa: F811
    _, _, _, client = cluster
    task = await client.create_vm(
        "base",
        cpus=1,
        memory_mb=256,
        host="esxi-01",
        datastore="vmfs-01",
        disk_mb=8,
        resources=quiet(cpu_load_pct=10),
        nics=[nic(firewall=[rule("deny in any any any")]), nic("Management Network")],
    )
    assert (await run(client, task)).state == SUCCESS
    clone = await client.linked_clone("base", "copy", host="esxi-02")
    assert (await run(client, clone)).state == SUCCESS
    base, copy = await client.vm("base"), await client.vm("copy")
    assert [(n.name, n.port_group, list(n.firewall)) for n in copy.nics] == [
        (n.name, n.port_group, list(n.firewall)) for n in base.nics
    ]
    assert {n.mac for n in copy.nics}.isdisjoint({n.mac for n in base.nics})
    assert copy.resources.cpu_load_pct == 10


# removing what was added: vNICs, DirectPath devices, port groups and vSwitches


async def test_a_nic_hot_removed_from_a_running_vm_frees_its_port_and_its_mac(make_lab):
    lab = await vlan_lab(make_lab)
    deny = rule("deny in tcp any 22")
    add = pb.AddVmNicRequest(vm="b", nic=nic("Prod", "00:50:56:00:00:b2", firewall=[deny]))
    assert (await call_task(lab, "AddVmNic", add)).state == SUCCESS
    to_it = {"dst_mac": "00:50:56:00:00:b2", "protocol": "tcp", "dst_port": 443}
    assert receivers(await send(lab, "a", **to_it)) == [("esxi-02", "b", "ethernet1")]
    remove = pb.RemoveVmNicRequest(vm="b", nic="ethernet1")
    done = await call_task(lab, "RemoveVmNic", remove)
    assert (done.name, done.state) == ("ReconfigVM_Task", SUCCESS)
    vm = await get_vm(lab, "b")
    assert vm.power_state == pb.POWER_STATE_POWERED_ON
    assert [n.name for n in vm.nics] == ["ethernet0"]  # its firewall rules went with it
    assert [n.name for n in (await on_host(lab, "b")).nics] == ["ethernet0"]
    network = await lab.client.host_network("esxi-02")
    assert sorted((n.vm, n.nic) for n in network.nics) == [("b", "ethernet0"), ("c", "ethernet0")]
    event = (await lab.events())[-1]
    assert (event.type, event.vm) == ("VmReconfiguredEvent", "b")
    assert "removed ethernet1 (00:50:56:00:00:b2) from port group 'Prod'" in event.message
    assert receivers(await send(lab, "a", **to_it)) == []  # no port has that MAC now
    assert lab.vc.inventory.nic_owner("00:50:56:00:00:b2") is None
    # The MAC is free in vCenter's inventory: another VM may be given it.
    again = pb.AddVmNicRequest(vm="c", nic=nic("Dev", "00:50:56:00:00:B2"))
    assert (await call_task(lab, "AddVmNic", again)).state == SUCCESS
    assert lab.vc.inventory.nic_owner("00:50:56:00:00:b2") == ("c", "ethernet1")
    with pytest.raises(NotFound, match="ethernet1"):
        await lab.client.remove_vm_nic("b", "ethernet1")
    assert lab.vc.macs._held == {}


async def test_a_nic_is_removed_from_a_powered_off_vm_and_survives_a_restart(lab: Lab):
    assert (await create(lab, "a", nics=[nic(), nic("Management Network")])).state == SUCCESS
    remove = pb.RemoveVmNicRequest(vm="a", nic="ethernet0")
    assert (await call_task(lab, "RemoveVmNic", remove)).state == SUCCESS
    assert [n.name for n in (await get_vm(lab, "a")).nics] == ["ethernet1"]
    await lab.restart()
    assert [n.name for n in (await get_vm(lab, "a")).nics] == ["ethernet1"]
    assert (await lab.power_on("a")).state == SUCCESS
    network = await lab.client.host_network("esxi-01")
    assert [(n.vm, n.nic, n.port_group) for n in network.nics] == [
        ("a", "ethernet1", "Management Network")
    ]


async def test_a_directpath_device_is_removed_only_from_a_powered_off_vm(lab: Lab):
    gpu = (await lab.client.call("ListPciDevices", pb.HostRequest(name="esxi-01"))).devices[0].id
    await lab.client.update_passthru_config("esxi-01", gpu, True)
    full = quiet(memory=kpb.ResourceAllocation(reservation=256))
    for name in ("ml", "ml-2"):
        assert (await create(lab, name, memory=full.memory)).state == SUCCESS
    assign = pb.AssignPciDeviceRequest(vm="ml", id=gpu)
    assert (await call_task(lab, "AssignPciDevice", assign)).state == SUCCESS
    taken = await call_task(lab, "AssignPciDevice", pb.AssignPciDeviceRequest(vm="ml-2", id=gpu))
    assert (taken.state, taken.error.name) == (ERROR, "ResourceInUse")
    assert (await lab.power_on("ml")).state == SUCCESS
    remove = pb.RemovePciDeviceRequest(vm="ml", id=gpu.upper())
    before = await snapshot(lab)
    with pytest.raises(InvalidPowerState, match="not hot-removed"):
        await lab.client.remove_pci_device("ml", gpu.upper())
    assert await snapshot(lab) == before
    assert (await lab.power_off("ml")).state == SUCCESS
    done = await call_task(lab, "RemovePciDevice", remove)
    assert (done.name, done.state) == ("ReconfigVM_Task", SUCCESS)
    assert (
        list((await get_vm(lab, "ml")).pci_devices) == []
        and (await on_host(lab, "ml")).pci_devices == ()
    )
    assert f"removed PCI device {gpu}" in (await lab.events())[-1].message
    listed = await lab.client.call("ListPciDevices", pb.HostRequest(name="esxi-01"))
    assert [d.vm for d in listed.devices if d.id == gpu] == [""]
    # Free for another VM now.
    request = pb.AssignPciDeviceRequest(vm="ml-2", id=gpu)
    assert (await call_task(lab, "AssignPciDevice", request)).state == SUCCESS
    assert (await lab.power_on("ml-2")).state == SUCCESS
    with pytest.raises(NotFound, match="ml has no PCI device"):
        await lab.client.remove_pci_device("ml", gpu.upper())


def rm_vswitch(name: str, host: str = "esxi-01") -> pb.RemoveHostVirtualSwitchRequest:
    return pb.RemoveHostVirtualSwitchRequest(host=host, name=name)


def rm_port_group(name: str, host: str = "esxi-01") -> pb.RemoveHostPortGroupRequest:
    return pb.RemoveHostPortGroupRequest(host=host, name=name)


async def network_names(lab: Lab, host: str = "esxi-01") -> tuple[list[str], list[str]]:
    network = await lab.client.host_network(host)
    return [v.name for v in network.vswitches], [p.name for p in network.port_groups]


async def test_a_port_group_in_use_by_any_vm_is_not_removed(lab: Lab):
    await lab.client.add_port_group("esxi-01", "Prod", vswitch="vSwitch0", vlan=10)
    assert (await create(lab, "off", nics=[nic("Prod")])).state == SUCCESS
    assert (await create(lab, "on", nics=[nic(), nic("Prod")])).state == SUCCESS
    assert (await lab.power_on("on")).state == SUCCESS
    remove = rm_port_group("Prod")
    before, events = await network_names(lab), len(await lab.events())
    with pytest.raises(ResourceInUse, match=r"off \(ethernet0\), on \(ethernet1\)"):
        await lab.client.call("RemovePortGroup", remove)
    assert await network_names(lab) == before and len(await lab.events()) == events
    assert (await lab.destroy("off")).state == SUCCESS
    nic_gone = pb.RemoveVmNicRequest(vm="on", nic="ethernet1")
    assert (await call_task(lab, "RemoveVmNic", nic_gone)).state == SUCCESS
    network = await lab.client.call("RemovePortGroup", remove)
    assert network.host == "esxi-01" and "Prod" not in [p.name for p in network.port_groups]
    event = (await lab.events())[-1]
    assert (event.type, event.host) == ("HostPortGroupRemovedEvent", "esxi-01")
    assert "'Prod'" in event.message
    # A VM cannot be given an adapter on it any more.
    failed = await call_task(lab, "AddVmNic", pb.AddVmNicRequest(vm="on", nic=nic("Prod")))
    assert (failed.state, failed.error.name) == (ERROR, "NotFound")


async def test_a_vswitch_is_removed_once_it_has_no_port_groups_and_frees_its_uplinks(lab: Lab):
    await lab.client.add_virtual_switch("esxi-01", "vSwitch1", uplinks=["vmnic1", "vmnic2"])
    await lab.client.add_port_group("esxi-01", "Storage", vswitch="vSwitch1")
    remove = rm_vswitch("vSwitch1")
    with pytest.raises(ResourceInUse, match="port groups 'Storage'"):
        await lab.client.call("RemoveVirtualSwitch", remove)
    await lab.client.remove_port_group("esxi-01", "Storage")
    network = await lab.client.call("RemoveVirtualSwitch", remove)
    assert [v.name for v in network.vswitches] == ["vSwitch0"]
    assert (await lab.events())[-1].type == "HostVirtualSwitchRemovedEvent"
    network = await lab.client.add_virtual_switch("esxi-01", "vSwitch2", uplinks=["vmnic2"])
    assert [(v.name, list(v.uplinks)) for v in network.vswitches] == [
        ("vSwitch0", ["vmnic0"]),
        ("vSwitch2", ["vmnic2"]),
    ]


@pytest.mark.parametrize(
    ("method", "request_", "fault", "words"),
    [
        ("RemoveVirtualSwitch", rm_vswitch("vSwitch0"), ResourceInUse, "management vSwitch"),
        ("RemoveVirtualSwitch", rm_vswitch("vSwitch7"), NotFound, "vSwitch7"),
        ("RemoveVirtualSwitch", rm_vswitch(""), InvalidArgument, "name the vSwitch"),
        ("RemoveVirtualSwitch", rm_vswitch("vSwitch1", "esxi-09"), NotFound, "esxi-09"),
        ("RemovePortGroup", rm_port_group("Management Network"), ResourceInUse, "vmk0"),
        ("RemovePortGroup", rm_port_group("Prod"), NotFound, "Prod"),
        ("RemovePortGroup", rm_port_group(""), InvalidArgument, "port group name"),
        ("RemovePortGroup", rm_port_group("a/b"), InvalidArgument, "'/'"),
    ],
)  # fmt: skip
async def test_bad_network_removals_are_refused_and_change_nothing(
    lab: Lab, method, request_, fault, words
):
    before, events = await network_names(lab), len(await lab.events())
    with pytest.raises(fault, match=words):
        await lab.client.call(method, request_)
    assert await network_names(lab) == before and len(await lab.events()) == events
