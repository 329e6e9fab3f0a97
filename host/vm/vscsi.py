"""A VM's virtual SCSI (vSCSI): the controllers its guest sees (scsi0..scsi3) and the
virtual disks behind their targets, addressed as vSphere's scsiX:Y.

Owns the mapping from the guest's nexus (bus, target, LUN) to the VM's own opened
disks, and answers the commands a guest driver sends down that nexus: TEST UNIT
READY, INQUIRY, REPORT LUNS, READ CAPACITY (16), READ (16) and WRITE (16), with the
byte layouts of SPC-4 and SBC-3. Each virtual disk is one target with one LUN (0), as
on vSphere's LSI Logic and PVSCSI adapters; unit 7 of every bus is the controller's
own SCSI ID, never a disk.

It must never reach anything but this VM's own disks: it is built from the disks
hostd opened for this VM and holds no reference to the host's storage stack, its
physical LUNs or another VM. A guest names a device only by (bus, target, LUN) on its
own adapter, so there is no address, CDB or LUN number that names a host LUN or
another VM's disk: anything that is not one of this VM's devices is answered CHECK
CONDITION / LOGICAL UNIT NOT SUPPORTED. Every command is answered in band (GOOD with
data, or a status with sense data), as a real adapter does; a guest cannot make it
raise.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from vsim.faults import AlreadyExists, InvalidArgument, NotFound, VimFault
from vsim.storage.scsi import (
    GOOD,
    ILLEGAL_REQUEST,
    INVALID_FIELD_IN_CDB,
    LBA_OUT_OF_RANGE,
    LUN_NOT_SUPPORTED,
    UNRECOVERED_READ_ERROR,
    WRITE_ERROR,
    ScsiError,
    Sense,
    check_condition,
)

if TYPE_CHECKING:
    from vsim.host.kernel.vmkernel import VmConfig

BLOCK = 512
"""The logical block length every virtual disk reports (READ CAPACITY)."""
MAX_CONTROLLERS = 4
"""Virtual SCSI adapters per VM (vSphere configuration maximum): scsi0..scsi3."""
CONTROLLER_UNIT = 7
"""The controller's own SCSI ID on its bus: scsiX:7 is never a disk."""
DISK_MAX_IO_SIZE_KB = 32767
"""Disk.DiskMaxIOSize: the largest I/O ESXi passes on in one piece."""
MAX_TRANSFER_BLOCKS = DISK_MAX_IO_SIZE_KB * 1024 // BLOCK
"""The most blocks one READ (16) or WRITE (16) moves. ESXi splits larger guest I/Os;
vsim refuses them (INVALID FIELD IN CDB), so no CDB can make it allocate more."""

# Operation codes (SPC-4, SBC-3).
TEST_UNIT_READY = 0x00
INQUIRY = 0x12
READ_16 = 0x88
WRITE_16 = 0x8A
SERVICE_ACTION_IN_16 = 0x9E
READ_CAPACITY_16 = 0x10
"""The service action of SERVICE ACTION IN (16) that is READ CAPACITY (16)."""
REPORT_LUNS = 0xA0

INVALID_COMMAND_OPERATION_CODE = Sense(
    ILLEGAL_REQUEST, 0x20, 0x00, "INVALID COMMAND OPERATION CODE"
)

INQUIRY_VENDOR = "VMware"
INQUIRY_PRODUCT = "Virtual disk"
INQUIRY_REVISION = "2.0"
INQUIRY_VERSION = 0x06
"""The ANSI version a vSphere virtual disk reports (SPC-4)."""
REPORT_LUNS_MIN_ALLOCATION = 16
"""SPC-4: a REPORT LUNS allocation length below 16 is an error."""
READ_CAPACITY_16_LENGTH = 32
FIXED_SENSE_LENGTH = 18


