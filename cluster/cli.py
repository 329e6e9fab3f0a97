"""The `vsim` command: a thin layer over the SDK client (`vsim.cluster.client`).

Each command is a few lines: parse, call the client, print a table (default) or one
JSON document (`-o json`). Failures print the vSphere fault name and message and
exit 1 (with `-o json`, the fault is the JSON document).

This module is the entry point (`main`) and builds the whole parser; the VMkernel
commands (`vsim network ...`, a VM's resources, NICs, firewall, devices and statistics,
a host's statistics, memory settings and PCI devices) live in `cli_kernel`, which
registers them here.

Every command starts a process, so the module imports only what parsing and the
client commands need: the SDK client (gRPC, TLS) is imported when a command connects,
and the servers (`vsim up`, `vsim array serve`, `vsim vcenter serve`: Ray, numpy, the
hosts' kernels) only inside their handlers. A unit test holds it to that.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsim import validate
from vsim.cluster import cli_kernel, cli_storage, output
from vsim.cluster.config import Settings, UserConfig
from vsim.faults import (
    HostConnectFault,
    InvalidArgument,
    NotAuthenticated,
    SSLVerifyFault,
    SystemError_,
    VimFault,
    fault_from_proto,
)
from vsim.v1 import common_pb2
from vsim.v1 import kernel_pb2 as kpb

if TYPE_CHECKING:
    from vsim.cluster import up
    from vsim.cluster.client import VCenterClient

ADMINISTRATOR = "administrator@vsphere.local"
"""vsim.vcenter.sessions.ADMINISTRATOR, the default user (a unit test checks they agree)."""
STOP_TIMEOUT = 120.0
"""vsim.cluster.up.STOP_TIMEOUT: how long `vsim down` waits (checked as ADMINISTRATOR is)."""
PASS_THUMBPRINT = "verify it and pass it as ssl_thumbprint to add the host"
"""vsim.vcenter.host_system.PASS_THUMBPRINT: how AddHost's SSLVerifyFault ends when the
caller has not verified the certificate (checked as ADMINISTRATOR is)."""
MAX_DISK_MB = 2 * 1024 * 1024
"""vsim.vcenter.virtual_machine.MAX_DISK_MB (checked as ADMINISTRATOR is)."""

Handler = Callable[[argparse.Namespace, "Context"], Any]
SUCCESS = common_pb2.TASK_STATE_SUCCESS


class Context:
    """What a command needs: the config, the chosen server, and a client on demand."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.config = UserConfig()
        self.settings = self.config.settings()
        self.server = args.server or self.settings.server
        self.json = args.output == "json"

    async def client(self) -> VCenterClient:
        from vsim.cluster.client import VCenterClient

        pinned = self.config.pinned(self.server)
        session = self.settings.session if self.server == self.settings.server else ""
        if not session:
            raise NotAuthenticated(f"no session for {self.server}: run `vsim login` first")
        if pinned is None:
            raise NotAuthenticated(f"{self.server} is not pinned yet: run `vsim login` first")
        return await VCenterClient.connect(self.server, pinned, session or None)

    def show(self, value: Any, text: str) -> None:
        if self.json:
            output.emit_json(value)
        else:
            print(text)


# commands


