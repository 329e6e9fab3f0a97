"""Layers import one way (docs/architecture.md): every `vsim` import in the product
code, at module level or inside a function, goes down the stack, and vCenter reaches
a host only through its API."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"vsim": "vsim", "storage": "storage", "host": "host", "fabric": "fabric",
            "vcenter": "vcenter", "cluster": "cluster"}  # fmt: skip
LAYERS = ["vsim", "storage", "host", "fabric", "vcenter", "cluster"]
"""Bottom first: a layer may import itself and the layers before it."""
FORBIDDEN = {
    "vcenter": {"host"},  # vCenter knows a host by its RPCs; shared values live in vsim/
}
CLI_MAY_IMPORT = {"vsim", "cluster"}
"""The CLI parses and calls the SDK (and the launcher, for `vsim up`)."""
CLI_SERVERS = ("vsim.storage.server.",)
"""Below that, only the array's server, which `vsim array serve` starts."""


def layer_of(module: str) -> str:
    """The layer of an installed module name: vsim.host.x -> host, vsim.clock -> vsim."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in PACKAGES and parts[1] != "vsim":
        return parts[1]
    return "vsim"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] == "vsim" else ["vsim", *parts])


def vsim_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a vsim module, wherever it is written."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from vsim import host` imports vsim.host: judge each name imported.
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m == "vsim" or m.startswith("vsim.")]


def sources() -> list[Path]:
    files = []
    for package in PACKAGES:
        files += [p for p in (ROOT / package).rglob("*.py") if "v1" not in p.parts]
    return sorted(files)


def violations(path: Path, root: Path = ROOT) -> list[str]:
    module = module_name(path, root)
    mine = layer_of(module)
    allowed = set(LAYERS[: LAYERS.index(mine) + 1]) - FORBIDDEN.get(mine, set())
    cli = module.startswith("vsim.cluster.cli")
    if cli:
        allowed = CLI_MAY_IMPORT
    return [
        f"{path.relative_to(root)}:{line} ({mine}) imports {target} ({layer_of(target)})"
        for line, target in vsim_imports(path)
        if layer_of(target) not in allowed and not (cli and target.startswith(CLI_SERVERS))
    ]


def test_every_package_imports_only_the_layers_below_it():
    found = [v for path in sources() for v in violations(path)]
    assert found == []


def test_the_product_code_is_all_looked_at():
    modules = {module_name(p) for p in sources()}
    assert {"vsim.clock", "vsim.host.boot", "vsim.vcenter.server", "vsim.cluster.cli"} <= modules
    assert len(modules) > 100


@pytest.mark.parametrize(
    ("package", "source", "bad"),
    [
        ("vsim", "from vsim.host.kernel.vmkernel import VmKernel\n", True),
        ("host", "def f():\n    from vsim.vcenter.service import VCenter\n", True),
        ("vcenter", "from vsim.host import hostd\n", True),
        ("vcenter", "import vsim.host.kernel.net.vswitch\n", True),
        ("cluster/cli", "from vsim.vcenter.virtual_nic import firewall_rule\n", True),
        ("cluster/cli", "from vsim.storage.array import StorageArray\n", True),
        ("cluster/cli", "from vsim.storage.server import start_array\n", False),
        ("storage", "from vsim.fabric.physical_switch import PhysicalSwitch\n", True),
        ("vcenter", "from vsim.fabric.physical_switch import PhysicalSwitch\n", False),
        ("host", "from vsim.storage.scsi import ScsiError\n", False),
        ("cluster", "from vsim.host.boot import boot_host\n", False),
        ("vcenter", "from vsim import validate\n", False),
    ],
)
def test_the_check_fails_on_an_import_against_the_direction(package, source, bad, tmp_path):
    path = tmp_path / package / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    assert bool(violations(path, tmp_path)) == bad
