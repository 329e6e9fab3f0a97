"""Stale stubs: the committed and installed vsim/v1 stubs are exactly what the pinned
generator makes from proto/vsim/v1/*.proto."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest

from vsim import protogen

COMMITTED = protogen.REPO / "vsim" / "v1"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("protogen")
    files = protogen.generate(out)
    return {path.name: path.read_bytes() for path in files}


def test_generator_is_the_pinned_version():
    pyproject = tomllib.loads((protogen.REPO / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["optional-dependencies"]["test"] if "grpcio-tools" in d]
    assert len(pins) == 1
    pinned = re.fullmatch(r"grpcio-tools==(\S+)", pins[0])
    assert pinned, f"grpcio-tools must be pinned exactly, got {pins[0]!r}"
    assert importlib.metadata.version("grpcio-tools") == pinned.group(1)


def test_every_proto_has_its_stubs(generated: dict[str, bytes]):
    protos = protogen.proto_files()
    assert protos, "no .proto files found"
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2_grpc.py"):
            name = proto.stem + suffix
            assert name in generated, f"the generator made no {name}"
            assert (COMMITTED / name).is_file(), f"{proto.name} has no committed {name}"


def test_no_stub_without_a_proto(generated: dict[str, bytes]):
    committed = {p.name for p in COMMITTED.glob("*_pb2*.py")}
    assert committed == set(generated)


def test_committed_stubs_equal_regenerated(generated: dict[str, bytes]):
    stale = [name for name, data in generated.items() if (COMMITTED / name).read_bytes() != data]
    assert not stale, f"stale stubs (run `make proto`): {stale}"


def test_installed_stubs_equal_regenerated(generated: dict[str, bytes]):
    for name, data in generated.items():
        module = importlib.import_module(f"vsim.v1.{Path(name).stem}")
        assert Path(module.__file__).read_bytes() == data, f"installed {name} is stale"
