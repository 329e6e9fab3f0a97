"""The VCenter service's dispatch table: every RPC, what its caller needs, and the
manager method that answers it.

Most RPCs go straight to a manager (virtual_machine.py, datastore.py, ...); the
adapters below only say which part of the request and session the manager takes.
RPCs that do work of their own (sessions, status, host tasks, waits, the event log)
are `VCenter` methods. The gRPC server and the in-process SDK transport both call
through this table (vsim/dispatch.py), so they check and fail the same way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from vsim.dispatch import ADMINISTRATOR, PUBLIC, SESSION, DispatchTable
from vsim.v1 import vcenter_pb2 as pb

if TYPE_CHECKING:
    from vsim.vcenter.service import VCenter

SERVICE = pb.DESCRIPTOR.services_by_name["VCenter"]
Handler = Callable[[Any, Any], Any]


def by_user(method: Callable[[Any, str], Any]) -> Handler:
    """method(request, user name): a change made on someone's behalf."""
    return lambda request, session: method(request, session.user_name)


def by_request(method: Callable[[Any], Any]) -> Handler:
    """method(request): a read anyone with a session may make."""
    return lambda request, session: method(request)


def by_name(method: Callable[[str, str], Any]) -> Handler:
    """method(request.name, user name): a change to one named object."""
    return lambda request, session: method(request.name, session.user_name)


def listed(response: type, field: str, read: Callable[[Any], Awaitable[list]]) -> Handler:
    """A List RPC: what read(request) finds, in the response's repeated field."""

    async def handler(request: Any, session: Any) -> Any:
        return response(**{field: await read(request)})

    return handler


