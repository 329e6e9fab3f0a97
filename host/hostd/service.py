"""hostd: the management agent of one ESXi host, as plain Python.

Each method is named like its HostAgent RPC and marked with what its caller needs
(`@needs`: Login is public, changes need the Admin role); it takes the request
message and the caller's user name, and returns the response message or raises a
VimFault. `Hostd.table` is the one dispatch table in front of all of them, with the
accounts as its gate: who may do what is decided there, what is possible by the
kernel. The gRPC server and the in-process engine both call through the table
(vsim/dispatch.py), so the two engines enforce the same rules and fail the same way.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from dataclasses import replace

from vsim import validate
from vsim.dispatch import ADMINISTRATOR, PUBLIC, SESSION, DispatchTable, needs
from vsim.faults import (
    CannotAccessFile,
    InvalidArgument,
    InvalidLogin,
    InvalidPowerState,
    InvalidState,
    NotFound,
)
from vsim.host.fdm.service import Fdm, FdmConnector, GatewayPing
from vsim.host.guest.disk_writes import GuestDiskReport, verify_guest_disk
from vsim.host.hostd.accounts import ROLES, VPXUSER, HostAccounts
from vsim.host.hostd.kernel_messages import (
    connected_nic_to_proto,
    datastore_io,
    delivery_to_proto,
    host_stats_to_proto,
    network_to_proto,
    resource_pools_to_proto,
    vm_from_proto,
    vm_stats_to_proto,
    vm_to_proto,
)
from vsim.host.hostd.migration import Migrations, PeerConnector
from vsim.host.kernel.vmkernel import DiskConfig, HostKernel, VmConfig
from vsim.host.storage.datastore_files import DatastoreFiles
from vsim.host.storage.disk_scheduler import DiskAllocation, DiskScheduler
from vsim.host.storage.storage_stack import Datastore, LockStatus, StorageStack
from vsim.host.storage.vmdk import open_disk
from vsim.host.vm.vm_files import (
    check_disks,
    check_revert,
    create_vm_files,
    delete_vm_files,
    discard_new_deltas,
    revert_disks,
    snapshot_disks,
    write_vmx,
)
from vsim.host.vm.vmx import VmxProcess
from vsim.host.vm.vscsi import VirtualScsi, guest_scan
from vsim.lockout import ESXI_LOCKOUT, AccountLockout, LockoutPolicy
from vsim.network_messages import frame_from_proto, security_changes, security_from_proto
from vsim.resource_messages import (
    pool_allocations_from_proto,
)
from vsim.runtime import Runtime
from vsim.security_policy import STANDARD_SWITCH_SECURITY
from vsim.storage.vmfs_format import LockMode, VolumeLockMode
from vsim.storage_io_control import congestion_threshold_s
from vsim.v1 import common_pb2
from vsim.v1 import host_agent_pb2 as pb
from vsim.v1 import kernel_pb2 as kpb

log = logging.getLogger(__name__)
USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
SERVICE = pb.DESCRIPTOR.services_by_name["HostAgent"]


def report_to_proto(report: GuestDiskReport, host: str) -> common_pb2.GuestDiskReport:
    return common_pb2.GuestDiskReport(
        disk=report.disk,
        blocks=report.blocks,
        written=report.written,
        corrupt=report.corrupt,
        missing=report.missing,
        highest_seq=report.highest_seq,
        acked_seq=report.acked_seq,
        host=host,
    )


def datastore_to_proto(d: Datastore) -> pb.HostDatastore:
    return pb.HostDatastore(
        name=d.name,
        type=d.type,
        accessible=d.accessible,
        heartbeat_slot=d.heartbeat_slot,
        capacity_bytes=d.capacity_bytes,
        free_bytes=d.free_bytes,
        lock_mode=d.lock_mode,
    )


def lock_to_proto(status: LockStatus) -> pb.HostLockInfo:
    return pb.HostLockInfo(
        mode=status.mode,
        broken=status.broken,
        holders=[
            pb.HostLockHolder(
                host_uuid=h.host,
                heartbeat_slot=h.heartbeat_slot,
                seconds_unchanged=h.seconds_unchanged,
                live=h.live,
            )
            for h in status.holders
        ],
    )


class Hostd:
    def __init__(
        self,
        kernel: HostKernel,
        accounts: HostAccounts,
        storage: StorageStack,
        runtime: Runtime,
        lockout: LockoutPolicy = ESXI_LOCKOUT,
        peers: PeerConnector | None = None,
        fdm_peers: FdmConnector | None = None,
        gateway: GatewayPing | None = None,
    ) -> None:
        """runtime: this boot's; every task hostd and what it holds start is its.
        peers: how this host reaches other hosts' HostVMotion service (None: it has
        no vMotion network, and can receive but not send a migration); fdm_peers and
        gateway: how its HA agent reaches the others' and pings the isolation address
        over the management network."""
        self.kernel = kernel
        self.accounts = accounts
        self.runtime = runtime
        self.lockout = AccountLockout(lockout, runtime.clock)
        """Failed logins per user; in memory, so a reboot unlocks, as on ESXi."""
        self.scheduler = DiskScheduler(runtime=runtime)
        self._ticker: asyncio.Task | None = None
        self.lock_losers: set[str] = set()
        """VMs this boot killed since they last powered on, for a lost disk lock."""
        self.powering_on: set[str] = set()
        """VMs whose power-on waits for their disks: not running yet."""
        self.vmx: dict[str, VmxProcess] = {}
        """VMs with a VMX here: powered on, or holding their disks for a hand-off."""
        self.storage = storage
        self.table = DispatchTable.of_methods(SERVICE, accounts, self)
        """Every HostAgent RPC, as the gRPC server and the in-process engine call it."""
        self.migrations = Migrations(self, peers)
        """vMotion in and out; `migrations.table` is the HostVMotion service."""
        self.fdm = Fdm(self, fdm_peers, gateway)
        """vSphere HA's agent; `fdm.table` is the HostFdm service."""
        self.vmotion_endpoint = ""
        """Where the shell serves `migrations.table` on the vMotion network, once it
        does ("": this host has no vMotion network)."""
        self.management_endpoint = ""
        """Where the shell serves hostd on the management network, once it does."""

    @needs(PUBLIC)
    def Login(self, request: pb.HostLoginRequest, user: str | None) -> pb.HostLoginResponse:
        """A session for a local account. Failed logins lock the account (ESXi's
        Security.AccountLockFailures / AccountUnlockTime), except vpxuser's: only
        vCenter knows its 32-character random password, so locking it would only let
        anyone who reaches hostd cut the host off from vCenter with a few wrong tries."""
        name = request.user_name
        throttled = name != VPXUSER
        if throttled:
            self.lockout.check(name)
        try:
            token = self.accounts.login(name, request.password)
        except InvalidLogin:
            locked = throttled and self.lockout.failed(name)
            log.warning(
                "%s: failed login for %r%s",
                self.kernel.spec.name,
                name[:80],
                f"; remote access for it is locked for {self.lockout.policy.unlock_time:.0f} s"
                if locked
                else "",
            )
            raise
        self.lockout.succeeded(name)
        return pb.HostLoginResponse(session=token)

    @needs(SESSION)
    def GetHostInfo(self, request: pb.GetHostInfoRequest, user: str | None) -> pb.HostInfo:
        k = self.kernel
        return pb.HostInfo(
            name=k.spec.name,
            uuid=k.spec.uuid,
            cpu_cores=k.spec.cpu_cores,
            cpu_mhz=k.spec.cpu_mhz,
            memory_mb=k.spec.memory_mb,
            memory_used_mb=k.memory_used_mb,
            vms=k.vm_count() - len(self.fdm.restarting),  # as ListVms counts them
            vms_powered_on=len(self.running_vms()),
            boot_time=k.boot_time,
            vmotion_endpoint=self.vmotion_address(),
            in_maintenance_mode=k.in_maintenance,
            vmotion_link_mbps=k.vmotion_nic.link_speed_mbps if self.vmotion_address() else 0,
            vmotion_encryption=k.spec.vmotion_encryption,
        )

    def vmotion_address(self) -> str:
        """Where this host takes part in vMotion: vmk1's address while it is tagged
        for vMotion ("": no migration in or out)."""
        return self.vmotion_endpoint if self.kernel.vmotion_nic.vmotion else ""

    def vmknics(self) -> list[kpb.VmkernelNic]:
        nic = self.kernel.vmotion_nic
        return [
            kpb.VmkernelNic(
                device="vmk0",
                network="management",
                address=self.management_endpoint,
                services=["management"],
                link_speed_mbps=10000,
            ),
            kpb.VmkernelNic(
                device="vmk1",
                network="vmotion",
                address=self.vmotion_endpoint,
                services=["vmotion"] if nic.vmotion else [],
                link_speed_mbps=nic.link_speed_mbps,
            ),
        ]

    @needs(ADMINISTRATOR)
    def UpdateVmknic(self, request: pb.UpdateVmknicRequest, user: str | None) -> kpb.HostNetwork:
        if request.device != "vmk1":
            raise InvalidArgument(
                f"only vmk1 (vMotion) can be changed; {request.device[:20]!r} is not it "
                "(vmk0 carries management)"
            )
        vmotion = request.vmotion if request.HasField("vmotion") else None
        self.kernel.update_vmotion_nic(vmotion, request.link_speed_mbps)
        return self.GetNetwork(pb.GetNetworkRequest(), user)

    @needs(ADMINISTRATOR)
    def EnterMaintenanceMode(
        self, request: pb.MaintenanceModeRequest, user: str | None
    ) -> pb.HostInfo:
        self.kernel.enter_maintenance()
        return self.GetHostInfo(pb.GetHostInfoRequest(), user)

    @needs(ADMINISTRATOR)
    def ExitMaintenanceMode(
        self, request: pb.MaintenanceModeRequest, user: str | None
    ) -> pb.HostInfo:
        self.kernel.exit_maintenance()
        return self.GetHostInfo(pb.GetHostInfoRequest(), user)

    @needs(ADMINISTRATOR)
    def CreateUser(self, request: pb.CreateUserRequest, user: str | None) -> pb.CreateUserResponse:
        if not USER_NAME.match(request.user_name):
            raise InvalidArgument(
                f"user_name {request.user_name[:40]!r} is not valid: 1-32 characters, "
                "lower-case letters, digits, '_', '.', '-'"
            )
        if not 8 <= len(request.password) <= 128:
            raise InvalidArgument("password must be 8-128 characters")
        if request.role not in ROLES:
            raise InvalidArgument(
                f"role must be one of {', '.join(ROLES)}, got {request.role[:40]!r}"
            )
        self.accounts.set_account(request.user_name, request.password, request.role)
        return pb.CreateUserResponse()

    def _files(self, vm: VmConfig):
        if vm.datastore not in self.storage.files:
            raise NotFound(
                f"datastore {vm.datastore[:80]!r} of {vm.name} is not mounted on "
                f"{self.kernel.spec.name}"
            )
        return self.storage.files[vm.datastore]

    def _vmx(self, vm: VmConfig) -> VmxProcess:
        vmx = self.vmx.get(vm.name)
        if vmx is None:
            files = self._files(vm)
            vmx = self.vmx[vm.name] = VmxProcess(
                vm.name,
                uuid.UUID(vm.uuid),
                [(vm.datastore, files, d.path) for d in vm.disks],
                self.scheduler,
                self.runtime,
                vm.guest_write_iops,
            )
        return vmx

    def register(self, vm: VmConfig) -> DatastoreFiles | None:
        """Registers a VM (checked as RegisterVm checks it); returns the files of its
        datastore, which must be mounted here, if it has disks."""
        validate.uuid(vm.uuid, "vm.uuid")
        validate.text(vm.guest_os, "vm.guest_os", 64)
        validate.int_range(vm.guest_write_iops, 0, 10_000, "vm.guest_write_iops")
        check_disks(vm)
        files = self._files(vm) if vm.disks else None
        self.kernel.register_vm(vm)
        return files

    async def forget(self, name: str) -> None:
        """Unregisters a powered-off VM, its files left where they are."""
        vmx = self.vmx.pop(name, None)
        if vmx is not None:
            await vmx.close_disks()
        self.scheduler.forget_vm(name)
        self.kernel.unregister_vm(name)

    async def resume_arrived(self, name: str, guest_state: dict) -> None:
        """vMotion's switchover, here: the disks open (FileLocked while the source
        still holds them), the guest resumes from its checkpoint, its vNICs connect."""
        vm = self.kernel.vm(name)
        vmx = self._vmx(vm) if vm.disks else None
        if vmx is not None:
            self._set_disk_allocation(vm)
            await vmx.open_disks()
        try:
            self.kernel.resume_arrived(name, guest_state)
        except BaseException:
            if vmx is not None:
                await vmx.close_disks()
            raise
        if vmx is not None:
            vmx.start_guest()  # it goes on from its newest write on disk
        self._start_ticking()

    async def depart(self, name: str) -> None:
        """The VM resumed on another host: its memory and CPU here are freed and it
        is no longer registered here (its disks were released at the stun)."""
        self.kernel.power_off(name)
        await self.forget(name)

    @needs(ADMINISTRATOR)
    def ConfigureFdm(self, request: pb.ConfigureFdmRequest, user: str | None) -> pb.FdmState:
        return self.fdm.configure(request)

    @needs(ADMINISTRATOR)
    def GetFdmState(self, request: pb.GetFdmStateRequest, user: str | None) -> pb.FdmState:
        return self.fdm.state(request.events_after)

    @needs(ADMINISTRATOR)
    async def PrepareVmotion(
        self, request: pb.PrepareVmotionRequest, user: str | None
    ) -> pb.HostVmResponse:
        arriving = await self.migrations.prepare(request.ticket, vm_from_proto(request.vm))
        return pb.HostVmResponse(vm=vm_to_proto(arriving))

    @needs(ADMINISTRATOR)
    async def StartVmotion(
        self, request: pb.StartVmotionRequest, user: str | None
    ) -> pb.VmotionReport:
        return await self.migrations.start(request)

    @needs(ADMINISTRATOR)
    async def AbortVmotion(
        self, request: pb.AbortVmotionRequest, user: str | None
    ) -> pb.VmotionAck:
        await self.migrations.abort(request.ticket)
        return pb.VmotionAck()

    @needs(ADMINISTRATOR)
    async def RegisterVm(
        self, request: pb.RegisterVmRequest, user: str | None
    ) -> pb.RegisterVmResponse:
        vm = vm_from_proto(request.vm)
        files = self.register(vm)
        if request.create_files and files is not None:
            try:
                await create_vm_files(files, vm)
            except BaseException:
                self.kernel.unregister_vm(vm.name)
                raise
        return pb.RegisterVmResponse()

    @needs(ADMINISTRATOR)
    async def UnregisterVm(self, request: pb.HostVmRequest, user: str | None) -> pb.HostVmResponse:
        vm = self.kernel.vm(request.name)
        if vm.powered_on:
            raise InvalidPowerState(
                f"{vm.name} is powered on; power it off before unregistering it"
            )
        vmx = self.vmx.pop(vm.name, None)
        if vmx is not None:
            await vmx.close_disks()
        if request.delete_files and vm.disks:
            await delete_vm_files(self._files(vm), vm)
        return pb.HostVmResponse(vm=vm_to_proto(self.kernel.unregister_vm(request.name)))

    @needs(ADMINISTRATOR)
    async def PowerOnVm(self, request: pb.HostVmRequest, user: str | None) -> pb.HostVmResponse:
        vm = await self.power_on(request.name)
        return pb.HostVmResponse(vm=vm_to_proto(vm, self.vmx.get(vm.name)))

    def running_vms(self) -> list[str]:
        """The VMs running here: powered on, their power-on complete."""
        return [
            vm.name for vm in self.kernel.vms() if vm.powered_on and vm.name not in self.powering_on
        ]

    async def power_on(self, name: str) -> VmConfig:
        """Powers a registered VM on: admission control, then its disks opened
        (FileLocked if another host runs them), its guest started."""
        vm = self.kernel.power_on(name)  # admission control first: no locks taken
        self.lock_losers.discard(name)
        if vm.disks:
            # Its guest does not run until its disks are open: powering on, not on.
            self.kernel.memory.set_speed(name, 0.0)
            self.powering_on.add(name)
            try:
                self._set_disk_allocation(vm)
                vmx = self._vmx(vm)
                await vmx.open_disks()  # FileLocked if another host runs these disks
                vmx.start_guest()
            except BaseException:
                self.kernel.power_off(vm.name)
                raise
            finally:
                self.powering_on.discard(name)
            self.kernel.memory.set_speed(name, 1.0)
        self._start_ticking()
        return vm

    def _set_disk_allocation(self, vm: VmConfig) -> None:
        """The VM's Storage I/O Control shares and IOPS limit on its datastore."""
        r = vm.resources
        allocation = DiskAllocation(r.disk_shares or DiskAllocation().shares, r.disk_iops_limit)
        self.scheduler.set_disk_allocation(vm.datastore, vm.name, allocation)

    def _start_ticking(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = self.runtime.spawn(self._tick(), "kernel-tick")

    async def _tick(self) -> None:
        """The kernel's periods, while any VM runs here."""
        while self.kernel.powered_on_count():
            await self.kernel.clock.sleep(self.kernel.spec.kernel_period_s)
            try:
                self.kernel.tick()
            except Exception:  # noqa: BLE001 - one bad period must not stop the kernel
                log.exception("%s: a kernel period failed", self.kernel.spec.name)
            self._kill_lock_losers()

    def _kill_lock_losers(self) -> None:
        """A VM whose disk lock is gone (another host may hold it now) is killed, as
        ESXi kills a VM that lost its lock: it must not run on beside the one that
        took the lock. Its disks are dropped, not closed: the locks are not its own."""
        for name, vmx in list(self.vmx.items()):
            if not vmx.disks or not vmx.lock_lost():
                continue
            vm = self.kernel.vm(name)
            if not vm.powered_on:
                continue
            log.warning(
                "%s: %s lost the lock on its disk: powered off", self.kernel.spec.name, name
            )
            self.lock_losers.add(name)
            vmx.kill()
            for disk in vmx.disks:
                disk.abandon()
            vmx.disks = []
            self.scheduler.forget_vm(name)
            self.kernel.power_off(name)

    @needs(ADMINISTRATOR)
    async def PowerOffVm(self, request: pb.HostVmRequest, user: str | None) -> pb.HostVmResponse:
        vmx = self.vmx.get(request.name)
        return pb.HostVmResponse(vm=vm_to_proto(await self.power_off(request.name), vmx))

    async def power_off(self, name: str) -> VmConfig:
        """Powers a VM off: its guest's write in flight finishes, its disks close."""
        vm = self.kernel.vm(name)
        if not vm.powered_on:
            raise InvalidPowerState(f"{vm.name} is already powered off")
        vmx = self.vmx.get(vm.name)
        if vmx is not None:
            try:
                await vmx.close_disks()
            except CannotAccessFile:
                pass  # the datastore is gone; the locks are others' to break
        self.scheduler.forget_vm(vm.name)
        return self.kernel.power_off(name)

    @needs(ADMINISTRATOR)
    async def SnapshotVmDisks(
        self, request: pb.HostVmRequest, user: str | None
    ) -> pb.HostVmResponse:
        vm = self.kernel.vm(request.name)
        if vm.powered_on or (vm.name in self.vmx and self.vmx[vm.name].disks):
            raise InvalidPowerState(f"{vm.name} must be powered off to add deltas to its disks")
        if not vm.disks:
            raise InvalidState(f"{vm.name} has no disks")
        files = self._files(vm)
        disks = await snapshot_disks(files, vm)
        try:
            await write_vmx(files, replace(vm, disks=disks), create=False)  # the file first
        except BaseException:
            await discard_new_deltas(files, [d.path for d in disks])
            raise
        vm = self.kernel.update_disks(vm.name, disks)
        self.vmx.pop(vm.name, None)
        return pb.HostVmResponse(vm=vm_to_proto(vm))

    @needs(ADMINISTRATOR)
    async def RevertVmDisks(
        self, request: pb.RevertVmDisksRequest, user: str | None
    ) -> pb.HostVmResponse:
        vm = self.kernel.vm(request.name)
        if vm.powered_on or (vm.name in self.vmx and self.vmx[vm.name].disks):
            raise InvalidPowerState(f"{vm.name} must be powered off to take deltas off its disks")
        disks = tuple(DiskConfig(d.path, d.capacity_bytes, d.parent) for d in request.disks)
        files = self._files(vm)
        await check_revert(files, vm, disks)
        await revert_disks(files, vm, disks)
        vm = self.kernel.update_disks(vm.name, disks)
        self.vmx.pop(vm.name, None)
        return pb.HostVmResponse(vm=vm_to_proto(vm))

    @needs(ADMINISTRATOR)
    async def ReleaseVmDisks(
        self, request: pb.HostVmRequest, user: str | None
    ) -> pb.HostVmResponse:
        vm = self.kernel.vm(request.name)
        vmx = self.vmx.get(vm.name)
        if vmx is None or not vmx.disks:
            raise InvalidState(f"{vm.name}'s disks are not open on {self.kernel.spec.name}")
        await vmx.close_disks()  # the guest's last write is acknowledged first
        return pb.HostVmResponse(vm=vm_to_proto(vm, vmx))

    @needs(ADMINISTRATOR)
    async def OpenVmDisks(self, request: pb.HostVmRequest, user: str | None) -> pb.HostVmResponse:
        vm = self.kernel.vm(request.name)
        if not vm.disks:
            raise InvalidState(f"{vm.name} has no disks")
        vmx = self._vmx(vm)
        await vmx.open_disks()
        if vm.powered_on:
            vmx.start_guest()  # a hand-off back to this host: the guest goes on
        return pb.HostVmResponse(vm=vm_to_proto(vm, vmx))

    @needs(ADMINISTRATOR)
    async def VerifyGuestDisk(
        self, request: pb.VerifyGuestDiskRequest, user: str | None
    ) -> common_pb2.GuestDiskReport:
        """Reads the guest's writes back: through the VM's open disks if it runs here,
        else by opening its first disk read-only (FileLocked while another host runs
        it, or until a dead holder's lock has gone stale)."""
        vm = vm_from_proto(request.vm)
        vm_uuid = validate.uuid(vm.uuid, "vm.uuid")
        check_disks(vm)
        if not vm.disks:
            raise InvalidState(f"{vm.name} has no disks")
        if request.acked_seq < 0:
            raise InvalidArgument(f"acked_seq must be >= 0, got {request.acked_seq}")
        vmx = self.vmx.get(vm.name)
        if vmx is not None and vmx.disks and vmx.vm_uuid == vm_uuid:
            report = await vmx.verify(request.acked_seq)
        else:
            disk = await open_disk(self._files(vm), vm.disks[0].path, LockMode.READ_ONLY)
            try:
                report = await verify_guest_disk(disk, vm_uuid, request.acked_seq)
            finally:
                await disk.close()
        return report_to_proto(report, self.kernel.spec.name)

    def halt(self) -> None:
        """The host stops at once (a crash): no more heartbeats, renewals or guest I/O."""
        if self._ticker is not None:
            self._ticker.cancel()
        self.storage.halt()
        for vmx in self.vmx.values():
            vmx.kill()
        self.vmx.clear()
        self.runtime.halt()  # and whatever else this boot had under way (disk I/O)

    async def close(self) -> None:
        """The host shuts down: its datastores' heartbeats and renewals end, its
        paths to the array close, and every task of this boot is gone on return."""
        await self.storage.close()
        await self.runtime.stop()

    @needs(ADMINISTRATOR)
    async def FormatVmfs(self, request: pb.FormatVmfsRequest, user: str | None) -> pb.HostDatastore:
        validate.host_name(request.label, "label")
        volume = validate.uuid(request.uuid)
        t = request.target
        capacity = await self.storage.format_vmfs(
            t.endpoint, t.thumbprint, t.lun, request.label, request.lock_mode, volume
        )
        return pb.HostDatastore(
            name=request.label, type="vmfs", capacity_bytes=capacity, lock_mode=request.lock_mode
        )

    @needs(ADMINISTRATOR)
    async def MountDatastore(
        self, request: pb.MountDatastoreRequest, user: str | None
    ) -> pb.HostDatastore:
        validate.host_name(request.name, "name")
        t = request.target
        if request.sioc_threshold_ms:
            congestion_threshold_s(request.sioc_threshold_ms)  # checked before mounting
        mounted = await self.storage.mount(
            request.name, request.type, t.endpoint, t.thumbprint, t.lun, t.export
        )
        if request.sioc_threshold_ms:
            self.scheduler.set_congestion_threshold(request.name, request.sioc_threshold_ms)
        return datastore_to_proto(mounted)

    @needs(ADMINISTRATOR)
    async def UnmountDatastore(
        self, request: pb.UnmountDatastoreRequest, user: str | None
    ) -> pb.UnmountDatastoreResponse:
        in_use = [vm.name for vm in self.kernel.vms() if vm.datastore == request.name]
        await self.storage.unmount(request.name, in_use)
        return pb.UnmountDatastoreResponse()

    @needs(SESSION)
    async def QueryVmfsVolume(self, request: pb.ArrayTarget, user: str | None) -> pb.VmfsVolumeInfo:
        found = await self.storage.probe_vmfs(request.endpoint, request.thumbprint, request.lun)
        if found is None:
            return pb.VmfsVolumeInfo()
        mode = {VolumeLockMode.ATS_ONLY: "ats-only", VolumeLockMode.ATS_SCSI: "ats+scsi"}
        return pb.VmfsVolumeInfo(
            found=True,
            label=found.label,
            uuid=str(found.uuid),
            lock_mode=mode.get(found.lock_mode, ""),
            capacity_bytes=found.blocks * found.block_size,
        )

    @needs(SESSION)
    async def ListDatastores(
        self, request: pb.HostListDatastoresRequest, user: str | None
    ) -> pb.HostListDatastoresResponse:
        datastores = await self.storage.datastores()
        return pb.HostListDatastoresResponse(datastores=[datastore_to_proto(d) for d in datastores])

    @needs(SESSION)
    async def QueryLock(self, request: pb.HostLockRequest, user: str | None) -> pb.HostLockInfo:
        validate.text(request.path, "path", 1024)
        return lock_to_proto(await self.storage.query_lock(request.datastore, request.path))

    @needs(ADMINISTRATOR)
    async def BreakStaleLock(
        self, request: pb.HostLockRequest, user: str | None
    ) -> pb.HostLockInfo:
        validate.text(request.path, "path", 1024)
        return lock_to_proto(await self.storage.break_stale_lock(request.datastore, request.path))

    @needs(SESSION)
    def ListVms(self, request: pb.ListHostVmsRequest, user: str | None) -> pb.ListHostVmsResponse:
        vms = [
            vm_to_proto(vm, self.vmx.get(vm.name))
            for vm in self.kernel.vms()
            if vm.name not in self.fdm.restarting  # HA's, until it runs or is gone
        ]
        for vm in vms:
            if vm.name in self.powering_on:
                vm.powered_on = False  # off until its power-on completes, as vSphere says
        return pb.ListHostVmsResponse(vms=vms)

    # -- the VMkernel ------------------------------------------------------------------

    @needs(SESSION)
    def GetHostStats(self, request: pb.GetHostStatsRequest, user: str | None) -> kpb.HostStats:
        """As of the kernel's last period (at most a second ago while VMs run)."""
        io = [datastore_io(self.scheduler, name) for name in sorted(self.storage.files)]
        return host_stats_to_proto(self.kernel, io)

    @needs(ADMINISTRATOR)
    def SetSiocThreshold(
        self, request: pb.SiocThresholdRequest, user: str | None
    ) -> kpb.DatastoreIo:
        if request.datastore not in self.storage.files:
            raise NotFound(
                f"datastore {request.datastore[:80]!r} is not mounted on {self.kernel.spec.name}"
            )
        self.scheduler.set_congestion_threshold(request.datastore, request.threshold_ms)
        return datastore_io(self.scheduler, request.datastore)

    @needs(SESSION)
    def GetVmStats(self, request: pb.HostVmRequest, user: str | None) -> kpb.VmStats:
        vm = self.kernel.vm(request.name)
        if not vm.powered_on:
            raise InvalidPowerState(
                f"{vm.name} is powered off; a VM has statistics only while it runs"
            )
        return vm_stats_to_proto(self.kernel, vm.name)

    @needs(ADMINISTRATOR)
    def UpdateMemorySettings(
        self, request: pb.UpdateMemorySettingsRequest, user: str | None
    ) -> kpb.HostMemorySettings:
        settings = self.kernel.memory.settings
        if request.HasField("share_force_salting"):
            settings = replace(settings, share_force_salting=request.share_force_salting)
        if request.HasField("page_sharing_disabled"):
            settings = replace(settings, page_sharing=not request.page_sharing_disabled)
        if request.HasField("share_scan_period"):
            settings = replace(settings, share_scan_period=request.share_scan_period)
        settings = self.kernel.set_memory_settings(settings)
        return kpb.HostMemorySettings(
            share_force_salting=settings.share_force_salting,
            page_sharing_disabled=not settings.page_sharing,
            share_scan_period=settings.share_scan_period,
        )

    @needs(ADMINISTRATOR)
    def ReconfigureVm(
        self, request: pb.ReconfigureVmRequest, user: str | None
    ) -> pb.HostVmResponse:
        wanted = vm_from_proto(request.vm)
        vm = self.kernel.reconfigure(wanted.name, wanted.resources, wanted.nics, wanted.pci_devices)
        if vm.powered_on and vm.disks:
            self._set_disk_allocation(vm)
        return pb.HostVmResponse(vm=vm_to_proto(vm, self.vmx.get(vm.name)))

    @needs(ADMINISTRATOR)
    def CreateResourcePool(
        self, request: pb.CreateResourcePoolRequest, user: str | None
    ) -> kpb.ResourcePools:
        spec = request.pool
        cpu, memory = pool_allocations_from_proto(spec)
        self.kernel.create_resource_pool(spec.name, spec.parent, cpu, memory)
        return resource_pools_to_proto(self.kernel)

    @needs(ADMINISTRATOR)
    def UpdateResourcePool(
        self, request: pb.UpdateResourcePoolRequest, user: str | None
    ) -> kpb.ResourcePools:
        """Changes the allocations given; a pool keeps its parent (none is moved)."""
        spec = request.pool
        current = self.kernel.resource_pool_config(spec.name)  # not the root, and known
        if not (spec.HasField("cpu") or spec.HasField("memory")):
            raise InvalidArgument(
                f"nothing to change in resource pool {spec.name!r}: give cpu or memory"
            )
        if spec.parent not in ("", current.parent):
            raise InvalidArgument(
                f"resource pool {spec.name!r} is in {current.parent!r}; an update does not "
                f"move it (leave parent empty), got parent {spec.parent!r}"
            )
        cpu, memory = pool_allocations_from_proto(spec, (current.cpu, current.memory))
        self.kernel.update_resource_pool(spec.name, cpu, memory)
        return resource_pools_to_proto(self.kernel)

    @needs(ADMINISTRATOR)
    def DestroyResourcePool(
        self, request: pb.DestroyResourcePoolRequest, user: str | None
    ) -> kpb.ResourcePools:
        moved = self.kernel.destroy_resource_pool(request.name)
        return resource_pools_to_proto(self.kernel, moved)

    @needs(SESSION)
    def ListResourcePools(
        self, request: pb.ListResourcePoolsRequest, user: str | None
    ) -> kpb.ResourcePools:
        return resource_pools_to_proto(self.kernel)

    @needs(ADMINISTRATOR)
    def AddVirtualSwitch(
        self, request: pb.AddVirtualSwitchRequest, user: str | None
    ) -> kpb.HostNetwork:
        v = request.vswitch
        security = security_from_proto(v.security).over(STANDARD_SWITCH_SECURITY)
        self.kernel.add_vswitch(v.name, tuple(v.uplinks), security)
        return network_to_proto(self.kernel)

    @needs(ADMINISTRATOR)
    def AddPortGroup(self, request: pb.AddPortGroupRequest, user: str | None) -> kpb.HostNetwork:
        p = request.port_group
        self.kernel.add_port_group(p.name, p.vswitch, p.vlan, security_from_proto(p.security))
        return network_to_proto(self.kernel)

    @needs(SESSION)
    def GetNetwork(self, request: pb.GetNetworkRequest, user: str | None) -> kpb.HostNetwork:
        network = network_to_proto(self.kernel)
        network.vmknics.extend(self.vmknics())
        return network

    @needs(ADMINISTRATOR)
    def SendFrame(self, request: pb.SendFrameRequest, user: str | None) -> kpb.HostDelivery:
        vm = self.kernel.vm(request.vm)
        if not vm.powered_on:
            raise InvalidPowerState(f"{vm.name} is powered off: its guest sends nothing")
        nic = request.nic or "ethernet0"
        vnic = self.kernel.network.vnic(vm.name, nic)
        frame = frame_from_proto(request.frame, src_mac=vnic.effective_mac)
        delivery = self.kernel.network.send(vm.name, nic, frame)
        return delivery_to_proto(self.kernel.spec.name, delivery)

    @needs(ADMINISTRATOR)
    def ReceiveFrame(self, request: pb.ReceiveFrameRequest, user: str | None) -> kpb.HostDelivery:
        delivery = self.kernel.network.receive(request.uplink, frame_from_proto(request.frame))
        return delivery_to_proto(self.kernel.spec.name, delivery)

    @needs(ADMINISTRATOR)
    def RemoveVirtualSwitch(
        self, request: pb.RemoveVirtualSwitchRequest, user: str | None
    ) -> kpb.HostNetwork:
        self.kernel.remove_vswitch(request.name)
        return network_to_proto(self.kernel)

    @needs(ADMINISTRATOR)
    def RemovePortGroup(
        self, request: pb.RemovePortGroupRequest, user: str | None
    ) -> kpb.HostNetwork:
        self.kernel.remove_port_group(request.name)
        return network_to_proto(self.kernel)

    @needs(ADMINISTRATOR)
    def UpdateVirtualSwitch(
        self, request: pb.UpdateVirtualSwitchRequest, user: str | None
    ) -> kpb.HostNetwork:
        """The uplinks given replace the failover order; the policy fields given
        change, the others stay."""
        update = request.update
        current = self.kernel.network.vswitch(update.name)  # NotFound first
        changes = security_changes(update.security)
        if not (update.HasField("uplinks") or changes):
            raise InvalidArgument(f"nothing to change on {update.name}: give uplinks or security")
        uplinks = tuple(update.uplinks.uplinks) if update.HasField("uplinks") else None
        security = replace(current.security, **changes) if changes else None
        self.kernel.update_vswitch(update.name, uplinks, security)
        return network_to_proto(self.kernel)

    @needs(ADMINISTRATOR)
    def UpdatePortGroup(
        self, request: pb.UpdatePortGroupRequest, user: str | None
    ) -> kpb.HostNetwork:
        """The VLAN given, and the overrides set or sent back to inherit, change; the
        others stay."""
        update = request.update
        current = self.kernel.network.port_group(update.name)  # NotFound first
        changes = security_changes(update.security, update.inherit)
        if not (update.HasField("vlan") or changes):
            raise InvalidArgument(
                f"nothing to change on port group {update.name!r}: give vlan, security or inherit"
            )
        vlan = update.vlan if update.HasField("vlan") else None
        security = replace(current.security, **changes) if changes else None
        self.kernel.update_port_group(update.name, vlan, security)
        return network_to_proto(self.kernel)

    @needs(SESSION)
    def ListPciDevices(self, request: pb.ListPciDevicesRequest, user: str | None) -> kpb.PciDevices:
        pci = self.kernel.pci
        info = {i.id: i for i in pci.passthru_info()}
        return kpb.PciDevices(
            host=self.kernel.spec.name,
            devices=[
                kpb.PciDevice(
                    id=d.id,
                    vendor_name=d.vendor_name,
                    device_name=d.device_name,
                    passthru_enabled=info[d.id].enabled,
                    vm=info[d.id].vm,
                )
                for d in pci.devices()
            ],
        )

    @needs(ADMINISTRATOR)
    def UpdatePassthruConfig(
        self, request: pb.UpdatePassthruRequest, user: str | None
    ) -> kpb.PciDevice:
        info = self.kernel.set_passthru(request.id, request.enabled)
        device = self.kernel.pci.device(info.id)
        return kpb.PciDevice(
            id=device.id,
            vendor_name=device.vendor_name,
            device_name=device.device_name,
            passthru_enabled=info.enabled,
            vm=info.vm,
        )

    @needs(SESSION)
    async def GuestReportLuns(self, request: pb.HostVmRequest, user: str | None) -> kpb.GuestLuns:
        """The guest scans its virtual SCSI adapters: it can name only its own disks."""
        vm = self.kernel.vm(request.name)
        if not vm.powered_on:
            raise InvalidPowerState(f"{vm.name} is powered off: it has no running guest")
        vmx = self.vmx.get(vm.name)
        if vm.disks and not (vmx and vmx.disks):
            raise InvalidState(f"{vm.name}'s disks are not open on {self.kernel.spec.name}")
        adapter = VirtualScsi.for_vm(vm, vmx.disks if vmx else [])
        return kpb.GuestLuns(
            vm=vm.name,
            luns=[
                kpb.GuestLun(
                    address=f"scsi{f.bus}:{f.target}",
                    bus=f.bus,
                    target=f.target,
                    lun=f.lun,
                    vendor=f.vendor,
                    product=f.product,
                    capacity_bytes=f.capacity_bytes,
                )
                for f in await guest_scan(adapter)
            ],
        )

    @needs(ADMINISTRATOR)
    def SetGuestMac(self, request: kpb.SetGuestMacRequest, user: str | None) -> kpb.ConnectedNic:
        """The guest OS sets its adapter's MAC (empty: the configured one again). Only
        the port changes: the VM's configuration keeps its MAC, and the next power-on
        connects the adapter with it."""
        vm = self.kernel.vm(request.vm)
        if not vm.powered_on:
            raise InvalidPowerState(f"{vm.name} is powered off: it has no guest to set a MAC")
        network = self.kernel.network
        nic = request.nic or "ethernet0"
        mac = request.mac or network.vnic(vm.name, nic).mac
        return connected_nic_to_proto(network, network.set_effective_mac(vm.name, nic, mac))
