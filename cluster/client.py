"""The Python SDK: a typed async client for vCenter. The CLI and the tests use it.

    async with await VCenterClient.connect("127.0.0.1:50051", thumbprint) as vc:
        await vc.login("administrator@vsphere.local", password)
        task = await vc.run(await vc.create_vm("vm-001", cpus=2, memory_mb=4096))

Every failure is raised as the VimFault the server sent (`vsim.faults`). A client
pins the server's SHA-256 thumbprint: connecting to a server that presents another
certificate raises SSLVerifyFault before anything is sent. `VCenterClient.in_process`
reaches a vCenter core in this process through the same dispatch table instead (the
unit tests drive vCenter this way). `call(method, request)` reaches any RPC by name.
The fault methods (`crash_host`, `set_link`, ...) call the Faults service vCenter
serves beside VCenter (proto/vsim/v1/fault.proto), on the same channel and session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

from google.protobuf.message import Message

from vsim.dispatch import DispatchTable, LocalTransport, Transport
from vsim.faults import InvalidArgument, fault_from_proto
from vsim.rpc import RpcClient, open_channel
from vsim.tls import normalize_thumbprint
from vsim.v1 import common_pb2
from vsim.v1 import fault_pb2 as fpb
from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["VCenter"]
FAULTS = fpb.DESCRIPTOR.services_by_name["Faults"]
FINISHED = (common_pb2.TASK_STATE_SUCCESS, common_pb2.TASK_STATE_ERROR)
IN_PROCESS = "in-process"
"""The endpoint of an in-process client."""


class VCenterClient:
    def __init__(
        self,
        rpc: Transport,
        endpoint: str,
        thumbprint: str,
        session: str | None,
        faults: Transport | None = None,
    ) -> None:
        self._rpc = rpc
        self._faults = faults
        """The Faults service's line (the same channel as rpc's), if the server has one."""
        self.endpoint = endpoint
        self.thumbprint = thumbprint
        self.session = session

    @classmethod
    async def connect(
        cls, endpoint: str, thumbprint: str | None, session: str | None = None
    ) -> VCenterClient:
        """Connects to endpoint. With thumbprint=None the presented certificate is
        trusted (first use); otherwise it must match."""
        try:
            pinned = normalize_thumbprint(thumbprint) if thumbprint is not None else None
        except ValueError as e:
            raise InvalidArgument(f"pinned thumbprint for {endpoint}: {e}") from None
        channel, presented = await open_channel(
            endpoint,
            pinned=pinned,
            hint="If you expected this (the vCenter was set up again), run "
            "`vsim login --accept-new-thumbprint`",
        )
        # One channel for both services; closing the VCenter line closes it.
        return cls(
            RpcClient(channel, SERVICE), endpoint, presented, session, RpcClient(channel, FAULTS)
        )

    @classmethod
    def in_process(
        cls,
        table: DispatchTable,
        session: str | None = None,
        faults: DispatchTable | None = None,
    ) -> VCenterClient:
        """A client of a vCenter core in this process, through its dispatch table
        (`VCenter.table`; `faults`: the fault service's): the same session check,
        message copies and faults as over gRPC, without sockets or certificates (the
        thumbprint is "")."""
        return cls(
            LocalTransport(table),
            IN_PROCESS,
            "",
            session,
            LocalTransport(faults) if faults is not None else None,
        )

    async def __aenter__(self) -> VCenterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._rpc.close()

    async def _call(self, method: str, request, timeout: float | None = None):
        return await self._rpc.call(method, request, self.session, timeout)

    async def call(self, method: str, request: Message) -> Message:
        """One unary RPC by its name in vcenter.proto, with the request message as
        built: the way to reach an RPC this SDK has no method for, or to send a
        request exactly as given. The same session, copies and faults as the typed
        methods."""
        return await self._call(method, request)

    # faults of the physical layer (the Faults service; administrators only)

    async def _fault(self, method: str, request: Message) -> fpb.FaultState:
        if self._faults is None:
            raise InvalidArgument(
                f"{method}: this client has no line to a fault service (an in-process "
                "client made without one)"
            )
        return await self._faults.call(method, request, self.session)

    async def crash_host(self, host: str) -> fpb.FaultState:
        """Pulls the host's plug: its process dies, nothing is flushed."""
        return await self._fault("CrashHost", fpb.HostFaultRequest(host=host))

    async def hang_host(self, host: str, seconds: float = 30.0) -> fpb.FaultState:
        """hostd stops answering and the host's I/O stalls for `seconds`."""
        return await self._fault("HangHost", fpb.HangHostRequest(host=host, seconds=seconds))

    async def power_on_host(self, host: str) -> fpb.FaultState:
        """Boots a crashed host again; vCenter reattaches it."""
        return await self._fault("PowerOnHost", fpb.HostFaultRequest(host=host))

    async def set_link(self, host: str, network: str, state: str) -> fpb.FaultState:
        """network: management, storage or vmotion; state: down or up."""
        request = fpb.SetLinkRequest(host=host, network=network, state=state)
        return await self._fault("SetLink", request)

    async def set_disk_latency(self, datastore: str, milliseconds: float) -> fpb.FaultState:
        """Every command on the datastore's LUN or export is this late (0 mends it)."""
        request = fpb.DiskLatencyRequest(datastore=datastore, milliseconds=milliseconds)
        return await self._fault("SetDiskLatency", request)

    async def restart_array(self) -> fpb.FaultState:
        return await self._fault("RestartArray", fpb.RestartArrayFaultRequest())

    async def faults(self) -> fpb.FaultState:
        return await self._fault("ListFaults", fpb.ListFaultsRequest())

    async def clear_faults(self) -> fpb.FaultState:
        return await self._fault("ClearFaults", fpb.ClearFaultsRequest())

    # sessions

    async def login(self, user_name: str, password: str) -> str:
        # Without the old session: a stale or damaged one must not stand in the way.
        request = pb.LoginRequest(user_name=user_name, password=password)
        reply = await self._rpc.call("Login", request, None)
        self.session = reply.session
        return reply.session

    async def logout(self) -> None:
        await self._call("Logout", pb.LogoutRequest())
        self.session = None

    async def status(self) -> pb.Status:
        return await self._call("GetStatus", pb.GetStatusRequest())

    # hosts

    async def hosts(self) -> list[pb.Host]:
        return list((await self._call("ListHosts", pb.ListHostsRequest())).hosts)

    async def add_host(
        self, name: str, ssl_thumbprint: str = "", **sizes: float | str
    ) -> common_pb2.Task:
        request = pb.AddHostRequest(name=name, ssl_thumbprint=ssl_thumbprint, **sizes)
        return await self._call("AddHost", request)

    async def migrate_vm(
        self, name: str, host: str, encryption: str = "", priority: str = ""
    ) -> common_pb2.Task:
        """MigrateVM_Task: vMotion of a running VM, or a cold migration of a
        powered-off one, to host; `encryption` disabled, opportunistic (default) or
        required; `priority` high, default or low."""
        request = pb.MigrateVmRequest(
            name=name, host=host, encryption=encryption, priority=priority
        )
        return await self._call("MigrateVm", request)

    async def enter_maintenance_mode(self, host: str, evacuate: bool = False) -> common_pb2.Task:
        """EnterMaintenanceMode_Task; with evacuate, its powered-on VMs move off first."""
        request = pb.EnterMaintenanceModeRequest(name=host, evacuate=evacuate)
        return await self._call("EnterMaintenanceMode", request)

    async def exit_maintenance_mode(self, host: str) -> common_pb2.Task:
        return await self._call("ExitMaintenanceMode", pb.HostRequest(name=host))

    async def configure_evc(self, mode: str) -> pb.Status:
        """Sets the cluster's EVC mode (a CPU generation; "" turns EVC off)."""
        return await self._call("ConfigureEvc", pb.ConfigureEvcRequest(mode=mode))

    async def configure_ha(
        self,
        enabled: bool = True,
        host_failures: int = 1,
        isolation_response: str = "",
        heartbeat_datastores: tuple[str, ...] = (),
        isolation_address: str = "",
    ) -> pb.HaStatus:
        """Turns vSphere HA on (or off, enabled False) with its settings."""
        config = pb.HaConfig(
            enabled=enabled,
            host_failures=host_failures if enabled else 0,
            isolation_response=isolation_response,
            heartbeat_datastores=list(heartbeat_datastores),
            isolation_address=isolation_address,
        )
        return await self._call("ConfigureHa", pb.ConfigureHaRequest(config=config))

    async def ha_status(self) -> pb.HaStatus:
        return await self._call("GetHaStatus", pb.GetHaStatusRequest())

    async def set_vm_ha(self, name: str, restart_priority: str) -> pb.Vm:
        request = pb.SetVmHaRequest(name=name, restart_priority=restart_priority)
        return await self._call("SetVmHa", request)

    async def remove_host(self, name: str) -> common_pb2.Task:
        return await self._call("RemoveHost", pb.RemoveHostRequest(name=name))

    # VMs

    async def create_vm(
        self,
        name: str,
        cpus: int = 1,
        memory_mb: int = 1024,
        host: str = "",
        guest_os: str = "",
        datastore: str = "",
        disk_mb: int = 0,
        guest_write_iops: int = 0,
        resources: kpb.VmResources | None = None,
        nics: Iterable[kpb.VmNic] = (),
    ) -> common_pb2.Task:
        """nics: adapters left without a name or MAC get them from vCenter."""
        request = pb.CreateVmRequest(
            name=name,
            cpus=cpus,
            memory_mb=memory_mb,
            host=host,
            guest_os=guest_os,
            datastore=datastore,
            disk_mb=disk_mb,
            guest_write_iops=guest_write_iops,
            resources=resources,
            nics=list(nics),
        )
        return await self._call("CreateVm", request)

    async def linked_clone(self, source: str, name: str, host: str = "") -> common_pb2.Task:
        request = pb.LinkedCloneVmRequest(source=source, name=name, host=host)
        return await self._call("LinkedCloneVm", request)

    async def verify_disk(self, name: str, acked_seq: int = 0) -> common_pb2.GuestDiskReport:
        request = pb.VerifyVmDiskRequest(name=name, acked_seq=acked_seq)
        return await self._call("VerifyVmDisk", request)

    async def vms(self, host: str = "") -> list[pb.Vm]:
        return list((await self._call("ListVms", pb.ListVmsRequest(host=host))).vms)

    async def vm(self, name: str) -> pb.Vm:
        return await self._call("GetVm", pb.VmRequest(name=name))

    async def power_on(self, name: str) -> common_pb2.Task:
        return await self._call("PowerOnVm", pb.VmRequest(name=name))

    async def power_off(self, name: str) -> common_pb2.Task:
        return await self._call("PowerOffVm", pb.VmRequest(name=name))

    async def destroy_vm(self, name: str) -> common_pb2.Task:
        return await self._call("DestroyVm", pb.VmRequest(name=name))

    # VM resources and devices (each a ReconfigVM_Task)

    async def reconfigure_vm_resources(
        self, name: str, resources: kpb.VmResources
    ) -> common_pb2.Task:
        """Replaces all of the VM's resource settings (read them with vm() first to
        change only some)."""
        request = pb.ReconfigureVmResourcesRequest(name=name, resources=resources)
        return await self._call("ReconfigureVmResources", request)

    async def add_vm_nic(
        self,
        vm: str,
        port_group: str,
        mac: str = "",
        name: str = "",
        firewall: Iterable[kpb.FirewallRule] = (),
        firewall_default: str = "",
    ) -> common_pb2.Task:
        """A new adapter; name "" is the next free ethernetN, mac "" is vCenter's."""
        nic = kpb.VmNic(
            name=name,
            port_group=port_group,
            mac=mac,
            firewall=list(firewall),
            firewall_default=firewall_default,
        )
        return await self._call("AddVmNic", pb.AddVmNicRequest(vm=vm, nic=nic))

    async def set_vm_firewall(
        self,
        vm: str,
        rules: Iterable[kpb.FirewallRule],
        nic: str = "ethernet0",
        default_action: str = "allow",
    ) -> common_pb2.Task:
        request = pb.SetVmFirewallRequest(
            vm=vm, nic=nic, rules=list(rules), default_action=default_action
        )
        return await self._call("SetVmFirewall", request)

    async def remove_vm_nic(self, vm: str, nic: str) -> common_pb2.Task:
        """Hot-removed from a running VM; its MAC and firewall rules go with it."""
        return await self._call("RemoveVmNic", pb.RemoveVmNicRequest(vm=vm, nic=nic))

    async def assign_pci_device(self, vm: str, pci_id: str) -> common_pb2.Task:
        request = pb.AssignPciDeviceRequest(vm=vm, id=pci_id)
        return await self._call("AssignPciDevice", request)

    async def remove_pci_device(self, vm: str, pci_id: str) -> common_pb2.Task:
        """Only from a powered-off VM; the device is free for another VM afterwards."""
        request = pb.RemovePciDeviceRequest(vm=vm, id=pci_id)
        return await self._call("RemovePciDevice", request)

    async def vm_stats(self, name: str) -> kpb.VmStats:
        return await self._call("GetVmStats", pb.VmRequest(name=name))

    async def guest_report_luns(self, name: str) -> kpb.GuestLuns:
        return await self._call("GuestReportLuns", pb.VmRequest(name=name))

    # hosts' VMkernels

    async def host_stats(self, name: str) -> kpb.HostStats:
        return await self._call("GetHostStats", pb.HostRequest(name=name))

    async def update_host_memory_settings(
        self,
        host: str,
        share_force_salting: int | None = None,
        page_sharing_disabled: bool | None = None,
        share_scan_period: float | None = None,
    ) -> kpb.HostMemorySettings:
        """Changes only the settings given (None: leave as is)."""
        request = pb.UpdateHostMemorySettingsRequest(
            host=host,
            share_force_salting=share_force_salting,
            page_sharing_disabled=page_sharing_disabled,
            share_scan_period=share_scan_period,
        )
        return await self._call("UpdateHostMemorySettings", request)

    async def pci_devices(self, host: str) -> list[kpb.PciDevice]:
        return list((await self._call("ListPciDevices", pb.HostRequest(name=host))).devices)

    async def update_passthru_config(self, host: str, pci_id: str, enabled: bool) -> kpb.PciDevice:
        request = pb.UpdateHostPassthruRequest(host=host, id=pci_id, enabled=enabled)
        return await self._call("UpdatePassthruConfig", request)

    # hosts' resource pools

    async def resource_pools(self, host: str) -> kpb.ResourcePools:
        """The host's pools: the root "Resources" first, parents before children."""
        return await self._call("ListResourcePools", pb.HostRequest(name=host))

    async def create_resource_pool(
        self,
        host: str,
        name: str,
        parent: str = "",
        cpu: kpb.PoolAllocation | None = None,
        memory: kpb.PoolAllocation | None = None,
    ) -> kpb.ResourcePools:
        """A pool under `parent` ("" for the root); cpu (MHz) and memory (MB) left None
        are normal shares, no reservation, no limit, expandable."""
        spec = kpb.ResourcePoolSpec(name=name, parent=parent, cpu=cpu, memory=memory)
        request = pb.HostResourcePoolRequest(host=host, pool=spec)
        return await self._call("CreateResourcePool", request)

    async def update_resource_pool(
        self,
        host: str,
        name: str,
        cpu: kpb.PoolAllocation | None = None,
        memory: kpb.PoolAllocation | None = None,
    ) -> kpb.ResourcePools:
        """Replaces the allocations given (None: that resource stays as it is)."""
        spec = kpb.ResourcePoolSpec(name=name, cpu=cpu, memory=memory)
        request = pb.HostResourcePoolRequest(host=host, pool=spec)
        return await self._call("UpdateResourcePool", request)

    async def destroy_resource_pool(self, host: str, name: str) -> common_pb2.Task:
        """A task; the pool's child pools and running VMs move to its parent."""
        request = pb.DestroyHostResourcePoolRequest(host=host, name=name)
        return await self._call("DestroyResourcePool", request)

    # networking

    async def host_network(self, host: str) -> kpb.HostNetwork:
        return await self._call("GetHostNetwork", pb.HostRequest(name=host))

    async def update_vmknic(
        self, host: str, device: str, vmotion: bool | None = None, link_speed_mbps: int = 0
    ) -> kpb.HostNetwork:
        """Tags a VMkernel adapter (vmk1) for vMotion or not, or sets its link speed."""
        request = pb.UpdateHostVmknicRequest(
            host=host, device=device, link_speed_mbps=link_speed_mbps
        )
        if vmotion is not None:
            request.vmotion = vmotion
        return await self._call("UpdateHostVmknic", request)

    async def add_virtual_switch(
        self,
        host: str,
        name: str,
        uplinks: Iterable[str] = (),
        security: kpb.SecurityPolicy | None = None,
    ) -> kpb.HostNetwork:
        vswitch = kpb.VirtualSwitch(name=name, uplinks=list(uplinks), security=security)
        request = pb.HostVirtualSwitchRequest(host=host, vswitch=vswitch)
        return await self._call("AddVirtualSwitch", request)

    async def add_port_group(
        self,
        host: str,
        name: str,
        vswitch: str = "vSwitch0",
        vlan: int = 0,
        security: kpb.SecurityPolicy | None = None,
    ) -> kpb.HostNetwork:
        port_group = kpb.PortGroup(name=name, vswitch=vswitch, vlan=vlan, security=security)
        request = pb.HostPortGroupRequest(host=host, port_group=port_group)
        return await self._call("AddPortGroup", request)

    async def update_virtual_switch(
        self,
        host: str,
        name: str,
        uplinks: Iterable[str] | None = None,
        security: kpb.SecurityPolicy | None = None,
    ) -> kpb.HostNetwork:
        """Changes what is given: the uplinks (the whole failover order; () for none)
        and the security fields `security` sets; the rest stays."""
        update = kpb.VirtualSwitchUpdate(name=name, security=security)
        if uplinks is not None:
            update.uplinks.uplinks.extend(uplinks)
        request = pb.UpdateHostVirtualSwitchRequest(host=host, update=update)
        return await self._call("UpdateVirtualSwitch", request)

    async def update_port_group(
        self,
        host: str,
        name: str,
        vlan: int | None = None,
        security: kpb.SecurityPolicy | None = None,
        inherit: Iterable[str] = (),
    ) -> kpb.HostNetwork:
        """Changes what is given: the VLAN, the overrides `security` sets, and the
        settings named in `inherit` go back to the vSwitch's; the rest stays."""
        update = kpb.PortGroupUpdate(name=name, vlan=vlan, security=security, inherit=inherit)
        request = pb.UpdateHostPortGroupRequest(host=host, update=update)
        return await self._call("UpdatePortGroup", request)

    async def remove_virtual_switch(self, host: str, name: str) -> kpb.HostNetwork:
        """Refused while it has port groups, and for the management vSwitch."""
        request = pb.RemoveHostVirtualSwitchRequest(host=host, name=name)
        return await self._call("RemoveVirtualSwitch", request)

    async def remove_port_group(self, host: str, name: str) -> kpb.HostNetwork:
        """Refused while any VM's adapter is on it, and for the management port group."""
        request = pb.RemoveHostPortGroupRequest(host=host, name=name)
        return await self._call("RemovePortGroup", request)

    async def physical_ports(self) -> list[kpb.PhysicalPort]:
        reply = await self._call("ListPhysicalPorts", pb.ListPhysicalPortsRequest())
        return list(reply.ports)

    async def configure_physical_port(
        self, host: str, uplink: str, vlans: Iterable[int] = (), disabled: bool = False
    ) -> kpb.PhysicalPort:
        """Replaces the port's settings: trunk of `vlans` (empty: all), shut down or not."""
        port = kpb.PhysicalPort(host=host, uplink=uplink, vlans=list(vlans), disabled=disabled)
        return await self._call("ConfigurePhysicalPort", port)

    async def send_test_frame(
        self, vm: str, frame: kpb.Frame | None = None, nic: str = "", dst_vm: str = ""
    ) -> kpb.FrameTrace:
        """Sends a frame from vm's adapter (default ethernet0) to dst_vm's first adapter
        or to frame.dst_mac, and returns its journey. frame.src_mac empty: the
        adapter's effective MAC; another one is a forged transmit."""
        request = pb.SendTestFrameRequest(vm=vm, nic=nic, frame=frame, dst_vm=dst_vm)
        return await self._call("SendTestFrame", request)

    async def set_guest_mac(self, vm: str, mac: str, nic: str = "ethernet0") -> kpb.ConnectedNic:
        """The guest of the running vm sets its adapter's MAC ("": back to the
        configured one, which every power-on starts with); returns the adapter's port."""
        request = kpb.SetGuestMacRequest(vm=vm, nic=nic, mac=mac)
        return await self._call("SetGuestMac", request)

    # datastores

    async def create_vmfs_datastore(
        self, name: str, lun: int, lock_mode: str = "ats+scsi"
    ) -> common_pb2.Task:
        request = pb.CreateVmfsDatastoreRequest(name=name, lun=lun, lock_mode=lock_mode)
        return await self._call("CreateVmfsDatastore", request)

    async def create_nas_datastore(self, name: str, export: str) -> common_pb2.Task:
        request = pb.CreateNasDatastoreRequest(name=name, export=export)
        return await self._call("CreateNasDatastore", request)

    async def configure_storage_io_control(
        self, datastore: str, threshold_ms: float
    ) -> pb.Datastore:
        request = pb.ConfigureStorageIoControlRequest(
            datastore=datastore, threshold_ms=threshold_ms
        )
        return await self._call("ConfigureStorageIoControl", request)

    async def datastores(self) -> list[pb.Datastore]:
        return list((await self._call("ListDatastores", pb.ListDatastoresRequest())).datastores)

    async def lock_owner(self, datastore: str, path: str) -> pb.LockInfo:
        return await self._call("QueryLockOwner", pb.LockRequest(datastore=datastore, path=path))

    async def break_stale_lock(self, datastore: str, path: str) -> pb.LockInfo:
        return await self._call("BreakStaleLock", pb.LockRequest(datastore=datastore, path=path))

    async def remove_datastore(self, name: str) -> common_pb2.Task:
        return await self._call("RemoveDatastore", pb.RemoveDatastoreRequest(name=name))

    # the storage array (administrators only)

    async def create_array_lun(
        self, size_bytes: int = 0, lun_id: int | None = None, hosts: Sequence[str] = ()
    ) -> pb.ArrayLun:
        """A LUN (0 bytes: 4 GiB; no id: the next free) masked to hosts (none: all)."""
        request = pb.CreateArrayLunRequest(size_bytes=size_bytes, hosts=list(hosts))
        if lun_id is not None:
            request.id = lun_id
        return await self._call("CreateArrayLun", request)

    async def array_luns(self) -> list[pb.ArrayLun]:
        return list((await self._call("ListArrayLuns", pb.ListArrayLunsRequest())).luns)

    async def map_array_lun(self, lun: int, hosts: Sequence[str]) -> pb.ArrayLun:
        request = pb.ArrayLunMappingRequest(lun=lun, hosts=list(hosts))
        return await self._call("MapArrayLun", request)

    async def unmap_array_lun(self, lun: int, hosts: Sequence[str]) -> pb.ArrayLun:
        request = pb.ArrayLunMappingRequest(lun=lun, hosts=list(hosts))
        return await self._call("UnmapArrayLun", request)

    async def create_array_export(
        self,
        name: str,
        read_only: bool = False,
        async_writes: bool = False,
        root_squash: bool = False,
        clients: Sequence[str] = (),
    ) -> pb.ArrayExport:
        request = pb.CreateArrayExportRequest(
            name=name,
            read_only=read_only,
            async_writes=async_writes,
            root_squash=root_squash,
            clients=list(clients),
        )
        return await self._call("CreateArrayExport", request)

    async def array_exports(self) -> list[pb.ArrayExport]:
        return list((await self._call("ListArrayExports", pb.ListArrayExportsRequest())).exports)

    # tasks and events

    async def task(self, task_id: str) -> common_pb2.Task:
        return await self._call("GetTask", pb.GetTaskRequest(id=task_id))

    async def wait(self, task: common_pb2.Task | str, timeout: float = 600.0) -> common_pb2.Task:
        """The task once finished (polling WaitForTask in rounds of at most 60 s)."""
        task_id = task if isinstance(task, str) else task.id
        remaining = timeout
        while True:
            step = min(60.0, remaining)
            done = await self._call(
                "WaitForTask", pb.WaitForTaskRequest(id=task_id, timeout_seconds=step), step + 30
            )
            remaining -= step
            if done.state in FINISHED or remaining <= 0:
                return done

    async def run(self, task: common_pb2.Task | str, timeout: float = 600.0) -> common_pb2.Task:
        """Waits for the task and raises its fault if it failed."""
        done = await self.wait(task, timeout)
        if done.state == common_pb2.TASK_STATE_ERROR:
            raise fault_from_proto(done.error)
        return done

    async def tasks(self, limit: int = 100) -> list[common_pb2.Task]:
        return list((await self._call("ListTasks", pb.ListTasksRequest(limit=limit))).tasks)

    async def events(self, after_key: int = 0, limit: int = 1000) -> list[common_pb2.Event]:
        request = pb.ListEventsRequest(after_key=after_key, limit=limit)
        return list((await self._call("ListEvents", request)).events)

    async def event_page(
        self, after_key: int = 0, limit: int = 100, newest: bool = False
    ) -> pb.ListEventsResponse:
        """One page of the event log, oldest first: the first `limit` events after
        after_key or, with newest, the last `limit`; `older` and `newer` count the
        events after after_key left out before and after the page."""
        request = pb.ListEventsRequest(after_key=after_key, limit=limit, newest=newest)
        return await self._call("ListEvents", request)

    async def watch_events(self, after_key: int = 0) -> AsyncIterator[common_pb2.Event]:
        request = pb.WatchEventsRequest(after_key=after_key)
        async for event in self._rpc.stream("WatchEvents", request, self.session):
            yield event
