"""Hosts through the vCenter core: AddHost's thumbprint check, RemoveHost, host crashes
and reboots, and a vCenter restart on the same data dir and hosts."""

from __future__ import annotations

import asyncio
import itertools
import uuid

import pytest
from vclab import CONNECTED, ERROR, NOT_RESPONDING, OFF, ON, SUCCESS, Lab

from vsim.faults import (
    DuplicateName,
    HostConnectFault,
    HostNotConnected,
    InvalidArgument,
    InvalidState,
    NotFound,
    TaskInProgress,
)
from vsim.spec import HostSpec
from vsim.v1 import host_agent_pb2 as hpb
from vsim.vcenter.host_system import HEARTBEAT_INTERVAL

# AddHost


async def test_add_host_without_thumbprint_fails_with_the_real_thumbprint(lab: Lab):
    failed = await lab.add_host("esxi-04")
    assert (failed.state, failed.error.name) == (ERROR, "SSLVerifyFault")
    real = lab.engine.thumbprint("esxi-04")
    assert dict(failed.error.properties) == {"thumbprint": real}
    assert real in failed.error.message
    assert "esxi-04" not in await lab.hosts()
    assert not [e for e in await lab.events() if e.type == "HostAddedEvent" and e.host == "esxi-04"]

    added = await lab.add_host("esxi-04", real)
    assert (added.state, added.result) == (SUCCESS, "esxi-04")
    host = (await lab.hosts())["esxi-04"]
    assert (host.connection_state, host.ssl_thumbprint) == (CONNECTED, real)
    assert lab.engine.running("esxi-04").accounts.users() == ["root", "vpxuser"]
    assert (await lab.events())[-1].type == "HostAddedEvent"
    # The new host takes VMs.
    assert (await lab.create("vm-new", host="esxi-04")).state == SUCCESS
    assert (await lab.power_on("vm-new")).state == SUCCESS


async def test_add_host_accepts_thumbprint_in_any_case_without_colons(lab: Lab):
    failed = await lab.add_host("esxi-04")
    plain = failed.error.properties["thumbprint"].replace(":", "").lower()
    assert (await lab.add_host("esxi-04", plain)).state == SUCCESS


async def test_add_host_with_a_wrong_thumbprint_is_ssl_verify_fault(lab: Lab):
    wrong = lab.engine.thumbprint("esxi-01")  # another host's certificate
    failed = await lab.add_host("esxi-04", wrong)
    assert (failed.state, failed.error.name) == (ERROR, "SSLVerifyFault")
    assert failed.error.properties["thumbprint"] == lab.engine.thumbprint("esxi-04")
    assert "esxi-04" not in await lab.hosts()


async def test_add_host_rejects_a_malformed_thumbprint_at_once(lab: Lab):
    before = await lab.snapshot()
    with pytest.raises(InvalidArgument, match="ssl_thumbprint"):
        await lab.client.add_host("esxi-04", "AB:CD")
    assert await lab.snapshot() == before
    assert "esxi-04" not in lab.engine.hosts()


async def test_add_duplicate_host_is_duplicate_name(lab: Lab):
    before = await lab.snapshot()
    thumbprint = (await lab.hosts())["esxi-02"].ssl_thumbprint
    with pytest.raises(DuplicateName):
        await lab.client.add_host("esxi-02", thumbprint)
    assert await lab.snapshot() == before


@pytest.mark.parametrize("name", ["", "ESXI-04", "esxi_04", "-esxi", "e" * 64, "h" * 10_000_000])
async def test_add_host_rejects_bad_names_at_once(lab: Lab, name: str):
    before = await lab.snapshot()
    with pytest.raises(InvalidArgument) as excinfo:
        await lab.client.add_host(name)
    assert len(excinfo.value.message) < 300
    assert await lab.snapshot() == before


async def test_add_host_rejects_a_name_with_a_trailing_newline(lab: Lab):
    before = await lab.snapshot()
    with pytest.raises(InvalidArgument):
        await lab.client.add_host("esxi-04\n")
    assert await lab.snapshot() == before


async def test_add_host_with_too_little_memory_is_invalid_argument(lab: Lab):
    with pytest.raises(InvalidArgument, match="memory_mb"):
        await lab.client.add_host("esxi-04", memory_mb=512)


