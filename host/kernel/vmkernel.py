"""The VMkernel core of one ESXi host.

Owns the host's capacity and its registered VMs with their power state, and the
mechanisms that share the host among them: memory (pmaps, page sharing, reclaim:
memory.py), the CPU scheduler (cpu_scheduler.py), the standard vSwitches
(vswitch.py) and DirectPath devices (passthrough.py). Admission control asks each of
them before a VM powers on, and a refusal changes nothing. Its resource pools are one
hierarchy (`pools`, kept in esx.conf) whose nodes hold a CPU and a memory allocation;
the CPU scheduler and the memory manager each read their resource's view of it, and a
change is checked for both resources before either is applied. Plain Python: no Ray, no
sockets, no wall clock; time comes from the injected `Clock`. Never trusts its caller:
hostd checks who is calling, the kernel checks that what is asked is possible.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from vsim import validate
from vsim.clock import Clock
from vsim.ethernet_frame import PHYSICAL_NICS
from vsim.faults import (
    AlreadyExists,
    DuplicateName,
    InsufficientResourcesFault,
    InvalidArgument,
    InvalidPowerState,
    InvalidState,
    NotFound,
    ResourceInUse,
)
from vsim.host.hostd.esx_conf import (
    ConfigStore,
    MemoryConfigStore,
    memory_config,
    memory_from_config,
    network_config,
    network_from_config,
    resource_pools_config,
    resource_pools_from_config,
)
from vsim.host.kernel.cpu_scheduler import CpuScheduler
from vsim.host.kernel.memory.memsched import MAX_PERIOD, MemoryManager
from vsim.host.kernel.net.vswitch import HostNetworkSystem, PortGroup, VirtualSwitch
from vsim.host.kernel.passthrough import PassthruInfo, PciDevice, PciPassthruSystem
from vsim.host.kernel.resources.pool_tree import PoolTree, ResourceView
from vsim.memory_settings import MemorySettings
from vsim.resource_allocation import (
    ROOT_POOL,
    Allocation,
    PoolConfig,
    Unit,
    check_not_root,
    pool_name,
)
from vsim.security_policy import SecurityPolicy
from vsim.spec import HostSpec
from vsim.vm_resources import VmResources
from vsim.vnic_firewall import VnicFirewall

DEFAULT_VSWITCH = "vSwitch0"
DEFAULT_PORT_GROUPS = ("VM Network", "Management Network")
MANAGEMENT_PORT_GROUP = "Management Network"
"""Where the host's management vmknic (vmk0) is: the address vCenter and HA reach the
host at. ESXi refuses to remove it, and so the vSwitch that carries it."""
PCI_DEVICES = (
    PciDevice("0000:3b:00.0", "NVIDIA Corporation", "GA100 [A100 PCIe 40GB]", 0x10DE, 0x20F1),
    PciDevice("0000:af:00.0", "NVIDIA Corporation", "GA100 [A100 PCIe 40GB]", 0x10DE, 0x20F1),
    PciDevice("0000:5e:00.0", "Samsung Electronics", "NVMe SSD Controller PM173X", 0x144D, 0xA824),
    PciDevice("0000:d8:00.0", "Intel Corporation", "Ethernet Controller E810-C", 0x8086, 0x1592),
)
"""The PCI devices every simulated host has that can be passed through (DirectPath)."""


@dataclass(frozen=True)
class DiskConfig:
    path: str
    """The descriptor's datastore path."""
    capacity_bytes: int
    parent: str = ""


@dataclass(frozen=True)
class NicConfig:
    """A virtual NIC (its .vmx ethernetN keys) and its firewall rules."""

    name: str
    """ethernet0..ethernet9"""
    port_group: str
    mac: str
    firewall: VnicFirewall = field(default_factory=VnicFirewall)


