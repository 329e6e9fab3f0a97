"""Files on an NFS v3 datastore (`vsim.host.storage.nfs_files`) over an in-process export:
a random history on two hosts against an in-memory model, transfers larger than one
NFS WRITE, `.lck-<fileid>` locks (exclusive, and per-host read-only files) across
hosts, faults, root_squash, and a holder whose stale lock another host broke."""

from __future__ import annotations

import asyncio
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
from vsim.faults import (
    CannotAccessFile,
    CannotCreateFile,
    FileAlreadyExists,
    FileLocked,
    FileNotFound,
    FileTooLarge,
    InvalidArgument,
    InvalidState,
)
from vsim.host.storage.datastore_files import MAX_NAME, FileInfo
from vsim.host.storage.nfs_files import NfsFileSystem
from vsim.host.storage.nfs_lock import (
    DISK_FILE_LOCK_UPDATE_FREQ,
    GIVE_UP_AFTER,
    READ_ONLY,
    RECORD_SIZE,
    STALE_AFTER,
    ExportClient,
    LockFile,
    NfsLockManager,
    lock_file_name,
)
from vsim.storage.nfs_export import MAX_FILE_SIZE, MAX_TRANSFER, ExportOptions, NfsExport
from vsim.storage.vmfs_format import LockMode

MiB = 1024 * 1024
_exports = itertools.count()


def host_uuid(i: int) -> uuid.UUID:
    return uuid.UUID(int=i + 1)


def make(
    directory: Path, hosts: int, clock=None, options: ExportOptions | None = None
) -> tuple[NfsExport, list[NfsFileSystem]]:
    clock = clock if clock is not None else SimClock()
    export = NfsExport("nfs-01", directory / f"export-{next(_exports)}", options or ExportOptions())
    return export, [
        NfsFileSystem(
            NfsLockManager(
                ExportClient(export, f"esxi-{i:02d}"),
                host_uuid(i),
                f"esxi-{i:02d}",
                clock,
                boot=100 + i,
            ),
            random.Random(i),
        )
        for i in range(hosts)
    ]


def lock_files(export: NfsExport, directory: str = "") -> list[str]:
    return sorted(p.name for p in (export.root / directory).iterdir() if p.name.startswith(".lck"))


def fileid(export: NfsExport, path: str) -> int:
    return (export.root / path).stat().st_ino


def pattern(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


# the random model

FILES = ["f0", "d/f1", "d/f2"]
offsets = st.one_of(st.integers(0, 100_000), st.sampled_from([0, 4095, 4096, MAX_TRANSFER - 3]))
hosts_ = st.integers(0, 1)
files_ = st.sampled_from(FILES)
operation = st.one_of(
    st.tuples(st.just("create"), hosts_, files_),
    st.tuples(st.just("write"), hosts_, files_, offsets, st.integers(1, 12_000)),
    st.tuples(st.just("read"), hosts_, files_, offsets, st.integers(0, 12_000)),
    st.tuples(st.just("remove"), hosts_, files_),
    st.tuples(st.just("close"), hosts_, files_),
)


async def run_history(directory: Path, ops: list[tuple]) -> None:
    export, hosts = make(directory, 2)
    await hosts[0].mkdir("d")
    model: dict[str, bytearray] = {}
    handles: dict[str, tuple[int, object]] = {}

    async def handle(host: int, path: str):
        if path in handles and handles[path][0] != host:
            await handles.pop(path)[1].close()
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
                model[path] = bytearray()
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
            assert await f.size() == len(content), where
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
            del model[path]
        elif kind == "close" and path in handles:
            await handles.pop(path)[1].close()

    for _, f in handles.values():
        await f.close()
    assert lock_files(export) == lock_files(export, "d") == []
    for fs in hosts:
        for path, content in model.items():
            assert await fs.stat(path) == FileInfo(path, "file", len(content))
            f = await fs.open(path, LockMode.READ_ONLY)
            assert await f.read(0, len(content) + 10) == bytes(content) + bytes(10)
            await f.close()
        assert sorted(i.path for i in await fs.listdir("")) == sorted(
            ["d"] + [p for p in model if "/" not in p]
        )
        assert sorted(i.path for i in await fs.listdir("d")) == sorted(
            p for p in model if p.startswith("d/")
        )
    for path in model:
        await hosts[1].remove(path)
    await hosts[0].remove("d")
    assert list(export.root.iterdir()) == []


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation, max_size=30))
def test_random_histories_on_two_hosts_match_a_model(ops):
    with tempfile.TemporaryDirectory() as directory:
        virtual_time.run(run_history(Path(directory), ops))


