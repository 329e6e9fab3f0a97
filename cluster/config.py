"""The user's vsim config: where the CLI finds its vCenter, session and pinned
thumbprints. A directory, `~/.vsim` unless VSIM_CONFIG names another:

    config.json   {"server": "127.0.0.1:50051", "user": ..., "session": ...}  (0600)
    known_hosts   one "ENDPOINT THUMBPRINT" line per vCenter, as SSH's known_hosts
    up.json       the cluster `vsim up` runs: pid, data dir, endpoint, log file
    data/         the default data dir of `vsim up`
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:50051"


def config_dir() -> Path:
    return Path(os.environ.get("VSIM_CONFIG") or Path.home() / ".vsim").expanduser()


@dataclass
class Settings:
    server: str = DEFAULT_SERVER
    """The vCenter endpoint commands talk to."""
    user: str = ""
    """Who the session belongs to."""
    session: str = ""
    """The session token from the last login."""


class UserConfig:
    def __init__(self, directory: Path | None = None) -> None:
        self.dir = directory or config_dir()

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    def _write(self, name: str, text: str) -> None:
        from vsim.tls import write_private  # with cryptography: only when writing

        self.dir.mkdir(parents=True, exist_ok=True)
        write_private(self.dir / name, text.encode())

    def settings(self) -> Settings:
        path = self.dir / "config.json"
        if not path.exists():
            return Settings()
        known = Settings.__dataclass_fields__
        return Settings(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})

    def save_settings(self, settings: Settings) -> None:
        self._write("config.json", json.dumps(asdict(settings), indent=2) + "\n")

    def pinned(self, endpoint: str) -> str | None:
        path = self.dir / "known_hosts"
        if not path.exists():
            return None
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == endpoint:
                return parts[1]
        return None

    def pin(self, endpoint: str, thumbprint: str) -> None:
        path = self.dir / "known_hosts"
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.split()[:1] != [endpoint]]
        self._write("known_hosts", "\n".join([*kept, f"{endpoint} {thumbprint}"]) + "\n")

    def up_state(self) -> dict | None:
        path = self.dir / "up.json"
        return json.loads(path.read_text()) if path.exists() else None

    def save_up_state(self, state: dict) -> None:
        self._write("up.json", json.dumps(state, indent=2) + "\n")

    def clear_up_state(self, pid: int) -> None:
        state = self.up_state()
        if state is not None and state.get("pid") == pid:
            (self.dir / "up.json").unlink(missing_ok=True)
