"""vCenter's inventory in SQLite (WAL): the one source of truth that survives a restart.

Tables: meta (instance settings), machines, hosts, vms, vm_nics (each VM's network
adapters, MACs unique in the inventory), physical_ports (the physical switch's port
settings), datastores, tasks, events, accounts, sessions.
Rows go in and out as the API's protobuf messages or small dataclasses; no other
module writes SQL. Secrets are stored only hashed (passwords, session tokens) or
encrypted (vpxuser and root passwords, by the caller).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vsim.faults import NotFound
from vsim.v1 import common_pb2, kernel_pb2, vcenter_pb2

_ON = vcenter_pb2.POWER_STATE_POWERED_ON

_KERNEL_TABLES = """
CREATE TABLE vm_nics (
    vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    mac TEXT NOT NULL UNIQUE,  -- one adapter per MAC in the whole inventory
    body BLOB NOT NULL,        -- the serialized vsim.v1.VmNic, firewall rules included
    PRIMARY KEY (vm, name)
);
CREATE TABLE physical_ports (
    host TEXT NOT NULL REFERENCES hosts(name),
    uplink TEXT NOT NULL,
    body BLOB NOT NULL,        -- the serialized vsim.v1.PhysicalPort
    PRIMARY KEY (host, uplink)
);
"""
"""Schema 4: the VMkernel's configuration that vCenter keeps."""

_SESSIONS_INDEX = "CREATE INDEX sessions_by_last_active ON sessions(last_active);"
"""Schema 6: sessions' last activity (the idle timeout), swept oldest first."""

SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE machines (
    name TEXT PRIMARY KEY,
    spec_json TEXT NOT NULL,
    root_password_enc BLOB NOT NULL
);
CREATE TABLE hosts (
    name TEXT PRIMARY KEY REFERENCES machines(name),
    vpx_password_enc BLOB NOT NULL,
    endpoint TEXT NOT NULL DEFAULT '',
    thumbprint TEXT NOT NULL DEFAULT '',
    connection_state INTEGER NOT NULL,
    -- Kept by the triggers below, so reading a host's use costs O(1), not O(VMs).
    vms INTEGER NOT NULL DEFAULT 0,
    vms_powered_on INTEGER NOT NULL DEFAULT 0,
    memory_used_mb INTEGER NOT NULL DEFAULT 0,
    vpx_password_set REAL NOT NULL DEFAULT 0,
    -- A new vpxuser password being set on the host (rotation), until a login settles it.
    vpx_password_next_enc BLOB,
    in_maintenance INTEGER NOT NULL DEFAULT 0
);
-- vms.storage: a serialized vsim.v1.Vm holding only datastore, disks and guest_write_iops;
-- vms.config: one holding only resources, pci_devices and cpu_features (NICs: vm_nics).
-- (No comments among the columns: SQLite's DROP COLUMN rewrites that text.)
CREATE TABLE vms (
    name TEXT PRIMARY KEY,
    uuid TEXT NOT NULL,
    host TEXT NOT NULL REFERENCES hosts(name),
    cpus INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    guest_os TEXT NOT NULL,
    power_state INTEGER NOT NULL,
    storage BLOB NOT NULL DEFAULT x'',
    config BLOB NOT NULL DEFAULT x''
);
CREATE INDEX vms_by_host ON vms(host);
CREATE TRIGGER vm_added AFTER INSERT ON vms BEGIN
    UPDATE hosts SET vms = vms + 1,
        vms_powered_on = vms_powered_on + (NEW.power_state = {_ON}),
        memory_used_mb = memory_used_mb + (NEW.power_state = {_ON}) * NEW.memory_mb
    WHERE name = NEW.host;
END;
CREATE TRIGGER vm_removed AFTER DELETE ON vms BEGIN
    UPDATE hosts SET vms = vms - 1,
        vms_powered_on = vms_powered_on - (OLD.power_state = {_ON}),
        memory_used_mb = memory_used_mb - (OLD.power_state = {_ON}) * OLD.memory_mb
    WHERE name = OLD.host;
END;
CREATE TRIGGER vm_changed AFTER UPDATE OF host, memory_mb, power_state ON vms
BEGIN
    UPDATE hosts SET vms = vms - 1,
        vms_powered_on = vms_powered_on - (OLD.power_state = {_ON}),
        memory_used_mb = memory_used_mb - (OLD.power_state = {_ON}) * OLD.memory_mb
    WHERE name = OLD.host;
    UPDATE hosts SET vms = vms + 1,
        vms_powered_on = vms_powered_on + (NEW.power_state = {_ON}),
        memory_used_mb = memory_used_mb + (NEW.power_state = {_ON}) * NEW.memory_mb
    WHERE name = NEW.host;
END;
{_KERNEL_TABLES}
CREATE TABLE datastores (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    lun INTEGER NOT NULL DEFAULT -1,
    export TEXT NOT NULL DEFAULT '',
    lock_mode TEXT NOT NULL DEFAULT '',
    uuid TEXT NOT NULL DEFAULT '',
    sioc_threshold_ms REAL NOT NULL DEFAULT 30
);
CREATE TABLE tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL,
    finished INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX unfinished_tasks ON tasks(finished);
CREATE TABLE events (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    body BLOB NOT NULL
);
CREATE TABLE accounts (
    user_name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL
);
CREATE TABLE sessions (
    token_digest TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES accounts(user_name),
    created REAL NOT NULL,
    last_active REAL NOT NULL DEFAULT 0
);
{_SESSIONS_INDEX}
"""


SCHEMA_VERSION = 7
MIGRATIONS = {
    2: "ALTER TABLE vms ADD COLUMN storage BLOB NOT NULL DEFAULT x''",
    3: "ALTER TABLE vms ADD COLUMN config BLOB NOT NULL DEFAULT x''; " + _KERNEL_TABLES,
    4: "ALTER TABLE datastores ADD COLUMN sioc_threshold_ms REAL NOT NULL DEFAULT 30",
    # A session from before counts as last used when it was made.
    5: "ALTER TABLE sessions ADD COLUMN last_active REAL NOT NULL DEFAULT 0; "
    "UPDATE sessions SET last_active = created; " + _SESSIONS_INDEX,
    6: "ALTER TABLE hosts ADD COLUMN in_maintenance INTEGER NOT NULL DEFAULT 0",
}
"""Schema version -> the SQL that brings it to the next version."""


@dataclass(frozen=True)
class MachineRecord:
    """Hardware vCenter provisioned through the engine: what it needs to boot it again."""

    name: str
    spec_json: str
    """The HostSpec without its root password."""
    root_password_enc: bytes


@dataclass(frozen=True)
class HostRecord:
    """A host in the inventory (connected to this vCenter)."""

    name: str
    vpx_password_enc: bytes
    endpoint: str
    thumbprint: str
    connection_state: int
    vms: int = 0
    vms_powered_on: int = 0
    memory_used_mb: int = 0
    """Configured memory of its powered-on VMs."""
    vpx_password_set: float = 0.0
    """When (simulated clock) vpxuser's password was last set on the host."""
    vpx_password_next_enc: bytes | None = None
    """A rotation's new password, until a login shows whether the host took it."""
    in_maintenance: bool = False
    """Maintenance mode, as the host last reported it (the host is the truth)."""


@dataclass(frozen=True)
class DatastoreRecord:
    name: str
    type: str
    """"vmfs" or "nfs"."""
    lun: int = -1
    export: str = ""
    lock_mode: str = ""
    uuid: str = ""
    sioc_threshold_ms: float = 30.0
    """Storage I/O Control's congestion threshold, pushed to every host mounting it."""


HOST_COLUMNS = ", ".join(HostRecord.__dataclass_fields__)


class Inventory:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash; only power loss can
        # take the last transactions (vCenter's own database makes the same trade).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._create_or_check_schema()

    def _create_or_check_schema(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        (tables,) = self._db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        if version == 0 and tables == 0:
            self._db.executescript(SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return
        while version in MIGRATIONS:
            # One transaction a step: the change and the new version land together.
            self._db.executescript(
                f"BEGIN; {MIGRATIONS[version]}; PRAGMA user_version={version + 1}; COMMIT;"
            )
            version += 1
        if version != SCHEMA_VERSION:
            self._db.close()
            raise RuntimeError(
                f"{self.path} holds inventory schema {version}; this vsim reads schema "
                f"{SCHEMA_VERSION}. Start with another --data-dir (or remove this one)."
            )

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Groups writes: all of them land, or none. Nested use joins the outer one."""
        if self._db.in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # meta

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # machines

    def add_machine(self, machine: MachineRecord) -> None:
        self._db.execute(
            "INSERT INTO machines VALUES (?, ?, ?)",
            (machine.name, machine.spec_json, machine.root_password_enc),
        )

    def machine(self, name: str) -> MachineRecord | None:
        row = self._db.execute("SELECT * FROM machines WHERE name=?", (name,)).fetchone()
        return MachineRecord(*row) if row else None

    def remove_machine(self, name: str) -> None:
        """Forgets a machine that is not a host in the inventory."""
        self._db.execute(
            "DELETE FROM machines WHERE name=? AND name NOT IN (SELECT name FROM hosts)", (name,)
        )

    # hosts

    def add_host(self, host: HostRecord) -> None:
        self._db.execute(
            "INSERT INTO hosts (name, vpx_password_enc, endpoint, thumbprint, connection_state,"
            " vpx_password_set) VALUES (?, ?, ?, ?, ?, ?)",
            (
                host.name,
                host.vpx_password_enc,
                host.endpoint,
                host.thumbprint,
                host.connection_state,
                host.vpx_password_set,
            ),
        )

    def host(self, name: str) -> HostRecord | None:
        row = self._db.execute(f"SELECT {HOST_COLUMNS} FROM hosts WHERE name=?", (name,))
        row = row.fetchone()
        return HostRecord(*row) if row else None

    def hosts(self) -> list[HostRecord]:
        rows = self._db.execute(f"SELECT {HOST_COLUMNS} FROM hosts ORDER BY name")
        return [HostRecord(*r) for r in rows]

    def update_host(self, name: str, **fields: object) -> None:
        columns = ", ".join(f"{column}=?" for column in fields)
        self._db.execute(f"UPDATE hosts SET {columns} WHERE name=?", (*fields.values(), name))

    def remove_host(self, name: str) -> None:
        """Removes the host, its VMs (with their NICs), its physical switch ports and
        its machine record in one transaction."""
        with self.transaction():
            self._db.execute("DELETE FROM vms WHERE host=?", (name,))
            self._db.execute("DELETE FROM physical_ports WHERE host=?", (name,))
            self._db.execute("DELETE FROM hosts WHERE name=?", (name,))
            self._db.execute("DELETE FROM machines WHERE name=?", (name,))

    # VMs

    def add_vm(self, vm: vcenter_pb2.Vm) -> None:
        """Adds the VM with its NICs; sqlite3.IntegrityError if a MAC is taken."""
        with self.transaction():
            self._db.execute(
                f"INSERT INTO vms ({self._VM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    vm.name,
                    vm.host,
                    vm.cpus,
                    vm.memory_mb,
                    vm.power_state,
                    vm.uuid,
                    vm.guest_os,
                    _storage(vm),
                    _config(vm),
                ),
            )
            self._add_nics(vm)

    def _add_nics(self, vm: vcenter_pb2.Vm) -> None:
        self._db.executemany(
            "INSERT INTO vm_nics (vm, name, mac, body) VALUES (?, ?, ?, ?)",
            [(vm.name, nic.name, nic.mac, nic.SerializeToString()) for nic in vm.nics],
        )

    def set_vm_disks(self, name: str, disks: list[common_pb2.VirtualDisk]) -> None:
        vm = self.vm(name)
        if vm is None:
            raise KeyError(name)
        del vm.disks[:]
        vm.disks.extend(disks)
        self._db.execute("UPDATE vms SET storage=? WHERE name=?", (_storage(vm), name))

    def set_vm_config(self, vm: vcenter_pb2.Vm) -> None:
        """Replaces the VM's resources, NICs and DirectPath devices with vm's;
        sqlite3.IntegrityError if a MAC is another VM's."""
        with self.transaction():
            updated = self._db.execute(
                "UPDATE vms SET config=? WHERE name=?", (_config(vm), vm.name)
            ).rowcount
            if not updated:
                raise KeyError(vm.name)
            self._db.execute("DELETE FROM vm_nics WHERE vm=?", (vm.name,))
            self._add_nics(vm)

    def nic_owner(self, mac: str) -> tuple[str, str] | None:
        """(VM, NIC name) of the adapter with this MAC, if any."""
        return self._db.execute("SELECT vm, name FROM vm_nics WHERE mac=?", (mac,)).fetchone()

    _VM_COLUMNS = "name, host, cpus, memory_mb, power_state, uuid, guest_os, storage, config"

    def vm(self, name: str) -> vcenter_pb2.Vm | None:
        row = self._db.execute(
            f"SELECT {self._VM_COLUMNS} FROM vms WHERE name=?", (name,)
        ).fetchone()
        if row is None:
            return None
        nics = self._db.execute("SELECT body FROM vm_nics WHERE vm=? ORDER BY name", (name,))
        return _vm(row, [b for (b,) in nics])

    def require_vm(self, name: str) -> vcenter_pb2.Vm:
        """The VM, or NotFound naming it."""
        vm = self.vm(name)
        if vm is None:
            raise NotFound(f"no VM named {name[:80]!r} in the inventory")
        return vm

    def vms(self, host: str | None = None) -> list[vcenter_pb2.Vm]:
        query = f"SELECT {self._VM_COLUMNS} FROM vms"
        nic_query = "SELECT n.vm, n.body FROM vm_nics n"
        if host:
            rows = self._db.execute(query + " WHERE host=? ORDER BY name", (host,))
            nic_rows = self._db.execute(
                nic_query + " JOIN vms v ON v.name = n.vm WHERE v.host=? ORDER BY n.vm, n.name",
                (host,),
            )
        else:
            rows = self._db.execute(query + " ORDER BY name")
            nic_rows = self._db.execute(nic_query + " ORDER BY n.vm, n.name")
        rows = rows.fetchall()
        nics: dict[str, list[bytes]] = {}
        for vm, body in nic_rows:
            nics.setdefault(vm, []).append(body)
        return [_vm(r, nics.get(r[0], [])) for r in rows]

    def set_vm_host(self, name: str, host: str) -> None:
        """The VM now runs (or is registered) on another host; the hosts' counts
        follow (the vm_changed trigger)."""
        self._db.execute("UPDATE vms SET host=? WHERE name=?", (host, name))

    def set_power_state(self, name: str, power_state: int) -> None:
        self._db.execute("UPDATE vms SET power_state=? WHERE name=?", (power_state, name))

    def remove_vm(self, name: str) -> None:
        self._db.execute("DELETE FROM vms WHERE name=?", (name,))

    def counts(self) -> tuple[int, int]:
        """(VMs, powered-on VMs)."""
        n, n_on = self._db.execute(
            "SELECT COALESCE(SUM(vms), 0), COALESCE(SUM(vms_powered_on), 0) FROM hosts"
        ).fetchone()
        return n, n_on

    # the physical switch's ports: only those configured; the others keep the default

    def set_physical_port(self, port: kernel_pb2.PhysicalPort) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO physical_ports VALUES (?, ?, ?)",
            (port.host, port.uplink, port.SerializeToString()),
        )

    def physical_ports(self) -> list[kernel_pb2.PhysicalPort]:
        rows = self._db.execute("SELECT body FROM physical_ports ORDER BY host, uplink")
        return [kernel_pb2.PhysicalPort.FromString(body) for (body,) in rows]

    # datastores

    def add_datastore(self, record: DatastoreRecord) -> None:
        self._db.execute(
            "INSERT INTO datastores VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                record.name,
                record.type,
                record.lun,
                record.export,
                record.lock_mode,
                record.uuid,
                record.sioc_threshold_ms,
            ),
        )

    def remove_datastore(self, name: str) -> None:
        self._db.execute("DELETE FROM datastores WHERE name=?", (name,))

    def datastore(self, name: str) -> DatastoreRecord | None:
        row = self._db.execute("SELECT * FROM datastores WHERE name=?", (name,)).fetchone()
        return DatastoreRecord(*row) if row else None

    def set_sioc_threshold(self, name: str, threshold_ms: float) -> None:
        self._db.execute(
            "UPDATE datastores SET sioc_threshold_ms=? WHERE name=?", (threshold_ms, name)
        )

    def datastores(self) -> list[DatastoreRecord]:
        rows = self._db.execute("SELECT * FROM datastores ORDER BY name")
        return [DatastoreRecord(*r) for r in rows]

    # tasks: stored whole as the Task message; seq gives the id

    def add_task(self, task: common_pb2.Task) -> None:
        """Stores a new task and gives it its id."""
        with self.transaction():
            (seq,) = self._db.execute(
                "INSERT INTO tasks (body) VALUES (x'') RETURNING seq"
            ).fetchone()
            task.id = f"task-{seq}"
            self.save_task(task)

    def save_task(self, task: common_pb2.Task) -> None:
        finished = task.state in (common_pb2.TASK_STATE_SUCCESS, common_pb2.TASK_STATE_ERROR)
        self._db.execute(
            "UPDATE tasks SET body=?, finished=? WHERE seq=?",
            (task.SerializeToString(), int(finished), _task_seq(task.id)),
        )

    def task(self, task_id: str) -> common_pb2.Task | None:
        seq = _task_seq(task_id)
        if seq is None:
            return None
        row = self._db.execute("SELECT body FROM tasks WHERE seq=?", (seq,)).fetchone()
        return common_pb2.Task.FromString(row[0]) if row and row[0] else None

    def tasks(self, limit: int) -> list[common_pb2.Task]:
        rows = self._db.execute(
            "SELECT body FROM tasks WHERE length(body) > 0 ORDER BY seq DESC LIMIT ?", (limit,)
        )
        return [common_pb2.Task.FromString(r[0]) for r in rows]

    def unfinished_tasks(self) -> list[common_pb2.Task]:
        rows = self._db.execute("SELECT body FROM tasks WHERE finished=0 AND length(body) > 0")
        return [common_pb2.Task.FromString(r[0]) for r in rows]

    # events

    def add_event(self, event: common_pb2.Event) -> common_pb2.Event:
        (key,) = self._db.execute(
            "INSERT INTO events (body) VALUES (?) RETURNING key", (event.SerializeToString(),)
        ).fetchone()
        event.key = key
        return event

    def events_after(self, key: int, limit: int) -> list[common_pb2.Event]:
        rows = self._db.execute(
            "SELECT key, body FROM events WHERE key > ? ORDER BY key LIMIT ?", (key, limit)
        )
        return [_event(k, body) for k, body in rows]

    def newest_events(self, after: int, limit: int) -> list[common_pb2.Event]:
        """The newest `limit` events with a key above `after`, oldest first (read
        backwards on the key, so a long log is not scanned)."""
        rows = self._db.execute(
            "SELECT key, body FROM events WHERE key > ? ORDER BY key DESC LIMIT ?", (after, limit)
        ).fetchall()
        return [_event(k, body) for k, body in reversed(rows)]

    def count_events(self, after: int, before: int | None = None) -> int:
        """How many events have a key above `after` (and below `before`)."""
        (count,) = self._db.execute(
            "SELECT COUNT(*) FROM events WHERE key > ? AND key < ?",
            (after, 2**63 - 1 if before is None else before),
        ).fetchone()
        return count

    def last_event_key(self) -> int:
        (key,) = self._db.execute("SELECT COALESCE(MAX(key), 0) FROM events").fetchone()
        return key

    # accounts and sessions

    def account(self, user_name: str) -> tuple[str, str] | None:
        """(password hash, role) of an account."""
        return self._db.execute(
            "SELECT password_hash, role FROM accounts WHERE user_name=?", (user_name,)
        ).fetchone()

    def set_account(self, user_name: str, password_hash: str, role: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?)", (user_name, password_hash, role)
        )

    def add_session(self, token_digest: str, user_name: str, created: float) -> None:
        self._db.execute(
            "INSERT INTO sessions VALUES (?, ?, ?, ?)", (token_digest, user_name, created, created)
        )

    def session(self, token_digest: str) -> tuple[str, float] | None:
        """(user name, last active) of a session."""
        return self._db.execute(
            "SELECT user_name, last_active FROM sessions WHERE token_digest=?", (token_digest,)
        ).fetchone()

    def touch_session(self, token_digest: str, last_active: float) -> None:
        self._db.execute(
            "UPDATE sessions SET last_active=? WHERE token_digest=?", (last_active, token_digest)
        )

    def remove_session(self, token_digest: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE token_digest=?", (token_digest,))

    def remove_sessions_idle_since(self, before: float) -> int:
        """Drops the sessions last active before `before`; how many went."""
        return self._db.execute("DELETE FROM sessions WHERE last_active < ?", (before,)).rowcount


def _storage(vm: vcenter_pb2.Vm) -> bytes:
    return vcenter_pb2.Vm(
        datastore=vm.datastore, disks=vm.disks, guest_write_iops=vm.guest_write_iops
    ).SerializeToString()


def _config(vm: vcenter_pb2.Vm) -> bytes:
    config = vcenter_pb2.Vm(
        pci_devices=vm.pci_devices,
        cpu_features=vm.cpu_features,
        ha_restart_priority=vm.ha_restart_priority,
        ha_protected=vm.ha_protected,
    )
    if vm.HasField("resources"):
        config.resources.CopyFrom(vm.resources)
    return config.SerializeToString()


def _vm(row: tuple, nics: list[bytes]) -> vcenter_pb2.Vm:
    name, host, cpus, memory_mb, power_state, uuid, guest_os, storage, config = row
    vm = vcenter_pb2.Vm.FromString(storage)
    vm.MergeFromString(config)
    vm.MergeFrom(
        vcenter_pb2.Vm(
            name=name,
            host=host,
            cpus=cpus,
            memory_mb=memory_mb,
            power_state=power_state,
            uuid=uuid,
            guest_os=guest_os,
        )
    )
    vm.nics.extend(kernel_pb2.VmNic.FromString(body) for body in nics)
    return vm


def _task_seq(task_id: str) -> int | None:
    prefix, _, number = task_id.partition("-")
    if prefix != "task" or not number.isdigit() or len(number) > 18:
        return None
    return int(number)


def _event(key: int, body: bytes) -> common_pb2.Event:
    event = common_pb2.Event.FromString(body)
    event.key = key
    return event
