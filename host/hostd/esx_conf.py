"""The host's persistent configuration, as ESXi keeps it in /etc/vmware/esx.conf:
its standard vSwitches and port groups, its advanced memory settings, which PCI
devices are enabled for passthrough, and its resource pools. A reboot (or a
restarted host actor) comes back with them, so VMs on a port group or in a resource
pool an administrator added still power on.

Kept through an injected store: a JSON file in the host's data dir for a real host,
memory for the in-process engine (which keeps it across `reboot`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from vsim.host.kernel.net.vswitch import HostNetworkSystem
from vsim.memory_settings import MemorySettings
from vsim.resource_allocation import Allocation, PoolConfig
from vsim.security_policy import STANDARD_SWITCH_SECURITY, SecurityPolicy
from vsim.tls import write_private


class ConfigStore(Protocol):
    def load(self) -> dict[str, Any]: ...

    def save(self, config: dict[str, Any]) -> None: ...


class MemoryConfigStore:
    def __init__(self) -> None:
        self._config: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        return json.loads(json.dumps(self._config))

    def save(self, config: dict[str, Any]) -> None:
        self._config = json.loads(json.dumps(config))


class FileConfigStore:
    """esx.conf as a JSON file, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def save(self, config: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(config, indent=1, sort_keys=True).encode())


def network_config(network: HostNetworkSystem) -> dict[str, Any]:
    return {
        "vswitches": [
            {"name": v.name, "uplinks": list(v.uplinks), "security": asdict(v.security)}
            for v in network.vswitches()
        ],
        "port_groups": [
            {"name": p.name, "vswitch": p.vswitch, "vlan": p.vlan, "security": asdict(p.security)}
            for p in network.port_groups()
        ],
    }


def network_from_config(host: str, config: dict[str, Any]) -> HostNetworkSystem:
    network = HostNetworkSystem(host)
    for v in config["vswitches"]:
        security = SecurityPolicy(**v["security"]).over(STANDARD_SWITCH_SECURITY)
        network.add_vswitch(v["name"], tuple(v["uplinks"]), security)
    for p in config["port_groups"]:
        network.add_port_group(p["name"], p["vswitch"], p["vlan"], SecurityPolicy(**p["security"]))
    return network


def memory_config(settings: MemorySettings) -> dict[str, Any]:
    return asdict(settings)


def memory_from_config(config: dict[str, Any]) -> MemorySettings:
    return MemorySettings(**config).validated()


def resource_pools_config(pools: Iterable[PoolConfig]) -> list[dict[str, Any]]:
    """The pools other than the root, parents before their children (the order they
    are made again in at boot)."""
    return [
        {"name": p.name, "parent": p.parent, "cpu": asdict(p.cpu), "memory": asdict(p.memory)}
        for p in pools
    ]


def resource_pools_from_config(config: list[dict[str, Any]]) -> list[PoolConfig]:
    """The saved pools, in the saved order; each allocation checks itself."""
    return [
        PoolConfig(p["name"], p["parent"], Allocation(**p["cpu"]), Allocation(**p["memory"]))
        for p in config
    ]
