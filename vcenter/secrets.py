"""vCenter's secret box: encrypts the host passwords it must be able to use again
(vpxuser's, root's for hosts it provisioned). The key is a file in the data dir,
readable by its owner only; the database holds only ciphertext."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet

from vsim.tls import write_private

KEY_FILE = "vpxd.key"


class SecretBox:
    def __init__(self, directory: Path) -> None:
        path = directory / KEY_FILE
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            write_private(path, Fernet.generate_key())
        self._fernet = Fernet(path.read_bytes())

    def seal(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def open(self, sealed: bytes) -> str:
        return self._fernet.decrypt(sealed).decode()