async def add_sized(lab: Lab, thumbprint: str = "", **sizes: int):
    return await lab.wait(await lab.client.add_host("esxi-04", thumbprint, **sizes))


async def test_a_retried_add_host_with_other_sizes_adds_a_host_of_those_sizes(lab: Lab):
    first = await lab.add_host("esxi-04")  # provisioned with the default sizes, not added
    assert first.error.name == "SSLVerifyFault"
    assert lab.engine.spec("esxi-04").cpu_cores == HostSpec("esxi-04").cpu_cores != 8

    # What `vsim host add esxi-04 --accept-thumbprint --cpu-cores 8 --memory-mb 16384`
    # does: ask, learn the thumbprint, ask again with it.
    second = await add_sized(lab, cpu_cores=8, memory_mb=16384)
    assert second.error.name == "SSLVerifyFault"
    presented = second.error.properties["thumbprint"]
    assert presented != first.error.properties["thumbprint"]  # a new machine: a new certificate
    added = await add_sized(lab, presented, cpu_cores=8, memory_mb=16384)
    assert added.state == SUCCESS, added.error.message
    host = (await lab.hosts())["esxi-04"]
    assert (host.cpu_cores, host.memory_mb, host.cpu_mhz) == (8, 16384, HostSpec("x").cpu_mhz)
    spec = lab.engine.spec("esxi-04")
    assert (spec.cpu_cores, spec.memory_mb) == (8, 16384)  # the running host has them too


async def test_a_host_added_with_a_kernel_period_runs_its_kernel_at_that_period(lab: Lab):
    thumbprint = (await add_sized(lab, kernel_period_s=5)).error.properties["thumbprint"]
    assert (await add_sized(lab, thumbprint, kernel_period_s=5)).state == SUCCESS
    assert lab.engine.spec("esxi-04").kernel_period_s == 5
    kernel = lab.engine.running("esxi-04").kernel
    periods = []
    tick = kernel.tick
    kernel.tick = lambda: (periods.append(lab.clock.now()), tick())
    assert (await lab.create("vm-slow", host="esxi-04")).state == SUCCESS
    assert (await lab.power_on("vm-slow")).state == SUCCESS
    await asyncio.sleep(31)
    assert len(periods) == 6
    assert all(b - a == pytest.approx(5) for a, b in itertools.pairwise(periods))


@pytest.mark.parametrize("period", [0.01, 10.5, -1])
async def test_add_host_with_a_bad_kernel_period_is_invalid_argument(lab: Lab, period: float):
    before = await lab.snapshot()
    with pytest.raises(InvalidArgument, match="kernel_period_s"):
        await lab.client.add_host("esxi-04", kernel_period_s=period)
    assert await lab.snapshot() == before
    assert "esxi-04" not in lab.engine.hosts()


async def test_a_retry_that_asks_no_sizes_keeps_the_provisioned_host(lab: Lab):
    first = await add_sized(lab, cpu_cores=8, memory_mb=16384)
    thumbprint = first.error.properties["thumbprint"]
    added = await add_sized(lab, thumbprint)  # the thumbprint shown is still the host's
    assert added.state == SUCCESS, added.error.message
    host = (await lab.hosts())["esxi-04"]
    assert (host.cpu_cores, host.memory_mb) == (8, 16384)


async def test_remove_host_retires_a_host_provisioned_but_never_added(lab: Lab):
    assert (await add_sized(lab, cpu_cores=8)).error.name == "SSLVerifyFault"
    assert await lab.engine.is_running("esxi-04")
    done = await lab.remove_host("esxi-04")
    assert (done.state, done.result) == (SUCCESS, "esxi-04")
    assert not await lab.engine.is_running("esxi-04")
    assert lab.vc.inventory.machine("esxi-04") is None
    assert list(await lab.hosts()) == ["esxi-01", "esxi-02", "esxi-03"]
    event = (await lab.events())[-1]
    assert (event.type, event.host) == ("HostRemovedEvent", "esxi-04")
    assert "never" in event.message or "did not add" in event.message
    with pytest.raises(NotFound):
        await lab.client.remove_host("esxi-04")
    # Added afresh afterwards with the sizes asked for.
    thumbprint = (await add_sized(lab, memory_mb=16384)).error.properties["thumbprint"]
    assert (await add_sized(lab, thumbprint, memory_mb=16384)).state == SUCCESS
    assert (await lab.hosts())["esxi-04"].memory_mb == 16384


