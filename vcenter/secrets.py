"""vCenter's secret box: encrypts the host passwords it must be able to use again
(vpxuser's, root's for hosts it provisioned). The key is a file in the data dir,
readable by its owner only, drawn from vCenter's runtime (the OS's CSPRNG when live);
the database holds only ciphertext. Fernet picks each ciphertext's IV itself, from
the OS: a ciphertext is never shown, only what it decrypts to."""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography.fernet import Fernet

from vsim.runtime import Runtime
from vsim.tls import write_private

KEY_FILE = "vpxd.key"


class SecretBox:
    def __init__(self, directory: Path, runtime: Runtime) -> None:
        path = directory / KEY_FILE
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            # Fernet's key format: 32 bytes (signing + encryption keys), URL-safe base64.
            write_private(path, base64.urlsafe_b64encode(runtime.secret_bytes(32)))
        self._fernet = Fernet(path.read_bytes())
        self._clock = runtime.clock

    def seal(self, secret: str) -> bytes:
        # The token's timestamp from vCenter's clock, not the wall's (no TTL is checked).
        return self._fernet.encrypt_at_time(secret.encode(), int(self._clock.now()))

    def open(self, sealed: bytes) -> str:
        return self._fernet.decrypt(sealed).decode()
