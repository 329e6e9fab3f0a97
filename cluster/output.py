"""How the CLI prints: a table for people, exactly one JSON document for scripts.

Both come from one encoding of the API's messages (`to_dict`), so a script reads the
words a person reads in the table:

- 64-bit integers are JSON numbers (the proto JSON mapping makes them strings);
- enums are vSphere's names: `poweredOn`, `notResponding`, `success`;
- a field whose zero or unset value means something has that meaning's word, as the
  tables show it (`DEFAULT_WORDS`: shares `normal`, limits `unlimited`, a switch
  port's VLANs `all`, ...);
- floating-point figures are rounded to `DECIMALS` places (times keep milliseconds);
- field names are the proto's (`memory_mb`); a message field that is unset is left out.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from vsim.ha_settings import DEFAULT_RESTART_PRIORITY

DECIMALS = 3
"""Places a float keeps in JSON: milliseconds of a timestamp, a thousandth of a MB."""

DEFAULT_WORDS: dict[tuple[str, str], str] = {
    ("vsim.v1.ResourceAllocation", "shares"): "normal",
    ("vsim.v1.ResourceAllocation", "limit"): "unlimited",
    ("vsim.v1.VmResources", "disk_shares"): "normal",
    ("vsim.v1.VmResources", "disk_iops_limit"): "unlimited",
    ("vsim.v1.VmResources", "resource_pool"): "Resources",
    ("vsim.v1.PoolAllocation", "limit"): "unlimited",
    ("vsim.v1.SecurityPolicy", "allow_promiscuous"): "inherit",
    ("vsim.v1.SecurityPolicy", "mac_changes"): "inherit",
    ("vsim.v1.SecurityPolicy", "forged_transmits"): "inherit",
    ("vsim.v1.PhysicalPort", "vlans"): "all",
    ("vsim.v1.HaConfig", "isolation_response"): "none",
    ("vsim.v1.Vm", "ha_restart_priority"): DEFAULT_RESTART_PRIORITY,
}
"""(message, field) whose zero, empty or unset value stands for a setting: its word."""


def enum_word(enum: EnumDescriptor, number: int) -> str | int:
    """vSphere's name for an enum value: POWER_STATE_POWERED_ON -> poweredOn."""
    value = enum.values_by_number.get(number)
    if value is None:
        return number  # a value newer than these stubs: the number, not a guess
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    first, *rest = value.name.removeprefix(prefix).lower().split("_")
    return first + "".join(word.capitalize() for word in rest)


def _scalar(field: FieldDescriptor, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_word(field.enum_type, value)
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return number(value)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_dict(value)
    return value


def _is_map(field: FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def to_dict(message: Message) -> dict[str, Any]:
    """A message as the CLI shows it (see the module's docstring)."""
    out: dict[str, Any] = {}
    descriptor = message.DESCRIPTOR
    for field in descriptor.fields:
        word = DEFAULT_WORDS.get((descriptor.full_name, field.name))
        value = getattr(message, field.name)
        if field.has_presence and not message.HasField(field.name):
            if word is not None:
                out[field.name] = word
            continue
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {k: _scalar(value_field, v) for k, v in sorted(value.items())}
        elif field.is_repeated:
            out[field.name] = [_scalar(field, v) for v in value] if value or not word else word
        elif word is not None and not field.has_presence and value == field.default_value:
            out[field.name] = word
        else:
            out[field.name] = _scalar(field, value)
    return out


def number(value: float) -> float | None:
    """A float rounded for people and scripts; None for NaN and infinities (no JSON)."""
    return round(value, DECIMALS) if math.isfinite(value) else None


def plain(value: Any) -> Any:
    """A JSON-ready value: messages in the CLI's encoding, floats rounded."""
    if isinstance(value, Message):
        return to_dict(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, float):
        return number(value)
    return value


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(plain(value), indent=2) + "\n")
    sys.stdout.flush()


def json_line(value: Any) -> str:
    """One JSON document on one line (a stream of them: `vsim events --follow`)."""
    return json.dumps(plain(value))


def when(seconds: float) -> str:
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def cell(value: Any) -> str:
    return "" if value is None else str(value)


EVENT_TYPE_WIDTH = 33
"""Room for the longest event type (PhysicalSwitchPortConfiguredEvent) in a stream."""


def event_line(event: Any) -> str:
    """An event as one line of fixed columns, for a stream (`vsim events --follow`);
    a longer type still leaves two spaces before the message."""
    return _event_columns(str(event.key), when(event.created_time), event.type, event.message)


def event_header() -> str:
    return _event_columns("KEY", "TIME", "TYPE", "MESSAGE")


def _event_columns(key: str, time: str, type_: str, message: str) -> str:
    return f"{key:<6}  {time:<19}  {type_:<{EVENT_TYPE_WIDTH}}  {message}".rstrip()


def events_table(events: Sequence[Any]) -> str:
    rows = [
        {"key": e.key, "time": when(e.created_time), "type": e.type, "message": e.message}
        for e in events
    ]
    return table(rows, ["key", "time", "type", "message"])


def progress(done: int, total: int, what: str, end: bool = False) -> None:
    """A progress bar on stderr, drawn over itself; `end` ends its line."""
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    print(f"\r[{bar}] {what}", end="\n" if end else "", file=sys.stderr)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """Rows as aligned columns, headed by the column names in upper case."""
    grid = [[c.upper() for c in columns]] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in grid) for i in range(len(columns))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in grid
    )


