"""VMs through the vCenter core on the in-process engine: lifecycle, admission
control, bad input, busy VMs, and a checker over a random history."""

from __future__ import annotations

import random

import pytest
from vclab import ERROR, OFF, ON, SUCCESS, Lab, small_cluster

from vsim.faults import (
    DuplicateName,
    InvalidArgument,
    InvalidPowerState,
    NotFound,
    TaskInProgress,
    VimFault,
)
from vsim.v1 import common_pb2
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.sessions import ADMINISTRATOR


async def test_start_with_three_hosts_connects_esxi_01_to_03(lab: Lab):
    hosts = await lab.hosts()
    assert list(hosts) == ["esxi-01", "esxi-02", "esxi-03"]
    for host in hosts.values():
        assert host.connection_state == pb.CONNECTION_STATE_CONNECTED
        assert host.ssl_thumbprint == lab.engine.thumbprint(host.name)
        assert (host.vms, host.vms_powered_on, host.memory_used_mb) == (0, 0, 0)
    status = await lab.client.status()
    assert (status.hosts, status.hosts_connected, status.vms) == (3, 3, 0)
    assert (status.datacenter, status.cluster, status.engine) == (
        "dc-01",
        "cluster-01",
        "in-process",
    )
    added = [e.host for e in await lab.events() if e.type == "HostAddedEvent"]
    assert sorted(added) == ["esxi-01", "esxi-02", "esxi-03"]


async def test_vm_lifecycle_tasks_and_events(lab: Lab):
    after = await lab.last_event_key()
    client = lab.client
    steps = [
        ("CreateVM_Task", lambda: client.create_vm("vm-001", cpus=2, memory_mb=2048)),
        ("PowerOnVM_Task", lambda: client.power_on("vm-001")),
        ("PowerOffVM_Task", lambda: client.power_off("vm-001")),
        ("Destroy_Task", lambda: client.destroy_vm("vm-001")),
    ]
    states = []
    for task_name, call in steps:
        queued = await call()
        assert queued.id.startswith("task-")
        assert (queued.name, queued.entity, queued.user) == (task_name, "vm-001", ADMINISTRATOR)
        assert queued.state == common_pb2.TASK_STATE_QUEUED
        done = await lab.wait(queued)
        assert done.id == queued.id
        assert (done.state, done.result, done.progress) == (SUCCESS, "vm-001", 100)
        assert not done.HasField("error")
        assert done.queue_time <= done.start_time <= done.complete_time
        states.append((await lab.vms()).get("vm-001"))
    assert [vm.power_state if vm else None for vm in states] == [OFF, ON, OFF, None]
    events = await lab.events(after)
    assert [e.type for e in events] == [
        "VmCreatedEvent",
        "VmPoweredOnEvent",
        "VmPoweredOffEvent",
        "VmRemovedEvent",
    ]
    host = states[0].host
    assert all((e.vm, e.host, e.user) == ("vm-001", host, ADMINISTRATOR) for e in events)
    assert [e.key for e in events] == sorted(e.key for e in events)
    assert lab.host_power_states() == {}


async def test_created_vm_is_registered_on_its_host(lab: Lab):
    done = await lab.create("vm-001", cpus=2, memory_mb=2048, host="esxi-02")
    assert done.state == SUCCESS
    vm = (await lab.vms())["vm-001"]
    assert (vm.host, vm.cpus, vm.memory_mb, vm.guest_os) == ("esxi-02", 2, 2048, "otherGuest64")
    (on_host,) = lab.engine.running("esxi-02").kernel.vms()
    assert (on_host.name, on_host.uuid, on_host.powered_on) == ("vm-001", vm.uuid, False)
    assert (await lab.hosts())["esxi-02"].vms == 1


async def test_placement_picks_the_host_with_most_free_memory(make_lab):
    lab = await make_lab(small_cluster(hosts=3, memory_mb=8192))
    for name, memory_mb, host in [("big", 4096, "esxi-01"), ("mid", 2048, "esxi-02")]:
        assert (await lab.create(name, memory_mb=memory_mb, host=host)).state == SUCCESS
        assert (await lab.power_on(name)).state == SUCCESS
    await lab.create("placed", memory_mb=1024)
    assert (await lab.vms())["placed"].host == "esxi-03"


