"""Account lockout after failed logins: vCenter SSO's lockout policy and ESXi's
`Security.AccountLockFailures` / `Security.AccountUnlockTime`, as one sans-I/O core.

`AccountLockout` counts a user name's failed logins inside the policy's interval;
the failure that reaches the maximum locks the name for the unlock time, and while it
is locked every login for it is refused before the password is even checked (the
right one too). A successful login clears the count, as pam_faillock does on ESXi.
Unknown user names are counted like real ones, so a lock tells nothing about which
accounts exist. Time comes only from the injected Clock; this module never sleeps
and never reads the wall clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from vsim.clock import Clock
from vsim.faults import InvalidLogin

MAX_TRACKED = 10_000
"""User names whose failures are remembered at once; beyond it the stalest are
forgotten, so a flood of made-up names cannot grow the table without bound."""


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int
    """Failed logins (within `interval`) that lock the account; 0 disables locking."""
    interval: float
    """Seconds within which failures are counted together."""
    unlock_time: float
    """Seconds a locked account stays locked."""


SSO_LOCKOUT = LockoutPolicy(max_failures=5, interval=180.0, unlock_time=300.0)
"""vCenter SSO's default lockout policy: 5 failures within 180 s lock for 300 s."""
ESXI_LOCKOUT = LockoutPolicy(max_failures=5, interval=900.0, unlock_time=900.0)
"""ESXi: Security.AccountLockFailures 5, Security.AccountUnlockTime 900 s (failures
are counted over the unlock time, faillock's default fail_interval)."""


class AccountLockout:
    def __init__(self, policy: LockoutPolicy, clock: Clock, max_tracked: int = MAX_TRACKED) -> None:
        self.policy = policy
        self._clock = clock
        self._max_tracked = max_tracked
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}

    def remaining(self, user: str) -> float:
        """Seconds the user's lock still lasts (0: not locked)."""
        until = self._locked_until.get(user)
        if until is None:
            return 0.0
        left = until - self._clock.now()
        if left <= 0:
            del self._locked_until[user]
            return 0.0
        return left

    def check(self, user: str) -> None:
        """InvalidLogin while the user is locked, saying for how long."""
        left = self.remaining(user)
        if left > 0:
            raise InvalidLogin(
                f"the account {user[:80]!r} is locked for {math.ceil(left)} more seconds after "
                f"{self.policy.max_failures} failed logins; wait and log in again "
                "(the password is not checked while it is locked)",
                locked_seconds=math.ceil(left),
            )

    def failed(self, user: str) -> bool:
        """Counts one failed login; True if it locked the account."""
        if self.policy.max_failures <= 0:
            return False
        now = self._clock.now()
        failures = self._failures.pop(user, None) or deque()
        while failures and failures[0] <= now - self.policy.interval:
            failures.popleft()
        failures.append(now)
        if len(failures) >= self.policy.max_failures:
            self._locked_until[user] = now + self.policy.unlock_time
            self._trim(self._locked_until)
            return True
        self._failures[user] = failures  # re-inserted: the dict stays oldest first
        self._trim(self._failures)
        return False

    def succeeded(self, user: str) -> None:
        self._failures.pop(user, None)

    def _trim(self, table: dict) -> None:
        while len(table) > self._max_tracked:
            del table[next(iter(table))]
