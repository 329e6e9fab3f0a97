"""Hosts as vCenter manages them: adding (thumbprint check, vpxuser), connections,
heartbeats, re-attaching after a restart, removing.

vCenter keeps one line per host (a `HostPort` from the engine) and a hostd session
as vpxuser on it; every host call goes through `call`, which logs in again when a
host has forgotten the session (it rebooted) and marks a silent host not responding.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from vsim import cpu_features, validate
from vsim.faults import (
    DuplicateName,
    EVCAdmissionFailed,
    HostConnectFault,
    HostNotConnected,
    InvalidArgument,
    InvalidLogin,
    InvalidState,
    NotAuthenticated,
    NotFound,
    SSLVerifyFault,
    VimFault,
)
from vsim.passwords import generate_password
from vsim.runtime import Runtime
from vsim.spec import HostSpec
from vsim.tls import normalize_thumbprint
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.engine import HostEngine, HostPort
from vsim.vcenter.events import EventLog
from vsim.vcenter.inventory import HostRecord, Inventory, MachineRecord
from vsim.vcenter.secrets import SecretBox

log = logging.getLogger("vsim.vcenter.hosts")

EVC_META = "evc_mode"
"""The inventory's meta key holding the cluster's EVC mode."""
VPXUSER = "vpxuser"
VPXUSER_PASSWORD_LENGTH = 32
HEARTBEAT_INTERVAL = 10.0
"""Seconds (simulated) between vCenter's checks of each host."""
HEARTBEAT_TIMEOUT = 5.0
"""Seconds (simulated) a host has to answer a heartbeat before it is marked not
responding."""
VIM_PASSWORD_EXPIRATION = 30 * 86400.0
"""VirtualCenter.VimPasswordExpirationInDays (30 days): vpxuser's password lifetime."""
CONNECTED = pb.CONNECTION_STATE_CONNECTED
NOT_RESPONDING = pb.CONNECTION_STATE_NOT_RESPONDING
ON, OFF = pb.POWER_STATE_POWERED_ON, pb.POWER_STATE_POWERED_OFF
PASS_THUMBPRINT = "verify it and pass it as ssl_thumbprint to add the host"
"""How AddHost's SSLVerifyFault ends when the caller has not verified the certificate
(the CLI puts its own flag in its place)."""


@dataclass
class HostLink:
    port: HostPort
    session: str

    async def call(self, method: str, request: Any) -> Any:
        return await self.port.call(method, request, self.session)


HostCall = Callable[[str, Any], Awaitable[Any]]
"""A call to one host's hostd, as vpxuser: call(method, request)."""