@dataclass(frozen=True)
class PoolUsage:
    """One resource of a pool as it is now (vSphere's ResourcePoolResourceUsage)."""

    allocation: Allocation
    reserved: int
    """reservationUsed: what its child pools and powered-on VMs reserve from it."""
    unreserved: int
    """unreservedForVm: what a new child could still reserve (borrowing from the
    parents through expandable reservations)."""
    entitlement: float
    """What its subtree is entitled to for the current demands (MHz or MB)."""


@dataclass(frozen=True)
class ResourcePoolInfo:
    """A resource pool of the host, its use, and its VMs."""

    name: str
    parent: str
    """Empty for the root."""
    cpu: PoolUsage
    memory: PoolUsage
    vms: tuple[str, ...]
    """The registered VMs whose resources name it (the root: those naming no pool)."""
    powered_on: tuple[str, ...]
    """Those of `vms` that run, drawing on it."""


@dataclass(frozen=True)
class VmConfig:
    """What a host knows of a registered VM."""

    name: str
    uuid: str
    cpus: int
    memory_mb: int
    guest_os: str = "otherGuest64"
    powered_on: bool = False
    datastore: str = ""
    disks: tuple[DiskConfig, ...] = ()
    guest_write_iops: int = 0
    resources: VmResources = field(default_factory=VmResources)
    nics: tuple[NicConfig, ...] = ()
    pci_devices: tuple[str, ...] = ()
    """DirectPath devices assigned to it (PCI ids)."""


LINK_SPEEDS_MBPS = (1000, 10000, 25000, 40000, 100000)
"""The physical NIC speeds a vmknic's link may have."""


@dataclass(frozen=True)
class VmotionNic:
    """vmk1, the host's vMotion VMkernel adapter (on its vMotion network)."""

    vmotion: bool = True
    """Tagged for vMotion: without it the host sends and receives no migration."""
    link_speed_mbps: int = 10000

    def validated(self) -> VmotionNic:
        if self.link_speed_mbps not in LINK_SPEEDS_MBPS:
            raise InvalidArgument(
                f"link_speed_mbps is one of {', '.join(map(str, LINK_SPEEDS_MBPS))}, got "
                f"{self.link_speed_mbps}"
            )
        return self


def default_network(host: str) -> HostNetworkSystem:
    """An ESXi host as installed: vSwitch0 on vmnic0 with the default port groups."""
    network = HostNetworkSystem(host)
    network.add_vswitch(DEFAULT_VSWITCH, (PHYSICAL_NICS[0],))
    for name in DEFAULT_PORT_GROUPS:
        network.add_port_group(name, DEFAULT_VSWITCH)
    return network


def check_nics(vm_name: str, nics: tuple[NicConfig, ...]) -> None:
    names = [nic.name for nic in nics]
    if len(set(names)) != len(names):
        raise InvalidArgument(f"{vm_name} names a network adapter twice: {', '.join(names)}")
    macs = [nic.mac.lower() for nic in nics]
    if len(set(macs)) != len(macs):
        raise InvalidArgument(f"{vm_name} has two network adapters with one MAC address")
    if len(nics) > 10:
        raise InvalidArgument(f"{vm_name} has {len(nics)} network adapters; at most 10")


