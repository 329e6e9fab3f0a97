"""An inventory of schema 2 (before VMs had disks) is brought to schema 3 in place."""

from __future__ import annotations

import sqlite3

import pytest

from vsim.vcenter.inventory import SCHEMA, SCHEMA_VERSION, Inventory


def schema_2(path) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA)
    db.execute("ALTER TABLE vms DROP COLUMN storage")
    db.execute(
        "INSERT INTO vms VALUES ('vm-001', 'u-1', 'esxi-01', 2, 512, 'otherGuest64', 1)"
    )  # foreign keys are off here: the host row is not needed for this check
    db.execute("PRAGMA user_version=2")
    db.close()


def test_schema_2_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "inventory.db"
    schema_2(path)
    inventory = Inventory(path)
    try:
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        columns = [row[1] for row in db.execute("PRAGMA table_info(vms)")]
        assert columns[-1] == "storage"
        db.close()
        vm = inventory.vm("vm-001")
        assert (vm.host, vm.cpus, vm.memory_mb, vm.datastore, list(vm.disks)) == (
            "esxi-01", 2, 512, "", []
        )  # fmt: skip
    finally:
        inventory.close()
    Inventory(path).close()  # opening again is a no-op


def test_an_unknown_schema_is_refused(tmp_path):
    path = tmp_path / "inventory.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE x (a)")
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="schema 99"):
        Inventory(path)