async def test_power_on_beyond_host_memory_fails_with_insufficient_resources(make_lab):
    """Memory is overcommitted (6 + 6 GB on an 8 GB host runs), but a VM larger than
    the host's memory does not power on."""
    lab = await make_lab(small_cluster(hosts=1, memory_mb=8192))
    for name, memory_mb in (("vm-a", 6144), ("vm-b", 6144), ("vm-c", 12288)):
        assert (await lab.create(name, memory_mb=memory_mb)).state == SUCCESS
    assert (await lab.power_on("vm-a")).state == SUCCESS
    assert (await lab.power_on("vm-b")).state == SUCCESS
    after = await lab.last_event_key()
    failed = await lab.power_on("vm-c")
    assert failed.state == ERROR
    assert failed.error.name == "InsufficientResourcesFault"
    assert dict(failed.error.properties)["requested_mb"] == "12288"
    assert failed.result == ""
    assert (await lab.vms())["vm-c"].power_state == OFF
    assert lab.host_power_states() == {"vm-a": ON, "vm-b": ON, "vm-c": OFF}
    assert await lab.events(after) == []
    assert (await lab.hosts())["esxi-01"].memory_used_mb == 12288


async def test_power_on_with_more_vcpus_than_cores_fails(make_lab):
    lab = await make_lab(small_cluster(hosts=1, cpu_cores=4))
    await lab.create("wide", cpus=8)
    failed = await lab.power_on("wide")
    assert (failed.state, failed.error.name) == (ERROR, "InsufficientResourcesFault")
    assert (await lab.vms())["wide"].power_state == OFF


# Bad input is refused at once, and changes nothing.

BAD_REQUESTS = {
    "duplicate VM name": (lambda c: c.create_vm("vm-001", cpus=1, memory_mb=1024), DuplicateName),
    "negative memory": (lambda c: c.create_vm("new", cpus=1, memory_mb=-1024), InvalidArgument),
    "memory not a multiple of 4": (
        lambda c: c.create_vm("new", cpus=1, memory_mb=1026),
        InvalidArgument,
    ),
    "zero memory": (lambda c: c.create_vm("new", cpus=1, memory_mb=0), InvalidArgument),
    "zero cpus": (lambda c: c.create_vm("new", cpus=0, memory_mb=1024), InvalidArgument),
    "negative cpus": (lambda c: c.create_vm("new", cpus=-2, memory_mb=1024), InvalidArgument),
    "empty name": (lambda c: c.create_vm("", cpus=1, memory_mb=1024), InvalidArgument),
    "10 MB name": (
        lambda c: c.create_vm("n" * 10_000_000, cpus=1, memory_mb=1024),
        InvalidArgument,
    ),
    "10 MB guest_os": (
        lambda c: c.create_vm("new", cpus=1, memory_mb=1024, guest_os="g" * 10_000_000),
        InvalidArgument,
    ),
    "unknown host": (
        lambda c: c.create_vm("new", cpus=1, memory_mb=1024, host="esxi-99"),
        NotFound,
    ),
    "invalid host name": (
        lambda c: c.create_vm("new", cpus=1, memory_mb=1024, host="ESXi/../01"),
        InvalidArgument,
    ),
    "power on unknown VM": (lambda c: c.power_on("nope"), NotFound),
    "power off unknown VM": (lambda c: c.power_off("nope"), NotFound),
    "destroy unknown VM": (lambda c: c.destroy_vm("nope"), NotFound),
    "10 MB unknown VM": (lambda c: c.power_on("v" * 10_000_000), NotFound),
    "power off a powered-off VM": (lambda c: c.power_off("vm-001"), InvalidPowerState),
    "power on a powered-on VM": (lambda c: c.power_on("vm-on"), InvalidPowerState),
    "destroy a powered-on VM": (lambda c: c.destroy_vm("vm-on"), InvalidPowerState),
    "list VMs of unknown host": (lambda c: c.vms(host="esxi-99"), NotFound),
    "get bad task id": (lambda c: c.task("bogus"), NotFound),
    "get unknown task": (lambda c: c.task("task-99999"), NotFound),
    "get empty task id": (lambda c: c.task(""), NotFound),
    "get huge task number": (lambda c: c.task("task-" + "9" * 40), NotFound),
    "get negative task": (lambda c: c.task("task--1"), NotFound),
    "list tasks, negative limit": (lambda c: c.tasks(limit=-1), InvalidArgument),
    "list events, negative after_key": (lambda c: c.events(after_key=-1), InvalidArgument),
    "list events, huge limit": (lambda c: c.events(limit=10_001), InvalidArgument),
}


