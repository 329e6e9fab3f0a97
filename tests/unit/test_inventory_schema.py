"""Schema migrations: an inventory of schema 2, 3 or 4 is brought to the current
one in place and keeps its rows; schema 4 added VMs' resources, NICs and DirectPath
devices and the physical switch's ports (one adapter per MAC), schema 5 each
datastore's Storage I/O Control threshold, schema 6 each session's last activity,
schema 7 each host's maintenance mode."""

from __future__ import annotations

import sqlite3

import pytest

from vsim.v1 import kernel_pb2 as kpb
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.inventory import SCHEMA, SCHEMA_VERSION, HostRecord, Inventory, MachineRecord

OLD_VM = "INSERT INTO vms VALUES ('vm-001', 'u-1', 'esxi-01', 2, 512, 'otherGuest64', 1{})"


def old_schema(path, version: int) -> None:
    """An inventory as vsim wrote it at `version` (3: VMs with storage; 2: without),
    with one host and one VM."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA)
    db.executescript(
        "DROP INDEX sessions_by_last_active; ALTER TABLE sessions DROP COLUMN last_active; "
        "ALTER TABLE hosts DROP COLUMN in_maintenance"
    )
    if version == 5:
        db.execute("INSERT INTO accounts VALUES ('administrator@vsphere.local', 'h', 'Admin')")
        db.execute("INSERT INTO sessions VALUES ('d1', 'administrator@vsphere.local', 1000.0)")
        db.execute("PRAGMA user_version=5")
        db.close()
        return
    db.execute("ALTER TABLE datastores DROP COLUMN sioc_threshold_ms")
    if version == 4:
        db.execute("PRAGMA user_version=4")
        db.close()
        return
    db.executescript("DROP TABLE vm_nics; DROP TABLE physical_ports")
    db.execute("ALTER TABLE vms DROP COLUMN config")
    if version == 2:
        db.execute("ALTER TABLE vms DROP COLUMN storage")
    db.execute("INSERT INTO machines VALUES ('esxi-01', '{}', x'')")
    db.execute(
        "INSERT INTO hosts (name, vpx_password_enc, connection_state) VALUES ('esxi-01', x'', 1)"
    )
    storage = pb.Vm(datastore="vmfs-01", guest_write_iops=5).SerializeToString()
    if version == 3:
        db.execute(OLD_VM.format(", ?"), (storage,))
    else:
        db.execute(OLD_VM.format(""))
    db.execute(f"PRAGMA user_version={version}")
    db.close()


@pytest.mark.parametrize("version", [2, 3])
def test_an_old_inventory_is_migrated_to_schema_4_and_keeps_its_rows(tmp_path, version: int):
    path = tmp_path / "inventory.sqlite"
    old_schema(path, version)
    inventory = Inventory(path)
    try:
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
        datastore_columns = [r[1] for r in db.execute("PRAGMA table_info(datastores)")]
        assert datastore_columns[-1] == "sioc_threshold_ms"
        assert [r[1] for r in db.execute("PRAGMA table_info(vms)")][-2:] == ["storage", "config"]
        db.close()
        vm = inventory.vm("vm-001")
        assert (vm.host, vm.cpus, vm.memory_mb, vm.power_state) == ("esxi-01", 2, 512, 1)
        assert vm.datastore == ("vmfs-01" if version == 3 else "")
        assert (list(vm.nics), list(vm.pci_devices), vm.HasField("resources")) == ([], [], False)
        assert inventory.physical_ports() == []
        assert inventory.hosts()[0].vms == 1  # the triggers still count it
        assert not inventory.hosts()[0].in_maintenance  # schema 7: none is

        # The new tables work: NICs with unique MACs, resources, devices, ports.
        vm.resources.cpu.reservation = 500
        vm.nics.add(name="ethernet0", port_group="VM Network", mac="00:50:56:00:00:01")
        vm.pci_devices.append("0000:3b:00.0")
        inventory.set_vm_config(vm)
        again = inventory.vm("vm-001")
        assert again.resources.cpu.reservation == 500 and again.datastore == vm.datastore
        assert [(n.name, n.mac) for n in again.nics] == [("ethernet0", "00:50:56:00:00:01")]
        assert inventory.nic_owner("00:50:56:00:00:01") == ("vm-001", "ethernet0")
        twin = pb.Vm(name="vm-002", host="esxi-01", uuid="u-2", cpus=1, memory_mb=256)
        twin.nics.add(name="ethernet0", port_group="VM Network", mac="00:50:56:00:00:01")
        with pytest.raises(sqlite3.IntegrityError):
            inventory.add_vm(twin)
        assert inventory.vm("vm-002") is None  # all or nothing
        inventory.set_physical_port(kpb.PhysicalPort(host="esxi-01", uplink="vmnic1", vlans=[10]))
        inventory.remove_vm("vm-001")
        assert inventory.nic_owner("00:50:56:00:00:01") is None  # the NICs went with it
    finally:
        inventory.close()
    Inventory(path).close()  # opening again is a no-op


def test_removing_a_host_takes_its_switch_ports(tmp_path):
    inventory = Inventory(tmp_path / "inventory.sqlite")
    try:
        for name in ("esxi-01", "esxi-02"):
            inventory.add_machine(MachineRecord(name, "{}", b""))
            inventory.add_host(HostRecord(name, b"", "", "", 1))
            inventory.set_physical_port(kpb.PhysicalPort(host=name, uplink="vmnic0", disabled=True))
        inventory.remove_host("esxi-01")
        assert [p.host for p in inventory.physical_ports()] == ["esxi-02"]
    finally:
        inventory.close()


def test_schema_4_datastores_get_the_default_sioc_threshold(tmp_path):
    path = tmp_path / "inventory.sqlite"
    old_schema(path, 4)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("INSERT INTO datastores VALUES ('vmfs-01', 'vmfs', 3, '', 'ats+scsi', 'u')")
    db.close()
    inventory = Inventory(path)
    try:
        record = inventory.datastore("vmfs-01")
        assert (record.lun, record.uuid, record.sioc_threshold_ms) == (3, "u", 30.0)
        inventory.set_sioc_threshold("vmfs-01", 12.5)
        assert inventory.datastore("vmfs-01").sioc_threshold_ms == 12.5
    finally:
        inventory.close()


def test_schema_5_sessions_count_as_last_active_when_made(tmp_path):
    path = tmp_path / "inventory.sqlite"
    old_schema(path, 5)
    inventory = Inventory(path)
    try:
        assert inventory.session("d1") == ("administrator@vsphere.local", 1000.0)
        inventory.touch_session("d1", 1500.0)
        assert inventory.session("d1")[1] == 1500.0
        assert inventory.remove_sessions_idle_since(1500.0) == 0
        assert inventory.remove_sessions_idle_since(1500.5) == 1
        assert inventory.session("d1") is None
    finally:
        inventory.close()