# RemoveHost


async def test_remove_host_with_powered_on_vms_is_invalid_state(lab: Lab):
    await lab.create("vm-001", host="esxi-01")
    await lab.power_on("vm-001")
    before = await lab.snapshot()
    with pytest.raises(InvalidState, match="powered-on"):
        await lab.client.remove_host("esxi-01")
    assert await lab.snapshot() == before
    assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED


async def test_remove_host_after_power_off_removes_it_and_its_vms(lab: Lab):
    await lab.create("vm-001", host="esxi-01")
    await lab.create("vm-002", host="esxi-01")
    await lab.create("vm-003", host="esxi-02")
    await lab.power_on("vm-001")
    await lab.power_off("vm-001")
    done = await lab.remove_host("esxi-01")
    assert (done.state, done.name, done.result) == (SUCCESS, "RemoveHost_Task", "esxi-01")
    assert list(await lab.hosts()) == ["esxi-02", "esxi-03"]
    assert list(await lab.vms()) == ["vm-003"]
    assert not await lab.engine.is_running("esxi-01")
    assert lab.vc.inventory.machine("esxi-01") is None
    assert (await lab.events())[-1].type == "HostRemovedEvent"
    with pytest.raises(NotFound):
        await lab.client.power_on("vm-001")
    with pytest.raises(NotFound):
        await lab.client.create_vm("vm-004", cpus=1, memory_mb=1024, host="esxi-01")


async def test_remove_unknown_host_is_not_found(lab: Lab):
    before = await lab.snapshot()
    with pytest.raises(NotFound):
        await lab.client.remove_host("esxi-99")
    assert await lab.snapshot() == before


# Host crashes and reboots


async def _lab_with_vm_on_esxi_01(lab: Lab) -> None:
    assert (await lab.create("vm-001", host="esxi-01", memory_mb=2048)).state == SUCCESS
    assert (await lab.create("vm-002", host="esxi-01")).state == SUCCESS
    assert (await lab.power_on("vm-001")).state == SUCCESS