class HostKernel:
    def __init__(
        self,
        spec: HostSpec,
        clock: Clock,
        swap_dir: Path | None = None,
        config: ConfigStore | None = None,
    ) -> None:
        """`config` is the host's esx.conf: the network, memory settings and
        passthrough devices it boots with and keeps changes in."""
        self.spec = spec.validated()
        self.clock = clock
        self.boot_time = clock.now()
        self._vms: dict[str, VmConfig] = {}
        self._arriving: set[str] = set()
        """VMs whose vMotion to this host is under way (registered, not running)."""
        self._own_swap_dir = swap_dir is None
        self.swap_dir = Path(swap_dir or tempfile.mkdtemp(prefix=f"vsim-{spec.name}-vswp-"))
        """Host-local swap: each powered-on VM's .vswp."""
        for stale in self.swap_dir.glob("*.vswp"):  # of VMs that ran before a crash
            stale.unlink()
        self._config = config or MemoryConfigStore()
        stored = self._config.load()
        settings = memory_from_config(stored["memory"]) if "memory" in stored else None
        self.pools = PoolTree(
            {Unit.MHZ: self.spec.cpu_cores * self.spec.cpu_mhz, Unit.MB: self.spec.memory_mb}
        )
        """The host's resource pools, both resources; the scheduler and the memory
        manager hold its consumers of CPU and of memory."""
        self.memory = MemoryManager(
            self.spec.memory_mb, clock, self.swap_dir, settings, pools=self.pools
        )
        self.cpu = CpuScheduler.for_host(self.spec, self.pools)
        for pool in resource_pools_from_config(stored.get("resource_pools", [])):
            self._add_pool(pool)  # parents were saved before their children
        self.network = (
            network_from_config(self.spec.name, stored["network"])
            if "network" in stored
            else default_network(self.spec.name)
        )
        self.pci = PciPassthruSystem(PCI_DEVICES, stored.get("passthru", ()))
        self.in_maintenance = bool(stored.get("maintenance", False))
        self.vmotion_nic = VmotionNic(**stored.get("vmotion_nic", {}))
        """Maintenance mode, kept across reboots as ESXi keeps it: the host powers on
        nothing and admits no arriving vMotion while it lasts."""
        self._last_tick = clock.now()

    def close(self) -> None:
        """Removes what this boot made on the local disk (its swap directory)."""
        if self._own_swap_dir:
            shutil.rmtree(self.swap_dir, ignore_errors=True)

    @property
    def memory_used_mb(self) -> int:
        """The configured memory of the powered-on VMs."""
        return sum(vm.memory_mb for vm in self._vms.values() if vm.powered_on)

    @property
    def memory_free_mb(self) -> int:
        return self.spec.memory_mb - self.memory_used_mb

    @property
    def cpu_unreserved_mhz(self) -> int:
        """The CPU a new VM could still reserve here (the root pool's unreserved)."""
        return self.pools.view(Unit.MHZ).unreserved()

    def vms(self) -> list[VmConfig]:
        return sorted(self._vms.values(), key=lambda vm: vm.name)

    def vm_count(self) -> int:
        return len(self._vms)

    def powered_on_count(self) -> int:
        return sum(vm.powered_on for vm in self._vms.values())

    def vm(self, name: str) -> VmConfig:
        try:
            return self._vms[name]
        except KeyError:
            raise NotFound(f"no VM named {name!r} is registered on {self.spec.name}") from None

    # -- host configuration (kept in esx.conf) ----------------------------------------

    def _require_nics(self, uplinks: tuple[str, ...]) -> None:
        for uplink in uplinks:
            if uplink not in PHYSICAL_NICS:
                raise NotFound(
                    f"{self.spec.name} has no physical NIC {uplink[:40]!r}; it has "
                    + ", ".join(PHYSICAL_NICS)
                )

    def add_vswitch(
        self, name: str, uplinks: tuple[str, ...], security: SecurityPolicy
    ) -> VirtualSwitch:
        self._require_nics(uplinks)
        vswitch = self.network.add_vswitch(name, uplinks, security)
        self._save_config()
        return vswitch

    def update_vswitch(
        self,
        name: str,
        uplinks: tuple[str, ...] | None = None,
        security: SecurityPolicy | None = None,
    ) -> VirtualSwitch:
        """Other uplinks and/or a complete policy for a vSwitch (None: as it is)."""
        self.network.vswitch(name)  # NotFound first
        if uplinks is not None:
            self._require_nics(uplinks)
        vswitch = self.network.update_vswitch(name, uplinks=uplinks, security=security)
        self._save_config()
        return vswitch

    def add_port_group(
        self, name: str, vswitch: str, vlan: int, security: SecurityPolicy
    ) -> PortGroup:
        port_group = self.network.add_port_group(name, vswitch, vlan, security)
        self._save_config()
        return port_group

    def update_port_group(
        self, name: str, vlan: int | None = None, security: SecurityPolicy | None = None
    ) -> PortGroup:
        """Another VLAN and/or security overrides for a port group (None: as it is)."""
        port_group = self.network.update_port_group(name, vlan=vlan, security=security)
        self._save_config()
        return port_group

    def remove_vswitch(self, name: str) -> VirtualSwitch:
        """Removes a vSwitch without port groups; its uplinks are free again. The
        management vSwitch stays (vmk0 is on it)."""
        vswitch = self.network.vswitch(name)  # NotFound first
        if any(
            pg.name == MANAGEMENT_PORT_GROUP and pg.vswitch == name
            for pg in self.network.port_groups()
        ):
            raise ResourceInUse(
                f"{name} is the management vSwitch of {self.spec.name}: port group "
                f"{MANAGEMENT_PORT_GROUP!r} on it carries vmk0, through which vCenter manages "
                "the host, and ESXi does not remove it"
            )
        self.network.remove_vswitch(name)
        self._save_config()
        return vswitch

    def remove_port_group(self, name: str) -> PortGroup:
        """Removes a port group no VM registered here has an adapter on, running or
        not (as vSphere refuses: the VM could not connect again)."""
        port_group = self.network.port_group(name)  # NotFound first
        if name == MANAGEMENT_PORT_GROUP:
            raise ResourceInUse(
                f"port group {name!r} of {self.spec.name} carries vmk0, the host's "
                "management network; ESXi does not remove it"
            )
        users = [
            (vm.name, nic.name) for vm in self.vms() for nic in vm.nics if nic.port_group == name
        ]
        if users:
            raise ResourceInUse(
                f"port group {name!r} on {self.spec.name} is in use by "
                + ", ".join(f"{vm} ({nic})" for vm, nic in users)
                + "; remove those network adapters (vsim vm nic remove VM ethernetN) first",
                port_group=name,
                vms=",".join(dict.fromkeys(vm for vm, _ in users)),
            )
        self.network.remove_port_group(name)
        self._save_config()
        return port_group

    def set_memory_settings(self, settings: MemorySettings) -> MemorySettings:
        settings = self.memory.set_settings(settings)
        self._save_config()
        return settings

    def set_passthru(self, pci: str, enabled: bool) -> PassthruInfo:
        info = self.pci.update_passthru_config(pci, enabled)
        self._save_config()
        return info

    def _save_config(self) -> None:
        self._config.save(
            {
                "network": network_config(self.network),
                "memory": memory_config(self.memory.settings),
                "passthru": [i.id for i in self.pci.passthru_info() if i.enabled],
                "resource_pools": resource_pools_config(self.resource_pool_configs()),
                "maintenance": self.in_maintenance,
                "vmotion_nic": asdict(self.vmotion_nic),
            }
        )

    def update_vmotion_nic(self, vmotion: bool | None, link_speed_mbps: int) -> VmotionNic:
        """Tags vmk1 for vMotion or not, and sets its link speed (0: unchanged)."""
        nic = self.vmotion_nic
        if vmotion is not None:
            nic = replace(nic, vmotion=vmotion)
        if link_speed_mbps:
            nic = replace(nic, link_speed_mbps=link_speed_mbps)
        self.vmotion_nic = nic.validated()
        self._save_config()
        return self.vmotion_nic

    # -- maintenance mode (kept in esx.conf) -------------------------------------------

    def enter_maintenance(self) -> None:
        """Only a host that runs nothing enters maintenance mode: whoever asks moves or
        powers off its VMs first (vCenter evacuates them by vMotion)."""
        running = [vm.name for vm in self.vms() if vm.powered_on or vm.name in self._arriving]
        if running:
            raise InvalidState(
                f"{self.spec.name} cannot enter maintenance mode: {len(running)} VM(s) "
                f"still run here ({', '.join(running[:5])}); migrate or power them off first"
            )
        self.in_maintenance = True
        self._save_config()

    def exit_maintenance(self) -> None:
        self.in_maintenance = False
        self._save_config()

    # -- resource pools (kept in esx.conf) ---------------------------------------------

    def resource_pool_configs(self) -> list[PoolConfig]:
        """The pools other than the root, parents before their children."""
        return [self.resource_pool_config(name) for name in self.pools.pools()[1:]]

    def resource_pool_config(self, name: str, verb: str = "changed") -> PoolConfig:
        """A pool's settings. InvalidArgument for the root (it cannot be `verb`: it is
        the host's whole capacity), NotFound for a pool the host does not have."""
        self._changeable(name, verb)
        pools = self.pools
        cpu, memory = pools.allocation(name, Unit.MHZ), pools.allocation(name, Unit.MB)
        return PoolConfig(name, pools.parent(name) or ROOT_POOL, cpu, memory)

    def create_resource_pool(
        self, name: str, parent: str, cpu: Allocation, memory: Allocation
    ) -> PoolConfig:
        """CreateResourcePool: a child of `parent` ("" for the root) in both trees,
        admission-controlled in each; if either refuses, neither changes."""
        parent = pool_name(parent, "parent") if parent else ROOT_POOL
        pool = PoolConfig(pool_name(name), parent, cpu, memory)
        if pool.name in self.pools:
            raise DuplicateName(
                f"{self.spec.name} already has a resource pool named {pool.name!r}"
                + (" (the root)" if pool.name == ROOT_POOL else "")
            )
        self._require_pool(pool.parent, f"cannot create resource pool {pool.name!r}")
        self._add_pool(pool)
        self._save_config()
        return pool

    def _add_pool(self, pool: PoolConfig) -> None:
        self.pools.add_pool(pool.name, pool.allocations, pool.parent)

    def update_resource_pool(self, name: str, cpu: Allocation, memory: Allocation) -> PoolConfig:
        """UpdateConfig: new shares, reservations, limits and expandability for both
        resources, admission-controlled; if either refuses, neither changes."""
        self._changeable(name, "changed")
        self.pools.set_pool(name, {Unit.MHZ: cpu, Unit.MB: memory})
        self._save_config()
        return PoolConfig(name, self.pools.parent(name) or ROOT_POOL, cpu, memory)

    def destroy_resource_pool(self, name: str) -> tuple[str, ...]:
        """Destroys a pool: its child pools and its VMs, running or not, move to its
        parent (as vSphere's ResourcePool.Destroy does), and the VMs' configurations
        name the parent from then on. Returns the VMs moved."""
        self._changeable(name, "destroyed")
        named = sorted(vm.name for vm in self._vms.values() if vm.resources.pool == name)
        parent = self.pools.parent(name) or ROOT_POOL
        self.pools.remove_pool(name)
        moved_to = "" if parent == ROOT_POOL else parent
        for vm_name in named:
            vm = self._vms[vm_name]
            resources = replace(vm.resources, resource_pool=moved_to)
            self._vms[vm_name] = replace(vm, resources=resources)
        self._save_config()
        return tuple(named)

    def resource_pools(self) -> list[ResourcePoolInfo]:
        """Every pool, the root first and parents before children, with its use and
        its entitlements for the current demands (CPU as the last period ran, memory
        from the guests' active memory)."""
        cpu_entitled = self.cpu.pool_entitlements()
        memory_entitled = self.memory.pool_entitlements()
        members: dict[str, list[VmConfig]] = {}
        for vm in self.vms():
            members.setdefault(vm.resources.pool, []).append(vm)
        return [
            ResourcePoolInfo(
                name=name,
                parent=self.pools.parent(name) or "",
                cpu=_usage(self.cpu.tree, name, cpu_entitled[name]),
                memory=_usage(self.memory.tree, name, memory_entitled[name]),
                vms=tuple(vm.name for vm in members.get(name, ())),
                powered_on=tuple(vm.name for vm in members.get(name, ()) if vm.powered_on),
            )
            for name in self.pools.pools()
        ]

    def _require_pool(self, name: str, doing: str) -> None:
        if name not in self.pools:
            raise NotFound(
                f"{doing}: {self.spec.name} has no resource pool {name!r}; create it there "
                f"(vsim host pool create {self.spec.name} {name}) or use one of: "
                + ", ".join(self.pools.pools())
            )

    def _changeable(self, name: str, verb: str) -> None:
        check_not_root(name, verb)
        self._require_pool(pool_name(name), f"resource pool {name!r} cannot be {verb}")

    # -- registration ------------------------------------------------------------------

    def register_vm(self, vm: VmConfig) -> VmConfig:
        validate.vm_name(vm.name)
        validate.vcpus(vm.cpus)
        validate.memory_mb(vm.memory_mb)
        resources = vm.resources.validated(vm.cpus, vm.memory_mb)
        check_nics(vm.name, vm.nics)
        if vm.name in self._vms:
            raise AlreadyExists(f"a VM named {vm.name!r} is already registered on {self.spec.name}")
        registered = replace(vm, powered_on=False, pci_devices=(), resources=resources)
        self._vms[vm.name] = registered
        try:
            self._assign_devices(registered, vm.pci_devices)
        except BaseException:
            del self._vms[vm.name]
            self.pci.release_vm(vm.name)
            raise
        return self._vms[vm.name]

    def update_disks(self, name: str, disks: tuple[DiskConfig, ...]) -> VmConfig:
        vm = self.vm(name)
        if vm.powered_on:
            raise InvalidPowerState(f"{name} is powered on; its disks cannot change now")
        vm = self._vms[name] = replace(vm, disks=disks)
        return vm

    def unregister_vm(self, name: str) -> VmConfig:
        vm = self.vm(name)
        if vm.powered_on:
            raise InvalidPowerState(f"{name} is powered on; power it off before unregistering it")
        if name in self._arriving:
            raise InvalidState(f"{name} is arriving by vMotion; abort the migration first")
        self.pci.release_vm(name)
        return self._vms.pop(name)

    def reconfigure(
        self,
        name: str,
        resources: VmResources,
        nics: tuple[NicConfig, ...],
        pci_devices: tuple[str, ...],
    ) -> VmConfig:
        """ReconfigVM: resources apply at once (admission-checked) on a running VM,
        which moves into its new resource pool, page sharing and salt at
        its next power-on; vNICs connect, disconnect or take new firewall rules live;
        DirectPath devices change only while it is off. A new pool must exist here."""
        vm = self.vm(name)
        resources = resources.validated(vm.cpus, vm.memory_mb)
        check_nics(name, nics)
        if resources.pool != vm.resources.pool:
            self._require_pool(resources.pool, f"cannot move {name} into another resource pool")
        if vm.powered_on:
            if tuple(pci_devices) != vm.pci_devices:
                raise InvalidPowerState(
                    f"{name} is powered on: DirectPath I/O devices are added and removed "
                    "only while the VM is powered off"
                )
            allocations = self._allocations(vm, resources)
            self.pools.check_consumer_change(name, resources.pool, allocations)
            self._reconnect(vm, nics)  # all or none
            self._apply_resources(vm, resources)  # checked above: cannot refuse now
        else:
            self._assign_devices(vm, tuple(pci_devices))
        vm = self._vms[name] = replace(self._vms[name], resources=resources, nics=tuple(nics))
        return vm

    def _set_cpu_demand(self, vm: VmConfig, resources: VmResources) -> None:
        """What the simulated guest keeps busy: its load share of its vCPUs."""
        load = vm.cpus * self.spec.cpu_mhz * resources.cpu_load_pct / 100
        self.cpu.set_demand(vm.name, load)

    def _allocations(self, vm: VmConfig, resources: VmResources) -> dict[Unit, Allocation]:
        return {
            Unit.MHZ: resources.cpu_allocation(vm.cpus),
            Unit.MB: resources.memory.allocation(vm.memory_mb),
        }

    def _apply_resources(self, vm: VmConfig, resources: VmResources) -> None:
        """A running VM's new allocations and pool, both resources checked before
        either is applied; then the memory manager's reclaim takes the new settings
        (which the tree already holds) and the guest its new CPU load."""
        self.pools.change_consumer(vm.name, resources.pool, self._allocations(vm, resources))
        self.memory.set_vm_settings(vm.name, resources.memory)
        self._set_cpu_demand(vm, resources)

    def _reconnect(self, vm: VmConfig, nics: tuple[NicConfig, ...]) -> None:
        """Moves a running VM's vNICs from its configuration to `nics`, all or none."""
        old = {nic.name: nic for nic in vm.nics}
        new = {nic.name: nic for nic in nics}
        gone = [nic for name, nic in old.items() if name not in new or _moved(nic, new[name])]
        added = [nic for name, nic in new.items() if name not in old or _moved(old[name], nic)]
        for nic in gone:
            self.network.disconnect_vnic(vm.name, nic.name)
        connected: list[NicConfig] = []
        try:
            for nic in added:
                self._connect(vm.name, nic)
                connected.append(nic)
        except BaseException:
            for nic in connected:
                self.network.disconnect_vnic(vm.name, nic.name)
            for nic in gone:
                self._connect(vm.name, nic)
            raise
        for name, nic in new.items():
            if name in old and not _moved(old[name], nic) and old[name].firewall != nic.firewall:
                self.network.set_firewall(vm.name, name, nic.firewall)

    def _assign_devices(self, vm: VmConfig, wanted: tuple[str, ...]) -> None:
        """Gives a powered-off VM exactly `wanted`, all or nothing."""
        devices = self.pci.set_vm_devices(vm, wanted)
        self._vms[vm.name] = replace(self._vms[vm.name], pci_devices=tuple(devices))

    # -- power -------------------------------------------------------------------------

    def power_on(self, name: str) -> VmConfig:
        """Admission control (the CPU and memory reservations included), then the VM's
        CPU, memory (its guest boots) and vNICs; if a boot or a vNIC fails, whatever
        was done is undone."""
        vm = self._start(self._stopped(name), arriving=False)
        vm = self._vms[name] = replace(vm, powered_on=True)
        return vm

    # -- vMotion's destination ---------------------------------------------------------

    def arrive(self, name: str) -> VmConfig:
        """A registered, powered-off VM arriving by vMotion: admitted here as a power-on
        is, given its CPU and its (stunned) memory, which the source's pages fill. It
        is not running here until `resume_arrived`; its vNICs connect then."""
        vm = self._start(self._stopped(name), arriving=True)
        self._arriving.add(name)
        return vm

    def _stopped(self, name: str) -> VmConfig:
        vm = self.vm(name)
        if vm.powered_on:
            raise InvalidPowerState(f"{name} is already powered on")
        if name in self._arriving:
            raise InvalidState(f"{name} is arriving here by vMotion")
        return vm

    def _start(self, vm: VmConfig, arriving: bool) -> VmConfig:
        """Admission control, then the VM's CPU and memory and, unless it arrives by
        vMotion (it demands nothing and connects nothing until it resumes), its CPU
        demand and vNICs; whatever was done is undone if a step fails."""
        if self.in_maintenance:
            what = "receives no vMotion" if arriving else "powers on no VM"
            raise InvalidState(
                f"{self.spec.name} is in maintenance mode and {what}; exit maintenance "
                f"mode first (cannot start {vm.name})"
            )
        self._admit(vm)
        if not self.powered_on_count():  # the first VM: no idle time to replay
            self._last_tick = self.clock.now()
        name, r = vm.name, vm.resources
        undo: list = []
        try:
            self.cpu.power_on(name, vm.cpus, r.cpu_allocation(vm.cpus), r.pool)
            undo.append(lambda: self.cpu.power_off(name))
            if not arriving:
                self._set_cpu_demand(vm, r)
            self.memory.power_on(
                name, vm.uuid, vm.memory_mb, vm.guest_os, r.memory, r.workload, r.pool, arriving
            )
            undo.append(lambda: self.memory.power_off(name))
            for nic in () if arriving else vm.nics:
                self._connect(name, nic)
                undo.append(lambda nic=nic: self.network.disconnect_vnic(name, nic.name))
        except BaseException:
            for step in reversed(undo):
                step()
            raise
        return vm

    def arriving(self, name: str) -> bool:
        return name in self._arriving

    def resume_arrived(self, name: str, guest_state: dict) -> VmConfig:
        """The switchover's end here: the guest runs on from its checkpoint and its
        vNICs connect (the physical switch now finds its MACs on this host)."""
        if name not in self._arriving:
            raise InvalidState(f"{name} is not arriving on {self.spec.name}")
        vm = self.vm(name)
        connected: list[str] = []
        try:
            for nic in vm.nics:
                self._connect(name, nic)
                connected.append(nic.name)
            self.memory.resume(name, guest_state)
        except BaseException:
            for nic in connected:
                self.network.disconnect_vnic(name, nic)
            raise
        self._set_cpu_demand(vm, vm.resources)
        self._arriving.discard(name)
        vm = self._vms[name] = replace(vm, powered_on=True)
        return vm

    def abandon_arrival(self, name: str) -> None:
        """A migration that failed: the partial copy's memory and CPU are freed."""
        if name in self._arriving:
            self._arriving.discard(name)
            self.memory.power_off(name)
            self.cpu.power_off(name)

    def power_off(self, name: str) -> VmConfig:
        vm = self.vm(name)
        if not vm.powered_on:
            raise InvalidPowerState(f"{name} is already powered off")
        for nic in vm.nics:
            self.network.disconnect_vnic(name, nic.name)
        self.memory.power_off(name)
        self.cpu.power_off(name)
        vm = self._vms[name] = replace(vm, powered_on=False)
        return vm

    def _connect(self, vm: str, nic: NicConfig) -> None:
        self.network.connect_vnic(vm, nic.name, nic.port_group, nic.mac, nic.firewall)

    def _admit(self, vm: VmConfig) -> None:
        """What must hold before anything is taken: the VM fits the hardware, its
        resource pool exists, its DirectPath devices have all its memory reserved, its
        port groups exist, its CPU and memory reservations fit in its pool."""
        if vm.cpus > self.spec.cpu_cores:
            raise InsufficientResourcesFault(
                f"{vm.name} has {vm.cpus} virtual CPUs but {self.spec.name} has only "
                f"{self.spec.cpu_cores} cores",
                host=self.spec.name,
            )
        if vm.memory_mb > self.spec.memory_mb:
            raise InsufficientResourcesFault(
                f"cannot power on {vm.name}: it has {vm.memory_mb} MB of memory and "
                f"{self.spec.name} has {self.spec.memory_mb} MB in all",
                host=self.spec.name,
                requested_mb=vm.memory_mb,
                free_mb=self.memory_free_mb,
            )
        self._require_pool(vm.resources.pool, f"cannot power on {vm.name}")
        if vm.pci_devices:
            self.pci.check_power_on(vm, vm.resources.memory.reservation_mb)
        for nic in vm.nics:
            self.network.port_group(nic.port_group)  # NotFound names what is missing
        self.pools.check_admission(vm.name, vm.resources.pool, self._allocations(vm, vm.resources))

    # -- the period --------------------------------------------------------------------

    def tick(self) -> None:
        """One kernel period: the guests run (CPU demand, memory activity), the CPU
        scheduler divides the host, memory is shared and reclaimed."""
        now = self.clock.now()
        elapsed, self._last_tick = min(MAX_PERIOD, now - self._last_tick), now
        if elapsed <= 0:
            return
        self.cpu.tick(elapsed)  # at the demands set at power-on and reconfigure
        self.memory.tick()


def _usage(tree: ResourceView, pool: str, entitlement: float) -> PoolUsage:
    return PoolUsage(tree.pool(pool), tree.reserved(pool), tree.unreserved(pool), entitlement)


def _moved(old: NicConfig, new: NicConfig) -> bool:
    """The vNIC must be reconnected (another port group or MAC), not just re-ruled."""
    return (old.port_group, old.mac.lower()) != (new.port_group, new.mac.lower())
