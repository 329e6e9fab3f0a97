"""VMkernel benchmark: the TPS scan over a host with 64 VMs x 4 GiB, the CPU
scheduler's tick with 1,024 VMs on a host, and frames forwarded per second.

Prints one JSON object. Run with `python bench/kernel.py` (or `make bench`).

The scan's bar: 16 Mi pages (64 GiB of guest memory) in under 1 s on one core. Each
of the 64 VMs (4 GiB configured) has touched 1 GiB, a quarter of its memory (the
working set of the default guest), so the host holds 16 Mi guest pages: 20% zero,
30% drawn from 16,384 common pages of the guest OS, 50% private. The first scan is
timed as it comes (its work arrays are paged in then); then every guest rewrites all
its pages and the scan is timed again, three times (median).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np
from harness import reference

from vsim.ethernet_frame import Frame
from vsim.fabric.network import Network
from vsim.fabric.physical_switch import PhysicalSwitch
from vsim.guest_workload import GuestWorkload
from vsim.host.guest.memory import GuestMemoryModel
from vsim.host.kernel.cpu_scheduler import CpuScheduler
from vsim.host.kernel.memory.page_sharing import PageSharing, salt_domain
from vsim.host.kernel.memory.pmap import PAGES_PER_MB, MachineMemory
from vsim.host.kernel.net.vswitch import HostNetworkSystem
from vsim.resource_allocation import Allocation, Unit, pool_allocation

GIB = 1024 * PAGES_PER_MB
MIX = GuestWorkload(zero_pct=20, common_pct=30)
"""What the guests write: 20 % zero pages, 30 % from their OS family's common pool."""
GUEST_OS = "ubuntu64Guest"
"""A Linux guest: every VM draws its common pages from the one Linux pool."""


def tps(vms: int, configured_gib: int, touched_gib: int, rounds: int) -> dict:
    memory = MachineMemory(512 * GIB)
    sharing = PageSharing(memory)
    touched = np.arange(touched_gib * GIB)
    guests = []  # (its pages on the host, its guest)
    for i in range(vms):
        name = f"vm-{i:03d}"
        vm_pages = memory.add_vm(name, configured_gib * GIB, salt_domain(0, "", ""), True)
        guest = GuestMemoryModel(name, GUEST_OS, configured_gib * GIB, MIX, seed=1)
        memory.write(vm_pages, touched, guest.content(len(touched)))
        guests.append((vm_pages, guest))
    pages = memory.used_pages
    start = time.perf_counter()
    first = sharing.scan()
    cold = time.perf_counter() - start
    after_first = memory.used_pages
    warm = []
    for _ in range(rounds):
        for vm_pages, guest in guests:
            memory.write(vm_pages, touched, guest.content(len(touched)))
        start = time.perf_counter()
        result = sharing.scan()
        warm.append(time.perf_counter() - start)
    median = statistics.median(warm)
    return {
        "vms": vms,
        "vm_memory_gib": configured_gib,
        "touched_gib_per_vm": touched_gib,
        "pages_scanned": first.scanned,
        "first_scan_s": round(cold, 3),
        "scan_s": round(median, 3),
        "scan_pages_per_s": round(result.scanned / median),
        "machine_pages_before": pages,
        "machine_pages_after": after_first,
        "saved_gib": round((pages - after_first) / GIB, 2),
        "hash_collisions": first.collisions,
    }


def scheduler(vms: int, ticks: int) -> dict:
    rng = random.Random(2)
    cpu = CpuScheduler(cores=128, core_mhz=2600)
    for i in range(8):
        level = rng.choice(["low", "normal", "high"])
        cpu.pools.add_pool(f"pool-{i}", {Unit.MHZ: pool_allocation("MHz", level)})
    for i in range(vms):
        vcpus = rng.choice([1, 2, 4])
        reservation = rng.choice([0, 0, 0, 200])
        limit = rng.choice([-1, -1, 4000, 8000])
        allocation = Allocation(rng.choice([500, 1000, 2000]) * vcpus, reservation, limit)
        cpu.power_on(f"vm-{i:04d}", vcpus, allocation, f"pool-{i % 8}")
    # A new demand each period (the division is computed again), and the same demand
    # (the tree reuses its last division while nothing changed).
    draws = np.random.default_rng(2)
    changed, unchanged = [], []
    for _ in range(ticks):
        cpu.set_demands(draws.uniform(0, 5000, vms))
        start = time.perf_counter()
        cpu.tick(1.0)
        changed.append(time.perf_counter() - start)
    for _ in range(ticks):
        start = time.perf_counter()
        cpu.tick(1.0)
        unchanged.append(time.perf_counter() - start)
    stats = cpu.host_stats()
    return {
        "vms": vms,
        "pools": 8,
        "tick_ms": round(statistics.median(changed) * 1000, 3),
        "tick_same_demand_ms": round(statistics.median(unchanged) * 1000, 3),
        "demand_mhz": round(stats.demand_mhz),
        "capacity_mhz": stats.capacity_mhz,
    }


def frames(count: int) -> dict:
    host = HostNetworkSystem("esxi-01")
    host.add_vswitch("vSwitch0", ("vmnic0",))
    host.add_port_group("VM Network", "vSwitch0", 10)
    host.connect_vnic("a", "ethernet0", "VM Network", "00:50:56:80:00:01")
    host.connect_vnic("b", "ethernet0", "VM Network", "00:50:56:80:00:02")
    local = Frame("00:50:56:80:00:01", "00:50:56:80:00:02", protocol="tcp", dst_port=443)
    start = time.perf_counter()
    for _ in range(count):
        host.send("a", "ethernet0", local)
    local_rate = count / (time.perf_counter() - start)

    other = HostNetworkSystem("esxi-02")
    other.add_vswitch("vSwitch0", ("vmnic0",))
    other.add_port_group("VM Network", "vSwitch0", 10)
    other.connect_vnic("c", "ethernet0", "VM Network", "00:50:56:80:00:03")
    switch = PhysicalSwitch()
    switch.connect("esxi-01", "vmnic0")
    switch.connect("esxi-02", "vmnic0")
    network = Network(switch, {"esxi-01": host, "esxi-02": other})
    remote = Frame("00:50:56:80:00:01", "00:50:56:80:00:03", protocol="tcp", dst_port=443)
    crossing = count // 4
    start = time.perf_counter()
    for _ in range(crossing):
        network.send("a", remote, host="esxi-01")
    remote_rate = crossing / (time.perf_counter() - start)
    return {
        "local_unicast_frames_per_s": round(local_rate),
        "cross_host_frames_per_s": round(remote_rate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=64)
    parser.add_argument("--vm-gib", type=int, default=4)
    parser.add_argument("--touched-gib", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    before = reference()
    result = {
        "tps": tps(args.vms, args.vm_gib, args.touched_gib, args.rounds),
        "cpu_scheduler": scheduler(1024, 200),
        "vswitch": frames(200_000),
    }
    after = reference()
    print(json.dumps(result | before | {"reference_after_s": after["reference_s"]}))


if __name__ == "__main__":
    main()