def fields(pairs: dict[str, Any]) -> str:
    """A record as 'key: value' lines."""
    width = max(len(k) for k in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {cell(v)}" for k, v in pairs.items())


def vm_text(vm: Any) -> str:
    """One VM: where it runs, its size, files and adapters, and its guest's writes
    (`guest writes acked` is what `vsim vm verify-disk --acked` checks)."""
    shown = to_dict(vm)
    pairs = {
        "name": vm.name,
        "host": vm.host,
        "power_state": shown["power_state"],
        "uuid": vm.uuid,
        "cpus": vm.cpus,
        "memory_mb": vm.memory_mb,
        "guest_os": vm.guest_os,
        "datastore": vm.datastore or "-",
        "disks": ", ".join(disk.path for disk in vm.disks) or "-",
        "nics": ", ".join(f"{n.name} ({n.port_group}, {n.mac})" for n in vm.nics) or "-",
        "resource_pool": shown["resources"]["resource_pool"],
        "pci_devices": ", ".join(vm.pci_devices) or "-",
    }
    if vm.disks:
        running = shown["power_state"] == "poweredOn"
        pairs["guest_write_iops"] = vm.guest_write_iops
        pairs["guest_writes_acked"] = vm.guest_writes_acked if running else "- (not running)"
        pairs["guest_write_retries"] = vm.guest_write_retries if running else "-"
    return fields(pairs)


# the VMkernel's views, as text for people (`-o json` prints the messages themselves)


def vlan_ranges(vlans: Sequence[int]) -> str:
    """[10, 11, 12, 20] -> "10-12,20"; [] (a trunk's default) -> "all"."""
    if not vlans:
        return "all"
    spans: list[list[int]] = []
    for vlan in sorted(set(vlans)):
        if spans and vlan == spans[-1][1] + 1:
            spans[-1][1] = vlan
        else:
            spans.append([vlan, vlan])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def vlan_word(vlan: int) -> str:
    """A port group's VLAN id as vSphere means it."""
    return {0: "0 (none)", 4095: "4095 (guest tagging)"}.get(vlan, str(vlan))


SECURITY_COLUMNS = (
    ("promiscuous", "allow_promiscuous"),
    ("mac_changes", "mac_changes"),
    ("forged_transmits", "forged_transmits"),
)
"""(column, SecurityPolicy field) of the vSwitch and port group tables."""


def _accept(value: bool) -> str:
    return "accept" if value else "reject"


def security_columns(policy: Any, base: Any = None) -> dict[str, str]:
    """A policy's three settings as accept/reject; a port group's unset ones as
    "inherit (accept)", with the value of `base` (its vSwitch's policy) if known."""
    row = {}
    for column, name in SECURITY_COLUMNS:
        if policy.HasField(name):
            row[column] = _accept(getattr(policy, name))
        elif base is not None and base.HasField(name):
            row[column] = f"inherit ({_accept(getattr(base, name))})"
        else:
            row[column] = "inherit"
    return row


def vswitches_table(network: Any) -> str:
    rows = [
        {
            "name": v.name,
            "uplinks": ", ".join(v.uplinks) or "-",
            "active": v.active_uplink or "-",
            "port_groups": ", ".join(p.name for p in network.port_groups if p.vswitch == v.name),
            **security_columns(v.security),
        }
        for v in network.vswitches
    ]
    columns = ["name", "uplinks", "active", "port_groups", *(c for c, _ in SECURITY_COLUMNS)]
    return table(rows, columns)


def port_groups_table(network: Any) -> str:
    switches = {v.name: v.security for v in network.vswitches}
    rows = [
        {
            "name": p.name,
            "vswitch": p.vswitch,
            "vlan": vlan_word(p.vlan),
            "vnics": sum(n.port_group == p.name for n in network.nics),
            **security_columns(p.security, switches.get(p.vswitch)),
        }
        for p in network.port_groups
    ]
    columns = ["name", "vswitch", "vlan", "vnics", *(c for c, _ in SECURITY_COLUMNS)]
    return table(rows, columns)


def guest_mac_text(port: Any) -> str:
    """An adapter's port after its guest set the MAC."""
    changed = "" if port.effective_mac == port.mac else ", changed by the guest"
    return (
        f"{port.vm}/{port.nic} on {port.port_group}: MAC {port.effective_mac} "
        f"(configured {port.mac}{changed})"
    )


def physical_ports_table(ports: Sequence[Any]) -> str:
    rows = [
        {
            "host": p.host,
            "uplink": p.uplink,
            "vlans": vlan_ranges(p.vlans),
            "state": "shutdown" if p.disabled else "up",
        }
        for p in ports
    ]
    return table(rows, ["host", "uplink", "vlans", "state"])


def _frame_words(frame: Any) -> str:
    ports = f" port {frame.dst_port}" if frame.protocol in ("tcp", "udp") else ""
    ips = f" {frame.src_ip or '-'} -> {frame.dst_ip or '-'}" if frame.src_ip or frame.dst_ip else ""
    vlan = f" VLAN {frame.vlan}" if frame.vlan else ""
    return f"{frame.protocol or 'other'} {frame.src_mac} -> {frame.dst_mac}{vlan}{ips}{ports}"


def trace_text(trace: Any) -> str:
    """Who received a test frame, and every place it was dropped, with the reason."""
    lines = [f"{trace.vm}/{trace.nic} on {trace.host} sent {_frame_words(trace.frame)}"]
    if trace.received:
        lines.append(f"received by {len(trace.received)}:")
    elif not trace.dropped:
        lines.append("received by none: no adapter has that MAC in the frame's VLAN")
    else:
        lines.append("received by none")
    for r in trace.received:
        vlan = f" (tagged VLAN {r.frame.vlan})" if r.frame.vlan else ""
        lines.append(f"  {r.vm}/{r.nic} on {r.host}{vlan}")
    if trace.dropped:
        lines.append(f"dropped {len(trace.dropped)}:")
    for d in trace.dropped:
        where = f"{d.host} {d.where}" if d.host else d.where
        lines.append(f"  {where}: {d.reason} ({d.detail})")
    return "\n".join(lines)


def _allocation(allocation: Any, unit: str) -> str:
    shares = allocation.shares or "normal"
    limit = f"{allocation.limit} {unit}" if allocation.HasField("limit") else "unlimited"
    return f"shares {shares}, reservation {allocation.reservation} {unit}, limit {limit}"


def resources_text(vm: Any) -> str:
    r = vm.resources
    iops = r.disk_iops_limit if r.HasField("disk_iops_limit") else "unlimited"
    return fields(
        {
            "vm": vm.name,
            "cpu": _allocation(r.cpu, "MHz"),
            "memory": _allocation(r.memory, "MB"),
            "page sharing": "off" if r.page_sharing_disabled else "on",
            "salt": r.page_sharing_salt or "-",
            "cpu load": f"{r.cpu_load_pct} %",
            "disk": f"shares {r.disk_shares or 'normal'}, IOPS limit {iops}",
            "resource pool": r.resource_pool or "Resources",
        }
    )


def _pool_shares(allocation: Any) -> str:
    if allocation.shares_level == "custom":
        return str(allocation.shares)
    return f"{allocation.shares_level} ({allocation.shares})"


def _pool_reservation(allocation: Any) -> str:
    return f"{allocation.reservation} {'exp' if allocation.expandable_reservation else 'fixed'}"


def _pool_limit(allocation: Any) -> str:
    return str(allocation.limit) if allocation.HasField("limit") else "unlimited"


def resource_pools_table(pools: Any) -> str:
    """A host's pools (CPU in MHz, memory in MB): settings, entitlement now, VMs."""
    rows = []
    for p in pools.pools:
        row: dict[str, Any] = {"name": p.name, "parent": p.parent or "-"}
        for prefix, allocation, usage in (
            ("cpu", p.cpu, p.cpu_usage),
            ("mem", p.memory, p.memory_usage),
        ):
            row[f"{prefix}_shares"] = _pool_shares(allocation)
            row[f"{prefix}_reservation"] = _pool_reservation(allocation)
            row[f"{prefix}_limit"] = _pool_limit(allocation)
            row[f"{prefix}_entitled"] = f"{usage.entitlement:.0f}"
        row["vms"] = ", ".join(vm.name + (" (on)" if vm.powered_on else "") for vm in p.vms)
        rows.append(row)
    per_resource = ("shares", "reservation", "limit", "entitled")
    columns = ["name", "parent", *(f"{r}_{c}" for r in ("cpu", "mem") for c in per_resource), "vms"]
    return f"{pools.host}: CPU in MHz, memory in MB\n" + table(rows, columns)


def firewall_text(vm: Any) -> str:
    """Each adapter's rules, in the order they are checked, and its default action."""
    blocks = []
    for nic in vm.nics:
        rows = [
            {"#": i, **{k: getattr(rule, k) for k in ("action", "direction", "protocol")},
             "address": rule.address, "port": rule.port, "name": rule.name}
            for i, rule in enumerate(nic.firewall)
        ]  # fmt: skip
        head = f"{vm.name}/{nic.name} ({nic.mac}, {nic.port_group}): default {nic.firewall_default}"
        columns = ["#", "action", "direction", "protocol", "address", "port", "name"]
        blocks.append(head + ("\n" + table(rows, columns) if rows else "\n  no rules"))
    return "\n\n".join(blocks) or f"{vm.name} has no network adapters"


def nics_table(vm: Any) -> str:
    rows = [
        {"name": n.name, "port_group": n.port_group, "mac": n.mac, "rules": len(n.firewall),
         "default": n.firewall_default or "allow"}
        for n in vm.nics
    ]  # fmt: skip
    return table(rows, ["name", "port_group", "mac", "rules", "default"])


def _mb(value: float) -> str:
    return f"{value:.0f} MB"


def _slowed(share: float) -> str:
    """What a vMotion does to the guest's vCPUs, while it does."""
    if share >= 1:
        return ""
    if share == 0:
        return "; stunned (vMotion switchover)"
    return f"; vCPUs run {share:.0%} of the time (SDPS: a vMotion's pre-copy)"


def vm_stats_text(stats: Any) -> str:
    cpu, mem = stats.cpu, stats.memory
    lines = fields(
        {
            "vm": f"{stats.name} on {stats.host}",
            "cpu": f"demand {cpu.demand:.0f} MHz, entitlement {cpu.entitlement:.0f} MHz, "
            f"usage {cpu.usage:.0f} MHz, ready {cpu.ready_pct:.1f} %" + _slowed(cpu.vcpu_run_share),
            "memory": f"granted {_mb(mem.granted)}, consumed {_mb(mem.consumed)}, "
            f"active {_mb(mem.active)}, target {_mb(mem.target)}",
            "shared": f"{_mb(mem.shared)} ({_mb(mem.shared_saved)} saved), zero {_mb(mem.zero)}",
            "reclaimed": f"ballooned {_mb(mem.ballooned)}, compressed {_mb(mem.compressed)}, "
            f"swapped {_mb(mem.swapped)}",
        }
    )
    rows = [
        {"nic": name, "tx": n.tx, "rx": n.rx,
         "dropped": ", ".join(f"{k} {v}" for k, v in sorted(n.dropped.items())) or "-"}
        for name, n in sorted(stats.nics.items())
    ]  # fmt: skip
    return lines + ("\n\n" + table(rows, ["nic", "tx", "rx", "dropped"]) if rows else "")


def host_stats_text(stats: Any) -> str:
    mem, cpu, settings = stats.memory, stats.cpu, stats.memory_settings
    lines = fields(
        {
            "host": stats.host,
            "cpu": f"capacity {cpu.capacity:.0f} MHz, reserved {cpu.reserved:.0f} MHz, "
            f"demand {cpu.demand:.0f} MHz, usage {cpu.usage:.0f} MHz",
            "memory": f"{_mb(mem.total)} total, {_mb(mem.free)} free (state {mem.state}, "
            f"minFree {_mb(mem.min_free)})",
            "granted": f"{_mb(mem.granted)}, consumed {_mb(mem.consumed)}",
            "shared": f"{_mb(mem.shared)} ({_mb(mem.shared_saved)} saved, common "
            f"{_mb(mem.shared_common)}), zero {_mb(mem.zero)}; {mem.scans} scans, last "
            f"merged {mem.last_scan_merged} pages",
            "reclaimed": f"ballooned {_mb(mem.ballooned)}, compressed {_mb(mem.compressed)}, "
            f"swapped {_mb(mem.swapped)}",
            "settings": memory_settings_text(settings),
        }
    )
    rows = [
        {"vm": v.name, "cpu_usage": f"{v.cpu.usage:.0f}", "ready_pct": f"{v.cpu.ready_pct:.1f}",
         "granted_mb": f"{v.memory.granted:.0f}", "shared_mb": f"{v.memory.shared:.0f}",
         "swapped_mb": f"{v.memory.swapped:.0f}"}
        for v in stats.vms
    ]  # fmt: skip
    columns = ["vm", "cpu_usage", "ready_pct", "granted_mb", "shared_mb", "swapped_mb"]
    return lines + ("\n\n" + table(rows, columns) if rows else "")


def memory_settings_text(settings: Any) -> str:
    sharing = "off" if settings.page_sharing_disabled else "on"
    return (
        f"Mem.ShareForceSalting {settings.share_force_salting}, page sharing {sharing}, "
        f"scan every {settings.share_scan_period:g} s"
    )


def pci_table(devices: Sequence[Any]) -> str:
    rows = [
        {"id": d.id, "vendor": d.vendor_name, "device": d.device_name,
         "passthru": "enabled" if d.passthru_enabled else "disabled", "vm": d.vm or "-"}
        for d in devices
    ]  # fmt: skip
    return table(rows, ["id", "vendor", "device", "passthru", "vm"])


def luns_table(luns: Any) -> str:
    rows = [
        {"address": lun.address, "lun": lun.lun, "vendor": lun.vendor.strip(),
         "product": lun.product.strip(), "capacity_mb": lun.capacity_bytes // 1024**2}
        for lun in luns.luns
    ]  # fmt: skip
    if not rows:
        return f"{luns.vm}'s guest sees no disks"
    return table(rows, ["address", "lun", "vendor", "product", "capacity_mb"])


def ha_status_text(status: Any) -> str:
    """vSphere HA's settings; then, while it is on, each host's agent state, the
    protected VMs and the failover capacity, current against required."""
    config = status.config
    if not config.enabled:
        return "vSphere HA is disabled on the cluster"
    head = fields(
        {
            "vSphere HA": "enabled",
            "master": status.master or "-",
            "host failures tolerated": config.host_failures or "0 (admission control off)",
            "isolation response": config.isolation_response or "none",
            "isolation address": config.isolation_address or "the management network's gateway",
            "heartbeat datastores": ", ".join(config.heartbeat_datastores) or "-",
        }
    )
    hosts = table(
        [{"host": h.host, "state": h.state or "-"} for h in status.hosts], ["host", "state"]
    )
    protected = [v for v in status.vms if v.protected]
    rows = [
        {"vm": v.name, "host": v.host, "restart_priority": v.restart_priority} for v in protected
    ]
    vms = table(rows, ["vm", "host", "restart_priority"]) if rows else "no protected VMs"
    left = [v.name for v in status.vms if not v.protected]
    if left:
        vms += (
            f"\nnot protected (powered off, no datastore or priority disabled): {', '.join(left)}"
        )
    capacity = table(
        [
            {"failover_capacity": "cpu", "current": _pct(status.cpu_failover_pct),
             "required": _pct(status.required_cpu_failover_pct)},
            {"failover_capacity": "memory", "current": _pct(status.memory_failover_pct),
             "required": _pct(status.required_memory_failover_pct)},
        ],
        ["failover_capacity", "current", "required"],
    )  # fmt: skip
    return "\n\n".join((head, hosts, vms, capacity))


def _pct(value: float) -> str:
    return f"{value:.1f} %"


def ha_vm_text(vm: Any, ha_enabled: bool) -> str:
    """A VM's HA settings and whether HA protects it now."""
    if vm.protected:
        protected = "yes"
    elif not ha_enabled:
        protected = "no (vSphere HA is disabled)"
    elif vm.restart_priority == "disabled":
        protected = "no (restart priority disabled)"
    else:
        protected = "no (powered off or without a datastore)"
    return fields(
        {
            "vm": vm.name,
            "host": vm.host or "-",
            "restart_priority": vm.restart_priority or DEFAULT_RESTART_PRIORITY,
            "protected": protected,
        }
    )
