"""Files on a VMFS volume (`vsim.host.storage.vmfs_files`) over an in-process LUN, and the
datastore path rules (`vsim.host.storage.datastore_files`).

Checked against the on-disk format itself (descriptors and the allocation bitmap read
straight off the LUN): a random history of creates, writes, reads and removes on two
hosts matches an in-memory model, thin files take exactly the blocks written (plus
the indirect pointer block), removing every file gives every block back; hosts
racing to create one path or to allocate blocks never both win; locks, faults, lost
access and persistence through the LUN file.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import struct
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vsim import virtual_time
from vsim.clock import SimClock, WallClock
from vsim.faults import (
    CannotAccessFile,
    FileAlreadyExists,
    FileLocked,
    FileNotFound,
    FileTooLarge,
    InvalidArgument,
    InvalidState,
    NoDiskSpace,
)
from vsim.host.storage import vmfs_files
from vsim.host.storage.datastore_files import MAX_NAME, FileInfo, check_span, parent_of, split_path
from vsim.host.storage.vmfs import HB_INTERVAL, HB_TIMEOUT, LunDevice, VmfsVolume, format_volume
from vsim.host.storage.vmfs_files import VmfsFileSystem
from vsim.storage.lun import Lun
from vsim.storage.vmfs_format import (
    DIRECT_POINTERS,
    MAX_PATH,
    SECTOR,
    FileDescriptor,
    FileType,
    LockMode,
    LockRecord,
    Superblock,
    VolumeLockMode,
)

KiB = 1024
MiB = 1024 * KiB
MODES = [VolumeLockMode.ATS_ONLY, VolumeLockMode.ATS_SCSI]
_images = itertools.count()


def host_uuid(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


@dataclass
class Rig:
    """One formatted LUN and a VmfsFileSystem per mounting host."""

    lun: Lun
    size: int
    sb: Superblock
    hosts: list[VmfsFileSystem]

    def raw(self, lba: int, blocks: int) -> bytes:
        """Sectors straight off the LUN (as an observer initiator)."""
        out = b""
        while blocks:
            n = min(blocks, 2048)
            out += self.lun.read("iqn.observer", lba, n)
            lba, blocks = lba + n, blocks - n
        return out

    def descriptors(self) -> list[tuple[int, FileDescriptor]]:
        """Every descriptor in use, read off the LUN."""
        region = self.raw(self.sb.descriptor_lba(0), self.sb.lock_records)
        out = []
        for i in range(self.sb.lock_records):
            d = FileDescriptor.unpack(region[i * SECTOR : (i + 1) * SECTOR])
            if d.type != FileType.FREE:
                out.append((i, d))
        return out

    def lock_record(self, index: int) -> LockRecord:
        return LockRecord.unpack(self.raw(self.sb.lock_lba(index), 1))

    def used_blocks(self) -> set[int]:
        bitmap = self.raw(self.sb.bitmap_lba(), self.sb.bitmap_sectors)
        bits = int.from_bytes(bitmap, "little")
        return {b for b in range(self.sb.blocks) if bits >> b & 1}

    def referenced_blocks(self) -> list[int]:
        """Every block some file's pointers name (indirect blocks included)."""
        out = []
        for _, d in self.descriptors():
            out += [b for b in d.direct if b]
            if d.indirect:
                out.append(d.indirect)
                table = self.raw(self.sb.block_lba(d.indirect), self.sb.block_size // SECTOR)
                out += [b for b in struct.unpack(f"<{len(table) // 4}I", table) if b]
        return out

    def check_consistent(self) -> None:
        """No block is named twice, every named block is in use, every name's parent
        is a directory."""
        referenced = self.referenced_blocks()
        assert len(referenced) == len(set(referenced)), "a block belongs to two files"
        assert set(referenced) <= self.used_blocks(), "a file uses a block marked free"
        assert all(self.sb.first_data_block <= b < self.sb.blocks for b in referenced)
        kinds = {d.path: d.type for _, d in self.descriptors()}
        for path in kinds:
            if path:
                parent = path.rpartition("/")[0]
                assert kinds.get(parent) == FileType.DIRECTORY, f"{path} has no parent"


async def mount(lun: Lun, i: int, clock, host: uuid.UUID | None = None) -> VmfsFileSystem:
    volume = VmfsVolume(
        LunDevice(lun, f"iqn.esxi-{i}"), host or host_uuid(i), clock, random.Random(i)
    )
    await volume.mount()
    return VmfsFileSystem(volume)


async def make_rig(
    directory: Path,
    mode: VolumeLockMode = VolumeLockMode.ATS_ONLY,
    hosts: int = 1,
    clock=None,
    size: int = 16 * MiB,
    block_size: int = 64 * KiB,
) -> Rig:
    clock = clock if clock is not None else WallClock()
    lun = Lun(0, directory / f"lun-{next(_images)}.img", size, "S")
    sb = await format_volume(
        LunDevice(lun, "iqn.format"), "vmfs-01", mode, uuid.UUID(int=99), block_size
    )
    return Rig(lun, size, sb, [await mount(lun, i, clock) for i in range(hosts)])


@pytest.fixture
def rigs(tmp_path):
    """make(mode, hosts, clock, size, block_size) -> Rig; closes the LUNs after."""
    made: list[Rig] = []

    async def make(*args, **kwargs) -> Rig:
        rig = await make_rig(tmp_path, *args, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.lun.close()


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# datastore paths


@pytest.mark.parametrize(
    "path, names",
    [
        ("a", ["a"]),
        ("vm-01/vm-01.vmdk", ["vm-01", "vm-01.vmdk"]),
        ("a/b/c", ["a", "b", "c"]),
        ("...", ["..."]),
        (".hidden", [".hidden"]),
        ("x" * MAX_NAME, ["x" * MAX_NAME]),
        ("a" * 127 + "/" + "b" * 128, ["a" * 127, "b" * 128]),  # exactly MAX_PATH bytes
        ("é" * 127, ["é" * 127]),  # 254 bytes
    ],
)
def test_split_path_accepts_paths_inside_the_datastore(path, names):
    assert split_path(path) == names
    assert parent_of(path) == ("/".join(names[:-1]), names[-1])


BAD_PATHS = [
    "",
    "/",
    "/x",
    "x/",
    "a//b",
    "a/../b",
    "..",
    ".",
    "./x",
    "a/.",
    "a\x00b",
    "x" * (MAX_NAME + 1),  # one name too long
    "é" * 128,  # 128 characters but 256 bytes in one name: too long
    "/".join(["a" * 100] * 3),  # 302 bytes
    "a" * 128 + "/" + "b" * 128,  # MAX_PATH + 1 bytes
]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_split_path_refuses_paths_outside_or_malformed(path):
    with pytest.raises(InvalidArgument):
        split_path(path)
    with pytest.raises(InvalidArgument):
        parent_of(path)


@pytest.mark.parametrize("path", [None, 5, b"bytes"])
def test_split_path_refuses_non_strings(path):
    with pytest.raises(InvalidArgument):
        split_path(path)


def test_check_span():
    check_span(0, 0)
    check_span(10, 90)
    for offset, count in [(-1, 1), (0, -1), (-5, -5)]:
        with pytest.raises(InvalidArgument):
            check_span(offset, count)


# the random model


FILES = ["f0", "d/f1", "d/f2"]
BS_MODEL = 4 * KiB
INDIRECT_AT = DIRECT_POINTERS * BS_MODEL
offsets = st.one_of(
    st.integers(0, INDIRECT_AT + 8 * BS_MODEL),
    st.sampled_from(
        [0, BS_MODEL - 1, BS_MODEL, 5 * BS_MODEL - 7, INDIRECT_AT - 100, INDIRECT_AT, 300_000]
    ),
)
hosts_ = st.integers(0, 1)
files_ = st.sampled_from(FILES)
operation = st.one_of(
    st.tuples(st.just("create"), hosts_, files_),
    st.tuples(st.just("write"), hosts_, files_, offsets, st.integers(1, 3 * BS_MODEL)),
    st.tuples(st.just("read"), hosts_, files_, offsets, st.integers(0, 3 * BS_MODEL)),
    st.tuples(st.just("remove"), hosts_, files_),
    st.tuples(st.just("close"), hosts_, files_),
)


def thin_blocks(touched: dict[str, set[int]]) -> int:
    """Blocks a set of thin files takes: one per file block written, plus one
    indirect pointer block per file that has a file block past the direct ones."""
    return sum(len(t) + any(b >= DIRECT_POINTERS for b in t) for t in touched.values())


async def run_history(directory: Path, mode: VolumeLockMode, ops: list[tuple]) -> None:
    # 32 MiB of 4 KiB blocks: two bitmap sectors, and the indirect region is 192 KiB in.
    rig = await make_rig(directory, mode, 2, SimClock(), 32 * MiB, BS_MODEL)
    try:
        assert rig.sb.bitmap_sectors == 2
        hosts = rig.hosts
        await hosts[0].mkdir("d")
        initial = await hosts[0].free_bytes()
        model: dict[str, bytearray] = {}
        touched: dict[str, set[int]] = {}
        handles: dict[str, tuple[int, vmfs_files.VmfsFile]] = {}

        async def handle(host: int, path: str) -> vmfs_files.VmfsFile:
            if path in handles and handles[path][0] != host:
                await handles.pop(path)[1].close()  # the other host lets go of it
            if path not in handles:
                handles[path] = (host, await hosts[host].open(path, LockMode.EXCLUSIVE))
            return handles[path][1]

        for step, op in enumerate(ops):
            kind, host, path = op[:3]
            fs = hosts[host]
            where = f"step {step}: {op}"
            if kind == "create":
                if path in model:
                    with pytest.raises(FileAlreadyExists):
                        await fs.create(path)
                else:
                    await fs.create(path)
                    model[path], touched[path] = bytearray(), set()
            elif kind in ("write", "read") and path not in model:
                with pytest.raises(FileNotFound):
                    await fs.open(path, LockMode.EXCLUSIVE)
            elif kind == "write":
                offset, length = op[3], op[4]
                data = pattern(step, length)
                f = await handle(host, path)
                await f.write(offset, data)
                content = model[path]
                if len(content) < offset + length:
                    content.extend(bytes(offset + length - len(content)))
                content[offset : offset + length] = data
                touched[path].update(
                    range(offset // BS_MODEL, (offset + length - 1) // BS_MODEL + 1)
                )
                assert await f.size() == len(content), where
                used = thin_blocks(touched) * BS_MODEL
                assert await fs.free_bytes() == initial - used, where
            elif kind == "read":
                offset, count = op[3], op[4]
                f = await handle(host, path)
                want = bytes(model[path][offset : offset + count]).ljust(count, b"\0")
                assert await f.read(offset, count) == want, where
            elif kind == "remove":
                if path not in model:
                    with pytest.raises(FileNotFound):
                        await fs.remove(path)
                    continue
                if path in handles:
                    with pytest.raises(FileLocked):
                        await fs.remove(path)
                    await handles.pop(path)[1].close()
                await fs.remove(path)
                del model[path], touched[path]
                assert await fs.free_bytes() == initial - thin_blocks(touched) * BS_MODEL, where
            elif kind == "close" and path in handles:
                await handles.pop(path)[1].close()

        for _, f in handles.values():
            await f.close()
        rig.check_consistent()
        # Everything as the model says, seen from each host.
        for fs in hosts:
            for path, content in model.items():
                assert await fs.stat(path) == FileInfo(path, "file", len(content))
                f = await fs.open(path, LockMode.READ_ONLY)
                assert await f.read(0, len(content) + 10) == bytes(content) + bytes(10)
                await f.close()
            listed = [i.path for i in await fs.listdir("")]
            assert listed == sorted(["d"] + [p for p in model if "/" not in p])
            assert [i.path for i in await fs.listdir("d")] == sorted(
                p for p in model if p.startswith("d/")
            )
        for path in model:
            await hosts[1].remove(path)
        await hosts[0].remove("d")
        assert await hosts[0].free_bytes() == await hosts[1].free_bytes() == initial
        assert [d.path for _, d in rig.descriptors()] == [""]
        assert len(rig.used_blocks()) == rig.sb.first_data_block
    finally:
        rig.lun.close()


@pytest.mark.parametrize("mode", MODES)
@settings(
    max_examples=35,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, max_size=30))
def test_random_histories_on_two_hosts_match_a_model(mode, ops):
    with tempfile.TemporaryDirectory() as directory:
        virtual_time.run(run_history(Path(directory), mode, ops))


@pytest.mark.parametrize("mode", MODES)
async def test_a_fixed_history_through_the_indirect_block(tmp_path, mode):
    """The model run on a history that surely crosses into the indirect region, both
    within one write and by writes on either side, and reads across it."""
    b = BS_MODEL
    ops = [
        ("create", 0, "f0"),
        ("write", 0, "f0", INDIRECT_AT - 100, 3 * b),  # file blocks 47..50
        ("read", 1, "f0", INDIRECT_AT - 5000, 4 * b),
        ("write", 1, "f0", 200 * b + 17, 700),
        ("create", 1, "d/f1"),
        ("write", 0, "d/f1", 0, 2 * b),
        ("write", 0, "d/f1", 1023 * b + 48 * b, b),  # the last pointer in the block
        ("read", 1, "d/f1", 0, 3 * b),
        ("read", 0, "f0", 0, 300 * b),
        ("remove", 0, "f0"),
        ("read", 1, "d/f1", 1071 * b - 10, 20),
    ]
    await run_history(tmp_path, mode, ops)


# thin files


@pytest.mark.parametrize("mode", MODES)
async def test_holes_read_as_zeros_and_only_written_blocks_take_space(rigs, mode):
    rig = await rigs(mode)
    (fs,) = rig.hosts
    bs = rig.sb.block_size
    initial = await fs.free_bytes()
    assert initial == (rig.sb.blocks - rig.sb.first_data_block) * bs
    await fs.create("thin.vmdk")
    f = await fs.open("thin.vmdk")
    assert await f.size() == 0 and await f.read(0, 100) == bytes(100)
    assert await fs.free_bytes() == initial

    await f.write(10 * bs + 5, b"hello")
    assert await f.size() == 10 * bs + 10
    assert await fs.free_bytes() == initial - bs
    assert await f.read(0, 10 * bs + 5) == bytes(10 * bs + 5)
    assert await f.read(10 * bs, 12) == bytes(5) + b"hello" + bytes(2)

    # Past the direct pointers: the data block and the indirect pointer block.
    await f.write(DIRECT_POINTERS * bs, b"x")
    assert await fs.free_bytes() == initial - 3 * bs
    await f.write(DIRECT_POINTERS * bs + 3 * bs, b"y")
    assert await fs.free_bytes() == initial - 4 * bs
    # Rewriting written blocks and writing lower takes nothing; size stays at the top.
    await f.write(10 * bs, b"HELLO!")
    await f.write(DIRECT_POINTERS * bs, b"X")
    assert await fs.free_bytes() == initial - 4 * bs
    assert await f.size() == DIRECT_POINTERS * bs + 3 * bs + 1
    assert await f.read(10 * bs, 12) == b"HELLO!ello" + bytes(2)
    assert await f.read(DIRECT_POINTERS * bs - 1, 3) == b"\0X\0"
    assert await f.read(DIRECT_POINTERS * bs + bs, 2 * bs) == bytes(2 * bs)  # a hole
    assert await f.read(await f.size() - 1, 100) == b"y" + bytes(99)  # past the end
    assert await f.read(0, 0) == b""

    # On disk: one direct pointer; the other two blocks are in the indirect table.
    (_, d), *_ = [(i, d) for i, d in rig.descriptors() if d.path == "thin.vmdk"]
    assert [i for i, b in enumerate(d.direct) if b] == [10]
    assert d.indirect and d.size == DIRECT_POINTERS * bs + 3 * bs + 1
    rig.check_consistent()
    await f.close()
    await fs.remove("thin.vmdk")
    assert await fs.free_bytes() == initial


@pytest.mark.parametrize("mode", MODES)
async def test_a_reused_block_reads_zeros_outside_what_was_written(rigs, mode):
    rig = await rigs(mode, size=2 * MiB)
    (fs,) = rig.hosts
    bs = rig.sb.block_size
    await fs.create("old")
    f = await fs.open("old")
    await f.write(0, b"\xee" * (15 * bs))  # every block of the volume
    await f.close()
    await fs.remove("old")
    await fs.create("new")
    f = await fs.open("new")
    await f.write(3 * bs + 1000, b"new")
    await f.write(DIRECT_POINTERS * bs + 7, b"far")  # a data block and the indirect block
    assert await f.read(3 * bs, bs) == bytes(1000) + b"new" + bytes(bs - 1003)
    assert await f.read(0, 3 * bs) == bytes(3 * bs)
    assert await f.read(DIRECT_POINTERS * bs, 2 * bs) == bytes(7) + b"far" + bytes(2 * bs - 10)
    assert await f.read(200 * bs, 10) == bytes(10)  # an unset pointer in a reused table
    await f.close()
    rig.check_consistent()


async def test_a_write_spanning_many_blocks_and_unaligned_edges(rigs):
    rig = await rigs(block_size=4 * KiB)
    (fs,) = rig.hosts
    await fs.create("f")
    f = await fs.open("f")
    data = pattern(1, 60 * 4 * KiB + 333)  # across the direct/indirect boundary
    await f.write(4 * KiB - 3, data)
    assert await f.read(4 * KiB - 3, len(data)) == data
    # A partial-sector overwrite keeps the bytes around it.
    await f.write(5000, b"\xff" * 7)
    expected = bytearray(bytes(4 * KiB - 3) + data)
    expected[5000:5007] = b"\xff" * 7
    assert await f.read(0, len(expected)) == bytes(expected)
    assert await f.size() == len(expected)
    await f.close()
    rig.check_consistent()


async def test_writes_past_the_largest_file_are_refused(rigs):
    rig = await rigs(block_size=4 * KiB)
    (fs,) = rig.hosts
    largest = rig.sb.max_file_size
    assert largest == (DIRECT_POINTERS + 1024) * 4 * KiB
    await fs.create("f")
    f = await fs.open("f")
    await f.write(largest - 1, b"z")  # the last byte: the last indirect pointer
    assert await f.read(largest - 2, 2) == b"\0z"
    assert await f.size() == largest
    for offset, data in [(largest, b"a"), (largest - 1, b"ab"), (0, bytes(largest + 1))]:
        with pytest.raises(FileTooLarge):
            await f.write(offset, data)
    with pytest.raises(InvalidArgument):
        await f.write(-1, b"a")
    for offset, count in [(-1, 1), (0, -1)]:
        with pytest.raises(InvalidArgument):
            await f.read(offset, count)
    assert await f.size() == largest


async def test_reading_past_the_largest_file_reads_zeros(rigs):
    rig = await rigs(block_size=4 * KiB)
    (fs,) = rig.hosts
    bs = rig.sb.block_size
    await fs.create("a")
    await fs.create("b")
    a = await fs.open("a")
    await a.write(0, b"secret" * 100)  # block D
    await a.write(DIRECT_POINTERS * bs, b"x")  # data block D+1, indirect block D+2
    (d,) = [d for _, d in rig.descriptors() if d.path == "a"]
    first = rig.sb.first_data_block
    assert d.direct[0] == first and d.indirect == first + 2
    b = await fs.open("b")
    await b.write(0, struct.pack("<I", first) * 1024)  # block D+3, right after the table
    # Bytes past the end of a file read as zeros, wherever they are.
    assert await a.read(rig.sb.max_file_size, 6) == bytes(6)


# the allocation bitmap


@pytest.mark.real_loop  # on a WallClock: contending hosts back off in real time
@pytest.mark.parametrize("mode", MODES)
async def test_hosts_allocating_at_once_never_get_the_same_block(rigs, mode):
    rig = await rigs(mode, hosts=3, block_size=4 * KiB)
    initial = await rig.hosts[0].free_bytes()

    async def take(fs: VmfsFileSystem) -> list[int]:
        return [await fs.allocate() for _ in range(40)]

    got = await asyncio.gather(*(take(fs) for fs in rig.hosts))
    blocks = [b for mine in got for b in mine]
    assert len(blocks) == len(set(blocks)) == 120
    assert all(rig.sb.first_data_block <= b < rig.sb.blocks for b in blocks)
    assert set(blocks) <= rig.used_blocks()
    assert await rig.hosts[1].free_bytes() == initial - 120 * rig.sb.block_size
    volumes = [fs.volume for fs in rig.hosts]
    if mode == VolumeLockMode.ATS_ONLY:
        assert sum(v.stats["ats_miscompares"] for v in volumes) > 0, "the hosts raced"
    else:
        assert sum(v.stats["reservation_conflicts"] for v in volumes) > 0, "the hosts raced"


@pytest.mark.real_loop  # on a WallClock: contending hosts back off in real time
@pytest.mark.parametrize("mode", MODES)
async def test_hosts_allocating_a_small_volume_dry_share_every_block_once(rigs, mode):
    rig = await rigs(mode, hosts=3, size=2 * MiB)
    sb = rig.sb
    assert sb.blocks - sb.first_data_block == 15

    async def drain(fs: VmfsFileSystem) -> list[int]:
        mine = []
        while True:
            try:
                mine.append(await fs.allocate())
            except NoDiskSpace:
                return mine

    got = await asyncio.gather(*(drain(fs) for fs in rig.hosts))
    blocks = sorted(b for mine in got for b in mine)
    assert blocks == list(range(sb.first_data_block, sb.blocks))
    assert await rig.hosts[0].free_bytes() == 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_full_volume_refuses_writes_and_keeps_what_is_there(rigs, mode):
    rig = await rigs(mode, size=2 * MiB)
    (fs,) = rig.hosts
    bs = rig.sb.block_size
    initial = await fs.free_bytes()
    assert initial == 15 * bs
    await fs.create("keep")
    keep = await fs.open("keep")
    kept = pattern(7, 3 * bs)
    await keep.write(0, kept)
    await fs.create("fill")
    fill = await fs.open("fill")
    with pytest.raises(NoDiskSpace):
        await fill.write(0, pattern(8, 20 * bs))
    assert await fs.free_bytes() == 0
    assert await keep.read(0, 3 * bs) == kept
    with pytest.raises(NoDiskSpace):
        await keep.write(5 * bs, b"more")
    await keep.write(bs, b"rewrite")  # a block it has needs no space
    assert await keep.read(bs - 1, 9) == kept[bs - 1 : bs] + b"rewrite" + kept[bs + 7 : bs + 8]
    assert await keep.size() == 3 * bs
    rig.check_consistent()
    await fill.close()
    await fs.remove("fill")
    assert await fs.free_bytes() == initial - 3 * bs
    await keep.close()
    await fs.remove("keep")
    assert await fs.free_bytes() == initial


async def test_no_block_leaks_when_the_indirect_block_does_not_fit(rigs):
    rig = await rigs(size=2 * MiB)
    (fs,) = rig.hosts
    bs = rig.sb.block_size
    initial = await fs.free_bytes()
    await fs.create("fill")
    fill = await fs.open("fill")
    await fill.write(0, bytes(14 * bs))
    assert await fs.free_bytes() == bs  # one block left
    await fs.create("g")
    g = await fs.open("g")
    with pytest.raises(NoDiskSpace):
        await g.write(DIRECT_POINTERS * bs, b"needs a data block and the indirect block")
    for f, path in [(fill, "fill"), (g, "g")]:
        await f.close()
        await fs.remove(path)
    assert await fs.free_bytes() == initial


async def test_a_volume_with_no_free_descriptor_refuses_creates(rigs):
    rig = await rigs()
    (fs,) = rig.hosts
    sb = rig.sb
    # Fill descriptors 1.. straight on the LUN (a thousand creates would be slow).
    taken = b"".join(
        FileDescriptor(FileType.FILE, 1, path=f"f{i}").pack() for i in range(1, sb.lock_records)
    )
    rig.lun.write("iqn.setup", sb.descriptor_lba(1), taken)
    with pytest.raises(NoDiskSpace):
        await fs.create("one-too-many")
    with pytest.raises(FileAlreadyExists):
        await fs.create("f5")
    assert len(await fs.listdir("")) == sb.lock_records - 1
    await fs.remove("f5")
    await fs.create("one-too-many")
    assert (await fs.stat("one-too-many")).kind == "file"


# names


@pytest.mark.parametrize("mode", MODES)
async def test_directories_files_stat_and_listdir(rigs, mode):
    rig = await rigs(mode, hosts=2)
    a, b = rig.hosts
    await a.mkdir("vm-01")
    await a.create("vm-01/vm-01.vmx")
    await b.create("vm-01/vm-01.vmdk")
    await b.mkdir("vm-01/logs")
    await b.create("top")
    for fs in (a, b):
        assert await fs.stat("") == FileInfo("", "dir", 0)
        assert await fs.stat("vm-01") == FileInfo("vm-01", "dir", 0)
        assert await fs.stat("vm-01/vm-01.vmx") == FileInfo("vm-01/vm-01.vmx", "file", 0)
        assert await fs.listdir("") == [FileInfo("top", "file", 0), FileInfo("vm-01", "dir", 0)]
        assert await fs.listdir("vm-01") == [
            FileInfo("vm-01/logs", "dir", 0),
            FileInfo("vm-01/vm-01.vmdk", "file", 0),
            FileInfo("vm-01/vm-01.vmx", "file", 0),
        ]
        assert await fs.listdir("vm-01/logs") == []
    for make in (a.create, a.mkdir, b.create, b.mkdir):
        with pytest.raises(FileAlreadyExists):
            await make("vm-01")
        with pytest.raises(FileAlreadyExists):
            await make("vm-01/vm-01.vmx")
    with pytest.raises(InvalidArgument):
        await a.create("top/child")  # a file is no directory
    with pytest.raises(InvalidArgument):
        await b.listdir("top")
    with pytest.raises(InvalidArgument):
        await a.open("vm-01")
    with pytest.raises(InvalidArgument):
        await a.open("top", LockMode.FREE)

    with pytest.raises(InvalidState):
        await b.remove("vm-01")  # not empty
    await a.remove("vm-01/logs")
    await a.remove("vm-01/vm-01.vmx")
    await b.remove("vm-01/vm-01.vmdk")
    await b.remove("vm-01")
    assert await a.listdir("") == [FileInfo("top", "file", 0)]
    with pytest.raises(FileNotFound):
        await a.stat("vm-01")
    assert sorted(d.path for _, d in rig.descriptors()) == ["", "top"]
    rig.check_consistent()


async def test_the_longest_names_and_paths_fit(rigs):
    rig = await rigs()
    (fs,) = rig.hosts
    await fs.create("n" * MAX_NAME)
    await fs.mkdir("a" * 127)
    longest = "a" * 127 + "/" + "é" * 64  # 127 + 1 + 128 bytes
    assert len(longest.encode()) == MAX_PATH
    await fs.create(longest)
    f = await fs.open(longest)
    await f.write(0, b"data")
    await f.close()
    assert await fs.stat(longest) == FileInfo(longest, "file", 4)
    assert [i.path for i in await fs.listdir("a" * 127)] == [longest]
    rig.check_consistent()


METHODS = ["mkdir", "create", "remove", "stat", "listdir", "open"]


@pytest.mark.parametrize("path", BAD_PATHS)
@pytest.mark.parametrize("method", METHODS)
async def test_bad_paths_are_invalid_arguments(rigs, method, path):
    rig = await rigs()
    (fs,) = rig.hosts
    if path == "" and method in ("stat", "listdir"):
        return  # the root directory
    with pytest.raises(InvalidArgument):
        await getattr(fs, method)(path)
    assert [d.path for _, d in rig.descriptors()] == [""]


@pytest.mark.parametrize("method", ["remove", "stat", "listdir", "open"])
async def test_missing_files_are_not_found(rigs, method):
    rig = await rigs()
    (fs,) = rig.hosts
    await fs.mkdir("d")
    for path in ["nope", "d/nope", "nodir/nope"]:
        with pytest.raises(FileNotFound):
            await getattr(fs, method)(path)


async def test_creating_in_a_missing_directory_is_not_found(rigs):
    rig = await rigs()
    (fs,) = rig.hosts
    for make in (fs.create, fs.mkdir):
        with pytest.raises(FileNotFound):
            await make("nodir/x")
    assert [d.path for _, d in rig.descriptors()] == [""]


@pytest.mark.real_loop  # on a WallClock: contending hosts back off in real time
@pytest.mark.parametrize("mode", MODES)
async def test_hosts_creating_one_path_at_once_make_it_once(rigs, mode):
    rig = await rigs(mode, hosts=3)
    await rig.hosts[0].mkdir("d")
    for kind in ("create", "mkdir"):
        for n in range(4):
            path = f"d/{kind}-{n}"
            results = await asyncio.gather(
                *(getattr(fs, kind)(path) for fs in rig.hosts), return_exceptions=True
            )
            assert results.count(None) == 1, results
            assert all(isinstance(r, FileAlreadyExists) for r in results if r is not None)
            assert [d.path for _, d in rig.descriptors()].count(path) == 1
    # Distinct names at once all succeed.
    await asyncio.gather(*(fs.create(f"d/own-{i}") for i, fs in enumerate(rig.hosts)))
    names = {i.path for i in await rig.hosts[2].listdir("d")}
    assert {f"d/own-{i}" for i in range(3)} <= names and len(names) == 11
    rig.check_consistent()
    assert all(rig.lock_record(i).mode == LockMode.FREE for i, _ in rig.descriptors())


@pytest.mark.real_loop  # on a WallClock: contending hosts back off in real time
async def test_a_directory_held_by_another_host_is_file_locked_after_a_while(rigs, monkeypatch):
    monkeypatch.setattr(vmfs_files, "DIR_LOCK_WAIT", 0.2)
    rig = await rigs(hosts=2)
    a, b = rig.hosts
    await b.volume.lock(0, "/", LockMode.EXCLUSIVE)  # b is in the middle of a create
    with pytest.raises(FileLocked) as info:
        await a.create("x")
    assert info.value.properties["holder"] == str(b.volume.host)
    await b.volume.unlock(0)
    await a.create("x")


@pytest.mark.real_loop  # on a WallClock: contending hosts back off in real time
@pytest.mark.parametrize("hosts", [1, 2])
async def test_a_create_racing_the_removal_of_its_directory_leaves_no_orphan(rigs, hosts):
    rig = await rigs(hosts=hosts)
    remover, creator = rig.hosts[0], rig.hosts[-1]
    await remover.mkdir("d")
    (d_index,) = [i for i, d in rig.descriptors() if d.path == "d"]
    remover_holds, creator_refused = asyncio.Event(), asyncio.Event()
    remover_lock, creator_lock = remover.volume.lock, creator.volume.lock

    async def remover_locks(index, path, mode=LockMode.EXCLUSIVE):
        record = await remover_lock(index, path, mode)
        if index == d_index and not remover_holds.is_set():
            remover_holds.set()  # remove("d") has d's lock and found d empty...
            await creator_refused.wait()  # ...while create("d/x") looked d up
        return record

    async def creator_locks(index, path, mode=LockMode.EXCLUSIVE):
        try:
            return await creator_lock(index, path, mode)
        except FileLocked:
            creator_refused.set()
            raise

    async def create():
        await remover_holds.wait()
        creator.volume.lock = creator_locks
        await creator.create("d/x")

    remover.volume.lock = remover_locks
    results = await asyncio.wait_for(
        asyncio.gather(remover.remove("d"), create(), return_exceptions=True), 10
    )
    assert results[0] is None  # the directory was removed
    assert isinstance(results[1], FileNotFound), results
    rig.check_consistent()


# locks


@pytest.mark.parametrize("mode", MODES)
async def test_an_exclusive_open_keeps_every_other_open_out(rigs, mode):
    rig = await rigs(mode, hosts=2)
    a, b = rig.hosts
    await a.create("disk.vmdk")
    f = await a.open("disk.vmdk", LockMode.EXCLUSIVE)
    for fs in (a, b):
        for lock_mode in (LockMode.EXCLUSIVE, LockMode.READ_ONLY, LockMode.MULTI_WRITER):
            with pytest.raises(FileLocked) as info:
                await fs.open("disk.vmdk", lock_mode)
            assert info.value.properties["holder"] == str(a.volume.host)
    (index,) = [i for i, d in rig.descriptors() if d.path == "disk.vmdk"]
    record = rig.lock_record(index)
    assert record.mode == LockMode.EXCLUSIVE and record.path == "disk.vmdk"
    assert [o.host for o in record.owners] == [a.volume.host]
    await f.write(0, b"mine")
    await f.close()
    await f.close()  # twice is harmless
    assert rig.lock_record(index).mode == LockMode.FREE
    g = await b.open("disk.vmdk")
    assert await g.read(0, 4) == b"mine"
    await g.close()
    for call in (lambda: f.read(0, 1), lambda: f.write(0, b"x"), lambda: f.size()):
        with pytest.raises(InvalidState):
            await call()


@pytest.mark.parametrize("mode", MODES)
async def test_read_only_opens_share_and_keep_writers_out(rigs, mode):
    rig = await rigs(mode, hosts=3)
    a, b, c = rig.hosts
    await a.create("base.vmdk")
    w = await a.open("base.vmdk")
    await w.write(0, b"base data")
    await w.close()
    ra = await a.open("base.vmdk", LockMode.READ_ONLY)
    ra2 = await a.open("base.vmdk", LockMode.READ_ONLY)  # shares a's lock
    rb = await b.open("base.vmdk", LockMode.READ_ONLY)
    for f in (ra, ra2, rb):
        assert await f.read(0, 9) == b"base data" and await f.size() == 9
        with pytest.raises(InvalidState):
            await f.write(0, b"x")
    (index,) = [i for i, d in rig.descriptors() if d.path == "base.vmdk"]
    record = rig.lock_record(index)
    assert record.mode == LockMode.READ_ONLY
    assert sorted(o.host for o in record.owners) == [a.volume.host, b.volume.host]
    for fs, lock_mode in [
        (a, LockMode.EXCLUSIVE),
        (c, LockMode.EXCLUSIVE),
        (c, LockMode.MULTI_WRITER),
    ]:
        with pytest.raises(FileLocked):
            await fs.open("base.vmdk", lock_mode)
    with pytest.raises(FileLocked):
        await c.remove("base.vmdk")
    await ra.close()
    assert await ra2.read(0, 4) == b"base"  # the shared lock stays with the other open
    assert {o.host for o in rig.lock_record(index).owners} == {a.volume.host, b.volume.host}
    await ra2.close()
    assert [o.host for o in rig.lock_record(index).owners] == [b.volume.host]
    with pytest.raises(FileLocked) as info:
        await c.open("base.vmdk")
    assert info.value.properties["holder"] == str(b.volume.host)
    await rb.close()
    assert rig.lock_record(index).mode == LockMode.FREE
    await (await c.open("base.vmdk")).close()


@pytest.mark.parametrize("mode", MODES)
async def test_a_read_only_holder_cannot_also_open_the_file_multi_writer(rigs, mode):
    rig = await rigs(mode, hosts=2)
    a, b = rig.hosts
    await a.create("base.vmdk")
    ra = await a.open("base.vmdk", LockMode.READ_ONLY)
    rb = await b.open("base.vmdk", LockMode.READ_ONLY)
    try:
        with pytest.raises(FileLocked):
            writer = await a.open("base.vmdk", LockMode.MULTI_WRITER)
            await writer.write(0, b"under b's read-only lock")
    finally:
        assert await rb.read(0, 5) == bytes(5)
        await ra.close()
        await rb.close()


@pytest.mark.parametrize("mode", MODES)
async def test_closing_an_open_in_another_mode_keeps_the_first_opens_lock(rigs, mode):
    rig = await rigs(mode, hosts=2)
    a, c = rig.hosts
    await a.create("shared.vmdk")
    writer = await a.open("shared.vmdk", LockMode.MULTI_WRITER)
    with contextlib.suppress(FileLocked):  # refusing the second open is fine too
        reader = await a.open("shared.vmdk", LockMode.READ_ONLY)
        await reader.close()
    with pytest.raises(FileLocked):  # the multi-writer open still holds the lock
        await c.open("shared.vmdk", LockMode.EXCLUSIVE)
    await writer.close()


@pytest.mark.parametrize("mode", MODES)
async def test_an_open_file_cannot_be_removed(rigs, mode):
    rig = await rigs(mode, hosts=2)
    a, b = rig.hosts
    await a.create("f")
    for lock_mode in (LockMode.EXCLUSIVE, LockMode.READ_ONLY, LockMode.MULTI_WRITER):
        f = await a.open("f", lock_mode)
        for fs in (a, b):
            with pytest.raises(FileLocked):
                await fs.remove("f")
        assert (await b.stat("f")).kind == "file"
        await f.close()
    f = await a.open("f")
    await f.write(0, pattern(3, 200 * KiB))
    await f.close()
    free = await b.free_bytes()
    await b.remove("f")
    assert await b.free_bytes() == free + 4 * rig.sb.block_size
    for fs in (a, b):
        with pytest.raises(FileNotFound):
            await fs.open("f")
        with pytest.raises(FileNotFound):
            await fs.stat("f")
    await a.create("f")  # the name is free again, and the new file is empty
    f = await a.open("f")
    assert await f.size() == 0 and await f.read(0, 10) == bytes(10)
    await f.close()
    rig.check_consistent()


@pytest.mark.real_loop  # on a WallClock: contending hosts back off in real time
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("file_block", [3, DIRECT_POINTERS + 5])
async def test_multi_writers_filling_one_hole_at_once_share_one_block(rigs, mode, file_block):
    rig = await rigs(mode, hosts=3)
    a, b, c = rig.hosts
    bs = rig.sb.block_size
    await a.create("shared.vmdk")
    initial = await a.free_bytes()
    fa = await a.open("shared.vmdk", LockMode.MULTI_WRITER)
    fb = await b.open("shared.vmdk", LockMode.MULTI_WRITER)
    with pytest.raises(FileLocked):
        await c.open("shared.vmdk", LockMode.EXCLUSIVE)
    with pytest.raises(FileLocked):
        await c.open("shared.vmdk", LockMode.READ_ONLY)
    at = file_block * bs
    # Both see a hole there and fill it at once, in different sectors of the block.
    await asyncio.gather(fa.write(at, b"A" * 4096), fb.write(at + 8192, b"B" * 4096))
    expected = b"A" * 4096 + bytes(4096) + b"B" * 4096 + bytes(bs - 3 * 4096)
    assert await fa.read(at, bs) == await fb.read(at, bs) == expected
    assert await fa.size() == await fb.size() == at + 3 * 4096
    indirect = file_block >= DIRECT_POINTERS
    volumes = [a.volume, b.volume]
    assert sum(v.stats["blocks_allocated"] for v in volumes) == 2 * (1 + indirect), "raced"
    assert await c.free_bytes() == initial - (1 + indirect) * bs  # the losers gave back
    rig.check_consistent()
    # Later writes by either host land in the one block.
    await fb.write(at + 100, b"b")
    assert (await fa.read(at + 99, 3)) == b"AbA"
    await fa.close()
    await fb.close()
    f = await c.open("shared.vmdk", LockMode.READ_ONLY)
    assert (await f.read(at, 8))[:3] == b"AAA"
    await f.close()
    await c.remove("shared.vmdk")
    assert await c.free_bytes() == initial


@pytest.mark.parametrize("mode", MODES)
async def test_multi_writers_see_each_others_growth(rigs, mode):
    rig = await rigs(mode, hosts=2)
    a, b = rig.hosts
    await a.create("f")
    fa = await a.open("f", LockMode.MULTI_WRITER)
    fb = await b.open("f", LockMode.MULTI_WRITER)
    await fa.write(0, b"a" * 10)
    assert await fb.size() == 10 and await fb.read(0, 10) == b"a" * 10
    await fb.write(DIRECT_POINTERS * rig.sb.block_size, b"b")
    assert await fa.size() == DIRECT_POINTERS * rig.sb.block_size + 1
    assert await fa.read(DIRECT_POINTERS * rig.sb.block_size, 2) == b"b\0"
    await fa.write(DIRECT_POINTERS * rig.sb.block_size + 1, b"a")
    assert await fb.read(DIRECT_POINTERS * rig.sb.block_size, 2) == b"ba"
    await fa.close()
    await fb.close()
    rig.check_consistent()


# lost access and persistence


@pytest.mark.parametrize("mode", MODES)
async def test_io_stops_once_the_volume_is_lost(rigs, mode):
    clock = SimClock(1000.0)
    rig = await rigs(mode, hosts=2, clock=clock)
    a, b = rig.hosts
    await a.create("vm.vmdk")
    f = await a.open("vm.vmdk")
    await f.write(0, b"before")
    # a stops heartbeating (its storage path is cut); b goes on.
    with pytest.raises(FileLocked):
        await b.open("vm.vmdk")
    got = None
    for second in range(1, 40):
        await clock.advance(1)
        if second % HB_INTERVAL == 0:
            assert await b.volume.heartbeat()
        if second < HB_TIMEOUT:
            assert await f.read(0, 6) == b"before"  # a may still use it
        try:
            got = await b.open("vm.vmdk")
        except FileLocked:
            continue
        break
    assert got is not None and second >= HB_TIMEOUT
    for call in (
        lambda: f.read(0, 6),
        lambda: f.write(0, b"after"),
        lambda: f.size(),
        lambda: a.stat("vm.vmdk"),
        lambda: a.create("x"),
    ):
        with pytest.raises(CannotAccessFile):
            await call()
    await f.close()  # nothing to release from here: no error
    assert a.volume.lost_access and not await a.volume.heartbeat()
    await got.write(0, b"AFTER!")
    assert await got.read(0, 6) == b"AFTER!"
    await got.close()


async def test_a_host_that_misses_heartbeats_cannot_use_its_files(rigs):
    clock = SimClock()
    rig = await rigs(clock=clock)
    (fs,) = rig.hosts
    await fs.create("f")
    f = await fs.open("f")
    await clock.advance(HB_TIMEOUT)
    with pytest.raises(CannotAccessFile):
        await f.write(0, b"late")
    with pytest.raises(CannotAccessFile):
        await f.read(0, 1)
    with pytest.raises(CannotAccessFile):
        await fs.free_bytes()
    await f.close()


@pytest.mark.parametrize("mode", MODES)
async def test_another_host_and_a_rebooted_host_read_what_was_written(rigs, mode):
    rig = await rigs(mode, hosts=1)
    (a,) = rig.hosts
    await a.mkdir("vm")
    await a.create("vm/disk")
    f = await a.open("vm/disk")
    data = pattern(11, 70 * 64 * KiB + 5)  # into the indirect region
    await f.write(123, data)
    await a.create("vm/empty")
    free = await a.free_bytes()
    # a crashes with the disk open; the LUN is opened again from its file.
    rig.lun.close()
    rig.lun = Lun(0, rig.lun.path, rig.size, "S")
    clock = WallClock()
    b = await mount(rig.lun, 5, clock)
    assert await b.listdir("vm") == [
        FileInfo("vm/disk", "file", 123 + len(data)),
        FileInfo("vm/empty", "file", 0),
    ]
    assert await b.free_bytes() == free
    with pytest.raises(FileLocked):  # a's lock stands until its heartbeat is 16 s still
        await b.open("vm/disk", LockMode.READ_ONLY)
    # a boots again: a new generation of its slot, its old lock is gone at once.
    reborn = await mount(rig.lun, 6, clock, host=host_uuid(0))
    assert reborn.volume.slot == a.volume.slot
    g = await reborn.open("vm/disk")
    assert await g.read(0, 123 + len(data) + 7) == bytes(123) + data + bytes(7)
    await g.close()
    h = await b.open("vm/disk", LockMode.READ_ONLY)
    assert await h.read(123, len(data)) == data
    await h.close()
    rig.check_consistent()


class LostDescriptorReply(LunDevice):
    """The array applies a descriptor update but its reply is lost once; with
    `path_down`, the path then stays down for the host's next read too (it cannot
    read the sector back)."""

    arm = False
    path_down = False

    async def compare_and_write(self, lba: int, verify: bytes, data: bytes) -> None:
        await super().compare_and_write(lba, verify, data)
        if self.arm and data[:2] == b"FD":
            self.arm = False
            raise ConnectionError("the reply was lost (the array applied the update)")

    async def read(self, lba: int, blocks: int) -> bytes:
        if self.path_down:
            self.path_down = False
            raise ConnectionError("the path is down")
        return await super().read(lba, blocks)


async def lost_reply_file_system(tmp_path) -> tuple[LostDescriptorReply, VmfsFileSystem]:
    lun = Lun(0, tmp_path / "lost.img", 8 * MiB, "S")
    await format_volume(
        LunDevice(lun, "iqn.f"), "v", VolumeLockMode.ATS_ONLY, uuid.uuid4(), block_size=64 * KiB
    )
    device = LostDescriptorReply(lun, "iqn.0")
    volume = VmfsVolume(device, uuid.UUID(int=1), WallClock(speed=1), random.Random(0))
    await volume.mount()
    return device, VmfsFileSystem(volume)


async def test_a_block_pointed_at_despite_a_lost_reply_is_never_freed(tmp_path):
    device, fs = await lost_reply_file_system(tmp_path)
    await fs.create("a")
    await fs.create("b")
    a, b = await fs.open("a"), await fs.open("b")
    device.arm = device.path_down = True
    with pytest.raises(ConnectionError):
        await a.write(0, b"A" * 4096)
    await a.close()
    a = await fs.open("a")
    await a.write(0, b"A" * 4096)  # the guest retries; this one is acknowledged
    await b.write(0, b"B" * 4096)
    assert await a.read(0, 4096) == b"A" * 4096
    assert a._descriptor.direct[0] != b._descriptor.direct[0]


async def test_a_write_whose_descriptor_reply_is_lost_is_read_back_and_acknowledged(tmp_path):
    device, fs = await lost_reply_file_system(tmp_path)
    await fs.create("a")
    a = await fs.open("a")
    device.arm = True
    await a.write(0, b"A" * 4096)  # the array ran the update: the host reads it back
    assert fs.volume.stats["lost_replies"] == 1
    await a.close()
    again = await fs.open("a")
    assert await again.read(0, 4096) == b"A" * 4096


async def test_read_only_opens_at_once_on_one_host_share_one_lock_to_the_last_close(rigs):
    rig = await rigs(hosts=2)
    a, b = rig.hosts
    await a.create("base")
    first, second = await asyncio.gather(
        a.open("base", LockMode.READ_ONLY), a.open("base", LockMode.READ_ONLY)
    )
    await first.close()
    with pytest.raises(FileLocked):
        await b.open("base", LockMode.EXCLUSIVE)  # the second open still holds it
    await second.close()
    await (await b.open("base", LockMode.EXCLUSIVE)).close()


async def test_a_create_while_its_directory_is_being_removed_is_not_orphaned(rigs):
    rig = await rigs(hosts=2)
    a, b = rig.hosts
    await a.mkdir("d")
    take_lock = a.volume.lock
    created: list[BaseException | None] = []

    async def create_in_between(index, path, mode=LockMode.EXCLUSIVE):
        if path == "d" and not created:  # a has found d, b creates in it now
            try:
                await b.create("d/f")
                created.append(None)
            except BaseException as e:  # noqa: BLE001
                created.append(e)
        return await take_lock(index, path, mode)

    a.volume.lock = create_in_between
    with pytest.raises(InvalidState):
        await a.remove("d")  # not empty any more: the check is made under d's lock
    assert created == [None]
    assert (await b.stat("d/f")).kind == "file"
    rig.check_consistent()
