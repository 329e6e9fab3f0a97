"""vMotion between two hosts of the in-process engine, on the simulated clock: the
destination prepared, the source pre-copying over the hosts' vMotion networks with the
migration's ticket, the switchover handing the disk locks over; and every failure
before the destination resumes leaving the VM running on its source."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from vclab import Lab, host_call
from vclab import running_on as hosts_running

from vsim.faults import (
    InvalidArgument,
    InvalidPowerState,
    MigrationFault,
    NotAuthenticated,
)
from vsim.host.hostd.migration import SECRET_BYTES, ticket_token
from vsim.spec import ClusterSpec
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.host_system import host_vm

SOURCE, DESTINATION = "esxi-01", "esxi-02"


@pytest.fixture
async def lab(make_lab) -> Lab:
    return await make_lab(ClusterSpec.default(2), array=True)


def ticket(n: int = 1) -> hpb.VmotionTicket:
    return hpb.VmotionTicket(migration_id=f"mig-{n}", secret=bytes([n]) * SECRET_BYTES)


async def running_vm(lab: Lab, name: str = "vm-m", datastore: str = "vmfs-01") -> pb.Vm:
    task = await lab.client.create_vm(
        name,
        memory_mb=256,
        host=SOURCE,
        datastore=datastore,
        disk_mb=8,
        guest_write_iops=20,
    )
    assert (await lab.wait(task)).error.name == ""
    assert (await lab.power_on(name)).error.name == ""
    await asyncio.sleep(5)  # the guest writes
    return await lab.client.vm(name)


async def migrate(lab: Lab, vm: pb.Vm, n: int = 1, link_gbps: float = 10) -> hpb.VmotionReport:
    await host_call(
        lab.engine,
        DESTINATION,
        "PrepareVmotion",
        hpb.PrepareVmotionRequest(ticket=ticket(n), vm=host_vm(vm)),
    )
    start = hpb.StartVmotionRequest(
        ticket=ticket(n),
        vm=vm.name,
        destination=DESTINATION,
        destination_endpoint=f"in-process://{DESTINATION}",
        destination_thumbprint=lab.engine.thumbprint(DESTINATION),
        link_gbps=link_gbps,
    )
    return await host_call(lab.engine, SOURCE, "StartVmotion", start)


def running_on(lab: Lab, name: str) -> list[str]:
    return hosts_running(lab.engine, name)


@pytest.mark.parametrize("datastore", ["vmfs-01", "nfs-01"])
async def test_a_running_vm_moves_with_its_memory_disk_locks_and_guest_writes(lab, datastore):
    vm = await running_vm(lab, datastore=datastore)
    source = lab.engine.running(SOURCE)
    snapshot = {}
    depart = source.depart

    async def spy(name: str) -> None:  # the source's memory as it left, before it is freed
        memory = source.kernel.memory
        touched = memory.touched_pages(name)
        snapshot["pages"] = (touched, memory.guest_content(name, touched))
        await depart(name)

    source.depart = spy
    report = await migrate(lab, vm)

    assert running_on(lab, "vm-m") == [DESTINATION]
    assert "vm-m" not in {v.name for v in source.kernel.vms()}
    touched, content = snapshot["pages"]
    destination = lab.engine.running(DESTINATION).kernel.memory
    assert np.array_equal(destination.touched_pages("vm-m"), touched)
    assert np.array_equal(destination.guest_content("vm-m", touched), content)
    assert report.rounds >= 1 and report.memory_sent_bytes >= len(touched) * 4096
    assert 0 <= report.downtime_ms < 500
    extent = "vm-m/vm-m-flat.vmdk"
    lock = await lab.client.lock_owner(datastore, extent)
    assert [h.host for h in lock.holders] == [DESTINATION]
    # The guest goes on writing there, and every write it was told of reads back.
    on_destination = lab.engine.running(DESTINATION).vmx["vm-m"]
    before = on_destination.acked_seq
    await asyncio.sleep(3)
    assert on_destination.acked_seq > before
    verify = hpb.VerifyGuestDiskRequest(vm=host_vm(vm), acked_seq=on_destination.acked_seq)
    verified = await host_call(lab.engine, DESTINATION, "VerifyGuestDisk", verify)
    assert verified.missing == 0 and verified.corrupt == 0


async def test_a_cut_vmotion_link_fails_the_migration_and_the_vm_runs_on(lab):
    vm = await running_vm(lab)
    lab.engine.set_link_now(DESTINATION, "vmotion", False)
    with pytest.raises(MigrationFault, match="goes on running on esxi-01"):
        await migrate(lab, vm)
    assert running_on(lab, "vm-m") == [SOURCE]
    source = lab.engine.running(SOURCE)
    assert source.kernel.memory.speed("vm-m") == 1.0
    assert source.vmx["vm-m"].disks  # it keeps its disks
    # The destination's partial copy goes with the abort.
    await host_call(
        lab.engine, DESTINATION, "AbortVmotion", hpb.AbortVmotionRequest(ticket=ticket())
    )
    assert "vm-m" not in {v.name for v in lab.engine.running(DESTINATION).kernel.vms()}
    writes = source.vmx["vm-m"].acked_seq
    await asyncio.sleep(2)
    assert source.vmx["vm-m"].acked_seq > writes


async def test_a_link_cut_during_pre_copy_leaves_the_vm_on_its_source(lab):
    vm = await running_vm(lab)

    async def cut_later() -> None:
        await asyncio.sleep(0.5)  # at 0.1 Gb/s round 1 takes several seconds
        lab.engine.set_link_now(SOURCE, "vmotion", False)

    cutter = asyncio.ensure_future(cut_later())
    with pytest.raises(MigrationFault, match="pre-copy"):
        await migrate(lab, vm, link_gbps=0.1)
    await cutter
    assert running_on(lab, "vm-m") == [SOURCE]
    assert lab.engine.running(SOURCE).kernel.memory.speed("vm-m") == 1.0
    await host_call(
        lab.engine, DESTINATION, "AbortVmotion", hpb.AbortVmotionRequest(ticket=ticket())
    )
    assert not lab.engine.running(DESTINATION).kernel.memory._vms


async def test_only_the_migrations_ticket_opens_the_destination(lab):
    vm = await running_vm(lab)
    await host_call(
        lab.engine,
        DESTINATION,
        "PrepareVmotion",
        hpb.PrepareVmotionRequest(ticket=ticket(), vm=host_vm(vm)),
    )
    from vsim import dispatch

    table = lab.engine.running(DESTINATION).migrations.table
    pages = hpb.VmotionPagesRequest(ppns=b"\0" * 8, fingerprints=b"\1" * 8)
    good = ticket_token(ticket())
    for token in (None, ticket_token(ticket(2)), good[:-1], "!" * len(good)):
        with pytest.raises(NotAuthenticated):
            await dispatch.call(table, "ReceivePages", pages, token)
    with pytest.raises(InvalidArgument):
        await dispatch.call(table, "ReceivePages", hpb.VmotionPagesRequest(ppns=b"\0" * 7), good)
    await dispatch.call(table, "ReceivePages", pages, good)


@pytest.mark.parametrize(
    "bad",
    [
        hpb.VmotionTicket(migration_id="", secret=b"\1" * SECRET_BYTES),
        hpb.VmotionTicket(migration_id="a/b", secret=b"\1" * SECRET_BYTES),
        hpb.VmotionTicket(migration_id="m", secret=b"\1" * 31),
    ],
)
async def test_a_bad_ticket_is_invalid_argument_and_prepares_nothing(lab, bad):
    vm = await running_vm(lab)
    with pytest.raises(InvalidArgument):
        await host_call(
            lab.engine,
            DESTINATION,
            "PrepareVmotion",
            hpb.PrepareVmotionRequest(ticket=bad, vm=host_vm(vm)),
        )
    assert "vm-m" not in {v.name for v in lab.engine.running(DESTINATION).kernel.vms()}


async def test_a_vm_that_is_not_running_has_nothing_to_pre_copy(lab):
    vm = await running_vm(lab)
    assert (await lab.power_off("vm-m")).error.name == ""
    with pytest.raises(InvalidPowerState):
        await migrate(lab, vm)
    assert "vm-m" in {v.name for v in lab.engine.running(SOURCE).kernel.vms()}


async def test_an_encrypted_migrations_stream_takes_only_its_own_sealed_messages(lab):
    from vsim import dispatch
    from vsim.host.hostd.migration import Sealer

    vm = await running_vm(lab)
    sealed_ticket = ticket()
    sealed_ticket.key, sealed_ticket.nonce = b"k" * 32, b"n" * 8
    request = hpb.PrepareVmotionRequest(ticket=sealed_ticket, vm=host_vm(vm))
    await host_call(lab.engine, DESTINATION, "PrepareVmotion", request)
    table = lab.engine.running(DESTINATION).migrations.table
    token = ticket_token(sealed_ticket)
    clear = hpb.VmotionPagesRequest(ppns=b"\0" * 8, fingerprints=b"\1" * 8)
    with pytest.raises(InvalidArgument, match="sealed"):
        await dispatch.call(table, "ReceivePages", clear, token)
    sealer = Sealer(sealed_ticket)
    data, sequence = sealer.seal(b"\0" * 8 + b"\1" * 8)
    tampered = bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(InvalidArgument, match="authentication"):
        await dispatch.call(
            table,
            "ReceivePages",
            hpb.VmotionPagesRequest(sealed=tampered, sequence=sequence),
            token,
        )
    good = hpb.VmotionPagesRequest(sealed=data, sequence=sequence)
    await dispatch.call(table, "ReceivePages", good, token)
    with pytest.raises(InvalidArgument, match="again"):  # replayed
        await dispatch.call(table, "ReceivePages", good, token)
    other = hpb.VmotionTicket(
        migration_id="mig-1", secret=b"\1" * 32, key=b"x" * 32, nonce=b"n" * 8
    )
    forged, number = Sealer(other).seal(b"\0" * 16)
    with pytest.raises(InvalidArgument, match="authentication"):  # another key
        await dispatch.call(
            table,
            "ReceivePages",
            hpb.VmotionPagesRequest(sealed=forged, sequence=number + 5),
            token,
        )


async def test_a_ticket_with_a_bad_key_or_nonce_is_invalid_argument(lab):
    vm = await running_vm(lab)
    bad = ticket()
    bad.key, bad.nonce = b"k" * 16, b"n" * 8
    with pytest.raises(InvalidArgument, match="key"):
        await host_call(
            lab.engine,
            DESTINATION,
            "PrepareVmotion",
            hpb.PrepareVmotionRequest(ticket=bad, vm=host_vm(vm)),
        )


async def test_a_vms_cpu_statistics_show_sdps_slowing_its_vcpus(lab):
    await running_vm(lab)
    memory = lab.engine.running(SOURCE).kernel.memory
    stats = await host_call(lab.engine, SOURCE, "GetVmStats", hpb.HostVmRequest(name="vm-m"))
    assert stats.cpu.vcpu_run_share == 1.0
    memory.set_speed("vm-m", 0.25)  # as SDPS sets it during a pre-copy
    stats = await host_call(lab.engine, SOURCE, "GetVmStats", hpb.HostVmRequest(name="vm-m"))
    assert stats.cpu.vcpu_run_share == 0.25


@pytest.mark.parametrize(
    "endpoint, thumbprint",
    [("in-process://esxi-99", None), (f"in-process://{DESTINATION}", "AA:" * 31 + "AA")],
    ids=["nobody-there", "another-certificate"],
)
async def test_a_destination_the_source_cannot_reach_is_a_migration_fault(
    lab, endpoint, thumbprint
):
    """Never the HostConnectFault of the source's own line: vCenter must not take the
    source for unreachable because its peer is."""
    vm = await running_vm(lab)
    start = hpb.StartVmotionRequest(
        ticket=ticket(),
        vm=vm.name,
        destination=DESTINATION,
        destination_endpoint=endpoint,
        destination_thumbprint=thumbprint or lab.engine.thumbprint(DESTINATION),
    )
    with pytest.raises(MigrationFault, match="cannot reach"):
        await host_call(lab.engine, SOURCE, "StartVmotion", start)
    assert running_on(lab, "vm-m") == [SOURCE]