class ControllerType(StrEnum):
    """A virtual SCSI controller's type, as the .vmx names it (scsiX.virtualDev)."""

    LSI_LOGIC = "lsilogic"
    LSI_LOGIC_SAS = "lsisas1068"
    PVSCSI = "pvscsi"


TARGETS_PER_CONTROLLER = {
    ControllerType.LSI_LOGIC: 16,
    ControllerType.LSI_LOGIC_SAS: 16,
    ControllerType.PVSCSI: 64,  # vSphere 6.7+ (hardware version 14+)
}
"""SCSI IDs on one bus, the controller's own (7) included."""


class GuestDisk(Protocol):
    """What a virtual device reads and writes: an opened VMDK chain
    (`vsim.host.storage.vmdk.VirtualDisk`) or, in a test, an in-memory disk. Whole 512-byte
    sectors, addressed by sector."""

    @property
    def sectors(self) -> int: ...

    async def read(self, lba: int, sectors: int) -> bytes: ...

    async def write(self, lba: int, data: bytes) -> None: ...


@dataclass(frozen=True, order=True)
class ScsiAddress:
    """Where a virtual disk sits: scsi<bus>:<unit>. The guest sees the unit as the
    target ID, with the disk at LUN 0."""

    bus: int
    """The controller's bus number, 0..3."""
    unit: int
    """The target on that bus; never 7 (the controller itself)."""

    def __str__(self) -> str:
        return f"scsi{self.bus}:{self.unit}"


@dataclass(frozen=True)
class VirtualScsiController:
    bus: int
    """scsi<bus>, 0..3."""
    type: ControllerType
    """The adapter the guest's driver sees (scsi<bus>.virtualDev)."""

    @property
    def targets(self) -> int:
        return TARGETS_PER_CONTROLLER[self.type]


@dataclass(frozen=True)
class VirtualDevice:
    address: ScsiAddress
    """Where the guest finds it."""
    path: str
    """The disk's descriptor path (for people; "" when not given)."""
    disk: GuestDisk
    """The opened disk behind it."""


@dataclass(frozen=True)
class ScsiResult:
    """How a command completed, as the adapter hands it back to the guest."""

    status: int
    """SAM status: GOOD, CHECK CONDITION, ..."""
    data: bytes = b""
    """Data-in (what the guest reads), already cut to the CDB's allocation length."""
    sense: Sense | None = None
    """For CHECK CONDITION: sense key, ASC and ASCQ."""
    detail: str = ""
    """Why, for people (never seen by the guest)."""

    @property
    def sense_data(self) -> bytes:
        """The sense data in fixed format (SPC-4 4.5.3); empty unless CHECK CONDITION."""
        if self.sense is None:
            return b""
        sense = bytearray(FIXED_SENSE_LENGTH)
        sense[0] = 0x70  # current error, fixed format
        sense[2] = self.sense.key & 0x0F
        sense[7] = FIXED_SENSE_LENGTH - 8
        sense[12] = self.sense.asc
        sense[13] = self.sense.ascq
        return bytes(sense)

    def check(self) -> bytes:
        """The data of a GOOD completion; ScsiError for any other."""
        if self.status != GOOD:
            raise ScsiError(self.status, self.sense, self.detail)
        return self.data


# The assignment of a VM's disks to addresses.


