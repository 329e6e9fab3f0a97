"""Translation between the VMkernel's cores and the kernel.proto messages.

hostd's RPCs are thin: they validate who calls, translate here, and ask the kernel.
Every message field is checked on the way in by the core it becomes (a dataclass
that validates itself); nothing here decides what is allowed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vsim.ethernet_frame import PHYSICAL_NICS
from vsim.faults import NotFound
from vsim.host.kernel.memory.memsched import VmMemoryStats
from vsim.host.kernel.net.forwarding import Delivery
from vsim.host.kernel.net.vswitch import (
    HostNetworkSystem,
    PortGroup,
    VirtualSwitch,
    Vnic,
)
from vsim.host.kernel.vmkernel import (
    DiskConfig,
    HostKernel,
    NicConfig,
    PoolUsage,
    ResourcePoolInfo,
    VmConfig,
)
from vsim.host.storage.disk_scheduler import DiskScheduler
from vsim.network_messages import (
    firewall_from_proto,
    firewall_to_proto,
    frame_to_proto,
    security_to_proto,
)
from vsim.resource_allocation import Unit
from vsim.resource_messages import (
    pool_allocation_to_proto,
    resources_from_proto,
    resources_to_proto,
)
from vsim.security_policy import SecurityPolicy
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as pb
from vsim.v1 import kernel_pb2 as kpb
from vsim.vm_resources import VmResources

if TYPE_CHECKING:
    from vsim.host.vm.vmx import VmxProcess


def nic_from_proto(message: kpb.VmNic) -> NicConfig:
    firewall = firewall_from_proto(list(message.firewall), message.firewall_default)
    return NicConfig(message.name, message.port_group, message.mac, firewall)


def nic_to_proto(nic: NicConfig) -> kpb.VmNic:
    rules, default = firewall_to_proto(nic.firewall)
    return kpb.VmNic(
        name=nic.name,
        port_group=nic.port_group,
        mac=nic.mac,
        firewall=rules,
        firewall_default=default,
    )


# -- resource pools ----------------------------------------------------------------------


def _pool_usage_to_proto(usage: PoolUsage) -> kpb.PoolUsage:
    return kpb.PoolUsage(
        reserved=usage.reserved, unreserved=usage.unreserved, entitlement=usage.entitlement
    )


def resource_pool_to_proto(pool: ResourcePoolInfo) -> kpb.ResourcePool:
    return kpb.ResourcePool(
        name=pool.name,
        parent=pool.parent,
        cpu=pool_allocation_to_proto(pool.cpu.allocation, Unit.MHZ),
        memory=pool_allocation_to_proto(pool.memory.allocation, Unit.MB),
        cpu_usage=_pool_usage_to_proto(pool.cpu),
        memory_usage=_pool_usage_to_proto(pool.memory),
        vms=[kpb.PoolVm(name=vm, powered_on=vm in pool.powered_on) for vm in pool.vms],
    )


def resource_pools_to_proto(kernel: HostKernel, moved: tuple[str, ...] = ()) -> kpb.ResourcePools:
    return kpb.ResourcePools(
        host=kernel.spec.name,
        pools=[resource_pool_to_proto(p) for p in kernel.resource_pools()],
        moved_vms=list(moved),
    )


# -- network ---------------------------------------------------------------------------


def vswitch_to_proto(vswitch: VirtualSwitch) -> kpb.VirtualSwitch:
    return kpb.VirtualSwitch(
        name=vswitch.name,
        uplinks=list(vswitch.uplinks),
        security=security_to_proto(vswitch.security),
        active_uplink=vswitch.active_uplink or "",
    )


def port_group_to_proto(port_group: PortGroup, computed: SecurityPolicy) -> kpb.PortGroup:
    return kpb.PortGroup(
        name=port_group.name,
        vswitch=port_group.vswitch,
        vlan=port_group.vlan,
        security=security_to_proto(port_group.security),
        computed_security=security_to_proto(computed),
    )


def network_to_proto(kernel: HostKernel) -> kpb.HostNetwork:
    network = kernel.network
    return kpb.HostNetwork(
        host=kernel.spec.name,
        vswitches=[vswitch_to_proto(v) for v in network.vswitches()],
        port_groups=[
            port_group_to_proto(p, network.effective_security(p.name))
            for p in network.port_groups()
        ],
        nics=[
            kpb.ConnectedNic(
                vm=n.vm,
                nic=n.nic,
                port_group=n.port_group,
                mac=n.mac,
                effective_mac=n.effective_mac,
                stats=nic_stats(network.stats(n.vm, n.nic)),
            )
            for n in network.vnics()
        ],
        physical_nics=list(PHYSICAL_NICS),
        uplinks=[uplink_to_proto(network, uplink, on) for uplink, on in uplinks(network)],
    )


def uplinks(network: HostNetworkSystem) -> list[tuple[str, str]]:
    """Each physical NIC and the vSwitch it is on ("" for none)."""
    on = {u: v.name for v in network.vswitches() for u in v.uplinks}
    return [(uplink, on.get(uplink, "")) for uplink in PHYSICAL_NICS]


def uplink_to_proto(network: HostNetworkSystem, uplink: str, vswitch: str) -> kpb.UplinkStats:
    try:
        stats = nic_stats(network.uplink_stats(uplink))
    except NotFound:  # never on a vSwitch: nothing has crossed it
        stats = kpb.NicStats()
    return kpb.UplinkStats(
        uplink=uplink, vswitch=vswitch, link_up=network.link_up(uplink), stats=stats
    )


def datastore_io(scheduler: DiskScheduler, datastore: str) -> kpb.DatastoreIo:
    return kpb.DatastoreIo(
        datastore=datastore,
        latency_ms=scheduler.latency_ms(datastore),
        threshold_ms=scheduler.congestion_threshold_ms(datastore),
        congested=scheduler.congested(datastore),
        queue_depth=scheduler.device_queue_depth(datastore),
        outstanding=scheduler.outstanding(datastore),
    )


def nic_stats(stats) -> kpb.NicStats:
    return kpb.NicStats(tx=stats.tx, rx=stats.rx, dropped=dict(stats.dropped))


def connected_nic_to_proto(network: HostNetworkSystem, vnic: Vnic) -> kpb.ConnectedNic:
    """One connected adapter's port: its configured and effective MAC, its counters."""
    return kpb.ConnectedNic(
        vm=vnic.vm,
        nic=vnic.nic,
        port_group=vnic.port_group,
        mac=vnic.mac,
        effective_mac=vnic.effective_mac,
        stats=nic_stats(network.stats(vnic.vm, vnic.nic)),
    )


