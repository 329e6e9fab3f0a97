"""The array and datastore commands' parsing: sizes, ids, hosts and export options
become the request fields the SDK sends; rows show hosts and options as people read
them."""

from __future__ import annotations

import pytest

from vsim.cluster.cli import array, build_parser, datastore
from vsim.v1 import vcenter_pb2 as pb


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "size"),
    [
        ([], 0),  # the array's default, 4 GiB
        (["--size-gb", "1.5"], 3 * 1024**3 // 2),
        (["--size-mb", "64"], 64 * 1024**2),
    ],
)
def test_lun_create_sizes(argv: list[str], size: int):
    args = parse("array", "lun", "create", *argv)
    assert array.lun_size(args) == size and args.id is None and args.host is None


def test_lun_create_id_hosts_and_one_size_only(capsys):
    args = parse("array", "lun", "create", "--id", "0", "--host", "esxi-01", "--host", "esxi-02")
    assert (args.id, args.host) == (0, ["esxi-01", "esxi-02"])
    with pytest.raises(SystemExit):
        parse("array", "lun", "create", "--size-gb", "1", "--size-mb", "5")
    assert "not allowed with argument" in capsys.readouterr().err


def test_lun_map_and_unmap_take_a_lun_and_hosts():
    args = parse("array", "lun", "unmap", "3", "esxi-01", "esxi-02")
    assert (args.handler, args.lun, args.hosts) == (
        array.cmd_lun_unmap,
        3,
        ["esxi-01", "esxi-02"],
    )
    with pytest.raises(SystemExit):
        parse("array", "lun", "map", "3")  # no host


def test_export_options_and_rows():
    args = parse("array", "export", "create", "iso", "--ro", "--root-squash", "--client", "h1")
    assert (args.ro, args.async_writes, args.root_squash, args.client) == (
        True,
        False,
        True,
        ["h1"],
    )
    export = pb.ArrayExport(name="iso", read_only=True, root_squash=True, clients=["h1"])
    assert array.export_row(export) == {
        "name": "iso",
        "options": "ro,sync,root_squash",
        "clients": "h1",
        "datastore": "-",
    }
    lun = pb.ArrayLun(
        id=1,
        size_bytes=1024**3,
        hosts=["esxi-01"],
        initiators=["iqn.1998-01.com.vmware:esxi-01", "iqn.other"],
        datastore="vmfs-02",
    )
    row = array.lun_row(lun)
    assert (row["hosts"], row["datastore"], row["size_gb"]) == (
        "esxi-01, iqn.other",
        "vmfs-02",
        "1.00",
    )


def test_datastore_remove():
    assert parse("datastore", "remove", "vmfs-02").handler == datastore.cmd_datastore_remove