async def cmd_login(args: argparse.Namespace, ctx: Context) -> None:
    user = args.user or ctx.settings.user or ADMINISTRATOR
    password = args.password or os.environ.get("VSIM_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise InvalidArgument("no password given: pass --password or set VSIM_PASSWORD")
        password = getpass.getpass(f"Password for {user}@{ctx.server}: ")
    from vsim.cluster.client import VCenterClient

    pinned = None if args.accept_new_thumbprint else ctx.config.pinned(ctx.server)
    async with await VCenterClient.connect(ctx.server, pinned) as client:
        first_use = pinned is None
        session = await client.login(user, password)
        ctx.config.pin(ctx.server, client.thumbprint)
    ctx.config.save_settings(Settings(server=ctx.server, user=user, session=session))
    note = " (thumbprint pinned on first use)" if first_use else ""
    ctx.show(
        {"server": ctx.server, "user": user, "thumbprint": client.thumbprint, "pinned": first_use},
        f"Logged in to {ctx.server} as {user}{note}\nThumbprint: {client.thumbprint}",
    )


async def cmd_logout(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        await client.logout()
    ctx.config.save_settings(Settings(server=ctx.server, user=ctx.settings.user))
    ctx.show({"server": ctx.server, "logged_out": True}, f"Logged out of {ctx.server}")


async def cmd_status(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        status = await client.status()
    d = output.to_dict(status)
    d["now"] = output.when(status.now)
    d["server"] = ctx.server
    ctx.show(status, output.fields(d))


HOST_COLUMNS = ["name", "connection_state", "cpu_cores", "cpu_mhz", "memory_mb",
                "memory_used_mb", "vms", "vms_powered_on", "endpoint"]  # fmt: skip
VM_COLUMNS = ["name", "host", "power_state", "cpus", "memory_mb", "guest_os", "datastore"]
TASK_COLUMNS = ["id", "name", "entity", "state", "result", "error", "user", "queued", "completed"]


async def cmd_host_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        hosts = await client.hosts()
    ctx.show(hosts, output.table([output.to_dict(h) for h in hosts], HOST_COLUMNS))


async def cmd_host_add(args: argparse.Namespace, ctx: Context) -> None:
    sizes = {k: v for k, v in (("cpu_cores", args.cpu_cores), ("cpu_mhz", args.cpu_mhz),
                               ("memory_mb", args.memory_mb)) if v is not None}  # fmt: skip
    async with await ctx.client() as client:
        thumbprint = normalize(args.thumbprint) if args.thumbprint else ""
        task = await client.wait(await client.add_host(args.name, thumbprint, **sizes))
        if not thumbprint and task.error.name == SSLVerifyFault.name:
            # The vSphere Client's security alert: the user accepts the thumbprint, with
            # --accept-thumbprint or at the prompt, or the add fails showing it.
            presented = task.error.properties["thumbprint"]
            if args.accept_thumbprint or confirm(
                f"{args.name} presents a certificate with SHA-256 thumbprint\n  {presented}\n"
                "Trust it and add the host? [y/N] "
            ):
                thumbprint = presented
                task = await client.wait(await client.add_host(args.name, thumbprint, **sizes))
    if task.error.name == SSLVerifyFault.name:
        raise thumbprint_fault(args.name, fault_from_proto(task.error))
    show_task(ctx, task, f"Added host {args.name} (thumbprint {thumbprint})")


def thumbprint_fault(name: str, fault: VimFault) -> VimFault:
    """AddHost's SSLVerifyFault telling what to type here, not the API field to set."""
    presented = fault.properties.get("thumbprint", "")
    if not (presented and fault.message.endswith(PASS_THUMBPRINT)):
        return fault  # not a certificate to verify (something else answers): as it is
    told = fault.message.removesuffix(PASS_THUMBPRINT)
    return SSLVerifyFault(
        f"{told}verify it, then run `vsim host add {name} --thumbprint {presented}` "
        "(or add --accept-thumbprint) to add the host",
        **fault.properties,
    )


def confirm(question: str) -> bool:
    """Asks a yes/no question on the terminal; False when there is none to ask on."""
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")


async def cmd_host_remove(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.remove_host(args.name))
    show_task(ctx, task, f"Removed host {args.name}")


async def cmd_vm_create(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.create_vm(
            args.name,
            args.cpus,
            args.memory_mb,
            args.host or "",
            args.guest_os or "",
            args.datastore or "",
            disk_mb(args.disk_gb),
            args.guest_iops,
            nics=[kpb.VmNic(port_group=pg) for pg in args.nic or ()],
        )
        task = await client.wait(task)
        host = (await client.vm(args.name)).host if task.state == SUCCESS else ""
    show_task(ctx, task, f"Created {args.name} on {host}")


def disk_mb(gb: float | None) -> int:
    """--disk-gb (decimals allowed) in whole MB."""
    if gb is None:
        return 0
    most = MAX_DISK_MB // 1024
    if not 0 < gb <= most:  # NaN too
        raise InvalidArgument(f"--disk-gb must be more than 0 and at most {most} GB, got {gb:g}")
    return max(1, round(gb * 1024))


async def cmd_vm_clone(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        task = await client.wait(await client.linked_clone(args.source, args.name, args.host or ""))
        host = (await client.vm(args.name)).host if task.state == SUCCESS else ""
    show_task(ctx, task, f"Created {args.name} on {host}, a linked clone of {args.source}")


async def cmd_vm_verify_disk(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        report = await client.verify_disk(args.name, args.acked)
    text = (
        f"{report.disk} (read on {report.host}): {report.written} of {report.blocks} blocks "
        f"written, newest write {report.highest_seq}; {report.corrupt} corrupt, "
        f"{report.missing} missing of the writes up to {report.acked_seq}"
    )
    ctx.show(report, text)
    if report.corrupt or report.missing:
        raise SystemExit(1)


async def cmd_vm_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        vms = await client.vms(args.host or "")
    ctx.show(vms, output.table([output.to_dict(v) for v in vms], VM_COLUMNS))


async def cmd_vm_show(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        vm = await client.vm(args.name)
    ctx.show(vm, output.vm_text(vm))


def vm_action(method: str, done: str) -> Handler:
    async def run(args: argparse.Namespace, ctx: Context) -> None:
        async with await ctx.client() as client:
            task = await client.wait(await getattr(client, method)(args.name))
        show_task(ctx, task, f"{args.name} {done}")

    return run


DATASTORE_COLUMNS = [
    "name", "type", "capacity_gb", "free_gb", "lock_mode", "backing", "sioc_threshold_ms", "mounts"
]  # fmt: skip


async def cmd_datastore_list(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        datastores = await client.datastores()
    rows = []
    for d in datastores:
        row = output.to_dict(d)
        row["capacity_gb"] = f"{d.capacity_bytes / 1024**3:.1f}"
        row["free_gb"] = f"{d.free_bytes / 1024**3:.1f}"
        row["backing"] = f"lun {d.lun}" if d.type == "vmfs" else f"export {d.export}"
        row["mounts"] = ", ".join(
            m.host + ("" if m.accessible else " (inaccessible)") for m in d.mounts
        )
        rows.append(row)
    ctx.show(datastores, output.table(rows, DATASTORE_COLUMNS))


async def cmd_datastore_sioc(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        datastore = await client.configure_storage_io_control(args.name, args.threshold_ms)
    ctx.show(
        datastore, f"{datastore.name}: congestion threshold {datastore.sioc_threshold_ms:g} ms"
    )


async def cmd_datastore_create(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        if args.type == "vmfs":
            if args.lun is None:
                raise InvalidArgument("a VMFS datastore needs --lun")
            task = await client.create_vmfs_datastore(args.name, args.lun, args.lock_mode)
        else:
            if not args.export:
                raise InvalidArgument("an NFS datastore needs --export")
            task = await client.create_nas_datastore(args.name, args.export)
        task = await client.wait(task)
    show_task(ctx, task, f"Created datastore {args.name}")


def datastore_path(text: str) -> tuple[str, str]:
    """'[datastore] dir/file' (vSphere's datastore path) -> (datastore, dir/file)."""
    if not text.startswith("[") or "]" not in text:
        raise InvalidArgument(f"{text[:80]!r} is not a datastore path like '[vmfs-01] vm/vm.vmdk'")
    datastore, _, path = text[1:].partition("]")
    return datastore.strip(), path.strip()


def lock_text(info) -> str:
    lines = [f"[{info.datastore}] {info.path}: {info.mode.lower()} (seen from {info.observed_by})"]
    for h in info.holders:
        freshness = (
            "holder gone (heartbeat slot cleared)"
            if h.seconds_since_heartbeat_change < 0
            else f"heartbeat unchanged for {h.seconds_since_heartbeat_change:.0f} s"
        )
        who = h.host or h.host_uuid
        slot = f", slot {h.heartbeat_slot}" if h.heartbeat_slot >= 0 else ""
        lines.append(f"  {who}{slot}: {'live' if h.live else 'stale'}, {freshness}")
    return "\n".join(lines)


async def cmd_lock_show(args: argparse.Namespace, ctx: Context) -> None:
    datastore, path = datastore_path(args.path)
    async with await ctx.client() as client:
        info = await client.lock_owner(datastore, path)
    ctx.show(info, lock_text(info))


async def cmd_lock_break(args: argparse.Namespace, ctx: Context) -> None:
    datastore, path = datastore_path(args.path)
    async with await ctx.client() as client:
        info = await client.break_stale_lock(datastore, path)
    if info.broken:
        text = "Broke " + lock_text(info)
    elif info.mode == "FREE":
        text = f"{args.path} is not locked"
    else:
        text = "Already broken or released: " + lock_text(info)
    ctx.show(info, text)


async def cmd_tasks(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        tasks = await client.tasks(args.limit)
    rows = [task_row(t) for t in tasks]
    ctx.show(tasks, output.table(rows, TASK_COLUMNS))


EVENT_PAGE_MAX = 10_000
"""The most events one ListEvents call returns (`vsim events --all` pages through)."""


async def cmd_events(args: argparse.Namespace, ctx: Context) -> None:
    async with await ctx.client() as client:
        if args.follow:
            await follow_events(args, ctx, client)
            return
        page = await event_listing(args, client)
    if not page.events:
        text = "No events" + (f" after key {args.after}" if args.after else "")
    else:
        text = "\n".join([*older_note(page), output.events_table(page.events), *newer_note(page)])
    ctx.show(page, text)


async def event_listing(args: argparse.Namespace, client: VCenterClient) -> Any:
    """The events asked for: the newest --limit (default), --limit from --after on,
    or --all (from --after on) in pages."""
    if not args.all:
        if args.after is None:
            return await client.event_page(0, args.limit, newest=True)
        return await client.event_page(args.after, args.limit)
    page = await client.event_page(args.after or 0, EVENT_PAGE_MAX)
    events = list(page.events)
    while page.newer:
        page = await client.event_page(events[-1].key, EVENT_PAGE_MAX)
        events.extend(page.events)
    page.ClearField("events")
    page.events.extend(events)
    page.older = page.newer = 0
    return page


def older_note(page: Any) -> list[str]:
    if not page.older:
        return []
    return [f"({page.older} older events not shown: --limit N shows more, --all every one)"]


def newer_note(page: Any) -> list[str]:
    if not page.newer:
        return []
    last = page.events[-1].key
    return [f"({page.newer} newer events: `vsim events --after {last}` shows the next ones)"]


async def follow_events(args: argparse.Namespace, ctx: Context, client: VCenterClient) -> None:
    """The newest --limit events (or those after --after, or --all), then each new
    one as it happens: a line each, or with -o json one JSON document per line."""
    start = 0 if args.all else args.after
    if not ctx.json:
        print(output.event_header(), flush=True)
    if start is None:
        page = await client.event_page(0, args.limit, newest=True)
        if page.older and not ctx.json:
            print(*older_note(page), flush=True)
        for event in page.events:
            print(output.json_line(event) if ctx.json else output.event_line(event), flush=True)
        start = page.events[-1].key if page.events else 0
    last = start
    try:
        async for event in client.watch_events(start):
            print(output.json_line(event) if ctx.json else output.event_line(event), flush=True)
            last = event.key
    except HostConnectFault:
        pass
    # The stream only ends when the server does.
    raise HostConnectFault(
        f"vCenter went away: {ctx.server} ended the event stream (stopped or unreachable); "
        f"once it is back, `vsim events --follow --after {last}` carries on"
    )


def task_row(task: common_pb2.Task) -> dict[str, Any]:
    row = output.to_dict(task)
    row["error"] = f"{task.error.name}: {task.error.message}" if task.error.name else ""
    row["queued"] = output.when(task.queue_time)
    row["completed"] = output.when(task.complete_time)
    return row


def show_task(ctx: Context, task: common_pb2.Task, success: str) -> None:
    if task.state == common_pb2.TASK_STATE_ERROR:
        raise fault_from_proto(task.error)
    ctx.show(task, success)


def normalize(thumbprint: str) -> str:
    try:
        from vsim.tls import normalize_thumbprint

        return normalize_thumbprint(thumbprint)
    except ValueError as e:
        raise InvalidArgument(str(e)) from None


# up / down


def up_options(args: argparse.Namespace, ctx: Context) -> up.UpOptions:
    from vsim.cluster import up

    data_dir = Path(args.data_dir).expanduser().resolve() if args.data_dir else ctx.config.data_dir
    bind = "127.0.0.1" if args.bind == "localhost" else args.bind
    return up.UpOptions(args.hosts, args.port, data_dir, bind, args.clock_speed)


def up_text(info: dict) -> str:
    return output.fields(
        {
            "vCenter": info["endpoint"],
            "thumbprint": info["thumbprint"],
            "user": info["user"],
            "password": info["password"],
            "hosts": ", ".join(info["hosts"]),
            "datastores": ", ".join(info["datastores"]),
            "array": info["array"],
            "data dir": info["data_dir"],
        }
    )


def cmd_up(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.cluster import up

    validate.positive_number(args.clock_speed, "--clock-speed")
    validate.port(args.port)
    options = up_options(args, ctx)
    if args.ready_file is None:
        pid = up.running_pid(ctx.config)
        if pid is not None:
            raise InvalidArgument(
                f"a cluster is already running (pid {pid}); run `vsim down` first"
            )
    if args.detach:
        argv = ["up", "--hosts", str(args.hosts), "--port", str(args.port), "--bind",
                args.bind, "--clock-speed", str(args.clock_speed),
                "--data-dir", str(options.data_dir)]  # fmt: skip
        info = up.detach(argv, options, ctx.config)
        ctx.show(info, up_text(info) + f"\nlog:        {info['log']}\nStop it with `vsim down`.")
        return

    def ready(info: dict) -> None:
        if args.ready_file:
            up.write_ready(Path(args.ready_file), info)
        else:
            ctx.show(info, up_text(info) + "\nServing; press Ctrl-C to stop.")

    asyncio.run(up.serve(options, ctx.config, ready))


async def cmd_array_serve(args: argparse.Namespace, ctx: Context) -> None:
    """Serves the storage array in the foreground until SIGINT/SIGTERM."""
    from vsim.cluster.array_setup import prepare_array
    from vsim.spec import ClusterSpec
    from vsim.storage.server import start_array

    validate.port(args.port)
    data_dir = Path(args.data_dir).expanduser().resolve()
    running = await start_array(data_dir, args.port, args.bind)
    if args.prepare_hosts:
        # The storage admin's part of a cluster of that many hosts (docker-compose):
        # LUNs and exports by name, and what vCenter needs to know of them.
        spec = prepare_array(running.array, ClusterSpec.default(args.prepare_hosts))
        luns = {d.name: d.lun for d in spec.datastores if d.type == "vmfs"}
        if args.info_file:
            info_file = Path(args.info_file)
            info_file.parent.mkdir(parents=True, exist_ok=True)
            info_file.write_text(
                json.dumps({"thumbprint": running.identity.thumbprint, "luns": luns})
            )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        info = {
            "endpoint": running.endpoint,
            "thumbprint": running.identity.thumbprint,
            "luns": len(running.array.luns),
            "exports": sorted(running.array.exports),
            "data_dir": str(data_dir),
        }
        ctx.show(info, output.fields(info) + "\nServing; press Ctrl-C to stop.")
        await stop.wait()
    finally:
        await running.stop()


async def cmd_vcenter_serve(args: argparse.Namespace, ctx: Context) -> None:
    """vCenter alone, joining a running Ray cluster and an array (docker-compose)."""
    from vsim.cluster.services import serve_vcenter

    validate.port(args.port)
    await serve_vcenter(
        Path(args.data_dir),
        args.port,
        args.bind,
        args.hosts,
        args.ray_address,
        args.array,
        Path(args.array_info),
        args.clock_speed,
    )


def cmd_down(args: argparse.Namespace, ctx: Context) -> None:
    from vsim.cluster import up

    result = up.down(ctx.config, args.timeout)
    if not result["stopped"]:
        text = result["reason"]
    elif result["graceful"]:
        powered_off = len(result["vms_powered_off"])
        text = (
            f"Stopped the cluster (pid {result['pid']}): {powered_off} running VMs powered "
            "off, to be powered on again by the next `vsim up`"
        )
    else:
        text = f"Stopped the cluster (pid {result['pid']}), not cleanly: {result['reason']}"
    ctx.show(result, text)


# parsing


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    def options(suppress: bool) -> argparse.ArgumentParser:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument(
            "--server",
            default=argparse.SUPPRESS if suppress else None,
            help="vCenter endpoint HOST:PORT (default: from config)",
        )
        common.add_argument(
            "-o",
            "--output",
            choices=["table", "json"],
            default=argparse.SUPPRESS if suppress else "table",
        )
        return common

    parser = argparse.ArgumentParser(
        prog="vsim",
        description="Run and drive a simulated vSphere cluster.",
        parents=[options(suppress=False)],
    )
    # A subcommand's copy of the options sets them only when given there, so
    # `vsim -o json vm list` and `vsim vm list -o json` both mean JSON.
    common = options(suppress=True)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(parent, name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = command(commands, "up", cmd_up, "start a local cluster (Ray, vCenter, ESXi hosts)")
    p.add_argument("--hosts", type=positive_int, default=3, help="ESXi hosts (default 3)")
    p.add_argument("--port", type=positive_int, default=50051, help="vCenter port (default 50051)")
    p.add_argument("--bind", default="127.0.0.1", help="vCenter listen address")
    p.add_argument("--data-dir", help="where the cluster keeps its state (default ~/.vsim/data)")
    p.add_argument("--clock-speed", type=float, default=1.0, help="simulated seconds per second")
    p.add_argument("--detach", action="store_true", help="return once the cluster is ready")
    p.add_argument("--ready-file", help=argparse.SUPPRESS)
    p = command(commands, "down", cmd_down, "stop the cluster `vsim up` started")
    p.add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT, help=f"seconds (default {STOP_TIMEOUT:g})"
    )

    array = command(commands, "array", None, "the storage array").add_subparsers(
        dest="sub", required=True
    )
    p = command(array, "serve", cmd_array_serve, "serve a storage array (LUNs, NFS exports)")
    p.add_argument("--data-dir", required=True, help="where its LUNs, exports and config live")
    p.add_argument("--port", type=positive_int, default=50052)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument(
        "--prepare-hosts", type=positive_int, help="make the default cluster's LUNs and exports"
    )
    p.add_argument("--info-file", help="with --prepare-hosts: write thumbprint and LUNs here")
    cli_storage.add_array_commands(array, command)
    vcenter = command(commands, "vcenter", None, "vCenter as a service of its own").add_subparsers(
        dest="vcenter_command", required=True
    )
    p = command(vcenter, "serve", cmd_vcenter_serve, "join a Ray cluster and an array (compose)")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--port", type=positive_int, default=50051)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--hosts", type=positive_int, default=4)
    p.add_argument("--ray-address", default="auto")
    p.add_argument("--array", required=True, help="the array's HOST:PORT as the hosts reach it")
    p.add_argument("--array-info", required=True, help="the file the array's --info-file wrote")
    p.add_argument("--clock-speed", type=float, default=1.0)

    p = command(commands, "login", cmd_login, "log in to vCenter and pin its certificate")
    p.add_argument("--user", help=f"default: {ADMINISTRATOR}")
    p.add_argument("--password", help="default: $VSIM_PASSWORD, else asked")
    p.add_argument(
        "--accept-new-thumbprint",
        action="store_true",
        help="trust the certificate the server presents now, replacing the pinned one",
    )
    command(commands, "logout", cmd_logout, "end the session")
    command(commands, "status", cmd_status, "show the vCenter and cluster summary")

    hosts = command(commands, "host", None, "ESXi hosts").add_subparsers(dest="sub", required=True)
    command(hosts, "list", cmd_host_list, "list hosts")
    p = command(hosts, "add", cmd_host_add, "add (and provision) a host")
    p.add_argument("name")
    p.add_argument("--thumbprint", help="the SHA-256 thumbprint you expect the host to present")
    p.add_argument(
        "--accept-thumbprint",
        action="store_true",
        help="trust whatever certificate the host presents (asked on a terminal otherwise)",
    )
    p.add_argument("--cpu-cores", type=positive_int)
    p.add_argument("--cpu-mhz", type=positive_int)
    p.add_argument("--memory-mb", type=positive_int)
    p = command(hosts, "remove", cmd_host_remove, "remove a host and its VMs from the inventory")
    p.add_argument("name")
    cli_kernel.add_host_commands(hosts, command)

    vms = command(commands, "vm", None, "virtual machines").add_subparsers(
        dest="sub", required=True
    )
    p = command(vms, "create", cmd_vm_create, "create a VM")
    p.add_argument("name")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--memory-mb", type=int, default=1024)
    p.add_argument("--host", help="default: the connected host with most free memory")
    p.add_argument("--guest-os", help="default: otherGuest64")
    p.add_argument("--datastore", help="where the VM's folder, .vmx and disk go")
    p.add_argument("--disk-gb", type=float, help="a thin disk of this size (needs --datastore)")
    p.add_argument(
        "--guest-iops", type=int, default=0, help="simulated guest disk writes per second"
    )
    p.add_argument(
        "--nic", action="append", metavar="PORTGROUP", help="a network adapter (repeatable)"
    )
    p = command(vms, "clone", cmd_vm_clone, "make a linked clone of a powered-off VM")
    p.add_argument("source")
    p.add_argument("name")
    p.add_argument("--host", help="default: the connected host with most free memory")
    p = command(vms, "verify-disk", cmd_vm_verify_disk, "check the guest's writes on the VM's disk")
    p.add_argument("name")
    p.add_argument(
        "--acked", type=int, default=0, help="every write up to this sequence number must be there"
    )
    p = command(vms, "list", cmd_vm_list, "list VMs")
    p.add_argument("--host")
    for name, method, done, help_ in (
        ("power-on", "power_on", "powered on", "power a VM on"),
        ("power-off", "power_off", "powered off", "power a VM off"),
        ("destroy", "destroy_vm", "destroyed", "delete a powered-off VM"),
    ):
        command(vms, name, vm_action(method, done), help_).add_argument("name")
    cli_kernel.add_vm_commands(vms, command)
    p = command(vms, "show", cmd_vm_show, "one VM, with its guest's acknowledged disk writes")
    p.add_argument("name")
    cli_kernel.add_network_commands(commands, command)

    datastores = command(commands, "datastore", None, "datastores").add_subparsers(
        dest="sub", required=True
    )
    command(datastores, "list", cmd_datastore_list, "list datastores and their mounts")
    p = command(datastores, "create", cmd_datastore_create, "create a VMFS or NFS datastore")
    p.add_argument("name")
    p.add_argument("--type", choices=["vmfs", "nfs"], required=True)
    p.add_argument("--lun", type=positive_int, help="VMFS: the array LUN to format")
    p.add_argument("--lock-mode", choices=["ats+scsi", "ats-only"], default="ats+scsi")
    p.add_argument("--export", help="NFS: the array export to mount")
    p = command(datastores, "sioc", cmd_datastore_sioc, "Storage I/O Control's threshold")
    p.add_argument("name")
    p.add_argument(
        "--threshold-ms", type=float, required=True, help="congestion threshold, 5-100 ms"
    )
    cli_storage.add_datastore_commands(datastores, command)

    locks = command(commands, "lock", None, "on-disk file locks").add_subparsers(
        dest="sub", required=True
    )
    p = command(locks, "show", cmd_lock_show, "who holds a file's lock, and how fresh it is")
    p.add_argument("path", help="a datastore path: '[vmfs-01] vm-001/vm-001-flat.vmdk'")
    p = command(locks, "break", cmd_lock_break, "break a stale lock (refused while it is live)")
    p.add_argument("path", help="a datastore path: '[vmfs-01] vm-001/vm-001-flat.vmdk'")

    p = command(commands, "tasks", cmd_tasks, "list recent tasks")
    p.add_argument("--limit", type=positive_int, default=20)
    p = command(commands, "events", cmd_events, "list the newest events (or follow them)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument(
        "--after", type=positive_int, help="the events after this key, oldest first (paging on)"
    )
    p.add_argument("--limit", type=positive_int, default=100, help="how many to show (default 100)")
    p.add_argument("--all", action="store_true", help="every event (after --after, if given)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.handler(args, Context(args))
        if asyncio.iscoroutine(result):
            asyncio.run(result)
        return 0
    except VimFault as fault:
        report(args, fault)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:  # a config file or option that does not parse
        report(args, InvalidArgument(str(exc)))
    except (OSError, RuntimeError) as exc:
        report(args, SystemError_(str(exc)))
    return 1


def report(args: argparse.Namespace, fault: VimFault) -> None:
    if args.output == "json":
        output.emit_json({"error": output.to_dict(fault.to_proto())})
    print(f"Error: {fault.name}: {fault.message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
