"""vCenter accounts and login sessions.

The administrator account (administrator@vsphere.local) gets a random password on
first start. Only its scrypt hash goes into the inventory; the clear password is
written once to `initial-admin-password` (0600) in the data dir, as Jenkins and
vCenter appliances hand over a first password. Session tokens are stored as SHA-256
digests, so a stolen database opens no session; sessions survive a vCenter restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vsim.faults import InvalidLogin, NotAuthenticated
from vsim.lockout import SSO_LOCKOUT, AccountLockout, LockoutPolicy
from vsim.passwords import (
    check_token,
    generate_password,
    hash_password,
    new_token,
    token_digest,
    verify_password,
)
from vsim.runtime import Runtime
from vsim.tls import write_private
from vsim.vcenter.inventory import Inventory

ADMINISTRATOR = "administrator@vsphere.local"
INITIAL_PASSWORD_FILE = "initial-admin-password"


@dataclass(frozen=True)
class SessionPolicy:
    """vCenter's session and login settings (vSphere's defaults)."""

    session_timeout: float = 1800.0
    """Seconds (simulated) a session may stay idle before it is gone: vCenter's idle
    session timeout, config.vpxd.sso.default.session.timeout, 30 minutes."""
    lockout: LockoutPolicy = SSO_LOCKOUT
    """The SSO lockout policy: 5 failed logins within 180 s lock the user for 300 s."""


@dataclass(frozen=True)
class Session:
    user_name: str
    token_digest: str


class _UserLogins:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.callers = 0


TOUCH_EVERY = 60.0
"""Seconds between writes of a session's last activity to the inventory: each call
refreshes it in memory, the inventory learns it at most once a minute (so a vCenter
restart can end an idle session up to a minute early, never late)."""


class SessionManager:
    def __init__(
        self,
        inventory: Inventory,
        runtime: Runtime,
        data_dir: Path,
        policy: SessionPolicy | None = None,
    ) -> None:
        """runtime: vCenter's (its clock; tokens, passwords and salts come from its
        secure_random: the OS's CSPRNG when live)."""
        self._inventory = inventory
        self._clock = runtime.clock
        self._secure_random = runtime.secure_random
        self._data_dir = data_dir
        self.policy = policy or SessionPolicy()
        self.lockout = AccountLockout(self.policy.lockout, self._clock)
        self._cache: dict[str, Session] = {}
        self._last_active: dict[str, float] = {}
        """token digest -> when the session was last used (simulated time)."""
        self._stored_active: dict[str, float] = {}
        """token digest -> the last activity the inventory holds."""
        self._in_use: dict[str, int] = {}
        """token digest -> calls of it under way (a long wait is not idleness)."""
        self._logins: dict[str, _UserLogins] = {}
        """Per user name, the logins under way: one of them is checked at a time."""
        self._swept = float("-inf")
        self._decoy_hash = self._hash(new_token(self._secure_random))

    def ensure_administrator(self) -> None:
        """Creates the administrator account on first start."""
        if self._inventory.account(ADMINISTRATOR) is not None:
            return
        password = generate_password(20, self._secure_random)
        write_private(self._data_dir / INITIAL_PASSWORD_FILE, password.encode())
        self._inventory.set_account(ADMINISTRATOR, self._hash(password), "Admin")

    def _hash(self, password: str) -> str:
        return hash_password(password, source=self._secure_random)

    def initial_password(self) -> str | None:
        path = self._data_dir / INITIAL_PASSWORD_FILE
        return path.read_text() if path.exists() else None

    async def login(self, user_name: str, password: str) -> str:
        """A new session token if the password is right; InvalidLogin otherwise, and
        while the user is locked out (the password is then not checked at all)."""
        entry = self._logins.setdefault(user_name, _UserLogins())
        entry.callers += 1
        try:
            # One at a time per user, so parallel guesses cannot all pass the lockout
            # check before the first of them is counted.
            async with entry.lock:
                return await self._login(user_name, password)
        finally:
            entry.callers -= 1
            if not entry.callers:
                del self._logins[user_name]

    async def _login(self, user_name: str, password: str) -> str:
        self.lockout.check(user_name)
        account = self._inventory.account(user_name)
        # scrypt takes tens of milliseconds: run it off the event loop, and for an
        # unknown user too, so the answer's timing does not tell which users exist.
        stored = account[0] if account else self._decoy_hash
        matches = await asyncio.to_thread(verify_password, password, stored)
        if account is None or not matches:
            message = "cannot complete login due to an incorrect user name or password"
            if self.lockout.failed(user_name):
                message += (
                    f"; after {self.policy.lockout.max_failures} failed logins the account "
                    f"is locked for {self.policy.lockout.unlock_time:.0f} seconds"
                )
            raise InvalidLogin(message)
        self.lockout.succeeded(user_name)
        self._sweep()
        token = new_token(self._secure_random)
        now = self._clock.now()
        digest = token_digest(token)
        self._inventory.add_session(digest, user_name, now)
        self._last_active[digest] = self._stored_active[digest] = now
        return token

    def authenticate(self, token: str | None) -> Session:
        """The session of a token; NotAuthenticated for none, a malformed one, one this
        vCenter never issued or ended, and one idle longer than the session timeout
        (which is then gone). Each call refreshes the session's idle time."""
        if not token:
            raise NotAuthenticated("this call needs a session: log in first (vsim login)")
        digest = token_digest(check_token(token))
        session = self._cache.get(digest)
        if session is None:
            found = self._inventory.session(digest)
            if found is None:
                raise NotAuthenticated(
                    "the session is not valid (logged out, expired, or never issued here): "
                    "log in again"
                )
            session = self._cache[digest] = Session(found[0], digest)
            self._last_active[digest] = self._stored_active[digest] = found[1]
        now = self._clock.now()
        idle = now - self._last_active[digest]
        if idle > self.policy.session_timeout and not self._in_use.get(digest):
            self._forget(digest)
            raise NotAuthenticated(
                f"the session expired: it was idle for {_duration(idle)}, longer than "
                f"vCenter's session timeout of {_duration(self.policy.session_timeout)}; "
                "log in again (vsim login)"
            )
        self._touch(digest, now)
        return session

    @contextmanager
    def in_use(self, session: Session) -> Iterator[None]:
        """Marks a long call (a wait, a stream) as activity: the session cannot expire
        while it runs, and its idle time counts from the call's end."""
        digest = session.token_digest
        self._in_use[digest] = self._in_use.get(digest, 0) + 1
        try:
            yield
        finally:
            self._in_use[digest] -= 1
            if not self._in_use[digest]:
                del self._in_use[digest]
            if digest in self._last_active:
                self._touch(digest, self._clock.now())

    def logout(self, session: Session) -> None:
        self._forget(session.token_digest)

    def _touch(self, digest: str, now: float) -> None:
        self._last_active[digest] = now
        if now - self._stored_active.get(digest, float("-inf")) >= TOUCH_EVERY:
            self._inventory.touch_session(digest, now)
            self._stored_active[digest] = now

    def _forget(self, digest: str) -> None:
        for table in (self._cache, self._last_active, self._stored_active):
            table.pop(digest, None)
        self._inventory.remove_session(digest)

    def _sweep(self) -> None:
        """Drops the sessions idle past the timeout that nobody came back with, at most
        once a TOUCH_EVERY (at a login: where new rows come from)."""
        now = self._clock.now()
        if now - self._swept < TOUCH_EVERY:
            return
        self._swept = now
        cutoff = now - self.policy.session_timeout
        for digest in self._in_use:
            self._touch(digest, now)  # its row must not look idle to the delete below
        for digest, last in list(self._last_active.items()):
            if last < cutoff:
                self._forget(digest)
        # Rows hold activity up to TOUCH_EVERY old: a live session's row is never this old.
        self._inventory.remove_sessions_idle_since(cutoff - TOUCH_EVERY)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} minutes"
