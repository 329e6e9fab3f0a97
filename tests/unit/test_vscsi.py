"""A VM's virtual SCSI adapter (`vsim.host.vm.vscsi`): disks at scsiX:Y in configuration
order (never unit 7), REPORT LUNS / INQUIRY / READ CAPACITY (16) in their SPC/SBC byte
layouts, READ (16) / WRITE (16) with LBA bounds, LOGICAL UNIT NOT SUPPORTED for every
address that is not one of the VM's disks, and two properties over random histories:
two VMs' adapters never reach each other's data, and the adapter behaves as a simple
model of its disks. Also run over real VMDK chains (linked clones of one base)."""

from __future__ import annotations

import itertools
import random
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsim import virtual_time
from vsim.clock import SimClock
from vsim.faults import AlreadyExists, CannotAccessFile, InvalidArgument, NotFound
from vsim.host.kernel.vmkernel import DiskConfig, VmConfig
from vsim.host.storage.nfs_files import NfsFileSystem
from vsim.host.storage.nfs_lock import ExportClient, NfsLockManager
from vsim.host.storage.vmdk import create_delta, create_disk, open_disk
from vsim.host.vm.vscsi import (
    BLOCK,
    CONTROLLER_UNIT,
    INVALID_COMMAND_OPERATION_CODE,
    MAX_TRANSFER_BLOCKS,
    ControllerType,
    ScsiAddress,
    ScsiResult,
    VirtualScsi,
    cdb_inquiry,
    cdb_read_16,
    cdb_read_capacity_16,
    cdb_report_luns,
    cdb_test_unit_ready,
    cdb_write_16,
    disk_addresses,
    parse_report_luns,
    report_luns_data,
)
from vsim.storage.nfs_export import ExportOptions, NfsExport
from vsim.storage.scsi import (
    CHECK_CONDITION,
    GOOD,
    INVALID_FIELD_IN_CDB,
    LBA_OUT_OF_RANGE,
    LUN_NOT_SUPPORTED,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    ScsiError,
    Sense,
)
from vsim.storage.vmfs_format import LockMode

ZERO = bytes(BLOCK)