@pytest.fixture
async def populated(lab: Lab) -> Lab:
    """The default lab with vm-001 (powered off) and vm-on (powered on)."""
    assert (await lab.create("vm-001")).state == SUCCESS
    assert (await lab.create("vm-on")).state == SUCCESS
    assert (await lab.power_on("vm-on")).state == SUCCESS
    return lab


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_request_is_refused_without_side_effects(populated: Lab, case: str):
    call, fault = BAD_REQUESTS[case]
    before = await populated.snapshot()
    with pytest.raises(fault) as excinfo:
        await call(populated.client)
    assert type(excinfo.value) is fault
    assert len(excinfo.value.message) < 300
    assert await populated.snapshot() == before
    assert populated.vc.tasks._busy == {}


@pytest.mark.parametrize("task_id", ["bogus", "task-424242", ""])
async def test_wait_for_bad_task_id_is_not_found(populated: Lab, task_id: str):
    before = await populated.snapshot()
    with pytest.raises(NotFound):
        await populated.client.call("WaitForTask", pb.WaitForTaskRequest(id=task_id))
    assert await populated.snapshot() == before


@pytest.mark.parametrize("timeout", [-1.0, 3601.0, float("inf"), float("nan")])
async def test_wait_for_task_rejects_bad_timeouts(populated: Lab, timeout: float):
    task_id = (await populated.tasks())[0].id
    with pytest.raises(InvalidArgument, match="timeout_seconds"):
        await populated.client.call(
            "WaitForTask", pb.WaitForTaskRequest(id=task_id, timeout_seconds=timeout)
        )


async def test_name_is_taken_while_its_create_task_runs(lab: Lab):
    first = await lab.client.create_vm("vm-001", cpus=1, memory_mb=1024)
    with pytest.raises(DuplicateName):
        await lab.client.create_vm("vm-001", cpus=1, memory_mb=1024)
    assert (await lab.wait(first)).state == SUCCESS
    assert list(await lab.vms()) == ["vm-001"]
    assert len(lab.engine.running((await lab.vms())["vm-001"].host).kernel.vms()) == 1


async def test_second_operation_on_a_busy_vm_is_task_in_progress(populated: Lab):
    lab = populated
    first = await lab.client.power_on("vm-001")
    tasks_before = len(await lab.tasks())
    for call in (lab.client.power_on, lab.client.destroy_vm):
        with pytest.raises(TaskInProgress) as excinfo:
            await call("vm-001")
        assert excinfo.value.properties == {"task": first.id}
    assert len(await lab.tasks()) == tasks_before
    assert (await lab.wait(first)).state == SUCCESS
    assert (await lab.vms())["vm-001"].power_state == ON
    # Once the first task is done the VM takes new operations.
    assert (await lab.power_off("vm-001")).state == SUCCESS


async def test_finished_task_does_not_change(populated: Lab):
    lab = populated
    done = (await lab.tasks())[0]
    assert done.state in (SUCCESS, ERROR)
    await lab.power_off("vm-on")
    assert await lab.client.task(done.id) == done


async def test_list_tasks_newest_first_with_limit(populated: Lab):
    tasks = await populated.tasks()
    numbers = [int(t.id.removeprefix("task-")) for t in tasks]
    assert numbers == sorted(numbers, reverse=True)
    assert await populated.client.tasks(limit=2) == tasks[:2]


# A checker over a random history.