def delivery_to_proto(host: str, delivery: Delivery) -> kpb.HostDelivery:
    return kpb.HostDelivery(
        received=[
            kpb.FrameReception(host=host, vm=vnic.vm, nic=vnic.nic, frame=frame_to_proto(f))
            for vnic, f in delivery.received
        ],
        sent=[kpb.UplinkFrame(uplink=u, frame=frame_to_proto(f)) for u, f in delivery.sent],
        dropped=[
            kpb.FrameDrop(host=host, where=d.where, reason=d.reason, detail=d.detail)
            for d in delivery.dropped
        ],
    )


# -- statistics ----------------------------------------------------------------------------


def host_stats_to_proto(
    kernel: HostKernel, datastores: list[kpb.DatastoreIo] | None = None
) -> kpb.HostStats:
    per_vm = kernel.memory.all_vm_stats()
    memory = kernel.memory.host_stats(per_vm)
    cpu = kernel.cpu.host_stats()
    settings = kernel.memory.settings
    return kpb.HostStats(
        host=kernel.spec.name,
        memory=kpb.HostMemoryStats(
            **{
                name: getattr(memory, name)
                for name in kpb.HostMemoryStats.DESCRIPTOR.fields_by_name
                if name not in ("last_scan_merged",)
            },
            last_scan_merged=memory.last_scan.merged if memory.last_scan else 0,
        ),
        cpu=kpb.HostCpuStats(
            capacity=cpu.capacity_mhz,
            reserved=cpu.reserved_mhz,
            demand=cpu.demand_mhz,
            usage=cpu.usage_mhz,
        ),
        memory_settings=kpb.HostMemorySettings(
            share_force_salting=settings.share_force_salting,
            page_sharing_disabled=not settings.page_sharing,
            share_scan_period=settings.share_scan_period,
        ),
        vms=[vm_stats_to_proto(kernel, name, stats) for name, stats in per_vm.items()],
        datastores=datastores or [],
    )


def vm_stats_to_proto(
    kernel: HostKernel, name: str, memory: VmMemoryStats | None = None
) -> kpb.VmStats:
    memory = memory or kernel.memory.vm_stats(name)
    cpu = kernel.cpu.vm_stats(name)
    vm = kernel.vm(name)
    return kpb.VmStats(
        name=name,
        host=kernel.spec.name,
        memory=kpb.MemoryStats(
            **{name: getattr(memory, name) for name in kpb.MemoryStats.DESCRIPTOR.fields_by_name}
        ),
        cpu=kpb.CpuStats(
            demand=cpu.demand_mhz,
            entitlement=cpu.entitlement_mhz,
            usage=cpu.usage_mhz,
            ready_pct=cpu.ready_percent,
            vcpu_run_share=kernel.memory.speed(name),
        ),
        nics={nic.name: nic_stats(kernel.network.stats(name, nic.name)) for nic in vm.nics},
    )


def vm_to_proto(vm: VmConfig, vmx: VmxProcess | None = None) -> pb.HostVm:
    return pb.HostVm(
        name=vm.name,
        uuid=vm.uuid,
        cpus=vm.cpus,
        memory_mb=vm.memory_mb,
        powered_on=vm.powered_on,
        guest_os=vm.guest_os,
        datastore=vm.datastore,
        disks=[
            common_pb2.VirtualDisk(path=d.path, capacity_bytes=d.capacity_bytes, parent=d.parent)
            for d in vm.disks
        ],
        guest_write_iops=vm.guest_write_iops,
        guest_writes_acked=vmx.acked_seq if vmx else 0,
        guest_write_retries=vmx.write_retries if vmx else 0,
        disks_open=bool(vmx and vmx.disks),
        resources=resources_to_proto(vm.resources),
        nics=[nic_to_proto(n) for n in vm.nics],
        pci_devices=list(vm.pci_devices),
    )


def vm_from_proto(vm: pb.HostVm) -> VmConfig:
    guest_os = vm.guest_os or "otherGuest64"
    return VmConfig(
        vm.name,
        vm.uuid,
        vm.cpus,
        vm.memory_mb,
        guest_os,
        datastore=vm.datastore,
        disks=tuple(DiskConfig(d.path, d.capacity_bytes, d.parent) for d in vm.disks),
        guest_write_iops=vm.guest_write_iops,
        resources=(
            resources_from_proto(vm.resources, guest_os)
            if vm.HasField("resources")
            else VmResources()
        ),
        nics=tuple(nic_from_proto(n) for n in vm.nics),
        pci_devices=tuple(vm.pci_devices),
    )
