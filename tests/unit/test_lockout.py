"""The lockout core on a SimClock: counting, locking, unlocking, turning it off, and
a bounded table."""

from __future__ import annotations

import pytest

from vsim.clock import SimClock
from vsim.faults import InvalidLogin
from vsim.lockout import AccountLockout, LockoutPolicy

POLICY = LockoutPolicy(max_failures=3, interval=60.0, unlock_time=100.0)


async def test_the_failure_that_reaches_the_maximum_locks_until_the_unlock_time():
    clock = SimClock()
    lockout = AccountLockout(POLICY, clock)
    assert [lockout.failed("alice") for _ in range(3)] == [False, False, True]
    assert lockout.remaining("alice") == 100.0
    await clock.advance(99)
    with pytest.raises(InvalidLogin, match="'alice' is locked for 1 more seconds"):
        lockout.check("alice")
    lockout.check("bob")  # only alice
    await clock.advance(1)
    lockout.check("alice")
    assert lockout.failed("alice") is False  # a fresh count after the lock


async def test_failures_older_than_the_interval_are_not_counted():
    clock = SimClock()
    lockout = AccountLockout(POLICY, clock)
    lockout.failed("alice")
    lockout.failed("alice")
    await clock.advance(60)
    assert lockout.failed("alice") is False


async def test_max_failures_0_turns_locking_off():
    lockout = AccountLockout(LockoutPolicy(0, 60.0, 100.0), SimClock())
    assert not any(lockout.failed("root") for _ in range(100))
    lockout.check("root")


async def test_the_table_is_bounded_and_forgets_the_stalest_names_first():
    lockout = AccountLockout(POLICY, SimClock(), max_tracked=10)
    for i in range(1000):
        lockout.failed(f"made-up-{i}")
    lockout.failed("alice")
    lockout.failed("alice")
    assert len(lockout._failures) == 10
    assert lockout.failed("alice") is True
