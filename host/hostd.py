"""hostd: the management agent of one ESXi host, as plain Python.

Each method is named like its HostAgent RPC, takes the request message and the
caller's user name, and returns the response message or raises a VimFault.
`authenticate` is the one session check in front of all of them (only Login is
public); who may do what is decided here (accounts), what is possible by the kernel.
The gRPC server and the in-process engine both go through `authenticate`, so the
two engines enforce exactly the same rules.
"""

from __future__ import annotations

import random
import re
import uuid
from typing import Any

from vsim import validate
from vsim.faults import InvalidArgument
from vsim.host.accounts import ROLES, HostAccounts
from vsim.host.kernel import HostKernel, VmConfig
from vsim.host.storage_stack import Datastore, LockStatus, StorageStack
from vsim.v1 import host_agent_pb2 as pb

USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
PUBLIC_METHODS = frozenset({"Login"})


def vm_to_proto(vm: VmConfig) -> pb.HostVm:
    return pb.HostVm(
        name=vm.name,
        uuid=vm.uuid,
        cpus=vm.cpus,
        memory_mb=vm.memory_mb,
        powered_on=vm.powered_on,
        guest_os=vm.guest_os,
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
        self, kernel: HostKernel, accounts: HostAccounts, storage: StorageStack | None = None
    ) -> None:
        self.kernel = kernel
        self.accounts = accounts
        self.storage = storage or StorageStack(
            kernel.spec.host_uuid,
            kernel.spec.name,
            kernel.clock,
            random.Random(0),
        )

    def authenticate(self, token: str | None, method: str) -> str | None:
        """The one check before every method: the caller's user (None for Login)."""
        if method in PUBLIC_METHODS:
            return None
        return self.accounts.user_of(token)

    def call(self, method: str, request: Any, token: str | None) -> Any:
        """Authenticates and dispatches one call, as the gRPC chokepoint does."""
        return getattr(self, method)(request, self.authenticate(token, method))

    def Login(self, request: pb.HostLoginRequest, user: str | None) -> pb.HostLoginResponse:
        return pb.HostLoginResponse(
            session=self.accounts.login(request.user_name, request.password)
        )

    def GetHostInfo(self, request: pb.GetHostInfoRequest, user: str | None) -> pb.HostInfo:
        k = self.kernel
        return pb.HostInfo(
            name=k.spec.name,
            uuid=k.spec.uuid,
            cpu_cores=k.spec.cpu_cores,
            cpu_mhz=k.spec.cpu_mhz,
            memory_mb=k.spec.memory_mb,
            memory_used_mb=k.memory_used_mb,
            vms=k.vm_count(),
            vms_powered_on=k.powered_on_count(),
            boot_time=k.boot_time,
        )

    def CreateUser(self, request: pb.CreateUserRequest, user: str | None) -> pb.CreateUserResponse:
        self.accounts.require_admin(user)
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

    def RegisterVm(self, request: pb.RegisterVmRequest, user: str | None) -> pb.RegisterVmResponse:
        self.accounts.require_admin(user)
        vm = request.vm
        validate.text(vm.uuid, "vm.uuid", 64)
        validate.text(vm.guest_os, "vm.guest_os", 64)
        self.kernel.register_vm(
            VmConfig(vm.name, vm.uuid, vm.cpus, vm.memory_mb, vm.guest_os or "otherGuest64")
        )
        return pb.RegisterVmResponse()

    def UnregisterVm(self, request: pb.HostVmRequest, user: str | None) -> pb.HostVmResponse:
        self.accounts.require_admin(user)
        return pb.HostVmResponse(vm=vm_to_proto(self.kernel.unregister_vm(request.name)))

    def PowerOnVm(self, request: pb.HostVmRequest, user: str | None) -> pb.HostVmResponse:
        self.accounts.require_admin(user)
        return pb.HostVmResponse(vm=vm_to_proto(self.kernel.power_on(request.name)))

    def PowerOffVm(self, request: pb.HostVmRequest, user: str | None) -> pb.HostVmResponse:
        self.accounts.require_admin(user)
        return pb.HostVmResponse(vm=vm_to_proto(self.kernel.power_off(request.name)))

    async def FormatVmfs(self, request: pb.FormatVmfsRequest, user: str | None) -> pb.HostDatastore:
        self.accounts.require_admin(user)
        validate.host_name(request.label, "label")
        try:
            volume = uuid.UUID(request.uuid)
        except ValueError:
            raise InvalidArgument(f"uuid {request.uuid[:40]!r} is not a UUID") from None
        t = request.target
        capacity = await self.storage.format_vmfs(
            t.endpoint, t.thumbprint, t.lun, request.label, request.lock_mode, volume
        )
        return pb.HostDatastore(
            name=request.label, type="vmfs", capacity_bytes=capacity, lock_mode=request.lock_mode
        )

    async def MountDatastore(
        self, request: pb.MountDatastoreRequest, user: str | None
    ) -> pb.HostDatastore:
        self.accounts.require_admin(user)
        validate.host_name(request.name, "name")
        t = request.target
        mounted = await self.storage.mount(
            request.name, request.type, t.endpoint, t.thumbprint, t.lun, t.export
        )
        return datastore_to_proto(mounted)

    async def ListDatastores(
        self, request: pb.HostListDatastoresRequest, user: str | None
    ) -> pb.HostListDatastoresResponse:
        datastores = await self.storage.datastores()
        return pb.HostListDatastoresResponse(datastores=[datastore_to_proto(d) for d in datastores])

    async def QueryLock(self, request: pb.HostLockRequest, user: str | None) -> pb.HostLockInfo:
        validate.text(request.path, "path", 1024)
        return lock_to_proto(await self.storage.query_lock(request.datastore, request.path))

    async def BreakStaleLock(
        self, request: pb.HostLockRequest, user: str | None
    ) -> pb.HostLockInfo:
        self.accounts.require_admin(user)
        validate.text(request.path, "path", 1024)
        return lock_to_proto(await self.storage.break_stale_lock(request.datastore, request.path))

    def ListVms(self, request: pb.ListHostVmsRequest, user: str | None) -> pb.ListHostVmsResponse:
        return pb.ListHostVmsResponse(vms=[vm_to_proto(vm) for vm in self.kernel.vms()])
