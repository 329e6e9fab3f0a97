"""The CLI starts fast: importing it, building its parser (all `vsim --help` does)
and importing the SDK client (what a client command adds) load neither Ray nor numpy
nor cryptography nor any server or host-kernel module; the servers are imported by
their commands. The
few host and vCenter facts the parser shows are kept in the CLI, checked here."""

from __future__ import annotations

import subprocess
import sys

from vsim import security_policy
from vsim.cluster import up
from vsim.cluster.cli import host as cli_host
from vsim.cluster.cli import launch, network, pool, session
from vsim.cluster.cli import vm as cli_vm
from vsim.vcenter import host_system, sessions, virtual_machine

SERVER_SIDE = (
    "ray",
    "numpy",
    "cryptography",  # makes certificates (servers); a client reads them with ssl
    "grpc_health.v1",  # servers only (grpc itself loads the bare packages)
    "grpc_reflection.v1alpha",
    "vsim.host",
    "vsim.storage",
    "vsim.vcenter",
    "vsim.cluster.up",
    "vsim.cluster.services",
    "vsim.cluster.ray_engine",
    "vsim.cluster.inprocess",
    "vsim.cluster.array_setup",
)


def modules_after(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout.split()


def server_side(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == s or m.startswith(s + ".") for s in SERVER_SIDE)]


def test_the_cli_and_its_client_import_no_server_module():
    loaded = modules_after(
        "import vsim.cluster.cli as cli\ncli.build_parser()\nimport vsim.cluster.client"
    )
    assert "vsim.cluster.cli" in loaded and "vsim.cluster.client" in loaded
    assert server_side(loaded) == []


def test_the_check_sees_a_server_module():
    assert server_side(modules_after("import vsim.vcenter.server")) != []
    kernel = "vsim.host.kernel.vmkernel"
    assert {"numpy", kernel} <= set(modules_after(f"import {kernel}"))


def test_the_facts_the_parser_shows_are_the_hosts_and_vcenters():
    assert session.ADMINISTRATOR == sessions.ADMINISTRATOR
    assert launch.STOP_TIMEOUT == up.STOP_TIMEOUT
    assert cli_host.PASS_THUMBPRINT == host_system.PASS_THUMBPRINT
    assert cli_vm.MAX_DISK_MB == virtual_machine.MAX_DISK_MB
    assert [unit for _, unit in pool.POOL_OPTIONS] == [pool.Unit.MHZ, pool.Unit.MB]
    standard = security_policy.STANDARD_SWITCH_SECURITY
    assert network.STANDARD_SWITCH_DEFAULTS == {
        field: getattr(standard, field) for field in network.STANDARD_SWITCH_DEFAULTS
    }
    assert set(network.STANDARD_SWITCH_DEFAULTS) == {f for _, f in network.SECURITY_OPTIONS}