async def test_crashed_host_is_marked_not_responding(lab: Lab):
    await _lab_with_vm_on_esxi_01(lab)
    after = await lab.last_event_key()
    lab.engine.crash("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    assert (await lab.hosts())["esxi-01"].connection_state == NOT_RESPONDING
    assert [(e.type, e.host) for e in await lab.events(after)] == [
        ("HostNotRespondingEvent", "esxi-01")
    ]


async def test_host_that_stops_answering_is_marked_not_responding(lab: Lab):
    """As above, with vCenter's open connection broken too (what a real crash does)."""
    await _lab_with_vm_on_esxi_01(lab)
    after = await lab.last_event_key()
    lab.engine.crash("esxi-01")
    lab.drop_connection("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    hosts = await lab.hosts()
    assert hosts["esxi-01"].connection_state == NOT_RESPONDING
    assert hosts["esxi-02"].connection_state == CONNECTED
    assert [(e.type, e.host) for e in await lab.events(after)] == [
        ("HostNotRespondingEvent", "esxi-01")
    ]
    # A second round posts no second event.
    await lab.vc.hosts.heartbeat_once()
    assert len(await lab.events(after)) == 1
    status = await lab.client.status()
    assert (status.hosts, status.hosts_connected) == (3, 2)


async def test_the_engines_line_faults_break_only_what_they_name(lab: Lab):
    """drop_connections kills every open line to one host; reset_next_call fails one
    call, before or after the host ran it."""
    root = hpb.HostLoginRequest(user_name="root", password=lab.engine.spec("esxi-02").root_password)
    mine = await lab.engine.connect("esxi-02")
    session = (await mine.call("Login", root, None)).session
    assert lab.engine.drop_connections("esxi-02") == 2  # vCenter's line and this one
    with pytest.raises(HostConnectFault, match="closed"):
        await mine.call("GetHostInfo", hpb.GetHostInfoRequest(), session)
    assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED
    assert (await lab.create("vm-001", host="esxi-01")).state == SUCCESS  # others unharmed
    again = await lab.engine.connect("esxi-02")
    for applied in (False, True):
        lab.engine.reset_next_call("esxi-02", "RegisterVm", applied)
        with pytest.raises(HostConnectFault, match="reset"):
            await again.call("RegisterVm", register(f"reset-{applied}".lower()), session)
        names = (await again.call("ListVms", hpb.ListHostVmsRequest(), session)).vms
        assert (f"reset-{applied}".lower() in {v.name for v in names}) == applied
    await again.call("RegisterVm", register("after"), session)  # only the one call failed


def register(name: str) -> hpb.RegisterVmRequest:
    vm = hpb.HostVm(name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), cpus=1, memory_mb=64)
    return hpb.RegisterVmRequest(vm=vm)


async def test_a_slow_check_of_one_host_does_not_delay_finding_another_dead(lab: Lab):
    """The monitor checks each host on its own: while esxi-03's check hangs (a host
    that is unreachable, being looked for), esxi-01's death is still found within one
    heartbeat interval."""
    lab.engine.crash("esxi-03")
    lab.drop_connection("esxi-03")
    await lab.clock.advance(HEARTBEAT_INTERVAL)
    assert (await lab.hosts())["esxi-03"].connection_state == NOT_RESPONDING
    gate = asyncio.Event()
    is_running = lab.engine.is_running

    async def hangs_for_esxi_03(name: str) -> bool:
        if name == "esxi-03":
            await gate.wait()
        return await is_running(name)

    lab.engine.is_running = hangs_for_esxi_03
    await lab.clock.advance(HEARTBEAT_INTERVAL)  # esxi-03's check starts, and hangs
    lab.engine.crash("esxi-01")
    lab.drop_connection("esxi-01")
    await lab.clock.advance(HEARTBEAT_INTERVAL)
    hosts = await lab.hosts()
    assert hosts["esxi-01"].connection_state == NOT_RESPONDING
    assert hosts["esxi-02"].connection_state == CONNECTED
    gate.set()
    await lab.clock.advance(HEARTBEAT_INTERVAL)
    assert (await lab.hosts())["esxi-03"].connection_state == NOT_RESPONDING


async def test_operations_on_vms_of_a_not_responding_host_fail(lab: Lab):
    await _lab_with_vm_on_esxi_01(lab)
    lab.engine.crash("esxi-01")
    lab.drop_connection("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    before = await lab.snapshot()
    for call, name in [
        (lab.client.power_off, "vm-001"),
        (lab.client.power_on, "vm-002"),
        (lab.client.destroy_vm, "vm-002"),
    ]:
        with pytest.raises(HostNotConnected):
            await call(name)
    with pytest.raises(HostNotConnected):
        await lab.client.create_vm("vm-003", cpus=1, memory_mb=1024, host="esxi-01")
    assert await lab.snapshot() == before
    # Placement avoids the host.
    assert (await lab.create("vm-003")).state == SUCCESS
    assert (await lab.vms())["vm-003"].host != "esxi-01"


async def test_vm_task_fails_when_its_host_dies_under_it(lab: Lab):
    await _lab_with_vm_on_esxi_01(lab)
    task = await lab.client.power_on("vm-002")
    lab.engine.crash("esxi-01")
    lab.drop_connection("esxi-01")
    done = await lab.wait(task)
    assert (done.state, done.error.name) == (ERROR, "HostNotConnected")
    assert (await lab.vms())["vm-002"].power_state == OFF
    assert (await lab.hosts())["esxi-01"].connection_state == NOT_RESPONDING


async def test_rebooted_host_reconnects_and_its_vms_are_powered_off(lab: Lab):
    await _lab_with_vm_on_esxi_01(lab)
    lab.engine.crash("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    assert (await lab.hosts())["esxi-01"].connection_state == NOT_RESPONDING
    after = await lab.last_event_key()
    await lab.engine.reboot("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    await _check_reconnected_after_reboot(lab, after)


async def test_host_that_answers_again_after_reboot_reconnects(lab: Lab):
    """As above, with vCenter's connection broken by the crash (no engine bug involved)."""
    await _lab_with_vm_on_esxi_01(lab)
    lab.engine.crash("esxi-01")
    lab.drop_connection("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    assert (await lab.hosts())["esxi-01"].connection_state == NOT_RESPONDING
    after = await lab.last_event_key()
    await lab.engine.reboot("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    await _check_reconnected_after_reboot(lab, after)


async def _check_reconnected_after_reboot(lab: Lab, after: int) -> None:
    assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED
    vms = await lab.vms()
    assert (vms["vm-001"].power_state, vms["vm-002"].power_state) == (OFF, OFF)
    assert lab.host_power_states()["vm-001"] == OFF
    assert {vm.name for vm in lab.engine.running("esxi-01").kernel.vms()} == {"vm-001", "vm-002"}
    events = [(e.type, e.vm) for e in await lab.events(after)]
    assert ("VmPoweredOffEvent", "vm-001") in events
    assert ("HostConnectedEvent", "") in events
    assert not any(vm == "vm-002" for _, vm in events)


async def test_empty_host_reconnects_after_a_reboot(lab: Lab):
    lab.engine.crash("esxi-03")
    lab.drop_connection("esxi-03")
    await lab.vc.hosts.heartbeat_once()
    assert (await lab.hosts())["esxi-03"].connection_state == NOT_RESPONDING
    after = await lab.last_event_key()
    await lab.engine.reboot("esxi-03")
    await lab.vc.hosts.heartbeat_once()
    assert (await lab.hosts())["esxi-03"].connection_state == CONNECTED
    assert [(e.type, e.host) for e in await lab.events(after)] == [
        ("HostConnectedEvent", "esxi-03")
    ]
    # vCenter logged in again as vpxuser (the reboot dropped its session).
    assert (await lab.create("vm-x", host="esxi-03")).state == SUCCESS
    assert (await lab.power_on("vm-x")).state == SUCCESS


# vCenter restart


async def test_restart_keeps_inventory_power_states_sessions_and_tasks(lab: Lab):
    await lab.create("vm-on", host="esxi-01")
    await lab.create("vm-off", host="esxi-02")
    await lab.power_on("vm-on")
    failed = await lab.add_host("esxi-04")  # an error task in the history
    assert failed.state == ERROR
    hosts, vms, tasks = await lab.hosts(), await lab.vms(), await lab.tasks()
    events = await lab.events()
    token, uuid = lab.token, lab.vc.uuid
    engine = lab.engine

    await lab.restart()

    assert lab.engine is engine
    assert lab.vc.table.authenticate(token, "ListVms").user_name == "administrator@vsphere.local"
    assert lab.vc.uuid == uuid
    assert await lab.hosts() == hosts
    assert await lab.vms() == vms
    assert {n: vm.power_state for n, vm in (await lab.vms()).items()} == {
        "vm-on": ON,
        "vm-off": OFF,
    }
    assert lab.host_power_states() == {"vm-on": ON, "vm-off": OFF}
    assert await lab.tasks() == tasks
    assert (await lab.events())[: len(events)] == events
    assert (await lab.events())[len(events)].type == "VcenterStartedEvent"
    # It keeps working.
    assert (await lab.power_off("vm-on")).state == SUCCESS
    assert lab.host_power_states()["vm-on"] == OFF


async def test_restart_takes_power_states_from_the_hosts(lab: Lab):
    await lab.create("vm-001", host="esxi-01")
    await lab.power_on("vm-001")
    after = await lab.last_event_key()
    await lab.stop()
    # While vCenter is down, the VM is powered off on the host directly.
    lab.engine.running("esxi-01").kernel.power_off("vm-001")
    await lab.boot(lab.spec)
    assert (await lab.vms())["vm-001"].power_state == OFF
    assert [(e.type, e.vm) for e in await lab.events(after)] == [
        ("VcenterStartedEvent", ""),
        ("VmPoweredOffEvent", "vm-001"),
    ]


async def test_hosts_booted_again_with_new_certificates_are_not_trusted(lab: Lab):
    await lab.create("vm-001", host="esxi-01")
    await lab.power_on("vm-001")
    thumbprints = {n: h.ssl_thumbprint for n, h in (await lab.hosts()).items()}
    await lab.stop()
    # The engine is gone with its hosts (new identities too): vCenter must refuse
    # certificates that changed.
    lab.engine = type(lab.engine)(lab.runtime.child("new-hardware"))
    await lab.boot(lab.spec)
    hosts = await lab.hosts()
    assert {n: h.connection_state for n, h in hosts.items()} == {
        n: NOT_RESPONDING for n in thumbprints
    }
    assert {n: h.ssl_thumbprint for n, h in hosts.items()} == thumbprints
    assert all(lab.engine.running(n) is not None for n in thumbprints)  # booted, refused


async def test_a_not_responding_host_can_be_removed_with_its_vms(lab: Lab):
    await _lab_with_vm_on_esxi_01(lab)
    with pytest.raises(InvalidState):
        await lab.client.remove_host("esxi-01")
    lab.engine.crash("esxi-01")
    await lab.vc.hosts.heartbeat_once()
    assert (await lab.remove_host("esxi-01")).state == SUCCESS
    assert "esxi-01" not in await lab.hosts()
    assert not {"vm-001", "vm-002"} & set(await lab.vms())


async def test_a_vm_named_like_a_host_is_not_blocked_by_that_hosts_task(lab: Lab):
    assert (await lab.create("esxi-02", host="esxi-03")).state == SUCCESS
    host_task = await lab.client.remove_host("esxi-02")
    vm_task = await lab.client.power_on("esxi-02")
    assert (await lab.wait(vm_task)).state == SUCCESS
    assert (await lab.wait(host_task)).state == SUCCESS


async def test_the_monitor_finds_a_crashed_host_on_the_sim_clock(lab: Lab):
    """The heartbeat monitor itself (not one round called by hand), on virtual time."""
    await _lab_with_vm_on_esxi_01(lab)
    lab.engine.crash("esxi-01")
    await lab.clock.advance(9)
    assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED  # no round yet
    await lab.clock.advance(1)
    assert (await lab.hosts())["esxi-01"].connection_state == NOT_RESPONDING
    await lab.engine.reboot("esxi-01")
    await lab.clock.advance(10)
    assert (await lab.hosts())["esxi-01"].connection_state == CONNECTED
    assert (await lab.vms())["vm-001"].power_state == OFF  # the reboot lost it


async def test_remove_host_waits_for_tasks_on_its_vms(lab: Lab):
    assert (await lab.create("vm-001", host="esxi-02")).state == SUCCESS
    power_on = await lab.client.power_on("vm-001")
    with pytest.raises(TaskInProgress):
        await lab.client.remove_host("esxi-02")
    assert (await lab.wait(power_on)).state == SUCCESS
    assert (await lab.power_off("vm-001")).state == SUCCESS
    remove = await lab.client.remove_host("esxi-02")
    with pytest.raises(TaskInProgress):
        await lab.client.power_on("vm-001")
    assert (await lab.wait(remove)).state == SUCCESS
    assert "vm-001" not in await lab.vms()


async def test_a_host_removed_while_its_check_reattaches_it_stays_removed(lab: Lab):
    """RemoveHost during a heartbeat check that is re-attaching the host (its reply
    to the check's ListVms is slow) waits for the check; the check never brings the
    removed host back (no link, no record, no event after its HostRemovedEvent)."""
    lab.engine.crash("esxi-02")
    await lab.vc.hosts.heartbeat_once()
    assert (await lab.hosts())["esxi-02"].connection_state == NOT_RESPONDING
    await lab.engine.reboot("esxi-02")
    lab.engine.delay_next_reply("esxi-02", "ListVms", 5.0)
    check = asyncio.get_running_loop().create_task(lab.vc.hosts.heartbeat("esxi-02"))
    await lab.clock.advance(0)  # the check waits for ListVms's reply
    removal = await lab.client.remove_host("esxi-02")
    await lab.clock.advance(0)
    assert (await lab.client.task(removal.id)).state != SUCCESS  # held by the check
    await lab.clock.advance(5.0)
    await check
    assert (await lab.wait(removal)).state == SUCCESS
    await lab.vc.hosts.heartbeat_once()
    assert "esxi-02" not in await lab.hosts()
    events = [e for e in await lab.events() if e.host == "esxi-02"]
    assert events[-1].type == "HostRemovedEvent"
    assert [e.type for e in events].count("HostConnectedEvent") == 1  # when it was added
