"""One NFS v3 export, called directly: create modes, the operations, their NFS3ERR_*
answers, handles and names that try to leave the export (`..`, `/`, symlinks), the
export options (ro, root_squash, clients, sync) and the per-client WRITE sizes."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from vsim.storage import nfs_export
from vsim.storage.nfs_export import (
    MAX_NAME,
    MAX_TRANSFER,
    Caller,
    CreateMode,
    ExportOptions,
    NfsError,
    NfsExport,
    NfsStatus,
)

ESX = Caller("esxi-01")  # ESXi comes as root
ESX2 = Caller("esxi-02")
USER = Caller("esxi-01", uid=1000)
SENTINEL = b"do not touch\n"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Files beside the export directory, which no handle may reach."""
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "sentinel.txt").write_bytes(SENTINEL)
    (tmp_path / "exports" / "elsewhere").mkdir()
    return tmp_path / "exports"


def make_export(outside: Path, **options) -> NfsExport:
    return NfsExport("ds1", outside / "ds1", ExportOptions(**options))


@pytest.fixture
def export(outside: Path) -> NfsExport:
    return make_export(outside)


def status_of(call) -> NfsStatus:
    with pytest.raises(NfsError) as excinfo:
        call()
    return excinfo.value.status


def snapshot(directory: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under directory with its content and mtime (symlinks not followed)."""
    seen = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        seen[str(path.relative_to(directory))] = (data, st.st_mtime_ns)
    return seen


def outside_untouched(outside: Path) -> bool:
    names = {p.name for p in outside.iterdir()}
    return (
        (outside / "sentinel.txt").read_bytes() == SENTINEL
        and names == {"sentinel.txt", "elsewhere", "ds1"}
        and list((outside / "elsewhere").iterdir()) == []
    )


def write_file(export: NfsExport, name: str, data: bytes, directory: str = "") -> str:
    handle, _ = export.create(ESX, directory, name)
    export.write(ESX, handle, 0, data)
    return handle


# CREATE modes


def test_create_guarded_twice_is_exist(export: NfsExport):
    handle, attributes = export.create(ESX, "", "vm.vmx", CreateMode.GUARDED)
    assert handle == "vm.vmx" and attributes.kind == "file" and attributes.size == 0
    assert status_of(lambda: export.create(ESX, "", "vm.vmx", CreateMode.GUARDED)) == (
        NfsStatus.EXIST
    )


def test_create_exclusive_retry_with_the_same_verifier_returns_the_same_file(export: NfsExport):
    handle, first = export.create(ESX, "", "disk.vmdk", CreateMode.EXCLUSIVE, b"verf0001")
    export.write(ESX, handle, 0, b"payload")
    again, second = export.create(ESX, "", "disk.vmdk", CreateMode.EXCLUSIVE, b"verf0001")
    assert again == handle
    assert second.fileid == first.fileid
    assert export.read(ESX, handle, 0, 100) == (b"payload", True)  # not truncated


def test_create_exclusive_with_another_verifier_is_exist(export: NfsExport):
    export.create(ESX, "", "disk.vmdk", CreateMode.EXCLUSIVE, b"verf0001")
    assert status_of(
        lambda: export.create(ESX2, "", "disk.vmdk", CreateMode.EXCLUSIVE, b"verf0002")
    ) == (NfsStatus.EXIST)


def test_create_exclusive_over_a_guarded_file_is_exist(export: NfsExport):
    export.create(ESX, "", "f", CreateMode.GUARDED)
    assert status_of(lambda: export.create(ESX, "", "f", CreateMode.EXCLUSIVE, b"v")) == (
        NfsStatus.EXIST
    )


def test_create_exclusive_retry_after_remove_and_recreate_by_another_is_exist(
    export: NfsExport,
):
    export.create(ESX, "", "f", CreateMode.EXCLUSIVE, b"mine")
    export.remove(ESX, "", "f")
    export.create(ESX2, "", "f", CreateMode.GUARDED)
    assert status_of(lambda: export.create(ESX, "", "f", CreateMode.EXCLUSIVE, b"mine")) == (
        NfsStatus.EXIST
    )


def test_create_exclusive_retry_after_rename_away_and_recreate_by_another_is_exist(
    export: NfsExport,
):
    export.create(ESX, "", "f", CreateMode.EXCLUSIVE, b"mine")
    export.rename(ESX, "", "f", "", "g")
    export.create(ESX2, "", "f", CreateMode.GUARDED)
    assert status_of(lambda: export.create(ESX, "", "f", CreateMode.EXCLUSIVE, b"mine")) == (
        NfsStatus.EXIST
    )


def test_create_unchecked_truncates_an_existing_file(export: NfsExport):
    handle = write_file(export, "f", b"old contents")
    again, attributes = export.create(ESX, "", "f", CreateMode.UNCHECKED)
    assert again == handle
    assert attributes.size == 0
    assert (export.root / "f").read_bytes() == b""


def test_create_unchecked_creates_a_new_file(export: NfsExport):
    handle, attributes = export.create(ESX, "", "new", CreateMode.UNCHECKED)
    assert (handle, attributes.size) == ("new", 0)
    assert (export.root / "new").is_file()


def test_create_over_a_directory(export: NfsExport):
    export.mkdir(ESX, "", "d")
    assert status_of(lambda: export.create(ESX, "", "d", CreateMode.GUARDED)) == NfsStatus.EXIST
    assert status_of(lambda: export.create(ESX, "", "d", CreateMode.UNCHECKED)) == (NfsStatus.ISDIR)
    assert (export.root / "d").is_dir()


# the operations


def test_lookup_and_getattr_agree(export: NfsExport):
    export.mkdir(ESX, "", "vm1")
    created, created_attributes = export.create(ESX, "vm1", "vm1.vmx")
    export.write(ESX, created, 0, b"x" * 10)
    handle, attributes = export.lookup(ESX, "vm1", "vm1.vmx")
    assert handle == created == "vm1/vm1.vmx"
    assert attributes.fileid == created_attributes.fileid
    assert attributes.size == 10 and attributes.kind == "file"
    assert export.getattr(ESX, handle) == attributes
    assert export.getattr(ESX, "").kind == "dir"
    assert export.lookup(ESX, "", "vm1")[1].kind == "dir"


def test_lookup_of_a_missing_name_is_noent(export: NfsExport):
    assert status_of(lambda: export.lookup(ESX, "", "nothing")) == NfsStatus.NOENT


def test_read_returns_data_and_eof(export: NfsExport):
    handle = write_file(export, "f", b"0123456789")
    assert export.read(ESX, handle, 0, 4) == (b"0123", False)
    assert export.read(ESX, handle, 4, 6) == (b"456789", True)
    assert export.read(ESX, handle, 8, 100) == (b"89", True)
    assert export.read(ESX, handle, 50, 10) == (b"", True)
    assert export.read(ESX, handle, 0, 0) == (b"", False)


def test_write_at_an_offset_extends_the_file(export: NfsExport):
    handle = write_file(export, "f", b"abc")
    assert export.write(ESX, handle, 5, b"XY") == 2
    assert export.read(ESX, handle, 0, 100) == (b"abc\0\0XY", True)
    assert export.getattr(ESX, handle).size == 7
    assert export.write(ESX, handle, 1, b"B") == 1
    assert (export.root / "f").read_bytes() == b"aBc\0\0XY"


def test_readdir_lists_entries_sorted_with_their_kind(export: NfsExport):
    write_file(export, "b.vmdk", b"12345")
    export.mkdir(ESX, "", "a-dir")
    export.create(ESX, "", "c.log")
    entries = export.readdir(ESX, "")
    assert [(name, a.kind) for name, a in entries] == [
        ("a-dir", "dir"),
        ("b.vmdk", "file"),
        ("c.log", "file"),
    ]
    assert dict(entries)["b.vmdk"].size == 5
    assert export.readdir(ESX, "a-dir") == []


def test_rename_replaces_the_target_atomically(export: NfsExport):
    source = write_file(export, ".lck-new", b"new owner")
    write_file(export, ".lck-1234", b"old owner")
    fileid = export.getattr(ESX, source).fileid
    export.rename(ESX, "", ".lck-new", "", ".lck-1234")
    handle, attributes = export.lookup(ESX, "", ".lck-1234")
    assert attributes.fileid == fileid  # the same file, moved in one step
    assert export.read(ESX, handle, 0, 100) == (b"new owner", True)
    assert status_of(lambda: export.lookup(ESX, "", ".lck-new")) == NfsStatus.NOENT
    assert [name for name, _ in export.readdir(ESX, "")] == [".lck-1234"]


def test_rename_into_another_directory(export: NfsExport):
    export.mkdir(ESX, "", "d")
    write_file(export, "f", b"data")
    export.rename(ESX, "", "f", "d", "g")
    assert export.read(ESX, "d/g", 0, 10) == (b"data", True)
    assert not (export.root / "f").exists()


def test_rename_of_a_missing_file_is_noent(export: NfsExport):
    assert status_of(lambda: export.rename(ESX, "", "nope", "", "x")) == NfsStatus.NOENT


def test_remove_a_file_and_an_empty_directory(export: NfsExport):
    write_file(export, "f", b"x")
    export.mkdir(ESX, "", "d")
    export.remove(ESX, "", "f")
    export.remove(ESX, "", "d")
    assert export.readdir(ESX, "") == []
    assert status_of(lambda: export.remove(ESX, "", "f")) == NfsStatus.NOENT


def test_remove_of_a_non_empty_directory_is_notempty(export: NfsExport):
    export.mkdir(ESX, "", "d")
    export.create(ESX, "d", "f")
    assert status_of(lambda: export.remove(ESX, "", "d")) == NfsStatus.NOTEMPTY
    assert (export.root / "d" / "f").exists()


def test_mkdir_and_mkdir_again(export: NfsExport):
    handle, attributes = export.mkdir(ESX, "", "vm1")
    assert (handle, attributes.kind) == ("vm1", "dir")
    nested, _ = export.mkdir(ESX, "vm1", "snapshots")
    assert nested == "vm1/snapshots"
    assert (export.root / "vm1" / "snapshots").is_dir()
    assert status_of(lambda: export.mkdir(ESX, "", "vm1")) == NfsStatus.EXIST


# errors


def test_handle_of_a_removed_file_is_stale(export: NfsExport):
    handle = write_file(export, "f", b"x")
    export.remove(ESX, "", "f")
    assert status_of(lambda: export.getattr(ESX, handle)) == NfsStatus.STALE
    assert status_of(lambda: export.read(ESX, handle, 0, 1)) == NfsStatus.STALE
    assert status_of(lambda: export.write(ESX, handle, 0, b"y")) == NfsStatus.STALE
    assert not (export.root / "f").exists()


def test_handle_of_a_removed_directory_is_stale(export: NfsExport):
    directory, _ = export.mkdir(ESX, "", "d")
    export.remove(ESX, "", "d")
    assert status_of(lambda: export.readdir(ESX, directory)) == NfsStatus.STALE
    assert status_of(lambda: export.lookup(ESX, directory, "x")) == NfsStatus.STALE
    assert status_of(lambda: export.create(ESX, directory, "x")) == NfsStatus.STALE
    assert not (export.root / "d").exists()


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.lookup(ESX, "f", "x"),
        lambda e: e.create(ESX, "f", "x"),
        lambda e: e.mkdir(ESX, "f", "x"),
        lambda e: e.readdir(ESX, "f"),
        lambda e: e.remove(ESX, "f", "x"),
        lambda e: e.rename(ESX, "", "g", "f", "x"),
    ],
    ids=["lookup", "create", "mkdir", "readdir", "remove", "rename"],
)
def test_a_file_used_as_a_directory_is_notdir(export: NfsExport, call):
    write_file(export, "f", b"x")
    write_file(export, "g", b"y")
    assert status_of(lambda: call(export)) == NfsStatus.NOTDIR
    assert sorted(p.name for p in export.root.iterdir()) == ["f", "g"]


def test_a_directory_read_or_written_as_a_file_is_isdir(export: NfsExport):
    export.mkdir(ESX, "", "d")
    assert status_of(lambda: export.read(ESX, "d", 0, 10)) == NfsStatus.ISDIR
    assert status_of(lambda: export.write(ESX, "d", 0, b"x")) == NfsStatus.ISDIR
    assert status_of(lambda: export.read(ESX, "", 0, 10)) == NfsStatus.ISDIR


def test_a_name_of_256_bytes_is_nametoolong(export: NfsExport):
    long_name = "x" * (MAX_NAME + 1)
    multibyte = "é" * 128  # 256 bytes in UTF-8
    for name in (long_name, multibyte):
        assert status_of(lambda n=name: export.create(ESX, "", n)) == NfsStatus.NAMETOOLONG
        assert status_of(lambda n=name: export.mkdir(ESX, "", n)) == NfsStatus.NAMETOOLONG
        assert status_of(lambda n=name: export.lookup(ESX, "", n)) == NfsStatus.NAMETOOLONG
    assert list(export.root.iterdir()) == []
    handle, _ = export.create(ESX, "", "x" * MAX_NAME)
    assert handle == "x" * MAX_NAME


BAD_NAMES = ["..", ".", "a/b", "\x00", "a\x00b", "", "../sentinel.txt"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize(
    "call",
    [
        lambda e, n: e.lookup(ESX, "", n),
        lambda e, n: e.create(ESX, "", n),
        lambda e, n: e.create(ESX, "", n, CreateMode.UNCHECKED),
        lambda e, n: e.mkdir(ESX, "", n),
        lambda e, n: e.remove(ESX, "", n),
        lambda e, n: e.rename(ESX, "", n, "", "b"),
        lambda e, n: e.rename(ESX, "", "b", "", n),
    ],
    ids=["lookup", "create", "create-unchecked", "mkdir", "remove", "rename-from", "rename-to"],
)
def test_bad_names_are_inval(export: NfsExport, outside: Path, call, name: str):
    export.mkdir(ESX, "", "a")
    write_file(export, "b", b"keep")
    before = snapshot(outside)
    assert status_of(lambda: call(export, name)) == NfsStatus.INVAL
    assert snapshot(outside) == before
    assert outside_untouched(outside)


# nothing outside the export


TRAVERSALS = [
    "../sentinel.txt",
    "../x",
    "/etc/passwd",
    "a/../../sentinel.txt",
    "a/../../x",
    "..",
    "a/..",
    "../elsewhere",
    "a\x00b",
]


@pytest.mark.parametrize("handle", TRAVERSALS)
@pytest.mark.parametrize(
    "call",
    [
        lambda e, h: e.getattr(ESX, h),
        lambda e, h: e.read(ESX, h, 0, 100),
        lambda e, h: e.write(ESX, h, 0, b"pwned"),
        lambda e, h: e.readdir(ESX, h),
        lambda e, h: e.lookup(ESX, h, "sentinel.txt"),
        lambda e, h: e.create(ESX, h, "x", CreateMode.UNCHECKED),
        lambda e, h: e.mkdir(ESX, h, "x"),
        lambda e, h: e.remove(ESX, h, "sentinel.txt"),
        lambda e, h: e.rename(ESX, "", "a", h, "x"),
        lambda e, h: e.rename(ESX, h, "sentinel.txt", "", "stolen"),
    ],
    ids=[
        "getattr",
        "read",
        "write",
        "readdir",
        "lookup",
        "create",
        "mkdir",
        "remove",
        "rename-to",
        "rename-from",
    ],
)
def test_handles_that_leave_the_export_are_inval(
    export: NfsExport, outside: Path, call, handle: str
):
    export.mkdir(ESX, "", "a")
    before = snapshot(outside)
    assert status_of(lambda: call(export, handle)) == NfsStatus.INVAL
    assert snapshot(outside) == before
    assert outside_untouched(outside)


@pytest.fixture
def links(export: NfsExport, outside: Path) -> NfsExport:
    """'link' -> the sentinel file beside the export, 'dirlink' -> a directory beside it."""
    os.symlink(outside / "sentinel.txt", export.root / "link")
    os.symlink(outside / "elsewhere", export.root / "dirlink")
    os.symlink("../sentinel.txt", export.root / "rellink")
    return export


@pytest.mark.parametrize("link", ["link", "rellink"])
def test_a_symlink_to_outside_is_not_followed_for_read_write_getattr(
    links: NfsExport, outside: Path, link: str
):
    before = snapshot(outside)
    assert status_of(lambda: links.read(ESX, link, 0, 100)) == NfsStatus.INVAL
    assert status_of(lambda: links.write(ESX, link, 0, b"pwned")) == NfsStatus.INVAL
    assert status_of(lambda: links.getattr(ESX, link)) == NfsStatus.INVAL
    assert snapshot(outside) == before
    assert outside_untouched(outside)


def test_a_symlink_is_invisible_to_lookup_and_readdir(links: NfsExport):
    write_file(links, "real", b"x")
    for name in ("link", "dirlink", "rellink"):
        assert status_of(lambda n=name: links.lookup(ESX, "", n)) == NfsStatus.NOENT
    assert [name for name, _ in links.readdir(ESX, "")] == ["real"]


def test_a_symlinked_directory_to_outside_is_not_followed(links: NfsExport, outside: Path):
    before = snapshot(outside)
    assert status_of(lambda: links.readdir(ESX, "dirlink")) == NfsStatus.INVAL
    assert status_of(lambda: links.create(ESX, "dirlink", "x")) == NfsStatus.INVAL
    assert status_of(lambda: links.mkdir(ESX, "dirlink", "x")) == NfsStatus.INVAL
    assert status_of(lambda: links.lookup(ESX, "dirlink", "x")) == NfsStatus.INVAL
    assert status_of(lambda: links.read(ESX, "dirlink/x", 0, 1)) == NfsStatus.INVAL
    assert snapshot(outside) == before
    assert outside_untouched(outside)


def test_guarded_create_over_a_symlink_is_exist_and_leaves_the_target(
    links: NfsExport, outside: Path
):
    assert status_of(lambda: links.create(ESX, "", "link")) == NfsStatus.EXIST
    assert (
        status_of(lambda: links.create(ESX, "", "link", CreateMode.EXCLUSIVE, b"v"))
        == NfsStatus.EXIST
    )
    assert outside_untouched(outside)


def test_unchecked_create_over_a_symlink_does_not_truncate_the_target(
    links: NfsExport, outside: Path
):
    with contextlib.suppress(NfsError, OSError):
        links.create(ESX, "", "link", CreateMode.UNCHECKED)
    assert outside_untouched(outside)


def test_unchecked_create_over_a_symlink_is_an_nfs_error(links: NfsExport):
    with pytest.raises(NfsError):
        links.create(ESX, "", "link", CreateMode.UNCHECKED)


def test_remove_and_rename_of_a_symlink_touch_only_the_link(links: NfsExport, outside: Path):
    write_file(links, "f", b"inside")
    links.rename(ESX, "", "f", "", "rellink")  # replaces the link, not its target
    assert (links.root / "rellink").read_bytes() == b"inside"
    assert not (links.root / "rellink").is_symlink()
    links.remove(ESX, "", "link")
    links.remove(ESX, "", "dirlink")
    assert sorted(p.name for p in links.root.iterdir()) == ["rellink"]
    assert outside_untouched(outside)


def test_a_symlink_inside_the_export_to_inside_is_usable_by_handle(export: NfsExport):
    write_file(export, "target", b"inside")
    os.symlink("target", export.root / "alias")
    assert export.read(ESX, "alias", 0, 100) == (b"inside", True)


# export options


CHANGES = {
    "create": lambda e, c: e.create(c, "", "new"),
    "create-unchecked": lambda e, c: e.create(c, "", "f", CreateMode.UNCHECKED),
    "mkdir": lambda e, c: e.mkdir(c, "", "newdir"),
    "write": lambda e, c: e.write(c, "f", 0, b"changed"),
    "remove": lambda e, c: e.remove(c, "", "f"),
    "remove-dir": lambda e, c: e.remove(c, "", "d"),
    "rename": lambda e, c: e.rename(c, "", "f", "", "g"),
}


def seed(root: Path) -> None:
    """Files put there by someone else (the array's admin)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "f").write_bytes(b"original")
    (root / "d").mkdir()


def reads_work(export: NfsExport, caller: Caller) -> None:
    assert export.lookup(caller, "", "f")[0] == "f"
    assert export.getattr(caller, "f").size == 8
    assert export.read(caller, "f", 0, 100) == (b"original", True)
    assert [name for name, _ in export.readdir(caller, "")] == ["d", "f"]


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_read_only_export_answers_rofs_to_every_change(outside: Path, change):
    seed(outside / "ds1")
    export = make_export(outside, rw=False)
    before = snapshot(export.root)
    assert status_of(lambda: change(export, ESX)) == NfsStatus.ROFS
    assert status_of(lambda: change(export, USER)) == NfsStatus.ROFS
    assert snapshot(export.root) == before
    reads_work(export, ESX)


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_root_squash_refuses_every_change_by_root(outside: Path, change):
    seed(outside / "ds1")
    export = make_export(outside, root_squash=True)
    before = snapshot(export.root)
    assert status_of(lambda: change(export, ESX)) == NfsStatus.ACCES
    assert snapshot(export.root) == before
    reads_work(export, ESX)


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_root_squash_lets_a_non_root_user_change(outside: Path, change):
    seed(outside / "ds1")
    export = make_export(outside, root_squash=True)
    before = snapshot(export.root)
    change(export, USER)
    assert snapshot(export.root) != before


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_no_root_squash_lets_root_change(outside: Path, change):
    seed(outside / "ds1")
    export = make_export(outside, root_squash=False)
    before = snapshot(export.root)
    change(export, ESX)
    assert snapshot(export.root) != before


ALL_OPERATIONS = {
    "lookup": lambda e, c: e.lookup(c, "", "f"),
    "getattr": lambda e, c: e.getattr(c, "f"),
    "read": lambda e, c: e.read(c, "f", 0, 10),
    "readdir": lambda e, c: e.readdir(c, ""),
    **CHANGES,
}


@pytest.mark.parametrize("operation", ALL_OPERATIONS.values(), ids=ALL_OPERATIONS.keys())
def test_clients_not_listed_get_acces(outside: Path, operation):
    seed(outside / "ds1")
    export = make_export(outside, clients=("esxi-01", "10.0.0.7"))
    before = snapshot(export.root)
    assert status_of(lambda: operation(export, Caller("esxi-03"))) == NfsStatus.ACCES
    assert status_of(lambda: operation(export, Caller("esxi-011"))) == NfsStatus.ACCES
    assert snapshot(export.root) == before
    assert export.stats.write_sizes == {}
    operation(export, ESX)  # a listed client is served


def test_a_client_listed_by_address_is_served(outside: Path):
    seed(outside / "ds1")
    export = make_export(outside, clients=("esxi-01", "10.0.0.7"))
    reads_work(export, Caller("10.0.0.7"))
    export.create(Caller("10.0.0.7"), "", "mine")
    assert (export.root / "mine").is_file()


def test_write_sizes_are_counted_per_client_exactly(export: NfsExport):
    lock, _ = export.create(ESX, "", ".lck-42")
    disk, _ = export.create(ESX2, "", "disk-flat.vmdk")
    for _ in range(3):
        export.write(ESX, lock, 0, b"L" * 84)
    export.write(ESX, disk, 0, b"D" * 4096)
    export.write(ESX2, lock, 0, b"M" * 84)
    export.write(ESX2, disk, 4096, b"")
    assert status_of(lambda: export.write(ESX, disk, 0, b"x" * (MAX_TRANSFER + 1))) == (
        NfsStatus.INVAL
    )
    assert status_of(lambda: export.write(ESX, disk, -1, b"x")) == NfsStatus.INVAL
    assert {client: dict(sizes) for client, sizes in export.stats.write_sizes.items()} == {
        "esxi-01": {84: 3, 4096: 1},
        "esxi-02": {84: 1, 0: 1},
    }
    assert export.stats.operations["write"] == 8
    assert export.stats.operations["create"] == 2


def test_read_span_is_checked(export: NfsExport):
    handle = write_file(export, "f", b"x")
    assert status_of(lambda: export.read(ESX, handle, -1, 1)) == NfsStatus.INVAL
    assert status_of(lambda: export.read(ESX, handle, 0, -1)) == NfsStatus.INVAL
    assert status_of(lambda: export.read(ESX, handle, 0, MAX_TRANSFER + 1)) == NfsStatus.INVAL
    assert export.read(ESX, handle, 0, MAX_TRANSFER) == (b"x", True)


def test_a_write_at_an_impossible_offset_is_an_nfs_error(export: NfsExport):
    handle = write_file(export, "f", b"x")
    assert status_of(lambda: export.write(ESX, handle, 2**63 - 1, b"x")) == NfsStatus.FBIG


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(nfs_export.os, "fsync", counting)
    return calls


def test_a_sync_export_fsyncs_every_write_and_the_data_is_in_the_file(
    export: NfsExport, fsyncs: list[int]
):
    handle, _ = export.create(ESX, "", "f")
    export.write(ESX, handle, 0, b"unstable but sync", stable=False)
    assert len(fsyncs) == 1
    assert (export.root / "f").read_bytes() == b"unstable but sync"
    export.write(ESX, handle, 0, b"STABLE", stable=True)
    assert len(fsyncs) == 2
    assert (export.root / "f").read_bytes() == b"STABLEle but sync"


def test_an_async_export_fsyncs_only_stable_writes(outside: Path, fsyncs: list[int]):
    export = make_export(outside, sync=False)
    handle, _ = export.create(ESX, "", "f")
    export.write(ESX, handle, 0, b"fast", stable=False)
    assert fsyncs == []
    export.write(ESX, handle, 0, b"safe", stable=True)
    assert len(fsyncs) == 1
    assert (export.root / "f").read_bytes() == b"safe"