def table(vc: VCenter) -> DispatchTable:
    vms, datastores, network = vc.vms, vc.datastores, vc.network
    reconfigure, physical, array = vc.reconfigure, vc.physical_network, vc.storage_array
    return DispatchTable(
        SERVICE,
        vc,
        {
            # sessions and status
            "Login": (PUBLIC, vc.Login),
            "Logout": (SESSION, vc.Logout),
            "GetStatus": (SESSION, vc.GetStatus),
            "ConfigureEvc": (ADMINISTRATOR, vc.ConfigureEvc),
            "ConfigureHa": (ADMINISTRATOR, by_user(vc.ha.configure)),
            "GetHaStatus": (SESSION, lambda request, session: vc.ha.status()),
            "SetVmHa": (ADMINISTRATOR, by_request(vc.ha.set_vm)),
            # hosts
            "ListHosts": (SESSION, lambda r, s: pb.ListHostsResponse(hosts=vc.hosts.list())),
            "AddHost": (SESSION, vc.AddHost),
            "RemoveHost": (SESSION, vc.RemoveHost),
            "EnterMaintenanceMode": (SESSION, by_user(vc.maintenance.enter)),
            "ExitMaintenanceMode": (SESSION, by_name(vc.maintenance.exit)),
            # VMs
            "CreateVm": (SESSION, by_user(vms.create)),
            "ListVms": (
                SESSION,
                listed(pb.ListVmsResponse, "vms", lambda r: vms.list_live(r.host)),
            ),
            "GetVm": (SESSION, lambda r, s: vms.get_live(r.name)),
            "PowerOnVm": (SESSION, by_name(vms.power_on)),
            "PowerOffVm": (SESSION, by_name(vms.power_off)),
            "DestroyVm": (SESSION, by_name(vms.destroy)),
            "LinkedCloneVm": (SESSION, by_user(vms.linked_clone)),
            "MigrateVm": (SESSION, by_user(vc.vmotion.migrate)),
            "VerifyVmDisk": (SESSION, by_request(vms.verify_disk)),
            "GuestReportLuns": (SESSION, lambda r, s: vms.guest_luns(r.name)),
            # datastores and their locks
            "CreateVmfsDatastore": (SESSION, by_user(datastores.create_vmfs)),
            "CreateNasDatastore": (SESSION, by_user(datastores.create_nas)),
            "ListDatastores": (
                SESSION,
                listed(pb.ListDatastoresResponse, "datastores", lambda r: datastores.list()),
            ),
            "ConfigureStorageIoControl": (SESSION, by_user(datastores.configure_sioc)),
            "RemoveDatastore": (SESSION, by_name(datastores.remove)),
            "QueryLockOwner": (SESSION, lambda r, s: datastores.lock(r, "QueryLock")),
            "BreakStaleLock": (SESSION, vc.BreakStaleLock),
            # tasks and events
            "GetTask": (SESSION, lambda r, s: vc.tasks.get(r.id)),
            "WaitForTask": (SESSION, vc.WaitForTask),
            "ListTasks": (SESSION, vc.ListTasks),
            "ListEvents": (SESSION, vc.ListEvents),
            "WatchEvents": (SESSION, vc.WatchEvents),
            # the hosts' VMkernels: statistics, memory, resource pools
            "GetHostStats": (SESSION, by_request(vc.performance.host_stats)),
            "GetVmStats": (SESSION, by_request(vc.performance.vm_stats)),
            "UpdateHostMemorySettings": (SESSION, by_user(vc.performance.update_memory_settings)),
            "CreateResourcePool": (SESSION, by_user(vc.resource_pools.create)),
            "UpdateResourcePool": (SESSION, by_user(vc.resource_pools.update)),
            "DestroyResourcePool": (SESSION, by_user(vc.resource_pools.destroy)),
            "ListResourcePools": (SESSION, by_request(vc.resource_pools.list)),
            # VM resources and devices (each a ReconfigVM_Task)
            "ReconfigureVmResources": (SESSION, by_user(reconfigure.resources)),
            "AddVmNic": (SESSION, by_user(reconfigure.add_nic)),
            "SetVmFirewall": (SESSION, by_user(reconfigure.set_firewall)),
            "RemoveVmNic": (SESSION, by_user(reconfigure.remove_nic)),
            "AssignPciDevice": (SESSION, by_user(reconfigure.assign_pci_device)),
            "RemovePciDevice": (SESSION, by_user(reconfigure.remove_pci_device)),
            # standard switches, the physical network, DirectPath devices
            "AddVirtualSwitch": (SESSION, by_user(network.add_vswitch)),
            "AddPortGroup": (SESSION, by_user(network.add_port_group)),
            "RemoveVirtualSwitch": (SESSION, by_user(network.remove_vswitch)),
            "RemovePortGroup": (SESSION, by_user(network.remove_port_group)),
            "UpdateVirtualSwitch": (SESSION, by_user(network.update_vswitch)),
            "UpdatePortGroup": (SESSION, by_user(network.update_port_group)),
            "GetHostNetwork": (SESSION, by_request(network.get)),
            "UpdateHostVmknic": (SESSION, by_user(network.update_vmknic)),
            "ConfigurePhysicalPort": (SESSION, by_user(physical.configure)),
            "ListPhysicalPorts": (
                SESSION,
                lambda r, s: pb.ListPhysicalPortsResponse(ports=physical.ports()),
            ),
            "SendTestFrame": (SESSION, by_request(physical.send_test_frame)),
            "SetGuestMac": (SESSION, by_request(physical.set_guest_mac)),
            "ListPciDevices": (SESSION, by_request(vc.pci.devices)),
            "UpdatePassthruConfig": (SESSION, by_user(vc.pci.update)),
            # the storage array: its management is for administrators only
            "CreateArrayLun": (ADMINISTRATOR, by_user(array.create_lun)),
            "ListArrayLuns": (
                ADMINISTRATOR,
                listed(pb.ListArrayLunsResponse, "luns", lambda r: array.list_luns()),
            ),
            "MapArrayLun": (ADMINISTRATOR, by_user(array.map_lun)),
            "UnmapArrayLun": (ADMINISTRATOR, by_user(array.unmap_lun)),
            "CreateArrayExport": (ADMINISTRATOR, by_user(array.create_export)),
            "ListArrayExports": (
                ADMINISTRATOR,
                listed(pb.ListArrayExportsResponse, "exports", lambda r: array.list_exports()),
            ),
        },
    )
