"""Generates the Python stubs in vsim/v1 from proto/vsim/v1/*.proto.

Run with `make proto` (or `python -m vsim.protogen`). The generator is grpcio-tools,
pinned exactly in pyproject.toml, so the output is reproducible and a test can
regenerate into a temporary directory and compare.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "proto"


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted((root / "vsim" / "v1").glob("*.proto"))


def generate(out_dir: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Writes vsim/v1/*_pb2.py and *_pb2_grpc.py under out_dir; returns their paths."""
    from grpc_tools import protoc  # only needed here, never at run time

    out_dir.mkdir(parents=True, exist_ok=True)
    files = [str(p.relative_to(root)) for p in proto_files(root)]
    args = ["protoc", f"-I{root}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    if protoc.main(args + files) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(files))
    package = out_dir / "vsim" / "v1"
    return sorted(package.glob("*_pb2*.py"))


def main() -> None:
    written = generate(REPO)
    (REPO / "vsim" / "v1" / "__init__.py").touch()
    print("\n".join(str(p.relative_to(REPO)) for p in written))


if __name__ == "__main__":
    sys.exit(main())
