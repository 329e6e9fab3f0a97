"""hostd's VMkernel calls: VM resources and vNICs through RegisterVm/ReconfigureVm,
admission control, statistics, memory settings, standard switches and frames between
two hosts over the physical switch, DirectPath devices, the guest's SCSI scan, and
removing vSwitches, port groups and a running VM's vNIC."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from vsim import dispatch
from vsim.clock import SimClock
from vsim.fabric.physical_switch import PhysicalSwitch
from vsim.faults import (
    AlreadyExists,
    InsufficientResourcesFault,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    ResourceInUse,
)
from vsim.host.boot import LocalDisk, boot_host
from vsim.host.hostd.accounts import MemoryAccountStore
from vsim.host.hostd.esx_conf import FileConfigStore, MemoryConfigStore
from vsim.host.kernel.vmkernel import HostKernel
from vsim.memory_settings import MemorySettings
from vsim.network_messages import frame_from_proto, frame_to_proto
from vsim.passwords import hash_password
from vsim.runtime import Runtime
from vsim.security_policy import STANDARD_SWITCH_SECURITY, SecurityPolicy
from vsim.spec import HostSpec
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb

ROOT_PASSWORD = "Root-Pass-0123"
QUIET = kpb.GuestMemoryWorkload(working_set_pct=1, boot_touch_pct=1, dirty_rate=0, touch_rate=0)


class Host:
    def __init__(self, name: str, clock: SimClock, swap: Path) -> None:
        spec = HostSpec(name, cpu_cores=4, cpu_mhz=2000, memory_mb=8192)
        disk = LocalDisk(MemoryAccountStore(), MemoryConfigStore(), swap / name)
        self.hostd = boot_host(
            spec, disk, hash_password(ROOT_PASSWORD), Runtime.simulated(clock, 0), None
        )
        self.session = self.hostd.accounts.login("root", ROOT_PASSWORD)

    async def __call__(self, method: str, request):
        return await dispatch.call(self.hostd.table, method, request, self.session)

    async def register(
        self, name: str, nics=(), memory_mb: int = 1024, cpus: int = 1, **resources
    ) -> None:
        vm = vm_message(name, nics, memory_mb, cpus, **resources)
        await self("RegisterVm", hpb.RegisterVmRequest(vm=vm))

    async def power_on(self, name: str) -> hpb.HostVm:
        return (await self("PowerOnVm", hpb.HostVmRequest(name=name))).vm


def vm_message(name: str, nics=(), memory_mb: int = 1024, cpus: int = 1, **resources):
    resources.setdefault("memory_workload", QUIET)
    return hpb.HostVm(
        name=name,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
        cpus=cpus,
        memory_mb=memory_mb,
        resources=kpb.VmResources(**resources),
        nics=list(nics),
    )


def nic(port_group: str = "VM Network", mac: str = "00:50:56:80:00:01", **kw) -> kpb.VmNic:
    return kpb.VmNic(name=kw.pop("name", "ethernet0"), port_group=port_group, mac=mac, **kw)


def add_port_group(name: str, vlan: int) -> hpb.AddPortGroupRequest:
    return hpb.AddPortGroupRequest(
        port_group=kpb.PortGroup(name=name, vswitch="vSwitch0", vlan=vlan)
    )


@pytest.fixture
def hosts(tmp_path: Path, fast_scrypt: None) -> tuple[Host, Host, SimClock]:
    clock = SimClock(100.0)
    return Host("esxi-01", clock, tmp_path), Host("esxi-02", clock, tmp_path), clock


async def test_a_vm_powers_on_with_its_resources_and_nics(hosts):
    a, _, clock = hosts
    await a.register(
        "web",
        [nic()],
        cpus=2,
        cpu=kpb.ResourceAllocation(reservation=1000, limit=3000),
        memory=kpb.ResourceAllocation(reservation=512),
        cpu_load_pct=100,
    )
    vm = await a.power_on("web")
    assert vm.resources.cpu.limit == 3000 and vm.nics[0].mac == "00:50:56:80:00:01"
    network = await a("GetNetwork", hpb.GetNetworkRequest())
    assert [(n.vm, n.nic, n.port_group) for n in network.nics] == [
        ("web", "ethernet0", "VM Network")
    ]
    await clock.advance(5)  # the kernel runs its periods
    stats = await a("GetHostStats", hpb.GetHostStatsRequest())
    assert stats.cpu.capacity == 8000 and stats.cpu.reserved == 1000
    (web,) = stats.vms
    assert web.cpu.demand == 4000  # 2 vCPUs fully busy
    assert web.cpu.usage == 3000  # held to its limit
    assert web.memory.granted > 0
    assert stats.memory.total == 8192
    assert stats.memory_settings.share_force_salting == 2


async def test_reservations_that_do_not_fit_are_refused_and_change_nothing(hosts):
    a, _, _ = hosts
    await a.register("big", cpu=kpb.ResourceAllocation(reservation=6000))
    await a.register("second", cpu=kpb.ResourceAllocation(reservation=3000))
    await a.power_on("big")
    with pytest.raises(InsufficientResourcesFault):
        await a.power_on("second")
    assert a.hostd.kernel.cpu.vms() == ("big",)
    assert a.hostd.kernel.memory.powered_on() == ["big"]
    wanted = vm_message("big", cpu=kpb.ResourceAllocation(reservation=9000))
    with pytest.raises(InsufficientResourcesFault):
        await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=wanted))
    assert a.hostd.kernel.cpu.allocation("big").reservation == 6000
    bad = vm_message("big", memory=kpb.ResourceAllocation(reservation=512, limit=256))
    with pytest.raises(InvalidArgument, match="below the reservation"):
        await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=bad))
    zero = vm_message("big", cpu=kpb.ResourceAllocation(shares=-1))
    with pytest.raises(InvalidArgument):
        await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=zero))
    assert a.hostd.kernel.vm("big").resources.memory.limit_mb == -1


async def test_reconfigure_applies_limits_live_and_salt_at_the_next_power_on(hosts):
    a, _, clock = hosts
    await a.register("app", cpu_load_pct=100)
    await a.power_on("app")
    changed = vm_message(
        "app", cpu=kpb.ResourceAllocation(limit=500), cpu_load_pct=100, page_sharing_salt="s"
    )
    vm = (await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=changed))).vm
    assert vm.resources.page_sharing_salt == "s"
    await clock.advance(2)
    stats = await a("GetHostStats", hpb.GetHostStatsRequest())
    assert stats.vms[0].cpu.usage == 500


async def test_host_memory_settings(hosts):
    a, _, _ = hosts
    update = hpb.UpdateMemorySettingsRequest(share_force_salting=0, page_sharing_disabled=True)
    settings = await a("UpdateMemorySettings", update)
    assert (settings.share_force_salting, settings.page_sharing_disabled) == (0, True)
    with pytest.raises(InvalidArgument):
        await a("UpdateMemorySettings", hpb.UpdateMemorySettingsRequest(share_force_salting=3))
    assert a.hostd.kernel.memory.settings.share_force_salting == 0


async def test_port_groups_must_exist_and_macs_be_unique_at_power_on(hosts):
    a, _, _ = hosts
    await a.register("lost", [nic("No Such Network")])
    with pytest.raises(NotFound, match="No Such Network"):
        await a.power_on("lost")
    assert a.hostd.kernel.cpu.vms() == ()
    await a.register("one", [nic(mac="00:50:56:80:00:07")])
    await a.register("two", [nic(mac="00:50:56:80:00:07")])
    await a.power_on("one")
    with pytest.raises((AlreadyExists, ResourceInUse, InvalidArgument)):
        await a.power_on("two")
    assert a.hostd.kernel.memory.powered_on() == ["one"]


async def test_bad_network_changes_are_refused_and_change_nothing(hosts):
    a, _, _ = hosts
    before = await a("GetNetwork", hpb.GetNetworkRequest())
    with pytest.raises(InvalidArgument):
        await a(
            "AddPortGroup",
            hpb.AddPortGroupRequest(
                port_group=kpb.PortGroup(name="x", vswitch="vSwitch0", vlan=4096)
            ),
        )
    with pytest.raises(NotFound):
        await a(
            "AddVirtualSwitch",
            hpb.AddVirtualSwitchRequest(vswitch=kpb.VirtualSwitch(name="vs", uplinks=["eth9"])),
        )
    with pytest.raises((AlreadyExists, InvalidArgument, ResourceInUse)):  # vmnic0 is vSwitch0's
        await a(
            "AddVirtualSwitch",
            hpb.AddVirtualSwitchRequest(vswitch=kpb.VirtualSwitch(name="vs", uplinks=["vmnic0"])),
        )
    assert await a("GetNetwork", hpb.GetNetworkRequest()) == before


async def two_hosts_on_vlan(a: Host, b: Host) -> PhysicalSwitch:
    for host in (a, b):
        await host(
            "AddPortGroup",
            hpb.AddPortGroupRequest(
                port_group=kpb.PortGroup(name="Prod", vswitch="vSwitch0", vlan=10)
            ),
        )
        await host(
            "AddPortGroup",
            hpb.AddPortGroupRequest(
                port_group=kpb.PortGroup(name="Dev", vswitch="vSwitch0", vlan=20)
            ),
        )
    switch = PhysicalSwitch()
    switch.connect("esxi-01", "vmnic0")
    switch.connect("esxi-02", "vmnic0")
    await a.register("a1", [nic("Prod", "00:50:56:80:00:a1")])
    await b.register("b1", [nic("Prod", "00:50:56:80:00:b1")])
    await b.register("b2", [nic("Dev", "00:50:56:80:00:b2")])
    for host, name in ((a, "a1"), (b, "b1"), (b, "b2")):
        await host.power_on(name)
    return switch


async def run_frame(a: Host, hosts: dict[str, Host], switch: PhysicalSwitch, frame: kpb.Frame):
    sent = await a("SendFrame", hpb.SendFrameRequest(vm="a1", nic="ethernet0", frame=frame))
    received = [(r.host, r.vm) for r in sent.received]
    drops = [d.reason for d in sent.dropped]
    for out in sent.sent:
        forwarding = switch.forward("esxi-01", out.uplink, frame_from_proto(out.frame))
        drops += [d.reason for d in forwarding.dropped]
        for host, uplink, wire in forwarding.deliveries:
            there = await hosts[host](
                "ReceiveFrame", hpb.ReceiveFrameRequest(uplink=uplink, frame=frame_to_proto(wire))
            )
            received += [(r.host, r.vm) for r in there.received]
            drops += [d.reason for d in there.dropped]
    return received, drops


async def test_frames_cross_the_physical_switch_within_their_vlan_only(hosts):
    a, b, _ = hosts
    switch = await two_hosts_on_vlan(a, b)
    both = {"esxi-01": a, "esxi-02": b}
    to_b1 = kpb.Frame(dst_mac="00:50:56:80:00:b1", protocol="tcp", dst_port=443)
    received, _ = await run_frame(a, both, switch, to_b1)
    assert received == [("esxi-02", "b1")]
    to_b2 = kpb.Frame(dst_mac="00:50:56:80:00:b2")
    received, _ = await run_frame(a, both, switch, to_b2)
    assert received == []  # b2 is on VLAN 20
    broadcast = kpb.Frame(dst_mac="ff:ff:ff:ff:ff:ff")
    received, _ = await run_frame(a, both, switch, broadcast)
    assert received == [("esxi-02", "b1")]
    uplinks = {u.uplink: u for u in (await a("GetNetwork", hpb.GetNetworkRequest())).uplinks}
    assert (uplinks["vmnic0"].vswitch, uplinks["vmnic0"].link_up) == ("vSwitch0", True)
    assert uplinks["vmnic0"].stats.tx == 3  # both unicasts (no local port) and the broadcast
    assert uplinks["vmnic1"].vswitch == "" and uplinks["vmnic1"].stats.tx == 0
    switch.configure("esxi-02", "vmnic0", vlans=[20])  # the trunk no longer carries VLAN 10
    received, drops = await run_frame(a, both, switch, to_b1)
    assert received == [] and "vlan" in drops


async def test_vnic_firewall_rules_come_with_the_vm_configuration(hosts):
    a, b, _ = hosts
    switch = await two_hosts_on_vlan(a, b)
    deny = kpb.FirewallRule(action="deny", direction="in", protocol="tcp", port="22")
    guarded = vm_message("b1", [nic("Prod", "00:50:56:80:00:b1", firewall=[deny])])
    await b("ReconfigureVm", hpb.ReconfigureVmRequest(vm=guarded))
    both = {"esxi-01": a, "esxi-02": b}
    ssh = kpb.Frame(dst_mac="00:50:56:80:00:b1", protocol="tcp", dst_port=22, dst_ip="10.0.0.2")
    received, drops = await run_frame(a, both, switch, ssh)
    assert received == [] and "firewall" in drops
    https = kpb.Frame(dst_mac="00:50:56:80:00:b1", protocol="tcp", dst_port=443)
    received, _ = await run_frame(a, both, switch, https)
    assert received == [("esxi-02", "b1")]
    stats = await b("GetHostStats", hpb.GetHostStatsRequest())
    b1 = next(v for v in stats.vms if v.name == "b1")
    assert b1.nics["ethernet0"].dropped["firewall"] == 1


async def test_directpath_devices_go_to_one_vm_with_all_its_memory_reserved(hosts):
    a, _, _ = hosts
    devices = (await a("ListPciDevices", hpb.ListPciDevicesRequest())).devices
    gpu = devices[0].id
    with pytest.raises(InvalidState):  # not enabled for passthrough
        await a("RegisterVm", hpb.RegisterVmRequest(vm=with_pci(vm_message("ml-1"), gpu)))
    assert a.hostd.kernel.vm_count() == 0
    await a("UpdatePassthruConfig", hpb.UpdatePassthruRequest(id=gpu, enabled=True))
    await a("RegisterVm", hpb.RegisterVmRequest(vm=with_pci(vm_message("ml-1"), gpu)))
    with pytest.raises(ResourceInUse, match="ml-1"):
        await a("RegisterVm", hpb.RegisterVmRequest(vm=with_pci(vm_message("ml-2"), gpu)))
    with pytest.raises(InvalidState, match="reservation"):
        await a.power_on("ml-1")
    full = with_pci(vm_message("ml-1", memory=kpb.ResourceAllocation(reservation=1024)), gpu)
    await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=full))
    assert (await a.power_on("ml-1")).pci_devices == [gpu]
    listed = (await a("ListPciDevices", hpb.ListPciDevicesRequest())).devices
    assert next(d for d in listed if d.id == gpu).vm == "ml-1"
    with pytest.raises(InvalidPowerState):
        await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=vm_message("ml-1")))


def with_pci(vm: hpb.HostVm, *devices: str) -> hpb.HostVm:
    vm.pci_devices.extend(devices)
    return vm


async def test_a_guest_without_disks_finds_no_luns(hosts):
    a, _, _ = hosts
    await a.register("empty")
    with pytest.raises(InvalidPowerState):
        await a("GuestReportLuns", hpb.HostVmRequest(name="empty"))
    await a.power_on("empty")
    luns = await a("GuestReportLuns", hpb.HostVmRequest(name="empty"))
    assert list(luns.luns) == []


async def test_host_configuration_survives_a_reboot(tmp_path: Path, fast_scrypt: None):
    """vSwitches, port groups, memory settings and passthrough are kept in esx.conf."""
    store = FileConfigStore(tmp_path / "esx.conf.json")
    spec = HostSpec("esxi-01", cpu_cores=4, memory_mb=8192)
    kernel = HostKernel(spec, SimClock(), tmp_path / "swap", store)
    kernel.add_vswitch("vSwitch1", ("vmnic1",), STANDARD_SWITCH_SECURITY)
    kernel.add_port_group("Prod", "vSwitch1", 10, SecurityPolicy(allow_promiscuous=True))
    kernel.set_memory_settings(MemorySettings(share_force_salting=0, page_sharing=False))
    gpu = kernel.pci.devices()[0].id
    kernel.set_passthru(gpu, True)
    with pytest.raises(InvalidArgument):
        kernel.add_port_group("Bad", "vSwitch1", 4096, SecurityPolicy())
    rebooted = HostKernel(spec, SimClock(), tmp_path / "swap", FileConfigStore(store.path))
    assert rebooted.network.vswitch("vSwitch1").uplinks == ("vmnic1",)
    prod = rebooted.network.port_group("Prod")
    assert (prod.vswitch, prod.vlan, prod.security.allow_promiscuous) == ("vSwitch1", 10, True)
    assert [p.name for p in rebooted.network.port_groups()] == [
        p.name for p in kernel.network.port_groups()
    ]
    assert rebooted.memory.settings == kernel.memory.settings
    assert [i.id for i in rebooted.pci.passthru_info() if i.enabled] == [gpu]
    fresh = HostKernel(spec, SimClock(), tmp_path / "swap2")
    assert {p.name for p in fresh.network.port_groups()} == {"Management Network", "VM Network"}


async def test_a_refused_directpath_change_changes_nothing(hosts):
    """One device not enabled in the request: nothing is assigned, and what a VM had
    stays its own (a half-done change once left a device on two VMs)."""
    a, _, _ = hosts
    gpu, other = [d.id for d in (await a("ListPciDevices", hpb.ListPciDevicesRequest())).devices][
        :2
    ]
    await a("UpdatePassthruConfig", hpb.UpdatePassthruRequest(id=gpu, enabled=True))
    with pytest.raises(InvalidState, match="not enabled"):
        await a("RegisterVm", hpb.RegisterVmRequest(vm=with_pci(vm_message("vm1"), gpu, other)))
    assert a.hostd.kernel.pci.holder(gpu) is None
    await a("RegisterVm", hpb.RegisterVmRequest(vm=with_pci(vm_message("vm3"), gpu)))
    with pytest.raises(InvalidState, match="not enabled"):
        await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=with_pci(vm_message("vm3"), other)))
    assert a.hostd.kernel.pci.holder(gpu) == "vm3"
    assert a.hostd.kernel.vm("vm3").pci_devices == (gpu,)
    with pytest.raises(ResourceInUse):
        await a("RegisterVm", hpb.RegisterVmRequest(vm=with_pci(vm_message("vm4"), gpu)))
    assert a.hostd.kernel.vm_count() == 1


async def test_the_guests_cpu_load_follows_a_reconfigure(hosts):
    a, _, clock = hosts
    await a.register("job", cpus=2)
    await a.power_on("job")
    busier = vm_message("job", cpus=2, cpu_load_pct=50)
    await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=busier))
    await clock.advance(2)
    stats = await a("GetVmStats", hpb.HostVmRequest(name="job"))
    assert stats.cpu.demand == 2 * 2000 * 0.5


# removing what was added


def names(network: kpb.HostNetwork) -> tuple[list[str], list[str]]:
    return [v.name for v in network.vswitches], [p.name for p in network.port_groups]


async def test_a_port_group_any_vm_has_an_adapter_on_stays_until_the_adapter_goes(hosts):
    """Running or not, a registered VM's adapter keeps its port group: it could not
    connect again (vSphere refuses with ResourceInUse, naming the VMs)."""
    a, _, _ = hosts
    await a("AddPortGroup", add_port_group("Prod", 10))
    await a.register("off", [nic("Prod", "00:50:56:80:00:01")])
    await a.register("on", [nic(), nic("Prod", "00:50:56:80:00:02", name="ethernet1")])
    await a.power_on("on")
    before = await a("GetNetwork", hpb.GetNetworkRequest())
    with pytest.raises(ResourceInUse, match=r"off \(ethernet0\), on \(ethernet1\)") as refused:
        await a("RemovePortGroup", hpb.RemovePortGroupRequest(name="Prod"))
    assert refused.value.properties == {"port_group": "Prod", "vms": "off,on"}
    assert await a("GetNetwork", hpb.GetNetworkRequest()) == before
    await a("UnregisterVm", hpb.HostVmRequest(name="off"))
    with pytest.raises(ResourceInUse, match="on \\(ethernet1\\)"):
        await a("RemovePortGroup", hpb.RemovePortGroupRequest(name="Prod"))
    await a("ReconfigureVm", hpb.ReconfigureVmRequest(vm=vm_message("on", [nic()])))
    network = await a("RemovePortGroup", hpb.RemovePortGroupRequest(name="Prod"))
    assert "Prod" not in names(network)[1]
    with pytest.raises(NotFound, match="Prod"):
        await a("RemovePortGroup", hpb.RemovePortGroupRequest(name="Prod"))


async def test_the_management_network_and_its_vswitch_are_not_removed(hosts):
    a, _, _ = hosts
    before = await a("GetNetwork", hpb.GetNetworkRequest())
    with pytest.raises(ResourceInUse, match="vmk0"):
        await a("RemovePortGroup", hpb.RemovePortGroupRequest(name="Management Network"))
    await a("RemovePortGroup", hpb.RemovePortGroupRequest(name="VM Network"))
    with pytest.raises(ResourceInUse, match="management vSwitch of esxi-01"):
        await a("RemoveVirtualSwitch", hpb.RemoveVirtualSwitchRequest(name="vSwitch0"))
    network = await a("GetNetwork", hpb.GetNetworkRequest())
    assert names(network) == (["vSwitch0"], ["Management Network"])
    assert list(network.vswitches[0].uplinks) == list(before.vswitches[0].uplinks)


async def test_removing_a_vswitch_frees_its_uplinks_and_survives_a_reboot(
    tmp_path: Path, fast_scrypt: None
):
    store = FileConfigStore(tmp_path / "esx.conf.json")
    spec = HostSpec("esxi-01", cpu_cores=4, memory_mb=8192)
    kernel = HostKernel(spec, SimClock(), tmp_path / "swap", store)
    kernel.add_vswitch("vSwitch1", ("vmnic1", "vmnic2"), STANDARD_SWITCH_SECURITY)
    kernel.add_port_group("Prod", "vSwitch1", 10, SecurityPolicy())
    kernel.add_port_group("Dev", "vSwitch1", 20, SecurityPolicy())
    kernel.remove_port_group("Dev")
    with pytest.raises(ResourceInUse, match="still has port groups 'Prod'"):
        kernel.remove_vswitch("vSwitch1")
    kernel.remove_port_group("Prod")
    assert kernel.remove_vswitch("vSwitch1").uplinks == ("vmnic1", "vmnic2")
    with pytest.raises(NotFound, match="vSwitch1"):
        kernel.remove_vswitch("vSwitch1")
    kernel.add_vswitch("vSwitch2", ("vmnic2",), STANDARD_SWITCH_SECURITY)  # free again
    rebooted = HostKernel(spec, SimClock(), tmp_path / "swap", FileConfigStore(store.path))
    assert [(v.name, v.uplinks) for v in rebooted.network.vswitches()] == [
        ("vSwitch0", ("vmnic0",)),
        ("vSwitch2", ("vmnic2",)),
    ]
    assert {p.name for p in rebooted.network.port_groups()} == {"Management Network", "VM Network"}


async def test_a_nic_removed_from_a_running_vm_loses_its_port_and_firewall(hosts):
    a, b, _ = hosts
    switch = await two_hosts_on_vlan(a, b)
    deny = kpb.FirewallRule(action="deny", direction="in", protocol="tcp", port="22")
    two = [
        nic("Prod", "00:50:56:80:00:b1"),
        nic("Prod", "00:50:56:80:00:b3", name="ethernet1", firewall=[deny]),
    ]
    await b("ReconfigureVm", hpb.ReconfigureVmRequest(vm=vm_message("b1", two)))
    both = {"esxi-01": a, "esxi-02": b}
    to_b3 = kpb.Frame(dst_mac="00:50:56:80:00:b3", protocol="tcp", dst_port=443)
    assert (await run_frame(a, both, switch, to_b3))[0] == [("esxi-02", "b1")]
    one = vm_message("b1", [nic("Prod", "00:50:56:80:00:b1")])
    vm = (await b("ReconfigureVm", hpb.ReconfigureVmRequest(vm=one))).vm
    assert vm.powered_on and [n.name for n in vm.nics] == ["ethernet0"]
    network = await b("GetNetwork", hpb.GetNetworkRequest())
    assert [(n.vm, n.nic) for n in network.nics if n.vm == "b1"] == [("b1", "ethernet0")]
    received, drops = await run_frame(a, both, switch, to_b3)
    assert received == [] and drops == ["no_port"]
    with pytest.raises(NotFound, match="b1/ethernet1"):
        await b("SendFrame", hpb.SendFrameRequest(vm="b1", nic="ethernet1", frame=to_b3))
    # Its MAC is free on the vSwitch: another VM's adapter may have it, firewall-free.
    await b.register("b4", [nic("Prod", "00:50:56:80:00:b3")])
    await b.power_on("b4")
    ssh = kpb.Frame(dst_mac="00:50:56:80:00:b3", protocol="tcp", dst_port=22)
    assert (await run_frame(a, both, switch, ssh))[0] == [("esxi-02", "b4")]