def disk_addresses(
    count: int, controller_type: ControllerType = ControllerType.LSI_LOGIC
) -> list[ScsiAddress]:
    """Where a VM's disks go, in the order of its configuration: scsi0:0, scsi0:1, ...,
    skipping each bus's unit 7, then scsi1:0, ... InvalidArgument if they do not fit on
    four controllers of that type."""
    per_bus = [u for u in range(TARGETS_PER_CONTROLLER[controller_type]) if u != CONTROLLER_UNIT]
    most = MAX_CONTROLLERS * len(per_bus)
    if not 0 <= count <= most:
        raise InvalidArgument(
            f"a VM holds at most {most} disks on {MAX_CONTROLLERS} {controller_type} "
            f"controllers ({len(per_bus)} each), got {count}"
        )
    return [ScsiAddress(i // len(per_bus), per_bus[i % len(per_bus)]) for i in range(count)]


def _controller_type(value: str) -> ControllerType:
    try:
        return ControllerType(value)
    except ValueError:
        allowed = ", ".join(t.value for t in ControllerType)
        raise InvalidArgument(
            f"controller type {str(value)[:40]!r} is not one of {allowed}"
        ) from None


class VirtualScsi:
    """One VM's virtual SCSI controllers and the disks on them."""

    def __init__(self, vm: str) -> None:
        self.vm = vm
        self._controllers: dict[int, VirtualScsiController] = {}
        self._devices: dict[ScsiAddress, VirtualDevice] = {}

    @classmethod
    def for_vm(
        cls,
        vm: VmConfig,
        disks: Sequence[GuestDisk],
        controller_type: ControllerType | str = ControllerType.LSI_LOGIC,
    ) -> VirtualScsi:
        """The VM's adapter with `disks` (the VM's opened disks, in the order of
        vm.disks) at the addresses `disk_addresses` gives, on as many controllers of
        `controller_type` as they need."""
        kind = _controller_type(controller_type)
        if len(disks) != len(vm.disks):
            raise InvalidArgument(
                f"{vm.name} has {len(vm.disks)} disks in its configuration but "
                f"{len(disks)} were opened for it"
            )
        addresses = disk_addresses(len(disks), kind)
        for config, disk in zip(vm.disks, disks, strict=True):
            if disk.sectors * BLOCK != config.capacity_bytes:
                raise InvalidArgument(
                    f"{config.path} holds {disk.sectors * BLOCK} bytes but {vm.name}'s "
                    f"configuration says {config.capacity_bytes}: is it the right disk?"
                )
        vscsi = cls(vm.name)
        for bus in sorted({a.bus for a in addresses}):
            vscsi.add_controller(bus, kind)
        for address, config, disk in zip(addresses, vm.disks, disks, strict=True):
            vscsi.attach(address, disk, config.path)
        return vscsi

    # configuration

    def controllers(self) -> list[VirtualScsiController]:
        return [self._controllers[bus] for bus in sorted(self._controllers)]

    def devices(self) -> list[VirtualDevice]:
        return [self._devices[a] for a in sorted(self._devices)]

    def add_controller(
        self, bus: int, controller_type: ControllerType | str = ControllerType.LSI_LOGIC
    ) -> VirtualScsiController:
        kind = _controller_type(controller_type)
        if not 0 <= bus < MAX_CONTROLLERS:
            raise InvalidArgument(
                f"a VM has SCSI controllers scsi0..scsi{MAX_CONTROLLERS - 1}, not scsi{bus}"
            )
        if bus in self._controllers:
            raise AlreadyExists(f"{self.vm} already has a controller scsi{bus}")
        controller = self._controllers[bus] = VirtualScsiController(bus, kind)
        return controller

    def attach(self, address: ScsiAddress, disk: GuestDisk, path: str = "") -> VirtualDevice:
        """Puts a disk of this VM's at address; nothing changes if it cannot go there."""
        self._check_free(address)
        if disk.sectors <= 0:
            raise InvalidArgument(f"{path or 'the disk'} has no sectors; it cannot be attached")
        for device in self._devices.values():
            if device.disk is disk or (path and device.path == path):
                raise InvalidArgument(
                    f"{path or 'this disk'} is already attached to {self.vm} at "
                    f"{device.address}; a disk is attached once"
                )
        device = self._devices[address] = VirtualDevice(address, path, disk)
        return device

    def detach(self, address: ScsiAddress) -> VirtualDevice:
        try:
            return self._devices.pop(address)
        except KeyError:
            raise NotFound(f"{self.vm} has no disk at {address}") from None

    def _check_free(self, address: ScsiAddress) -> None:
        controller = self._controllers.get(address.bus)
        if controller is None:
            raise NotFound(f"{self.vm} has no controller scsi{address.bus}; add it first")
        if not 0 <= address.unit < controller.targets or address.unit == CONTROLLER_UNIT:
            raise InvalidArgument(
                f"{address} is not a disk slot: a {controller.type} bus has units "
                f"0..{controller.targets - 1} and unit {CONTROLLER_UNIT} is the controller"
            )
        if address in self._devices:
            taken = self._devices[address].path or "another disk"
            raise AlreadyExists(f"{address} of {self.vm} holds {taken}")

    # the guest's commands

    async def execute(
        self, bus: int, target: int, lun: int, cdb: bytes, data_out: bytes = b""
    ) -> ScsiResult:
        """Runs one command the guest sent to (bus, target, lun) and says how it
        completed. data_out is what a WRITE carries."""
        try:
            data = await self._execute(bus, target, lun, bytes(cdb), bytes(data_out))
        except ScsiError as e:
            return ScsiResult(e.status, b"", e.sense, e.detail)
        return ScsiResult(GOOD, data)

    async def _execute(self, bus: int, target: int, lun: int, cdb: bytes, data_out: bytes) -> bytes:
        device = self._devices.get(ScsiAddress(bus, target))
        if device is None:
            raise check_condition(
                LUN_NOT_SUPPORTED, f"{self.vm} has no device at bus {bus} target {target}"
            )
        if not cdb:
            raise check_condition(INVALID_COMMAND_OPERATION_CODE, "empty CDB")
        if cdb[0] == REPORT_LUNS:  # a target-level command: any LUN of the target answers
            return _report_luns(cdb)
        if lun != 0:
            raise check_condition(
                LUN_NOT_SUPPORTED, f"{device.address} of {self.vm} has only LUN 0, not {lun}"
            )
        handler = _COMMANDS.get(cdb[0])
        if handler is None:
            raise check_condition(INVALID_COMMAND_OPERATION_CODE, f"opcode {cdb[0]:#04x}")
        return await handler(device.disk, cdb, data_out)


# Command handlers: each checks its CDB, then acts on this VM's disk only.


def _need(cdb: bytes, length: int) -> None:
    if len(cdb) < length:
        raise check_condition(
            INVALID_FIELD_IN_CDB, f"opcode {cdb[0]:#04x} has a {length}-byte CDB, got {len(cdb)}"
        )


async def _test_unit_ready(disk: GuestDisk, cdb: bytes, data_out: bytes) -> bytes:
    _need(cdb, 6)
    return b""


async def _inquiry(disk: GuestDisk, cdb: bytes, data_out: bytes) -> bytes:
    _need(cdb, 6)
    if cdb[1] & 0x01 or cdb[2]:
        # vsim's virtual disks have no vital product data pages.
        raise check_condition(INVALID_FIELD_IN_CDB, "EVPD and page codes are not supported")
    allocation = int.from_bytes(cdb[3:5], "big")
    return standard_inquiry_data()[:allocation]


def standard_inquiry_data() -> bytes:
    """The 36 bytes of standard INQUIRY data a vSphere virtual disk returns."""
    data = bytearray(36)
    data[0] = 0x00  # peripheral qualifier 0 (connected), direct-access block device
    data[2] = INQUIRY_VERSION
    data[3] = 0x02  # response data format 2
    data[4] = len(data) - 5
    data[7] = 0x02  # CmdQue: tagged command queuing
    data[8:16] = INQUIRY_VENDOR.ljust(8).encode("ascii")
    data[16:32] = INQUIRY_PRODUCT.ljust(16).encode("ascii")
    data[32:36] = INQUIRY_REVISION.ljust(4).encode("ascii")
    return bytes(data)


async def _service_action_in(disk: GuestDisk, cdb: bytes, data_out: bytes) -> bytes:
    _need(cdb, 16)
    if cdb[1] & 0x1F != READ_CAPACITY_16:
        raise check_condition(INVALID_FIELD_IN_CDB, f"service action {cdb[1] & 0x1F:#04x}")
    allocation = int.from_bytes(cdb[10:14], "big")
    data = bytearray(READ_CAPACITY_16_LENGTH)
    data[0:8] = (disk.sectors - 1).to_bytes(8, "big")  # the last LBA
    data[8:12] = BLOCK.to_bytes(4, "big")
    return bytes(data[:allocation])


def _transfer(disk: GuestDisk, cdb: bytes) -> tuple[int, int]:
    """(LBA, blocks) of a READ (16) / WRITE (16), range-checked against the disk."""
    _need(cdb, 16)
    if cdb[1] & 0xE0:
        raise check_condition(INVALID_FIELD_IN_CDB, "the disk has no protection information")
    lba = int.from_bytes(cdb[2:10], "big")
    blocks = int.from_bytes(cdb[10:14], "big")
    if blocks > MAX_TRANSFER_BLOCKS:
        raise check_condition(
            INVALID_FIELD_IN_CDB,
            f"transfer length must be at most {MAX_TRANSFER_BLOCKS} blocks, got {blocks}",
        )
    # A zero-length transfer is no error (SBC-3), but its LBA must still be on the disk.
    if lba + max(blocks, 1) > disk.sectors:
        raise check_condition(
            LBA_OUT_OF_RANGE,
            f"blocks {lba}..{lba + max(blocks, 1) - 1} are outside 0..{disk.sectors - 1}",
        )
    return lba, blocks


async def _read_16(disk: GuestDisk, cdb: bytes, data_out: bytes) -> bytes:
    lba, blocks = _transfer(disk, cdb)
    if not blocks:
        return b""
    try:
        return await disk.read(lba, blocks)
    except VimFault as e:  # the datastore is gone, the disk closed: the guest sees an I/O error
        raise check_condition(UNRECOVERED_READ_ERROR, e.message) from None


async def _write_16(disk: GuestDisk, cdb: bytes, data_out: bytes) -> bytes:
    lba, blocks = _transfer(disk, cdb)
    if len(data_out) != blocks * BLOCK:
        raise check_condition(
            INVALID_FIELD_IN_CDB,
            f"the CDB moves {blocks} blocks ({blocks * BLOCK} bytes) but "
            f"{len(data_out)} bytes came with it",
        )
    if not blocks:
        return b""
    try:
        await disk.write(lba, data_out)
    except VimFault as e:  # never acknowledged: the guest retries or fails the I/O
        raise check_condition(WRITE_ERROR, e.message) from None
    return b""


def _report_luns(cdb: bytes) -> bytes:
    _need(cdb, 12)
    select = cdb[2]
    if select not in (0x00, 0x01, 0x02):
        raise check_condition(INVALID_FIELD_IN_CDB, f"SELECT REPORT {select:#04x}")
    allocation = int.from_bytes(cdb[6:10], "big")
    if allocation < REPORT_LUNS_MIN_ALLOCATION:
        raise check_condition(
            INVALID_FIELD_IN_CDB,
            f"allocation length must be at least {REPORT_LUNS_MIN_ALLOCATION}, got {allocation}",
        )
    # 0x01 asks for well-known LUNs only, and a virtual disk has none.
    luns = [] if select == 0x01 else [0]
    return report_luns_data(luns)[:allocation]


def report_luns_data(luns: Sequence[int]) -> bytes:
    """REPORT LUNS parameter data (SPC-4 6.33): LUN list length (4 bytes, big-endian),
    4 reserved bytes, then one 8-byte entry per LUN in single-level peripheral device
    addressing (byte 0 = 0, byte 1 = the LUN)."""
    entries = b"".join(_peripheral_lun(lun) for lun in luns)
    return len(entries).to_bytes(4, "big") + bytes(4) + entries


def _peripheral_lun(lun: int) -> bytes:
    if not 0 <= lun < 256:
        raise ValueError(f"peripheral device addressing holds LUNs 0..255, not {lun}")
    return bytes([0x00, lun]) + bytes(6)


def parse_report_luns(data: bytes) -> list[int]:
    """The LUNs of REPORT LUNS parameter data in peripheral device addressing."""
    length = int.from_bytes(data[0:4], "big")
    entries = data[8 : 8 + length]
    if length % 8 or len(entries) != length:
        raise ValueError(f"a LUN list of {length} bytes in {len(data)} bytes of data")
    luns = []
    for at in range(0, length, 8):
        entry = entries[at : at + 8]
        if entry[0] >> 6 != 0 or entry[0] & 0x3F or any(entry[2:]):
            raise ValueError(f"entry {entry.hex()} is not single-level peripheral addressing")
        luns.append(entry[1])
    return luns


_COMMANDS: dict[int, Callable[[GuestDisk, bytes, bytes], Awaitable[bytes]]] = {
    TEST_UNIT_READY: _test_unit_ready,
    INQUIRY: _inquiry,
    SERVICE_ACTION_IN_16: _service_action_in,
    READ_16: _read_16,
    WRITE_16: _write_16,
}


# CDBs as a guest driver builds them.


def cdb_test_unit_ready() -> bytes:
    return bytes(6)


def cdb_inquiry(allocation: int = 36) -> bytes:
    return bytes([INQUIRY, 0, 0]) + allocation.to_bytes(2, "big") + bytes(1)


def cdb_report_luns(allocation: int = 4096, select: int = 0) -> bytes:
    return bytes([REPORT_LUNS, 0, select]) + bytes(3) + allocation.to_bytes(4, "big") + bytes(2)


def cdb_read_capacity_16(allocation: int = READ_CAPACITY_16_LENGTH) -> bytes:
    return (
        bytes([SERVICE_ACTION_IN_16, READ_CAPACITY_16])
        + bytes(8)
        + allocation.to_bytes(4, "big")
        + bytes(2)
    )


def cdb_read_16(lba: int, blocks: int) -> bytes:
    return bytes([READ_16, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


def cdb_write_16(lba: int, blocks: int) -> bytes:
    return bytes([WRITE_16, 0]) + lba.to_bytes(8, "big") + blocks.to_bytes(4, "big") + bytes(2)


# What a guest finds when it scans its adapters.


@dataclass(frozen=True)
class FoundLun:
    """One logical unit a guest's scan found."""

    bus: int
    target: int
    lun: int
    vendor: str
    product: str
    capacity_bytes: int


async def guest_scan(vscsi: VirtualScsi) -> list[FoundLun]:
    """What the guest's SCSI driver does at boot: REPORT LUNS to every target of
    every adapter, then INQUIRY and READ CAPACITY(16) of each LUN reported."""
    found: list[FoundLun] = []
    for bus in range(MAX_CONTROLLERS):
        for target in range(max(TARGETS_PER_CONTROLLER.values())):
            report = await vscsi.execute(bus, target, 0, cdb_report_luns())
            if report.status != GOOD:
                continue
            for lun in parse_report_luns(report.data):
                inquiry = (await vscsi.execute(bus, target, lun, cdb_inquiry())).check()
                capacity = (await vscsi.execute(bus, target, lun, cdb_read_capacity_16())).check()
                blocks = int.from_bytes(capacity[0:8], "big") + 1
                block = int.from_bytes(capacity[8:12], "big")
                found.append(
                    FoundLun(
                        bus,
                        target,
                        lun,
                        inquiry[8:16].decode("ascii").strip(),
                        inquiry[16:32].decode("ascii").strip(),
                        blocks * block,
                    )
                )
    return found