# data


async def test_transfers_larger_than_one_nfs_write(tmp_path):
    export, (a, b) = make(tmp_path, 2)
    await a.create("big-flat.vmdk")
    f = await a.open("big-flat.vmdk")
    data = pattern(1, 2 * MAX_TRANSFER + MAX_TRANSFER // 2 + 7)
    await f.write(100, data)
    assert await f.size() == 100 + len(data)
    assert await f.read(100, len(data)) == data
    assert await f.read(0, 3 * MiB) == bytes(100) + data + bytes(3 * MiB - 100 - len(data))
    sizes = export.stats.write_sizes["esxi-00"]
    assert max(sizes) == MAX_TRANSFER and sizes[MAX_TRANSFER] == 2
    assert sizes[MAX_TRANSFER // 2 + 7] == 1
    # A hole far out reads as zeros; the size is the highest byte written.
    await f.write(10 * MiB, b"end")
    assert await f.size() == 10 * MiB + 3
    assert await f.read(5 * MiB, 2 * MiB) == bytes(2 * MiB)
    await f.close()
    g = await b.open("big-flat.vmdk", LockMode.READ_ONLY)
    assert await g.read(100, len(data)) == data and await g.read(10 * MiB, 5) == b"end\0\0"
    assert await b.stat("big-flat.vmdk") == FileInfo("big-flat.vmdk", "file", 10 * MiB + 3)
    await g.close()


async def test_bad_offsets_and_closed_files(tmp_path):
    _, (a,) = make(tmp_path, 1)
    await a.create("f")
    f = await a.open("f")
    with pytest.raises(InvalidArgument):
        await f.write(-1, b"x")
    for offset, count in [(-1, 1), (0, -1)]:
        with pytest.raises(InvalidArgument):
            await f.read(offset, count)
    assert await f.read(0, 0) == b""
    await f.close()
    await f.close()  # twice is harmless
    for call in (lambda: f.read(0, 1), lambda: f.write(0, b"x"), lambda: f.size()):
        with pytest.raises(InvalidState):
            await call()


async def test_a_write_past_the_largest_file_is_file_too_large(tmp_path):
    _, (a,) = make(tmp_path, 1)
    await a.create("f")
    f = await a.open("f")
    with pytest.raises(FileTooLarge):
        await f.write(MAX_FILE_SIZE, b"x")


# names


async def test_directories_files_stat_and_listdir(tmp_path):
    export, (a, b) = make(tmp_path, 2)
    await a.mkdir("vm-01")
    await a.create("vm-01/vm-01.vmx")
    await b.create("vm-01/vm-01.vmdk")
    await b.mkdir("vm-01/logs")
    await b.create("top")
    for fs in (a, b):
        assert (await fs.stat("")).kind == "dir"
        assert (await fs.stat("vm-01")).kind == "dir"
        assert await fs.stat("vm-01/vm-01.vmx") == FileInfo("vm-01/vm-01.vmx", "file", 0)
        assert sorted(i.path for i in await fs.listdir("")) == ["top", "vm-01"]
        assert sorted((i.path, i.kind, i.size) for i in await fs.listdir("vm-01")) == [
            ("vm-01/logs", "dir", (await fs.stat("vm-01/logs")).size),
            ("vm-01/vm-01.vmdk", "file", 0),
            ("vm-01/vm-01.vmx", "file", 0),
        ]
        assert await fs.listdir("vm-01/logs") == []
    for create in (a.create, a.mkdir, b.create, b.mkdir):
        with pytest.raises(FileAlreadyExists):
            await create("vm-01")
        with pytest.raises(FileAlreadyExists):
            await create("vm-01/vm-01.vmx")
    with pytest.raises(InvalidArgument):
        await a.create("top/child")  # a file is no directory
    with pytest.raises(InvalidArgument):
        await b.listdir("top")
    with pytest.raises(InvalidArgument):
        await a.open("vm-01")
    for mode in (LockMode.FREE, LockMode.MULTI_WRITER):
        with pytest.raises(InvalidArgument):
            await a.open("top", mode)
    for name in (lock_file_name(5), "vm-01/" + lock_file_name(5) + "-ro-ab"):
        with pytest.raises(InvalidArgument):
            await a.create(name)
    with pytest.raises(InvalidState):
        await b.remove("vm-01")  # not empty
    for path in ("vm-01/logs", "vm-01/vm-01.vmx", "vm-01/vm-01.vmdk", "vm-01"):
        await a.remove(path)
    assert [i.path for i in await b.listdir("")] == ["top"]
    assert sorted(p.name for p in export.root.iterdir()) == ["top"]
    await a.create("n" * MAX_NAME)
    assert (await b.stat("n" * MAX_NAME)).kind == "file"


BAD_PATHS = [
    "",
    "/",
    "/x",
    "x/",
    "a//b",
    "a/../b",
    "..",
    "./x",
    "a\x00b",
    "x" * (MAX_NAME + 1),
    "é" * 128,
    "/".join(["a" * 100] * 3),
]


@pytest.mark.parametrize("path", BAD_PATHS)
@pytest.mark.parametrize("method", ["mkdir", "create", "remove", "stat", "listdir", "open"])
async def test_bad_paths_are_invalid_arguments(tmp_path, method, path):
    export, (fs,) = make(tmp_path, 1)
    (export.root / "a").mkdir()  # so that a/../b would lead somewhere
    (export.root / "b").write_bytes(b"b")
    if path == "" and method in ("stat", "listdir"):
        return  # the export root
    with pytest.raises(InvalidArgument):
        await getattr(fs, method)(path)
    assert sorted(p.name for p in export.root.iterdir()) == ["a", "b"]
    assert (export.root / "b").read_bytes() == b"b"


@pytest.mark.parametrize("method", ["remove", "stat", "listdir", "open"])
async def test_missing_files_are_not_found(tmp_path, method):
    _, (fs,) = make(tmp_path, 1)
    await fs.mkdir("d")
    for path in ["nope", "d/nope", "nodir/nope"]:
        with pytest.raises(FileNotFound):
            await getattr(fs, method)(path)


async def test_creating_in_a_missing_directory_is_not_found(tmp_path):
    export, (fs,) = make(tmp_path, 1)
    for create in (fs.create, fs.mkdir):
        with pytest.raises(FileNotFound):
            await create("nodir/x")
    assert list(export.root.iterdir()) == []


async def test_hosts_creating_one_path_at_once_make_it_once(tmp_path):
    export, hosts = make(tmp_path, 3)
    for kind in ("create", "mkdir"):
        for n in range(3):
            path = f"{kind}-{n}"
            results = await asyncio.gather(
                *(getattr(fs, kind)(path) for fs in hosts), return_exceptions=True
            )
            assert results.count(None) == 1, results
            assert all(isinstance(r, FileAlreadyExists) for r in results if r is not None)
    assert len(list(export.root.iterdir())) == 6


async def test_hosts_opening_one_file_at_once_get_it_once(tmp_path):
    export, hosts = make(tmp_path, 3)
    await hosts[0].create("vm.vmdk")
    for _ in range(5):
        results = await asyncio.gather(
            *(fs.open("vm.vmdk") for fs in hosts), return_exceptions=True
        )
        opened = [r for r in results if not isinstance(r, BaseException)]
        assert len(opened) == 1, results
        assert all(isinstance(r, FileLocked) for r in results if r not in opened)
        assert lock_files(export) == [lock_file_name(fileid(export, "vm.vmdk"))]
        await opened[0].close()
        assert lock_files(export) == []


# locks


async def test_an_exclusive_open_keeps_every_other_open_out(tmp_path):
    export, (a, b) = make(tmp_path, 2)
    await a.create("disk.vmdk")
    f = await a.open("disk.vmdk")
    name = lock_file_name(fileid(export, "disk.vmdk"))
    assert lock_files(export) == [name]
    record = LockFile.unpack((export.root / name).read_bytes())
    assert record.owner == a.manager.host and record.host_name == "esxi-00"
    for fs in (a, b):
        for mode in (LockMode.EXCLUSIVE, LockMode.READ_ONLY):
            with pytest.raises(FileLocked):
                await fs.open("disk.vmdk", mode)
    with pytest.raises(FileLocked) as info:
        await b.open("disk.vmdk")
    assert "esxi-00" in info.value.message
    assert lock_files(export) == [name], "a refused open leaves no lock file behind"
    await f.write(0, b"mine")
    await f.close()
    assert lock_files(export) == []
    g = await b.open("disk.vmdk")
    assert await g.read(0, 4) == b"mine"
    await g.close()


async def test_read_only_opens_share_and_keep_writers_out(tmp_path):
    export, (a, b, c) = make(tmp_path, 3)
    await a.create("base.vmdk")
    w = await a.open("base.vmdk")
    await w.write(0, b"base data")
    await w.close()
    ra = await a.open("base.vmdk", LockMode.READ_ONLY)
    ra2 = await a.open("base.vmdk", LockMode.READ_ONLY)  # shares a's lock file
    rb = await b.open("base.vmdk", LockMode.READ_ONLY)
    fid = fileid(export, "base.vmdk")
    assert lock_files(export) == sorted(fs.manager.lock_name(fid, READ_ONLY) for fs in (a, b))
    for f in (ra, ra2, rb):
        assert await f.read(0, 9) == b"base data" and await f.size() == 9
        with pytest.raises(InvalidState):
            await f.write(0, b"x")
    # listdir shows the file, never its lock files.
    assert [i.path for i in await c.listdir("")] == ["base.vmdk"]
    for fs in (a, c):
        with pytest.raises(FileLocked):
            await fs.open("base.vmdk", LockMode.EXCLUSIVE)
    assert len(lock_files(export)) == 2, "a refused exclusive open leaves no lock file"
    await ra.close()
    assert await ra2.read(0, 4) == b"base"  # the lock file stays for the other open
    assert len(lock_files(export)) == 2
    await ra2.close()
    assert lock_files(export) == [b.manager.lock_name(fid, READ_ONLY)]
    with pytest.raises(FileLocked):
        await c.open("base.vmdk")
    await rb.close()
    assert lock_files(export) == []
    await (await c.open("base.vmdk")).close()


async def test_an_open_file_cannot_be_removed(tmp_path):
    export, (a, b) = make(tmp_path, 2)
    await a.create("f")
    for mode in (LockMode.EXCLUSIVE, LockMode.READ_ONLY):
        f = await a.open("f", mode)
        for fs in (a, b):
            with pytest.raises(FileLocked):
                await fs.remove("f")
        assert (await b.stat("f")).kind == "file"
        await f.close()
    await b.remove("f")
    assert list(export.root.iterdir()) == []
    for fs in (a, b):
        with pytest.raises(FileNotFound):
            await fs.open("f")


async def test_root_squash_mounts_but_nothing_can_be_created(tmp_path):
    export, (a,) = make(tmp_path, 1, options=ExportOptions(root_squash=True))
    (export.root / "existing.vmdk").write_bytes(b"seeded by the array admin")
    (export.root / "dir").mkdir()
    for call in (
        lambda: a.mkdir("vm-01"),
        lambda: a.create("vm-01.vmx"),
        lambda: a.create("dir/x"),
        lambda: a.mkdir("dir/y"),
    ):
        with pytest.raises(CannotCreateFile):
            await call()
    assert await a.stat("existing.vmdk") == FileInfo("existing.vmdk", "file", 25)
    assert sorted(i.path for i in await a.listdir("")) == ["dir", "existing.vmdk"]
    with pytest.raises(CannotAccessFile):  # not even its lock file can be made
        await a.open("existing.vmdk", LockMode.READ_ONLY)
    with pytest.raises(CannotAccessFile):
        await a.remove("existing.vmdk")
    assert sorted(p.name for p in export.root.iterdir()) == ["dir", "existing.vmdk"]


async def test_a_read_only_export_refuses_creates(tmp_path):
    export, (a,) = make(tmp_path, 1, options=ExportOptions(rw=False))
    for call in (lambda: a.mkdir("vm-01"), lambda: a.create("vm-01.vmx")):
        with pytest.raises(CannotCreateFile):
            await call()
    assert list(export.root.iterdir()) == []


# stale locks


async def test_a_holder_whose_stale_lock_was_broken_gets_no_more_io(tmp_path):
    clock = SimClock(100.0)
    export, (a, b, c) = make(tmp_path, 3, clock)
    await a.create("vm.vmdk")
    f = await a.open("vm.vmdk")
    await f.write(0, b"from a")
    with pytest.raises(FileLocked):
        await b.open("vm.vmdk")  # b starts watching a's lock file
    await clock.advance(GIVE_UP_AFTER - 1)
    await f.write(0, b"still a")  # a stalls: it renews no more, but may still write
    await clock.advance(STALE_AFTER - GIVE_UP_AFTER)
    with pytest.raises(CannotAccessFile):
        await f.write(0, b"stale a")  # 25 s unrenewed: a gave up before b may break it
    with pytest.raises(FileLocked):
        await b.open("vm.vmdk")
    await clock.advance(1)
    g = await b.open("vm.vmdk")  # stale: b breaks it and takes it
    name = lock_file_name(fileid(export, "vm.vmdk"))
    assert LockFile.unpack((export.root / name).read_bytes()).owner == b.manager.host
    await a.manager.renew()  # a wakes up: its renewal finds the lock is not its own
    assert ("", name) in a.manager.lost
    for call in (lambda: f.write(0, b"late a"), lambda: f.read(0, 6), lambda: f.size()):
        with pytest.raises(CannotAccessFile):
            await call()
    await f.close()  # leaves b's lock alone
    assert LockFile.unpack((export.root / name).read_bytes()).owner == b.manager.host
    assert (export.root / name).stat().st_size == RECORD_SIZE
    with pytest.raises(FileLocked):
        await c.open("vm.vmdk")
    with pytest.raises(FileLocked):
        await a.open("vm.vmdk")
    await g.write(0, b"b's now")
    assert await g.read(0, 7) == b"b's now"
    await g.close()
    h = await a.open("vm.vmdk")  # a can lock it again once b let go
    assert await h.read(0, 7) == b"b's now"
    await h.close()


async def test_a_renewing_holder_is_never_broken(tmp_path):
    clock = SimClock()
    _, (a, b) = make(tmp_path, 2, clock)
    await a.create("vm.vmdk")
    f = await a.open("vm.vmdk")
    for _ in range(10):
        with pytest.raises(FileLocked):
            await b.open("vm.vmdk")
        await clock.advance(DISK_FILE_LOCK_UPDATE_FREQ)
        await a.manager.renew()
    await f.write(0, b"ok")  # 100 s on, a still holds its lock
    assert await f.read(0, 2) == b"ok"
    await f.close()


async def test_a_stale_read_only_lock_is_broken_for_a_writer(tmp_path):
    clock = SimClock()
    export, (a, b) = make(tmp_path, 2, clock)
    await a.create("base.vmdk")
    r = await a.open("base.vmdk", LockMode.READ_ONLY)
    with pytest.raises(FileLocked):
        await b.open("base.vmdk")  # b starts watching a's read-only lock file
    await clock.advance(STALE_AFTER)
    w = await b.open("base.vmdk")
    fid = fileid(export, "base.vmdk")
    assert lock_files(export) == [lock_file_name(fid)]
    await a.manager.renew()
    with pytest.raises(CannotAccessFile):
        await r.read(0, 1)
    await r.close()
    await w.write(0, b"new")
    await w.close()
    assert lock_files(export) == []


async def test_removing_a_file_with_a_stale_lock_leaves_no_lock_file(tmp_path):
    clock = SimClock()
    export, (a, b) = make(tmp_path, 2, clock)
    await a.mkdir("vm")
    await a.create("vm/vm.vmdk")
    await a.open("vm/vm.vmdk")  # and a dies with it open
    with pytest.raises(FileLocked):
        await b.remove("vm/vm.vmdk")
    await clock.advance(STALE_AFTER)
    await b.remove("vm/vm.vmdk")
    assert await b.listdir("vm") == []
    await b.remove("vm")
    assert list(export.root.iterdir()) == []


async def test_read_only_opens_at_once_on_one_host_share_one_lock_file(tmp_path):
    _, (a, b) = make(tmp_path, 2)
    await a.mkdir("base")
    await a.create("base/base.vmdk")
    first, second = await asyncio.gather(
        a.open("base/base.vmdk", LockMode.READ_ONLY), a.open("base/base.vmdk", LockMode.READ_ONLY)
    )
    await first.close()
    with pytest.raises(FileLocked):
        await b.open("base/base.vmdk", LockMode.EXCLUSIVE)
    await second.close()
    await (await b.open("base/base.vmdk", LockMode.EXCLUSIVE)).close()