VM_NAMES = ["vm-a", "vm-b", "vm-c", "vm-d"]
TRANSITIONS = {
    # event type: (state before, state after); None = the VM does not exist
    "VmCreatedEvent": (None, OFF),
    "VmPoweredOnEvent": (OFF, ON),
    "VmPoweredOffEvent": (ON, OFF),
    "VmRemovedEvent": (OFF, None),
}


def check_event_history(events: list[common_pb2.Event]) -> dict[str, int | None]:
    """Each VM's events follow its lifecycle; returns each VM's final state."""
    state: dict[str, int | None] = {}
    for event in events:
        if event.type not in TRANSITIONS:
            continue
        before, after = TRANSITIONS[event.type]
        assert state.get(event.vm) == before, (
            f"event {event.key} {event.type} for {event.vm} in state {state.get(event.vm)}"
        )
        state[event.vm] = after
    return {vm: s for vm, s in state.items() if s is not None}


async def check_consistent(lab: Lab) -> None:
    """vCenter's inventory agrees with what the hosts run."""
    vms = await lab.vms()
    assert {name: vm.power_state for name, vm in vms.items()} == lab.host_power_states()
    for host, hostd in lab.engine.hosts().items():
        assert {vm.name for vm in hostd.kernel.vms()} == {
            name for name, vm in vms.items() if vm.host == host
        }
        assert (await lab.hosts())[host].memory_used_mb == hostd.kernel.memory_used_mb


def apply(model: dict[str, int], op: str, name: str) -> dict[str, int]:
    """The VM power states after op succeeded on name."""
    if op == "destroy":
        return {vm: state for vm, state in model.items() if vm != name}
    return {**model, name: ON if op == "on" else OFF}


async def start_op(lab: Lab, rng: random.Random, op: str, name: str) -> common_pb2.Task:
    if op == "create":
        return await lab.client.create_vm(
            name,
            cpus=rng.choice([1, 2, 4, 6]),
            memory_mb=rng.choice([1024, 6144, 12288]),  # 12 GB: more than a host has
        )
    call = {
        "on": lab.client.power_on,
        "off": lab.client.power_off,
        "destroy": lab.client.destroy_vm,
    }[op]
    return await call(name)


def expected_refusal(model: dict[str, int], op: str, name: str) -> type[VimFault]:
    if op == "create":
        return DuplicateName
    return NotFound if name not in model else InvalidPowerState


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_history_keeps_inventory_and_hosts_consistent(make_lab, seed: int):
    lab = await make_lab(small_cluster(hosts=2, memory_mb=8192, cpu_cores=4), seed=seed)
    rng = random.Random(seed)
    start_key = await lab.last_event_key()
    model: dict[str, int] = {}  # VM -> power state, as the history so far implies
    outcomes = {"ok": 0, "refused": 0, "task error": 0}
    for _ in range(100):
        name = rng.choice(VM_NAMES)
        op = rng.choice(["create", "on", "on", "off", "destroy"])
        before = await lab.snapshot()
        try:
            task = await start_op(lab, rng, op, name)
        except VimFault as fault:
            assert type(fault) is expected_refusal(model, op, name), f"{op} {name}: {fault}"
            assert await lab.snapshot() == before
            outcomes["refused"] += 1
        else:
            done = await lab.wait(task)
            if done.state == SUCCESS:
                model = apply(model, op, name)
                outcomes["ok"] += 1
            else:
                assert (op, done.error.name) == ("on", "InsufficientResourcesFault")
                outcomes["task error"] += 1
        await check_consistent(lab)
        assert {n: vm.power_state for n, vm in (await lab.vms()).items()} == model
    assert all(outcomes.values()), f"the history did not reach every kind of outcome: {outcomes}"
    assert check_event_history(await lab.events(start_key)) == model
    for task in await lab.tasks():
        assert task.state in (SUCCESS, ERROR)
        assert task.HasField("error") == (task.state == ERROR)


async def test_a_disk_too_large_is_refused_naming_the_limit_in_mb(lab: Lab):
    with pytest.raises(InvalidArgument) as excinfo:
        await lab.client.create_vm("vm-big", cpus=1, memory_mb=64, disk_mb=2**21 + 1)
    assert excinfo.value.message == "disk_mb must be between 0 and 2097152 MB, got 2097153"
