"""The storage array: its LUNs (with LUN masking) and NFS exports, kept under one
data dir so that everything survives a restart.

    array.json        what exists: LUNs (size, serial, initiators mapped), exports
    management.key    the secret a management client (vCenter) presents
    luns/lun-N.img    each LUN's sectors (a sparse file)
    exports/NAME/     each export's files

An initiator sees only the LUNs mapped to it: to every other one an unmapped LUN
does not exist (LOGICAL UNIT NOT SUPPORTED), as LUN masking does. Initiators name
themselves (no CHAP), so masking is changed only by a caller holding the management
key, never by the hosts, which are only ever given the array's endpoint.

Faults of the physical layer live here too, so the gRPC service and in-process
hosts get the same ones: an injected latency per LUN or export (every command waits
on the array's clock first, as behind a slow disk) and `restart()`, the array
program restarting inside itself (reservations and commands in flight dropped,
everything else reloaded from its files).

LUN serials come from the array's runtime, the management key from its secure
random (the OS's CSPRNG when live), so a simulated array is the same from the same
seed.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import re
from dataclasses import asdict
from pathlib import Path

from vsim.passwords import new_token
from vsim.runtime import Runtime
from vsim.storage.lun import SECTOR, Lun
from vsim.storage.nfs_export import ExportOptions, NfsError, NfsExport, NfsStatus
from vsim.storage.scsi import LUN_NOT_SUPPORTED, check_condition
from vsim.tls import write_private

CONFIG = "array.json"
MANAGEMENT_KEY = "management.key"
DEFAULT_LUN_BYTES = 4 * 1024**3
MIN_LUN_BYTES = 1024**2
MAX_LUN_BYTES = 64 * 1024**4
MAX_LUNS = 256
EXPORT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_LATENCY = 60.0
"""The most injected latency (seconds): far past every timeout a host has (16 s
heartbeat, 140 s APD are reached by many late commands, not one)."""


class ArrayError(ValueError):
    """A management request the array refuses (bad size, name taken, ...)."""


class ConnectionDropped(ConnectionResetError):
    """The array restarted while a command waited: the command was not carried out
    (its connection is gone, as when a target reboots), so the initiator retries."""


class StorageArray:
    def __init__(self, data_dir: Path, runtime: Runtime) -> None:
        self.data_dir = data_dir
        self.runtime = runtime
        data_dir.mkdir(parents=True, exist_ok=True)
        self.luns: dict[int, Lun] = {}
        self.masking: dict[int, set[str]] = {}
        self.lun_names: dict[int, str] = {}
        """The name the storage admin gave a LUN (optional; unique)."""
        self.exports: dict[str, NfsExport] = {}
        self.latency: dict[tuple[str, int | str], float] = {}
        """("lun", id) or ("export", name) -> injected seconds per command."""
        self.generation = 0
        """Restarts so far; a command that waited across one is dropped."""
        self.management_key = self._management_key()
        self._load()

    def _management_key(self) -> str:
        """The key management calls must carry, made on first start (0600)."""
        path = self.data_dir / MANAGEMENT_KEY
        if not path.exists():
            write_private(path, new_token(self.runtime.secure_random).encode())
        return path.read_text().strip()

    def is_manager(self, key: str | None) -> bool:
        return bool(key) and hmac.compare_digest(key.encode(), self.management_key.encode())

    # persistence

    def _load(self) -> None:
        path = self.data_dir / CONFIG
        if not path.exists():
            return
        config = json.loads(path.read_text())
        self.masking.clear()
        self.lun_names.clear()
        for lun in config.get("luns", []):
            if lun["id"] in self.luns:  # a restart: the same object, its file reopened
                self.luns[lun["id"]].reopen()
            else:
                self._open_lun(lun["id"], lun["size"], lun["serial"])
            self.masking[lun["id"]] = set(lun["initiators"])
            if lun.get("name"):
                self.lun_names[lun["id"]] = lun["name"]
        for export in config.get("exports", []):
            options = ExportOptions(
                **{**export["options"], "clients": tuple(export["options"]["clients"])}
            )
            if export["name"] in self.exports:
                self.exports[export["name"]].reopen(options)
            else:
                self._open_export(export["name"], options)

    def _save(self) -> None:
        config = {
            "luns": [
                {
                    "id": lun.id,
                    "size": lun.size_bytes,
                    "serial": lun.serial,
                    "name": self.lun_names.get(lun.id, ""),
                    "initiators": sorted(self.masking[lun.id]),
                }
                for lun in self.luns.values()
            ],
            "exports": [
                {"name": e.name, "options": asdict(e.options)} for e in self.exports.values()
            ],
        }
        write_private(self.data_dir / CONFIG, json.dumps(config, indent=1).encode())

    def _open_lun(self, lun_id: int, size: int, serial: str) -> Lun:
        lun = Lun(lun_id, self.data_dir / "luns" / f"lun-{lun_id}.img", size, serial)
        self.luns[lun_id] = lun
        return lun

    def _open_export(self, name: str, options: ExportOptions) -> NfsExport:
        export = NfsExport(name, self.data_dir / "exports" / name, options)
        self.exports[name] = export
        return export

    def close(self) -> None:
        for lun in self.luns.values():
            lun.close()

    # faults

    def restart(self) -> list[int]:
        """The array program restarts inside itself, as after a controller reboot:
        every SCSI-2 reservation is dropped (they are volatile), commands waiting are
        dropped (ConnectionDropped), counters start again, and LUNs, masking, names and
        exports are reloaded from array.json and the LUN files; the data is kept.
        Lun and NfsExport objects stay the same ones, so in-process hosts holding them
        go on (as a host's iSCSI session logs in again). Returns the LUNs whose
        reservation was dropped."""
        dropped = sorted(i for i, lun in self.luns.items() if lun.reservation is not None)
        self.generation += 1
        self._load()
        return dropped

    def set_latency(self, name: str, seconds: float) -> None:
        """Every command to the LUN named `name` and every operation on the export
        named `name` waits `seconds` first (0 mends it)."""
        lun = self.lun_named(name)
        if lun is None and name not in self.exports:
            raise ArrayError(f"the array has no LUN or export named {name[:80]!r}")
        if lun is not None:
            self.set_lun_latency(lun, seconds)
        if name in self.exports:
            self.set_export_latency(name, seconds)

    def set_lun_latency(self, lun_id: int, seconds: float) -> None:
        if lun_id not in self.luns:
            raise ArrayError(f"no LUN {lun_id}")
        self._set_latency(("lun", lun_id), seconds)

    def set_export_latency(self, name: str, seconds: float) -> None:
        if name not in self.exports:
            raise ArrayError(f"no export named {name[:80]!r}")
        self._set_latency(("export", name), seconds)

    def _set_latency(self, key: tuple[str, int | str], seconds: float) -> None:
        check_latency(seconds)
        if seconds:
            self.latency[key] = float(seconds)
        else:
            self.latency.pop(key, None)

    def lun_latency(self, lun_id: int) -> float:
        return self.latency.get(("lun", lun_id), 0.0)

    def export_latency(self, name: str) -> float:
        return self.latency.get(("export", name), 0.0)

    async def lun_command(self, lun_id: int) -> None:
        """Awaited before each command to a LUN: its injected latency, on the array's
        clock; ConnectionDropped if the array restarted meanwhile."""
        await self._wait(("lun", lun_id))

    async def export_operation(self, name: str) -> None:
        """Awaited before each operation on an export, as `lun_command`."""
        await self._wait(("export", name))

    async def _wait(self, key: tuple[str, int | str]) -> None:
        seconds = self.latency.get(key, 0.0)
        if not seconds:
            await asyncio.sleep(0)  # a round trip still lets other tasks run
            return
        generation = self.generation
        await self.runtime.sleep(seconds)
        if self.generation != generation:
            raise ConnectionDropped(
                f"the array restarted while a command to {key[0]} {key[1]} waited; "
                "it was not carried out"
            )

    # management

    def lun_named(self, name: str) -> int | None:
        return next((i for i, n in self.lun_names.items() if n == name), None)

    def create_lun(
        self,
        size_bytes: int = DEFAULT_LUN_BYTES,
        initiators: tuple[str, ...] = (),
        name: str = "",
        lun_id: int | None = None,
    ) -> Lun:
        """A new LUN with the given id (0-255, free) or the next after the highest."""
        if not MIN_LUN_BYTES <= size_bytes <= MAX_LUN_BYTES or size_bytes % SECTOR:
            raise ArrayError(
                f"a LUN is 1 MiB to 64 TiB, a multiple of {SECTOR} bytes; got {size_bytes}"
            )
        if len(self.luns) >= MAX_LUNS:
            raise ArrayError(f"the array holds at most {MAX_LUNS} LUNs")
        for initiator in initiators:
            check_initiator(initiator)
        if name and not EXPORT_NAME.fullmatch(name):
            raise ArrayError(f"LUN name {name[:80]!r} must be 1-63 of a-z 0-9 . _ -")
        if name and self.lun_named(name) is not None:
            raise ArrayError(f"a LUN named {name} exists")
        if lun_id is None:
            lun_id = max(self.luns, default=-1) + 1
            if lun_id >= MAX_LUNS:  # ids run out at the top while lower ones are free
                lun_id = min(set(range(MAX_LUNS)) - set(self.luns))
        elif not 0 <= lun_id < MAX_LUNS:
            raise ArrayError(f"a LUN id is 0-{MAX_LUNS - 1}, got {lun_id}")
        elif lun_id in self.luns:
            raise ArrayError(f"LUN {lun_id} exists ({self.luns[lun_id].size_bytes} bytes)")
        try:
            lun = self._open_lun(lun_id, size_bytes, self.runtime.hex_id(16).upper())
        except OSError as e:
            raise ArrayError(f"cannot make a {size_bytes}-byte LUN here: {e.strerror}") from None
        self.masking[lun_id] = set()
        if name:
            self.lun_names[lun_id] = name
        self.map_lun(lun_id, initiators)
        return lun

    def map_lun(self, lun_id: int, initiators: tuple[str, ...]) -> None:
        """Makes the LUN visible to these initiators (as well as those it has)."""
        if lun_id not in self.luns:
            raise ArrayError(f"no LUN {lun_id}")
        for initiator in initiators:
            check_initiator(initiator)
        self.masking[lun_id].update(initiators)
        self._save()

    def unmap_lun(self, lun_id: int, initiators: tuple[str, ...]) -> None:
        """Hides the LUN from these initiators (those it was not mapped to are ignored)."""
        if lun_id not in self.luns:
            raise ArrayError(f"no LUN {lun_id}")
        for initiator in initiators:
            check_initiator(initiator)
        self.masking[lun_id].difference_update(initiators)
        self._save()

    def create_export(self, name: str, options: ExportOptions) -> NfsExport:
        if not EXPORT_NAME.fullmatch(name):
            raise ArrayError(f"export name {name[:80]!r} must be 1-63 of a-z 0-9 . _ -")
        if name in self.exports:
            raise ArrayError(f"export {name} exists")
        export = self._open_export(name, options)
        self._save()
        return export

    # what initiators and clients see

    def report_luns(self, initiator: str) -> list[int]:
        check_initiator(initiator)
        return sorted(i for i, seen_by in self.masking.items() if initiator in seen_by)

    def lun(self, initiator: str, lun_id: int) -> Lun:
        """The LUN, if it is mapped to initiator; else it does not exist for it."""
        check_initiator(initiator)
        if lun_id not in self.luns or initiator not in self.masking[lun_id]:
            raise check_condition(LUN_NOT_SUPPORTED, f"no LUN {lun_id} for {initiator}")
        return self.luns[lun_id]

    def export(self, name: str) -> NfsExport:
        export = self.exports.get(name)
        if export is None:
            raise NfsError(NfsStatus.NOENT, f"no export named {name[:80]!r}")
        return export


def check_latency(seconds: float) -> float:
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_LATENCY):
        raise ArrayError(
            f"latency must be 0-{MAX_LATENCY:g} seconds (0 mends the disk), got {seconds!r}"
        )
    return seconds


def check_initiator(initiator: str) -> str:
    """An initiator name: an iSCSI qualified name (iqn.YYYY-MM.domain:...) or similar,
    1-223 printable characters without spaces."""
    if not 0 < len(initiator) <= 223 or not initiator.isprintable() or " " in initiator:
        raise ArrayError(f"initiator name {initiator[:80]!r} must be 1-223 printable characters")
    return initiator
