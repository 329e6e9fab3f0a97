"""Local accounts of an ESXi host (root, vpxuser, ...) and their login sessions.

Accounts are kept as scrypt hashes through an injected `AccountStore` (a file in the
host's data dir for a real host, memory for the in-process engine), so vpxuser
survives a host reboot as /etc/shadow does. Sessions live only in memory: a reboot
logs everyone out.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vsim.dispatch import Entry, Need
from vsim.faults import InvalidLogin, NoPermission, NotAuthenticated
from vsim.passwords import (
    SYSTEM_RANDOM,
    check_token,
    hash_password,
    new_token,
    token_digest,
    verify_password,
)
from vsim.tls import write_private

ROLES = ("Admin", "ReadOnly")
VPXUSER = "vpxuser"
"""The account vCenter creates on the host and makes every call as."""


@dataclass(frozen=True)
class Account:
    user_name: str
    password_hash: str
    role: str


class AccountStore(Protocol):
    def load(self) -> dict[str, Account]: ...

    def save(self, accounts: dict[str, Account]) -> None: ...


class MemoryAccountStore:
    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}

    def load(self) -> dict[str, Account]:
        return dict(self._accounts)

    def save(self, accounts: dict[str, Account]) -> None:
        self._accounts = dict(accounts)


class FileAccountStore:
    """Accounts as a JSON file written atomically, owner-readable only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, Account]:
        if not self.path.exists():
            return {}
        rows = json.loads(self.path.read_text())
        return {row["user_name"]: Account(**row) for row in rows}

    def save(self, accounts: dict[str, Account]) -> None:
        rows = [a.__dict__ for a in accounts.values()]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(rows, indent=1).encode())


class HostAccounts:
    def __init__(
        self,
        store: AccountStore,
        root_password_hash: str,
        secure_random: random.Random = SYSTEM_RANDOM,
    ) -> None:
        """root_password_hash (scrypt, from vsim.passwords) sets root's password on first
        boot; whoever provisions the host never hands it the clear password.
        secure_random: where session tokens and salts come from (the boot runtime's:
        the OS's CSPRNG on a live host)."""
        self._store = store
        self._accounts = store.load()
        self._sessions: dict[str, str] = {}  # token digest -> user name
        self._secure_random = secure_random
        if "root" not in self._accounts:
            if not root_password_hash.startswith("scrypt$"):
                raise ValueError("a host needs root's password hash on first boot")
            self._accounts["root"] = Account("root", root_password_hash, "Admin")
            self._store.save(self._accounts)

    def users(self) -> list[str]:
        return sorted(self._accounts)

    def login(self, user_name: str, password: str) -> str:
        account = self._accounts.get(user_name)
        if account is None or not verify_password(password, account.password_hash):
            raise InvalidLogin("cannot complete login due to an incorrect user name or password")
        token = new_token(self._secure_random)
        self._sessions[token_digest(token)] = user_name
        return token

    def user_of(self, token: str | None) -> str:
        """The user a session token belongs to; NotAuthenticated for none or unknown."""
        user = self._sessions.get(token_digest(check_token(token))) if token else None
        if user is None or user not in self._accounts:
            raise NotAuthenticated(
                "the call needs a session: log in to the host (vCenter logs in as vpxuser)"
            )
        return user

    judges = frozenset(Need)
    """What hostd's dispatch table may ask of a caller (see `admit`)."""

    def admit(self, token: str | None, entry: Entry) -> str | None:
        """hostd's one session check: the caller's user name (None for a public call),
        NotAuthenticated without a valid session, NoPermission without the role."""
        if entry.need is Need.PUBLIC:
            return None
        user = self.user_of(token)
        if entry.need is Need.ADMINISTRATOR:
            account = self._accounts.get(user)
            if account is None or account.role != "Admin":
                raise NoPermission(f"{user} may not do this: it needs the Admin role")
        elif entry.need is Need.VPXUSER and user != VPXUSER:
            raise NoPermission(f"{entry.name} is vCenter's to call (as {VPXUSER}), not {user}'s")
        return user

    def set_account(self, user_name: str, password: str, role: str) -> None:
        """Creates the account or resets its password; drops its open sessions."""
        self._accounts[user_name] = Account(
            user_name, hash_password(password, source=self._secure_random), role
        )
        self._store.save(self._accounts)
        self._sessions = {t: u for t, u in self._sessions.items() if u != user_name}
