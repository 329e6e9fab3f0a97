"""docker-compose.yml as Debian's docker-compose 1.29 and Compose v2 read it: both
accept it and see the same services, addresses, dependencies and published port.
Needs the two tools, not a Docker engine."""

from __future__ import annotations

import subprocess

import yaml
from compose_v2 import compose_v2
from conftest import REPO, unless

SERVICES = {"array", "ray-head", "vcenter", "esxi-01", "esxi-02", "esxi-03", "esxi-04"}


def resolved(*tool: str) -> dict:
    out = subprocess.run(
        [*tool, "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "VSIM_VCENTER_PORT": "50051"},
    )
    assert out.returncode == 0, f"{tool[0]} refuses docker-compose.yml:\n{out.stderr}"
    return yaml.safe_load(out.stdout)


def size_bytes(size: str | int) -> int:
    """ "512m" (as written, 1.29) or "536870912" (v2) in bytes."""
    text = str(size).lower()
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("kmg")) * scale


def layout(config: dict) -> dict:
    """What must not differ between the two readings: per service, its networks and
    addresses, what it waits for, and what it publishes."""

    def ports(service: dict) -> set[tuple[str, str, str]]:
        found = set()
        for p in service.get("ports", []):
            if isinstance(p, str):  # 1.29: "127.0.0.1:50051:50051/tcp"
                ip, published, target = p.split("/")[0].split(":")
            else:
                ip, published, target = p["host_ip"], p["published"], p["target"]
            found.add((ip, str(published), str(target)))
        return found

    return {
        name: (
            {net: (spec or {}).get("ipv4_address") for net, spec in s["networks"].items()},
            {dep: cond["condition"] for dep, cond in s.get("depends_on", {}).items()},
            ports(s),
            size_bytes(s.get("shm_size", "0")),
            s.get("restart"),
        )
        for name, s in config["services"].items()
    }


def test_compose_v1_and_v2_read_the_same_cluster(docker_tools):
    v1 = layout(resolved("docker-compose"))
    try:
        v2_tool = compose_v2()
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        unless(f"cannot fetch Compose v2 from the Debian archive: {e}")
    v2 = layout(resolved(str(v2_tool)))
    assert set(v1) == SERVICES
    assert v1 == v2
    management = {name: nets.get("management") for name, (nets, *_) in v1.items()}
    assert management["vcenter"] == "172.30.1.10" and "storage" not in v1["vcenter"][0]
    assert v1["vcenter"][2] == {("127.0.0.1", "50051", "50051")}  # loopback only
    for i in range(1, 5):
        nets = v1[f"esxi-0{i}"][0]
        assert nets == {
            "management": f"172.30.1.1{i}",
            "storage": f"172.30.2.1{i}",
            "vmotion": f"172.30.3.1{i}",
        }
    # The array's data on storage, its management (vCenter's) on management; vCenter
    # tells the hosts the storage address, so a host reaches the array only there.
    assert v1["array"][0] == {"storage": "172.30.2.10", "management": "172.30.1.20"}
    services = resolved("docker-compose")["services"]
    command = " ".join(services["vcenter"]["command"])
    for i in range(1, 5):  # each host streams vMotion on its vmotion-network address
        env = services[f"esxi-0{i}"]["environment"]
        assert env["VSIM_VMOTION_ADDRESS"] == f"172.30.3.1{i}"
    # The array's management key is in its info file: no host may mount it.
    for i in range(1, 5):
        volumes = services[f"esxi-0{i}"].get("volumes", [])
        sources = {v["source"] if isinstance(v, dict) else v.split(":")[0] for v in volumes}
        assert not any("array-info" in source for source in sources)
    assert "--array 172.30.2.10:50052 --array-management 172.30.1.20:50052" in command
    assert {s[4] for s in v1.values()} == {"on-failure"}  # docker kill still stops one
