"""vCenter accounts and login sessions.

The administrator account (administrator@vsphere.local) gets a random password on
first start. Only its scrypt hash goes into the inventory; the clear password is
written once to `initial-admin-password` (0600) in the data dir, as Jenkins and
vCenter appliances hand over a first password. Session tokens are stored as SHA-256
digests, so a stolen database opens no session; sessions survive a vCenter restart.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from vsim.clock import Clock
from vsim.faults import InvalidLogin, NotAuthenticated
from vsim.passwords import (
    generate_password,
    hash_password,
    new_token,
    token_digest,
    verify_password,
)
from vsim.tls import write_private
from vsim.vcenter.inventory import Inventory

ADMINISTRATOR = "administrator@vsphere.local"
INITIAL_PASSWORD_FILE = "initial-admin-password"


@dataclass(frozen=True)
class Session:
    user_name: str
    token_digest: str


class SessionManager:
    def __init__(self, inventory: Inventory, clock: Clock, data_dir: Path) -> None:
        self._inventory = inventory
        self._clock = clock
        self._data_dir = data_dir
        self._cache: dict[str, Session] = {}
        self._decoy_hash = hash_password(new_token())

    def ensure_administrator(self) -> None:
        """Creates the administrator account on first start."""
        if self._inventory.account(ADMINISTRATOR) is not None:
            return
        password = generate_password(20)
        write_private(self._data_dir / INITIAL_PASSWORD_FILE, password.encode())
        self._inventory.set_account(ADMINISTRATOR, hash_password(password), "Admin")

    def initial_password(self) -> str | None:
        path = self._data_dir / INITIAL_PASSWORD_FILE
        return path.read_text() if path.exists() else None

    async def login(self, user_name: str, password: str) -> str:
        """A new session token if the password is right; InvalidLogin otherwise."""
        account = self._inventory.account(user_name)
        # scrypt takes tens of milliseconds: run it off the event loop, and for an
        # unknown user too, so the answer's timing does not tell which users exist.
        stored = account[0] if account else self._decoy_hash
        matches = await asyncio.to_thread(verify_password, password, stored)
        if account is None or not matches:
            raise InvalidLogin("cannot complete login due to an incorrect user name or password")
        token = new_token()
        self._inventory.add_session(token_digest(token), user_name, self._clock.now())
        return token

    def authenticate(self, token: str | None) -> Session:
        if not token:
            raise NotAuthenticated("this call needs a session: log in first (vsim login)")
        digest = token_digest(token)
        session = self._cache.get(digest)
        if session is None:
            user = self._inventory.session_user(digest)
            if user is None:
                raise NotAuthenticated(
                    "the session is not valid (logged out, or never issued here): log in again"
                )
            session = self._cache[digest] = Session(user, digest)
        return session

    def logout(self, session: Session) -> None:
        self._cache.pop(session.token_digest, None)
        self._inventory.remove_session(session.token_digest)