class MemoryDisk:
    """An in-memory disk of whole sectors, as strict about its bounds as a VMDK."""

    path = "memory.vmdk"
    has_parent = False

    def __init__(self, sectors: int) -> None:
        self.sectors = sectors
        self.blocks: dict[int, bytes] = {}
        self.failing = False

    def _span(self, lba: int, count: int) -> None:
        if self.failing:
            raise CannotAccessFile("the datastore is gone")
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise InvalidArgument(f"sectors {lba}..{lba + count} are outside the disk")

    async def read(self, lba: int, sectors: int) -> bytes:
        self._span(lba, sectors)
        return b"".join(self.blocks.get(i, ZERO) for i in range(lba, lba + sectors))

    async def write(self, lba: int, data: bytes) -> None:
        assert data and len(data) % BLOCK == 0
        self._span(lba, len(data) // BLOCK)
        for i in range(len(data) // BLOCK):
            self.blocks[lba + i] = data[i * BLOCK : (i + 1) * BLOCK]


def config(name: str, sizes: list[int]) -> VmConfig:
    disks = tuple(DiskConfig(f"{name}/{name}_{i}.vmdk", s * BLOCK) for i, s in enumerate(sizes))
    return VmConfig(name, f"uuid-{name}", 1, 256, datastore="vmfs-01", disks=disks)


def vm_with(name: str, sizes: list[int], kind=ControllerType.LSI_LOGIC):
    disks = [MemoryDisk(s) for s in sizes]
    return VirtualScsi.for_vm(config(name, sizes), disks, kind), disks


def block(fill: int, count: int = 1) -> bytes:
    return bytes([fill]) * (BLOCK * count)


def assert_check(result: ScsiResult, sense: Sense) -> None:
    assert result.status == CHECK_CONDITION, result
    assert result.sense == sense, result
    assert result.data == b""
    raw = result.sense_data
    assert len(raw) == 18 and raw[0] == 0x70 and raw[7] == 10
    assert (raw[2], raw[12], raw[13]) == (sense.key, sense.asc, sense.ascq)


# addresses


def test_disks_fill_scsi0_skipping_unit_7_then_scsi1():
    addresses = disk_addresses(17)
    assert [str(a) for a in addresses] == [
        *(f"scsi0:{u}" for u in (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15)),
        "scsi1:0",
        "scsi1:1",
    ]
    assert disk_addresses(0) == []


@pytest.mark.parametrize(
    ("kind", "per_bus"),
    [
        (ControllerType.LSI_LOGIC, 15),
        (ControllerType.LSI_LOGIC_SAS, 15),
        (ControllerType.PVSCSI, 63),
    ],
)
def test_four_controllers_hold_the_disk_slots_and_no_more(kind, per_bus):
    addresses = disk_addresses(4 * per_bus, kind)
    assert len(set(addresses)) == 4 * per_bus
    assert all(a.unit != CONTROLLER_UNIT and 0 <= a.bus <= 3 for a in addresses)
    with pytest.raises(InvalidArgument, match=f"at most {4 * per_bus} disks"):
        disk_addresses(4 * per_bus + 1, kind)


def test_for_vm_attaches_the_vms_disks_in_configuration_order():
    sizes = [8] * 16
    vscsi, disks = vm_with("vm-001", sizes)
    devices = vscsi.devices()
    assert [d.address for d in devices] == disk_addresses(16)
    assert [d.disk for d in devices] == disks
    assert [d.path for d in devices] == [d.path for d in config("vm-001", sizes).disks]
    assert [(c.bus, c.type) for c in vscsi.controllers()] == [
        (0, ControllerType.LSI_LOGIC),
        (1, ControllerType.LSI_LOGIC),
    ]


def test_for_vm_refuses_disks_that_do_not_match_the_configuration():
    vm = config("vm-001", [8, 16])
    with pytest.raises(InvalidArgument, match="2 disks in its configuration but 1"):
        VirtualScsi.for_vm(vm, [MemoryDisk(8)])
    with pytest.raises(InvalidArgument, match="is it the right disk"):
        VirtualScsi.for_vm(vm, [MemoryDisk(8), MemoryDisk(8)])
    with pytest.raises(InvalidArgument, match="not one of lsilogic"):
        VirtualScsi.for_vm(vm, [MemoryDisk(8), MemoryDisk(16)], "buslogic")
    same = MemoryDisk(8)
    with pytest.raises(InvalidArgument, match="attached once"):
        VirtualScsi.for_vm(config("vm-001", [8, 8]), [same, same])


def test_attach_refuses_bad_slots_and_changes_nothing():
    vscsi, disks = vm_with("vm-001", [8])
    before = vscsi.devices()
    spare = MemoryDisk(8)
    with pytest.raises(InvalidArgument, match="unit 7 is the controller"):
        vscsi.attach(ScsiAddress(0, 7), spare)
    with pytest.raises(InvalidArgument, match="units 0..15"):
        vscsi.attach(ScsiAddress(0, 16), spare)
    with pytest.raises(NotFound, match="no controller scsi1"):
        vscsi.attach(ScsiAddress(1, 0), spare)
    with pytest.raises(AlreadyExists, match="scsi0:0 of vm-001 holds"):
        vscsi.attach(ScsiAddress(0, 0), spare)
    with pytest.raises(InvalidArgument, match="already attached"):
        vscsi.attach(ScsiAddress(0, 1), disks[0])
    with pytest.raises(InvalidArgument, match="scsi0..scsi3"):
        vscsi.add_controller(4)
    with pytest.raises(AlreadyExists):
        vscsi.add_controller(0, ControllerType.PVSCSI)
    with pytest.raises(NotFound):
        vscsi.detach(ScsiAddress(0, 1))
    assert vscsi.devices() == before
    assert [c.bus for c in vscsi.controllers()] == [0]


async def test_a_detached_disk_is_gone_from_the_guest():
    vscsi, _ = vm_with("vm-001", [8, 8])
    vscsi.detach(ScsiAddress(0, 1))
    result = await vscsi.execute(0, 1, 0, cdb_read_16(0, 1))
    assert_check(result, LUN_NOT_SUPPORTED)
    assert (await vscsi.execute(0, 0, 0, cdb_read_16(0, 1))).status == GOOD


# REPORT LUNS, INQUIRY, READ CAPACITY


def test_report_luns_data_is_spc_format():
    assert report_luns_data([0]) == bytes([0, 0, 0, 8]) + bytes(4) + bytes(8)
    assert report_luns_data([0, 5]) == (
        bytes([0, 0, 0, 16]) + bytes(4) + bytes(8) + bytes([0, 5]) + bytes(6)
    )
    assert parse_report_luns(report_luns_data([0, 5, 255])) == [0, 5, 255]


async def test_a_bus_scan_with_report_luns_finds_exactly_the_vms_disks():
    vscsi, _ = vm_with("vm-001", [8] * 17)  # scsi0 full, two on scsi1
    found = set()
    for bus, target in itertools.product(range(-1, 5), range(-1, 66)):
        result = await vscsi.execute(bus, target, 0, cdb_report_luns())
        if result.status == GOOD:
            # One 8-byte entry: LUN 0 in single-level peripheral addressing.
            assert result.data == bytes([0, 0, 0, 8]) + bytes(12)
            found |= {(bus, target, lun) for lun in parse_report_luns(result.data)}
        else:
            assert_check(result, LUN_NOT_SUPPORTED)
    assert found == {(a.bus, a.unit, 0) for a in disk_addresses(17)}


async def test_report_luns_allocation_and_select_report():
    vscsi, _ = vm_with("vm-001", [8])
    assert_check(await vscsi.execute(0, 0, 0, cdb_report_luns(15)), INVALID_FIELD_IN_CDB)
    assert (await vscsi.execute(0, 0, 0, cdb_report_luns(16))).data == bytes([0, 0, 0, 8]) + bytes(
        12
    )
    truncated = (await vscsi.execute(0, 0, 0, cdb_report_luns(16, select=2))).data
    assert len(truncated) == 16
    # Well-known LUNs only: a virtual disk has none.
    assert (await vscsi.execute(0, 0, 0, cdb_report_luns(select=1))).data == bytes(8)
    assert_check(await vscsi.execute(0, 0, 0, cdb_report_luns(select=3)), INVALID_FIELD_IN_CDB)
    # A target-level command: any LUN of the target answers it.
    assert parse_report_luns((await vscsi.execute(0, 0, 3, cdb_report_luns())).check()) == [0]


async def test_inquiry_says_vmware_virtual_disk():
    vscsi, _ = vm_with("vm-001", [8])
    data = (await vscsi.execute(0, 0, 0, cdb_inquiry())).check()
    assert len(data) == 36
    assert data[0] == 0x00  # connected direct-access block device
    assert data[4] == 31
    assert data[8:16] == b"VMware  "
    assert data[16:32] == b"Virtual disk    "
    assert (await vscsi.execute(0, 0, 0, cdb_inquiry(5))).check() == data[:5]
    assert (await vscsi.execute(0, 0, 0, cdb_inquiry(0))).check() == b""
    evpd = bytes([0x12, 1, 0x80, 0, 255, 0])
    assert_check(await vscsi.execute(0, 0, 0, evpd), INVALID_FIELD_IN_CDB)


async def test_read_capacity_16_reports_the_disks_size():
    vscsi, _ = vm_with("vm-001", [8, 2048])
    for target, sectors in ((0, 8), (1, 2048)):
        data = (await vscsi.execute(0, target, 0, cdb_read_capacity_16())).check()
        assert len(data) == 32
        assert int.from_bytes(data[0:8], "big") == sectors - 1
        assert int.from_bytes(data[8:12], "big") == BLOCK
        assert data[12:] == bytes(20)
    assert (await vscsi.execute(0, 0, 0, cdb_read_capacity_16(12))).check() == (
        (7).to_bytes(8, "big") + BLOCK.to_bytes(4, "big")
    )
    other_action = bytes([0x9E, 0x11]) + bytes(14)
    assert_check(await vscsi.execute(0, 0, 0, other_action), INVALID_FIELD_IN_CDB)


# READ and WRITE


async def test_write_then_read_round_trips_on_the_addressed_disk_only():
    vscsi, disks = vm_with("vm-001", [16, 16])
    data = block(0x11) + block(0x22)
    assert (await vscsi.execute(0, 1, 0, cdb_write_16(3, 2), data)).check() == b""
    assert (await vscsi.execute(0, 1, 0, cdb_read_16(3, 2))).check() == data
    assert (await vscsi.execute(0, 0, 0, cdb_read_16(3, 2))).check() == bytes(2 * BLOCK)
    assert disks[0].blocks == {}
    assert disks[1].blocks == {3: block(0x11), 4: block(0x22)}


async def test_commands_to_anything_but_the_vms_disks_are_lun_not_supported():
    vscsi, disks = vm_with("vm-001", [16, 16])
    nexuses = [(0, 2, 0), (0, 7, 0), (1, 0, 0), (3, 15, 0), (4, 0, 0), (-1, 0, 0), (0, 0, 1)]
    for bus, target, lun in nexuses:
        write = await vscsi.execute(bus, target, lun, cdb_write_16(0, 1), block(0xEE))
        assert_check(write, LUN_NOT_SUPPORTED)
        assert_check(await vscsi.execute(bus, target, lun, cdb_read_16(0, 1)), LUN_NOT_SUPPORTED)
        assert_check(await vscsi.execute(bus, target, lun, cdb_inquiry()), LUN_NOT_SUPPORTED)
        tur = await vscsi.execute(bus, target, lun, cdb_test_unit_ready())
        assert_check(tur, LUN_NOT_SUPPORTED)
    assert all(d.blocks == {} for d in disks)
    assert (await vscsi.execute(0, 0, 0, cdb_test_unit_ready())).status == GOOD


async def test_lba_bounds():
    vscsi, disks = vm_with("vm-001", [16])
    assert (await vscsi.execute(0, 0, 0, cdb_write_16(15, 1), block(1))).status == GOOD
    straddle = await vscsi.execute(0, 0, 0, cdb_write_16(15, 2), block(2, 2))
    assert_check(straddle, LBA_OUT_OF_RANGE)
    assert_check(await vscsi.execute(0, 0, 0, cdb_write_16(16, 1), block(2)), LBA_OUT_OF_RANGE)
    assert_check(await vscsi.execute(0, 0, 0, cdb_read_16(16, 1)), LBA_OUT_OF_RANGE)
    assert_check(await vscsi.execute(0, 0, 0, cdb_read_16(2**64 - 1, 1)), LBA_OUT_OF_RANGE)
    assert_check(await vscsi.execute(0, 0, 0, cdb_read_16(14, 3)), LBA_OUT_OF_RANGE)
    assert disks[0].blocks == {15: block(1)}
    # A zero-length transfer is no error, but its LBA must be on the disk.
    assert (await vscsi.execute(0, 0, 0, cdb_read_16(15, 0))).check() == b""
    assert_check(await vscsi.execute(0, 0, 0, cdb_read_16(16, 0)), LBA_OUT_OF_RANGE)
    too_long = await vscsi.execute(0, 0, 0, cdb_read_16(0, MAX_TRANSFER_BLOCKS + 1))
    assert_check(too_long, INVALID_FIELD_IN_CDB)


async def test_bad_cdbs_are_refused_and_write_nothing():
    vscsi, disks = vm_with("vm-001", [16])
    short = await vscsi.execute(0, 0, 0, cdb_write_16(0, 2), block(3))
    assert_check(short, INVALID_FIELD_IN_CDB)
    assert_check(
        await vscsi.execute(0, 0, 0, cdb_write_16(0, 1)[:10], block(3)), INVALID_FIELD_IN_CDB
    )
    protected = bytearray(cdb_write_16(0, 1))
    protected[1] = 0x20  # WRPROTECT
    assert_check(await vscsi.execute(0, 0, 0, bytes(protected), block(3)), INVALID_FIELD_IN_CDB)
    assert_check(await vscsi.execute(0, 0, 0, b""), INVALID_COMMAND_OPERATION_CODE)
    assert_check(
        await vscsi.execute(0, 0, 0, bytes([0x2A]) + bytes(9)), INVALID_COMMAND_OPERATION_CODE
    )
    assert disks[0].blocks == {}


async def test_a_disk_that_fails_gives_the_guest_a_medium_error():
    vscsi, disks = vm_with("vm-001", [16])
    disks[0].failing = True
    assert_check(await vscsi.execute(0, 0, 0, cdb_read_16(0, 1)), UNRECOVERED_READ_ERROR)
    assert_check(await vscsi.execute(0, 0, 0, cdb_write_16(0, 1), block(1)), WRITE_ERROR)


async def test_check_raises_scsi_error_with_the_sense():
    vscsi, _ = vm_with("vm-001", [16])
    with pytest.raises(ScsiError) as raised:
        (await vscsi.execute(0, 9, 0, cdb_read_16(0, 1))).check()
    assert raised.value.status == CHECK_CONDITION
    assert raised.value.sense == LUN_NOT_SUPPORTED


# two VMs, random histories

SIZES = {"vm-a": [16, 8], "vm-b": [8, 16, 4]}
VMS = sorted(SIZES)
# Mostly the VMs' own disks (scsi0:0..2, LUN 0), else any nexus at all.
own = st.sampled_from([(0, 0, 0), (0, 1, 0), (0, 2, 0)])
anywhere = st.tuples(
    st.sampled_from([-1, 0, 1, 2, 4]), st.sampled_from([0, 1, 2, 3, 7, 64]), st.sampled_from([0, 1])
)
nexuses = st.one_of(own, own, anywhere)
lbas = st.integers(0, 18)
counts = st.integers(0, 4)
command = st.tuples(
    st.sampled_from(["write", "read"]), st.sampled_from(VMS), nexuses, lbas, counts
).map(lambda c: (c[0], c[1], *c[2], c[3], c[4]))


def tagged(vm: str, step: int, lba: int, count: int) -> bytes:
    """Blocks that say which VM wrote them, when and where."""
    return b"".join(
        f"{vm} step {step} lba {lba + i}".encode().ljust(BLOCK, b".") for i in range(count)
    )


def expected(sizes: list[int], bus: int, target: int, lun: int, lba: int, count: int):
    """The sense a command should get from the model, or None for GOOD."""
    addresses = disk_addresses(len(sizes))
    if ScsiAddress(bus, target) not in addresses or lun != 0:
        return LUN_NOT_SUPPORTED
    sectors = sizes[addresses.index(ScsiAddress(bus, target))]
    if lba + max(count, 1) > sectors:
        return LBA_OUT_OF_RANGE
    return None


async def run_two_vms(history: list[tuple]) -> None:
    adapters = {}
    disks = {}
    for vm, sizes in SIZES.items():
        adapters[vm], disks[vm] = vm_with(vm, sizes)
    model: dict[tuple[str, int, int], bytes] = {}  # (vm, disk index, lba) -> block
    for step, (kind, vm, bus, target, lun, lba, count) in enumerate(history):
        where = f"step {step}: {(kind, vm, bus, target, lun, lba, count)}"
        sense = expected(SIZES[vm], bus, target, lun, lba, count)
        index = (
            disk_addresses(len(SIZES[vm])).index(ScsiAddress(bus, target)) if sense is None else -1
        )
        if kind == "write":
            data = tagged(vm, step, lba, count)
            result = await adapters[vm].execute(bus, target, lun, cdb_write_16(lba, count), data)
            if sense is None:
                for i in range(count):
                    model[vm, index, lba + i] = data[i * BLOCK : (i + 1) * BLOCK]
        else:
            result = await adapters[vm].execute(bus, target, lun, cdb_read_16(lba, count))
            if sense is None:
                want = b"".join(model.get((vm, index, lba + i), ZERO) for i in range(count))
                assert result.data == want, where
        if sense is None:
            assert result.status == GOOD, where
        else:
            assert (result.status, result.sense) == (CHECK_CONDITION, sense), where
    # Every block on a VM's disks is zero or written by that VM, at that place.
    for vm in VMS:
        for index, disk in enumerate(disks[vm]):
            for lba, data in disk.blocks.items():
                assert data == model[vm, index, lba]
                assert data.startswith(f"{vm} step ".encode())
                assert data.rstrip(b".").endswith(f" lba {lba}".encode())
    assert len(model) == sum(len(d.blocks) for vm in VMS for d in disks[vm])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(command, min_size=5, max_size=80))
def test_two_vms_adapters_never_reach_each_others_data(history):
    virtual_time.run(run_two_vms(history))


# real VMDK chains

_exports = itertools.count()


async def test_linked_clones_through_vscsi_see_the_base_and_only_their_own_writes():
    """Two VMs whose disks are deltas over one base disk, opened as hostd opens them:
    each reads the base's blocks and its own writes, never the other's."""
    with tempfile.TemporaryDirectory() as tmp:
        export = NfsExport("nfs-01", Path(tmp) / f"export-{next(_exports)}", ExportOptions())
        client = ExportClient(export, "esxi-01")
        manager = NfsLockManager(client, uuid.UUID(int=1), "esxi-01", SimClock(), boot=1)
        fs = NfsFileSystem(manager, random.Random(1))
        await fs.mkdir("base")
        await create_disk(fs, "base/base.vmdk", 64 * BLOCK)
        base = await open_disk(fs, "base/base.vmdk")
        await base.write(0, block(0xBA, 4))
        await base.close()
        adapters, opened = {}, []
        for vm in ("vm-a", "vm-b"):
            await fs.mkdir(vm)
            path = f"{vm}/{vm}.vmdk"
            await create_delta(fs, path, "base/base.vmdk")
            disk = await open_disk(fs, path, LockMode.EXCLUSIVE)
            opened.append(disk)
            conf = VmConfig(
                vm, f"uuid-{vm}", 1, 256, datastore="nfs-01", disks=(DiskConfig(path, 64 * BLOCK),)
            )
            adapters[vm] = VirtualScsi.for_vm(conf, [disk], ControllerType.PVSCSI)
        try:
            a, b = adapters["vm-a"], adapters["vm-b"]
            assert (await a.execute(0, 0, 0, cdb_write_16(1, 1), block(0xAA))).status == GOOD
            assert (await b.execute(0, 0, 0, cdb_write_16(2, 1), block(0xBB))).status == GOOD
            a_sees = (await a.execute(0, 0, 0, cdb_read_16(0, 5))).check()
            b_sees = (await b.execute(0, 0, 0, cdb_read_16(0, 5))).check()
            assert a_sees == block(0xBA) + block(0xAA) + block(0xBA, 2) + ZERO
            assert b_sees == block(0xBA, 2) + block(0xBB) + block(0xBA) + ZERO
            capacity = (await a.execute(0, 0, 0, cdb_read_capacity_16())).check()
            assert int.from_bytes(capacity[:8], "big") == 63
            assert_check(await a.execute(0, 0, 0, cdb_read_16(64, 1)), LBA_OUT_OF_RANGE)
        finally:
            for disk in opened:
                await disk.close()