class HostManager:
    def __init__(
        self,
        inventory: Inventory,
        engine: HostEngine,
        secrets: SecretBox,
        events: EventLog,
        runtime: Runtime,
        busy: Callable[[str, str], bool],
    ) -> None:
        """busy(kind, name) tells whether a task is under way on that entity; runtime
        is vCenter's (host UUIDs, root's and vpxuser's passwords, heartbeat checks)."""
        self._busy = busy
        self._inaccessible: dict[str, set[str]] = {}
        """Per host, the VMs it could not register when it connected."""
        self.prepare_storage: Callable[[str, HostCall], Awaitable[bool]] | None = None
        """Mounts what a host lacks; False if something stayed unmounted (tried again
        at the host's next heartbeat)."""
        self._unmounted: set[str] = set()
        """Connected hosts that could not mount every datastore last time."""
        """Called as a host is (re)connected, before its VMs are brought in line (their
        files live on its datastores): mounts the datastores it lacks."""
        self._inventory = inventory
        self._engine = engine
        self._secrets = secrets
        self._events = events
        self._runtime = runtime
        self._clock = runtime.clock
        self._links: dict[str, HostLink] = {}
        self._rotating: set[str] = set()
        self.entering_maintenance: set[str] = set()
        """Hosts whose EnterMaintenanceMode_Task is under way: they take no new VM."""
        self._checks: dict[str, asyncio.Lock] = {}
        """Per host: held by its heartbeat check and by its removal, so a check that
        reattaches a host never overlaps the host's removal."""

    # queries

    def record(self, name: str) -> HostRecord:
        host = self._inventory.host(name)
        if host is None:
            raise NotFound(f"no host named {name[:80]!r} in the inventory")
        return host

    def connected(self, name: str) -> HostRecord:
        host = self.record(name)
        if host.connection_state != CONNECTED or name not in self._links:
            raise HostNotConnected(f"{name} is not connected (not responding); try again later")
        return host

    def usable(self, name: str) -> HostRecord:
        """A connected host that may start a VM: not in maintenance mode nor entering it."""
        host = self.connected(name)
        if host.in_maintenance or name in self.entering_maintenance:
            state = "in" if host.in_maintenance else "entering"
            raise InvalidState(
                f"{name} is {state} maintenance mode: it powers on no VM and receives no migration"
            )
        return host

    def connected_names(self) -> list[str]:
        """The connected hosts, by name (from the inventory alone)."""
        return [h.name for h in self._inventory.hosts() if h.connection_state == CONNECTED]

    def usable_names(self) -> list[str]:
        """The connected hosts that may start VMs (none in or entering maintenance mode)."""
        return [
            h.name
            for h in self._inventory.hosts()
            if h.connection_state == CONNECTED
            and not h.in_maintenance
            and h.name not in self.entering_maintenance
        ]

    def list(self) -> list[pb.Host]:
        hosts = []
        for record in self._inventory.hosts():
            spec = self.public_spec(record.name)
            hosts.append(
                pb.Host(
                    name=record.name,
                    connection_state=record.connection_state,
                    endpoint=record.endpoint,
                    ssl_thumbprint=record.thumbprint,
                    cpu_cores=spec.cpu_cores,
                    cpu_mhz=spec.cpu_mhz,
                    memory_mb=spec.memory_mb,
                    memory_used_mb=record.memory_used_mb,
                    vms=record.vms,
                    vms_powered_on=record.vms_powered_on,
                    uuid=spec.uuid,
                    in_maintenance_mode=bool(record.in_maintenance),
                    cpu_model=spec.cpu_model,
                    vmotion_encryption=spec.vmotion_encryption,
                )
            )
        return hosts

    def evc_mode(self) -> str:
        """The cluster's EVC mode ("": none)."""
        return self._inventory.meta(EVC_META) or ""

    def guest_cpu(self, host: str) -> str:
        """The CPU generation a VM powering on on `host` sees."""
        return cpu_features.guest_features(self.public_spec(host).cpu_model, self.evc_mode())

    def record_guest_cpu(self, vm_name: str, host: str) -> None:
        """Notes the features a VM just found running (or powered on) on `host` sees."""
        vm = self._inventory.require_vm(vm_name)
        vm.cpu_features = self.guest_cpu(host)
        self._inventory.set_vm_config(vm)

    def names_by_uuid(self) -> dict[str, str]:
        """hardware UUID -> host name, for the hosts in the inventory."""
        return {self.public_spec(h.name).uuid: h.name for h in self._inventory.hosts()}

    def public_spec(self, name: str) -> HostSpec:
        """The host's hardware, without its root password."""
        machine = self._inventory.machine(name)
        if machine is None:
            raise NotFound(f"no machine record for {name}")
        return HostSpec.from_json(machine.spec_json)

    def spec(self, name: str) -> HostSpec:
        """The host's full spec, root password included, to boot it."""
        machine = self._inventory.machine(name)
        if machine is None:
            raise NotFound(f"no machine record for {name}")
        return replace(
            HostSpec.from_json(machine.spec_json),
            root_password=self._secrets.open(machine.root_password_enc),
        )

    # adding and removing

    def check_add(self, request: pb.AddHostRequest) -> HostSpec:
        """Validates an AddHost request; returns the spec to provision if needed."""
        validate.host_name(request.name)
        if self._inventory.host(request.name) is not None:
            raise DuplicateName(f"host {request.name} is already in the inventory")
        if request.ssl_thumbprint:
            try:
                normalize_thumbprint(request.ssl_thumbprint)
            except ValueError as e:
                raise InvalidArgument(f"ssl_thumbprint: {e}") from None
        defaults = HostSpec(request.name)
        spec = HostSpec(
            name=request.name,
            uuid=str(self._runtime.uuid()),
            cpu_cores=request.cpu_cores or defaults.cpu_cores,
            cpu_mhz=request.cpu_mhz or defaults.cpu_mhz,
            memory_mb=request.memory_mb or defaults.memory_mb,
            kernel_period_s=request.kernel_period_s or defaults.kernel_period_s,
            cpu_model=request.cpu_model or defaults.cpu_model,
            vmotion_encryption=(
                request.vmotion_encryption
                if request.HasField("vmotion_encryption")
                else defaults.vmotion_encryption
            ),
            root_password=generate_password(20, self._runtime.secure_random),
        )
        self.check_evc(spec.validated())
        return spec

    def check_evc(self, spec: HostSpec) -> None:
        """A host joins an EVC cluster only if its CPU has every feature of the mode."""
        mode = self.evc_mode()
        lacking = cpu_features.missing(mode, spec.cpu_model) if mode else []
        if lacking:
            raise EVCAdmissionFailed(
                f"{spec.name}'s CPU ({spec.cpu_model}) lacks {', '.join(lacking[:8])} of the "
                f"cluster's EVC mode {mode}; lower the EVC mode or add a newer host",
                host=spec.name,
            )

    async def provision(
        self, spec: HostSpec, request: pb.AddHostRequest | None = None
    ) -> tuple[HostSpec, str]:
        """Boots the machine for spec, recording it first. An existing record wins (the
        hardware is already there), except that a machine an earlier AddHost provisioned
        but never added is provisioned again when `request` asks for other sizes: nothing
        uses it yet. Returns the spec booted and the thumbprint the host reports through
        the engine."""
        machine = self._inventory.machine(spec.name)
        if machine is not None and request is not None and self._inventory.host(spec.name) is None:
            differences = size_differences(HostSpec.from_json(machine.spec_json), request)
            if differences:
                log.info("provisioning %s again: %s", spec.name, "; ".join(differences))
                await self.retire_machine(spec.name)
                machine = None
        if machine is None:
            public = replace(spec, root_password="")
            self._inventory.add_machine(
                MachineRecord(spec.name, public.to_json(), self._secrets.seal(spec.root_password))
            )
        spec = self.spec(spec.name)
        return spec, await self._engine.provision(spec)

    async def add(self, request: pb.AddHostRequest, spec: HostSpec, user: str) -> str:
        """AddHost's work: provision if needed, verify the certificate, create vpxuser."""
        spec, reported = await self.provision(spec, request)
        self.check_evc(spec)  # a machine provisioned earlier has the CPU it has
        port = await self._engine.connect(spec.name)
        try:
            if port.thumbprint != reported:
                raise SSLVerifyFault(
                    f"{spec.name} reports thumbprint {reported} but {port.endpoint} presents "
                    f"{port.thumbprint}: something else answers at the host's address",
                    thumbprint=port.thumbprint,
                )
            expected = (
                normalize_thumbprint(request.ssl_thumbprint) if request.ssl_thumbprint else ""
            )
            if port.thumbprint != expected:
                raise SSLVerifyFault(
                    f"the certificate of {spec.name} ({port.endpoint}) has thumbprint "
                    f"{port.thumbprint}; {PASS_THUMBPRINT}",
                    thumbprint=port.thumbprint,
                )
            root = await port.call(
                "Login", hpb.HostLoginRequest(user_name="root", password=spec.root_password), None
            )
            vpx_password = generate_password(VPXUSER_PASSWORD_LENGTH, self._runtime.secure_random)
            await port.call(
                "CreateUser",
                hpb.CreateUserRequest(user_name=VPXUSER, password=vpx_password, role="Admin"),
                root.session,
            )
            session = await self._login_vpxuser(port, vpx_password)
        except BaseException:
            await port.close()
            raise
        with self._inventory.transaction():
            self._inventory.add_host(
                HostRecord(
                    spec.name,
                    self._secrets.seal(vpx_password),
                    port.endpoint,
                    port.thumbprint,
                    CONNECTED,
                    vpx_password_set=self._clock.now(),
                )
            )
            self._events.post(
                "HostAddedEvent",
                f"Added host {spec.name} to the cluster",
                user=user,
                host=spec.name,
            )
        link = self._links[spec.name] = HostLink(port, session)
        if self.prepare_storage is not None:
            # Its datastores, as on every (re)connect; one it cannot mount is logged and
            # tried again when it reconnects, and the host is added all the same.
            try:
                self._note_mounted(spec.name, await self.prepare_storage(spec.name, link.call))
            except VimFault as fault:
                self._unmounted.add(spec.name)
                log.warning("%s was added but cannot mount its datastores: %s", spec.name, fault)
        return spec.name

    async def retire_machine(self, name: str) -> None:
        """Stops and forgets a machine that is not in the inventory (provisioned by an
        AddHost that failed): the engine first, so a record is never missing for a
        machine that still runs."""
        if self._inventory.host(name) is not None:
            raise InvalidState(f"{name} is in the inventory; remove the host instead")
        await self._engine.decommission(name)
        self._inventory.remove_machine(name)

    def check_remove(self, name: str) -> None:
        """A connected host must have no powered-on VMs; one that is not responding may
        go with its VMs (as in vSphere: what ran there is gone with the host). A host
        vCenter provisioned but never added (its AddHost failed) may always go."""
        if self._inventory.host(name) is None and self._inventory.machine(name) is not None:
            return
        host = self.record(name)
        if host.vms_powered_on and host.connection_state == CONNECTED:
            raise InvalidState(
                f"{name} has {host.vms_powered_on} powered-on VMs; power them off before "
                "removing the host"
            )

    async def remove(self, name: str, user: str) -> str:
        if self._inventory.host(name) is None:
            await self.retire_machine(name)
            self._events.post(
                "HostRemovedEvent",
                f"Retired {name}, provisioned by an AddHost that did not add it",
                user=user,
                host=name,
            )
            return name
        # A heartbeat check under way finishes first (it may be re-attaching the host);
        # any later check finds the host gone.
        async with self._check_lock(name):
            link = self._links.pop(name, None)
            if link is not None:
                await link.port.close()
            self._inventory.remove_host(name)
            await self._engine.decommission(name)
        self._events.post("HostRemovedEvent", f"Removed host {name}", user=user, host=name)
        return name

    def _check_lock(self, name: str) -> asyncio.Lock:
        return self._checks.setdefault(name, asyncio.Lock())

    # calls to hosts

    async def call(self, name: str, method: str, request: Any) -> Any:
        """Calls hostd on a connected host as vpxuser."""
        self.connected(name)
        link = self._links[name]
        try:
            return await link.call(method, request)
        except NotAuthenticated:
            # The host forgot our session (it rebooted, or vpxuser's password was just
            # changed): log in again once.
            link.session = await self._login(name, link.port)
            return await link.call(method, request)
        except HostConnectFault:
            self._mark_not_responding(name)
            raise HostNotConnected(
                f"{name} stopped answering during {method}; whether it ran there is known "
                "once the host reconnects"
            ) from None

    async def rotate_vpxuser(self, name: str) -> None:
        """Gives vpxuser a new random password on the host (as vCenter does every
        VimPasswordExpirationInDays). The new password is stored as pending before the
        host is asked, so whatever happens to the call vCenter knows both passwords;
        the next login settles which one the host has."""
        link = self._links[name]
        link.session = await self._login(name, link.port)  # settles an earlier attempt
        password = generate_password(VPXUSER_PASSWORD_LENGTH, self._runtime.secure_random)
        self._inventory.update_host(name, vpx_password_next_enc=self._secrets.seal(password))
        request = hpb.CreateUserRequest(user_name=VPXUSER, password=password, role="Admin")
        self._rotating.add(name)
        try:
            await link.call("CreateUser", request)
        finally:
            self._rotating.discard(name)
        link.session = await self._login(name, link.port)
        self._events.post(
            "HostVpxuserPasswordChangedEvent", f"Changed the vpxuser password on {name}", host=name
        )

    def _vpx_password(self, name: str) -> str:
        """vpxuser's current password on a host (what _login falls back to)."""
        return self._secrets.open(self.record(name).vpx_password_enc)

    async def _login(self, name: str, port: HostPort) -> str:
        """Logs in as vpxuser. When a rotation left a pending password, it is tried
        first: if the host has it, it becomes the current one; if not (and no rotation
        is under way), the host never took it and it is dropped."""
        host = self.record(name)
        pending = host.vpx_password_next_enc
        if pending:
            try:
                session = await self._login_vpxuser(port, self._secrets.open(pending))
            except InvalidLogin:
                if name not in self._rotating:
                    self._inventory.update_host(name, vpx_password_next_enc=None)
            else:
                self._inventory.update_host(
                    name,
                    vpx_password_enc=pending,
                    vpx_password_next_enc=None,
                    vpx_password_set=self._clock.now(),
                )
                return session
        return await self._login_vpxuser(port, self._vpx_password(name))

    async def _login_vpxuser(self, port: HostPort, password: str) -> str:
        reply = await port.call(
            "Login", hpb.HostLoginRequest(user_name=VPXUSER, password=password), None
        )
        return reply.session

    # connection state

    def _mark_not_responding(self, name: str) -> None:
        host = self._inventory.host(name)
        if host is None or host.connection_state == NOT_RESPONDING:
            return
        self._inventory.update_host(name, connection_state=NOT_RESPONDING)
        self._events.post("HostNotRespondingEvent", f"Host {name} is not responding", host=name)

    async def attach(self, name: str, boot: bool) -> None:
        """(Re)connects to a host in the inventory: boots it first when `boot` and the
        engine has lost it, checks its certificate, logs in as vpxuser, and brings the
        inventory's VMs in line with what the host runs."""
        host = self.record(name)
        port = None
        try:
            if boot:
                if not await self._engine.can_boot(name):
                    # Its machine is down: not responding now, booted by the monitor
                    # once the machine is back (no wait for a boot that cannot happen).
                    raise HostConnectFault(f"{name}'s machine is down")
                await self._engine.provision(self.spec(name))
            port = await self._engine.connect(name)
            if port.thumbprint != host.thumbprint:
                raise SSLVerifyFault(
                    f"{name} now presents thumbprint {port.thumbprint}, not the "
                    f"{host.thumbprint} it was added with; remove and add it again",
                    thumbprint=port.thumbprint,
                )
            session = await self._login(name, port)
            link = HostLink(port, session)
            if self.prepare_storage is not None:
                self._note_mounted(name, await self.prepare_storage(name, link.call))
            await self._reconcile(name, link)
            info = await link.call("GetHostInfo", hpb.GetHostInfoRequest())
        except asyncio.CancelledError:  # vCenter is stopping
            if port is not None:
                await port.close()
            raise
        except Exception as exc:  # noqa: BLE001 - one bad host must not stop the others
            log.warning("cannot attach %s: %s", name, exc)
            if port is not None:
                await port.close()
            self._mark_not_responding(name)
            return
        old = self._links.pop(name, None)
        if old is not None:
            await old.port.close()
        self._links[name] = link
        with self._inventory.transaction():
            self._inventory.update_host(
                name,
                connection_state=CONNECTED,
                endpoint=port.endpoint,
                in_maintenance=int(info.in_maintenance_mode),
            )
            if host.connection_state != CONNECTED:
                self._events.post("HostConnectedEvent", f"Host {name} is connected", host=name)

    async def attach_all(self, boot: bool) -> None:
        await asyncio.gather(*(self.attach(h.name, boot) for h in self._inventory.hosts()))

    async def _reconcile(self, name: str, link: HostLink) -> None:
        """The host is the truth for what runs: re-register VMs it lost (a reboot loses
        every powered-on VM) and take power states from it. VMs with a task under way
        are left to that task."""
        reply = await link.call("ListVms", hpb.ListHostVmsRequest())
        on_host = {vm.name: vm for vm in reply.vms}
        await self._adopt_moved(name, on_host)
        await self._unregister_strays(name, link, on_host)
        inaccessible: set[str] = set()
        self._inaccessible[name] = inaccessible
        for vm in self._inventory.vms(host=name):
            if self._busy("vm", vm.name):
                continue
            running = on_host.get(vm.name)
            if running is None:
                request = hpb.RegisterVmRequest(vm=host_vm(vm))
                try:
                    await link.call("RegisterVm", request)
                except NotFound as fault:
                    # Its datastore is not mounted here (unreachable): the VM is
                    # inaccessible, as vSphere shows it, and registered again once
                    # the datastore mounts; the host and its other VMs connect.
                    log.warning("cannot register %s on %s again: %s", vm.name, name, fault)
                    inaccessible.add(vm.name)
                powered_on = False
            else:
                powered_on = running.powered_on
                self._adopt_pool(vm, running.resources.resource_pool)
                if powered_on and not vm.cpu_features:
                    self.record_guest_cpu(vm.name, name)
            state = ON if powered_on else OFF
            if state != vm.power_state:
                self._inventory.set_power_state(vm.name, state)
                kind = "VmPoweredOnEvent" if powered_on else "VmPoweredOffEvent"
                self._events.post(
                    kind,
                    f"{vm.name} on {name} is powered {'on' if powered_on else 'off'} "
                    "(found when reconnecting to the host)",
                    host=name,
                    vm=vm.name,
                )

    async def _adopt_moved(self, name: str, on_host: dict[str, hpb.HostVm]) -> None:
        """A VM this host runs that vCenter has on another host moved here by vMotion
        while vCenter did not hear the end (a lost reply, a restart): vCenter follows
        it, as it follows a VM found running where it was not expected, and takes a
        powered-off copy the old host may have registered again off it."""
        for vm_name, running in sorted(on_host.items()):
            record = self._inventory.vm(vm_name)
            if record is None or record.host == name or not running.powered_on:
                continue
            if self._busy("vm", vm_name):
                continue
            with self._inventory.transaction():
                self._inventory.set_vm_host(vm_name, name)
                self._inventory.set_power_state(vm_name, pb.POWER_STATE_POWERED_ON)
                self._events.post(
                    "VmMigratedEvent",
                    f"{vm_name} runs on {name}, not {record.host} (found when reconnecting "
                    "to the host)",
                    host=name,
                    vm=vm_name,
                )
            old = self._links.get(record.host)
            if old is not None:
                try:
                    await old.call("UnregisterVm", hpb.HostVmRequest(name=vm_name))
                except VimFault as fault:  # not there, or running there: left as it is
                    log.info("%s keeps its %s: %s", record.host, vm_name, fault)

    async def _unregister_strays(
        self, name: str, link: HostLink, on_host: dict[str, hpb.HostVm]
    ) -> None:
        """A powered-off VM registered on the host that vCenter does not have there is
        what a task left whose RegisterVm ran but whose reply was lost (the task
        failed, the host kept it): unregistered, its files left on the datastore.
        VMs with a task under way, or powered on, are left alone."""
        known = {vm.name for vm in self._inventory.vms(host=name)}
        for vm_name, vm in sorted(on_host.items()):
            if vm_name in known or vm.powered_on or self._busy("vm", vm_name):
                continue
            try:
                await link.call("UnregisterVm", hpb.HostVmRequest(name=vm_name))
            except VimFault as fault:
                log.warning("cannot unregister stray %s from %s: %s", vm_name, name, fault)
                continue
            del on_host[vm_name]
            self._events.post(
                "VmRemovedEvent",
                f"{vm_name} was registered on {name} by a task that failed; "
                "unregistered (its files stay on the datastore)",
                host=name,
                vm=vm_name,
            )

    async def _register_inaccessible(self, name: str) -> None:
        """Tries again to mount what the connected host lacks and to register the VMs
        it could not (their datastore was out of reach when it connected)."""
        link = self._links[name]
        try:
            if self.prepare_storage is not None:
                self._note_mounted(name, await self.prepare_storage(name, link.call))
            await self._reconcile(name, link)
        except VimFault as fault:
            log.warning("registering %s's inaccessible VMs: %s", name, fault)

    def _note_mounted(self, name: str, everything: bool) -> None:
        if everything:
            self._unmounted.discard(name)
        else:
            self._unmounted.add(name)

    def _adopt_pool(self, vm: pb.Vm, pool: str) -> None:
        """The host is the truth for its pools: a VM whose pool went (destroyed while
        vCenter did not see it) is recorded in the pool the host moved it to."""
        if vm.resources.resource_pool != pool:
            vm.resources.resource_pool = pool
            self._inventory.set_vm_config(vm)

    async def heartbeat(self, name: str) -> None:
        """One host's check: a connected host answers an authenticated call in time or
        is marked not responding; a host that answers again is re-attached; vpxuser's
        password is rotated where due. Never overlaps the host's removal."""
        async with self._check_lock(name):
            await self._check(name)

    async def _check(self, name: str) -> None:
        record = self._inventory.host(name)
        if record is None:  # removed meanwhile
            return
        if record.connection_state != CONNECTED or name not in self._links:
            if await self._engine.is_running(name):
                await self.attach(name, boot=False)
            elif self._engine.machines and await self._engine.can_boot(name):
                await self.attach(name, boot=True)  # its machine is back: boot it
            return
        try:
            request = hpb.GetHostInfoRequest()
            call = self.call(name, "GetHostInfo", request)
            info = await self._runtime.wait_for(call, HEARTBEAT_TIMEOUT)
        except (VimFault, TimeoutError) as exc:
            log.warning("%s failed its heartbeat: %s", name, exc)
            self._mark_not_responding(name)
            return
        if bool(record.in_maintenance) != info.in_maintenance_mode:  # the host is the truth
            self._inventory.update_host(name, in_maintenance=int(info.in_maintenance_mode))
        here = self._inventory.vms(host=name)
        running = sum(vm.power_state == ON for vm in here)
        if self._inaccessible.get(name) or name in self._unmounted:
            await self._register_inaccessible(name)  # a reconcile of the host, too
        elif (info.vms, info.vms_powered_on) != (len(here), running):
            # What runs there changed under vCenter (a VM killed for a lost lock, one
            # HA restarted there, a stale copy left registered): the host is the truth.
            try:
                await self._reconcile(name, self._links[name])
            except VimFault as fault:
                log.warning("reconciling %s: %s", name, fault)
        if self._clock.now() - record.vpx_password_set >= VIM_PASSWORD_EXPIRATION:
            try:
                await self.rotate_vpxuser(name)
            except VimFault as fault:
                log.warning("rotating vpxuser's password on %s failed: %s", name, fault)

    async def heartbeat_once(self) -> None:
        """One round: every host checked, together."""
        await asyncio.gather(*(self.heartbeat(h.name) for h in self._inventory.hosts()))

    async def monitor(self) -> None:
        """Checks every host each HEARTBEAT_INTERVAL simulated seconds, forever. Each
        host on its own: one whose check is slow (an unreachable host's boot or reattach
        can take many seconds) only skips its own next checks, so a host that dies is
        still found within HEARTBEAT_INTERVAL + HEARTBEAT_TIMEOUT, inside HA's 15 s."""
        checks: dict[str, asyncio.Task] = {}
        try:
            while True:
                await self._clock.sleep(HEARTBEAT_INTERVAL)
                try:
                    for record in self._inventory.hosts():
                        running = checks.get(record.name)
                        if running is None or running.done():
                            checks[record.name] = self._runtime.spawn(
                                self._logged_heartbeat(record.name), f"heartbeat:{record.name}"
                            )
                except Exception:  # noqa: BLE001 - the monitor must outlive one bad round
                    log.exception("host heartbeat round failed")
        finally:
            for task in checks.values():
                task.cancel()
            await asyncio.gather(*checks.values(), return_exceptions=True)

    async def _logged_heartbeat(self, name: str) -> None:
        try:
            await self.heartbeat(name)
        except Exception:  # noqa: BLE001 - the monitor must outlive one bad check
            log.exception("heartbeat of %s failed", name)

    async def close(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            await link.port.close()


def size_differences(machine: HostSpec, request: pb.AddHostRequest) -> list[str]:
    """How the sizes an AddHost asks for differ from a provisioned machine's (a size
    not given accepts the machine's)."""
    asked = (
        ("CPU cores", machine.cpu_cores, request.cpu_cores),
        ("MHz per core", machine.cpu_mhz, request.cpu_mhz),
        ("MB of memory", machine.memory_mb, request.memory_mb),
        ("s kernel period", machine.kernel_period_s, request.kernel_period_s),
        ("CPU model", machine.cpu_model, request.cpu_model),
    )
    differences = [
        f"{what}: {has} provisioned, {want} asked"
        for what, has, want in asked
        if want and want != has
    ]
    if (
        request.HasField("vmotion_encryption")
        and request.vmotion_encryption != machine.vmotion_encryption
    ):
        differences.append(
            f"vMotion encryption: {machine.vmotion_encryption} provisioned, "
            f"{request.vmotion_encryption} asked"
        )
    return differences


def host_vm(vm: pb.Vm) -> hpb.HostVm:
    """The VM's configuration as its host registers it, resources, vNICs (with their
    firewall rules) and DirectPath devices included: they travel with the VM."""
    return hpb.HostVm(
        name=vm.name,
        uuid=vm.uuid,
        cpus=vm.cpus,
        memory_mb=vm.memory_mb,
        guest_os=vm.guest_os,
        datastore=vm.datastore,
        disks=vm.disks,
        guest_write_iops=vm.guest_write_iops,
        resources=vm.resources if vm.HasField("resources") else None,
        nics=vm.nics,
        pci_devices=vm.pci_devices,
    )


def inventory_vm(vm: hpb.HostVm, host: str) -> pb.Vm:
    """The inventory's record of a VM found running on `host`: host_vm's inverse."""
    return pb.Vm(
        name=vm.name,
        host=host,
        cpus=vm.cpus,
        memory_mb=vm.memory_mb,
        power_state=ON if vm.powered_on else OFF,
        uuid=vm.uuid,
        guest_os=vm.guest_os,
        datastore=vm.datastore,
        disks=vm.disks,
        guest_write_iops=vm.guest_write_iops,
        resources=vm.resources if vm.HasField("resources") else None,
        nics=vm.nics,
        pci_devices=vm.pci_devices,
    )
