"""vCenter sessions and secrets at rest: who may call, and what the data dir holds."""

from __future__ import annotations

import asyncio
import stat

import pytest
from vclab import SUCCESS, T0, Lab

from vsim.clock import SimClock
from vsim.cluster.client import VCenterClient
from vsim.faults import InvalidArgument, InvalidLogin, NotAuthenticated
from vsim.host.hostd.accounts import HostAccounts
from vsim.passwords import token_digest
from vsim.runtime import Runtime
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter import sessions as sessions_module
from vsim.vcenter.host_system import VPXUSER
from vsim.vcenter.inventory import Inventory
from vsim.vcenter.secrets import KEY_FILE
from vsim.vcenter.service import INVENTORY_FILE
from vsim.vcenter.sessions import (
    ADMINISTRATOR,
    INITIAL_PASSWORD_FILE,
    SessionManager,
    SessionPolicy,
)


def database_bytes(lab: Lab) -> bytes:
    """Everything SQLite holds on disk for the inventory (main file and WAL)."""
    path = lab.data_dir / INVENTORY_FILE
    wal = path.with_name(path.name + "-wal")
    data = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert data, "the inventory is empty on disk"
    return data


@pytest.mark.parametrize("token", [None, "", "not-a-session", "x" * 100_000])
@pytest.mark.parametrize("method", ["ListVms", "CreateVm", "Logout", "GetStatus", "WatchEvents"])
async def test_calls_without_a_valid_session_are_not_authenticated(lab: Lab, token, method: str):
    with pytest.raises(NotAuthenticated):
        lab.vc.table.authenticate(token, method)


async def test_login_is_public(lab: Lab):
    assert lab.vc.table.authenticate(None, "Login") is None
    assert lab.vc.table.authenticate("garbage", "Login") is None


async def test_login_returns_a_working_session(lab: Lab):
    after = await lab.last_event_key()
    login = pb.LoginRequest(user_name=ADMINISTRATOR, password=lab.vc.sessions.initial_password())
    reply = await lab.anonymous().call("Login", login)
    assert reply.user_name == ADMINISTRATOR
    assert reply.session != lab.token
    session = lab.vc.table.authenticate(reply.session, "ListVms")
    assert session.user_name == ADMINISTRATOR
    assert [(e.type, e.user) for e in await lab.events(after)] == [
        ("UserLoginSessionEvent", ADMINISTRATOR)
    ]


@pytest.mark.parametrize(
    "user, password",
    [
        (ADMINISTRATOR, "wrong"),
        (ADMINISTRATOR, ""),
        ("root", "whatever"),
        ("", ""),
        ("administrator@VSPHERE.LOCAL", None),
    ],
)
async def test_login_with_wrong_credentials_is_invalid_login(lab: Lab, user, password):
    password = password if password is not None else lab.vc.sessions.initial_password()
    after = await lab.last_event_key()
    with pytest.raises(InvalidLogin):
        await lab.login(user, password)
    assert [(e.type, e.user) for e in await lab.events(after)] == [
        ("BadUsernameSessionEvent", user)
    ]


async def test_login_with_10_mb_password_is_invalid_argument(lab: Lab):
    with pytest.raises(InvalidArgument) as excinfo:
        await lab.login(ADMINISTRATOR, "p" * 10_000_000)
    assert len(excinfo.value.message) < 300


async def test_logout_invalidates_the_token(lab: Lab):
    token = await lab.login()
    await VCenterClient.in_process(lab.vc.table, token).logout()
    with pytest.raises(NotAuthenticated):
        lab.vc.table.authenticate(token, "ListVms")
    # Other sessions stay valid.
    assert lab.vc.table.authenticate(lab.token, "ListVms").user_name == ADMINISTRATOR
    assert (await lab.events())[-1].type == "UserLogoutSessionEvent"


async def test_administrator_password_is_stored_only_hashed(lab: Lab):
    password = lab.vc.sessions.initial_password()
    assert password and len(password) == 20
    data = database_bytes(lab)
    assert password.encode() not in data
    assert b"scrypt$" in data
    path = lab.data_dir / INITIAL_PASSWORD_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_session_tokens_are_stored_only_as_digests(lab: Lab):
    tokens = [lab.token, await lab.login()]
    data = database_bytes(lab)
    for token in tokens:
        assert token.encode() not in data


async def test_secret_box_key_is_owner_only(lab: Lab):
    assert stat.S_IMODE((lab.data_dir / KEY_FILE).stat().st_mode) == 0o600


async def test_every_host_has_vpxuser_with_an_encrypted_32_character_password(lab: Lab):
    data = database_bytes(lab)
    for name in ["esxi-01", "esxi-02", "esxi-03"]:
        accounts: HostAccounts = lab.engine.running(name).accounts
        assert accounts.users() == ["root", VPXUSER]
        record = lab.vc.inventory.host(name)
        password = lab.vc.hosts._secrets.open(record.vpx_password_enc)
        assert len(password) == 32
        assert password.encode() not in data
        assert password.encode() not in record.vpx_password_enc
        # It is the host's real vpxuser password.
        assert accounts.user_of(accounts.login(VPXUSER, password)) == VPXUSER


async def test_vpxuser_passwords_differ_between_hosts(lab: Lab):
    passwords = {
        lab.vc.hosts._secrets.open(lab.vc.inventory.host(name).vpx_password_enc)
        for name in ["esxi-01", "esxi-02", "esxi-03"]
    }
    assert len(passwords) == 3


async def test_host_root_passwords_are_not_in_the_database(lab: Lab):
    data = database_bytes(lab)
    for name in lab.engine.hosts():
        spec = lab.engine.spec(name)
        assert len(spec.root_password) >= 16
        assert spec.root_password.encode() not in data, name


async def test_vpxuser_password_is_rotated_once_30_days_old(lab: Lab):
    before = {name: lab.vc.hosts._vpx_password(name) for name in ("esxi-01", "esxi-02")}
    after_key = await lab.last_event_key()
    await lab.vc.hosts.heartbeat_once()
    assert lab.vc.hosts._vpx_password("esxi-01") == before["esxi-01"]  # not due yet

    lab.vc.inventory.update_host("esxi-01", vpx_password_set=lab.clock.now() - 30 * 86400)
    await lab.vc.hosts.heartbeat_once()
    new = lab.vc.hosts._vpx_password("esxi-01")
    assert new != before["esxi-01"] and len(new) == 32
    assert lab.vc.hosts._vpx_password("esxi-02") == before["esxi-02"]
    accounts = lab.engine.running("esxi-01").accounts
    with pytest.raises(InvalidLogin):
        accounts.login(VPXUSER, before["esxi-01"])
    accounts.login(VPXUSER, new)
    assert [(e.type, e.host) for e in await lab.events(after_key)] == [
        ("HostVpxuserPasswordChangedEvent", "esxi-01")
    ]
    # vCenter keeps working with the new password.
    assert (await lab.create("after-rotation", host="esxi-01")).state == SUCCESS
    assert (await lab.power_on("after-rotation")).state == SUCCESS
    assert (await lab.vms())["after-rotation"].power_state == pb.POWER_STATE_POWERED_ON


@pytest.mark.parametrize("applied", [True, False], ids=["reply-lost", "host-refused"])
async def test_a_failed_rotation_never_locks_vcenter_out(lab: Lab, applied: bool):
    old = lab.vc.hosts._vpx_password("esxi-01")
    lab.vc.inventory.update_host("esxi-01", vpx_password_set=lab.clock.now() - 30 * 86400)
    # vCenter's next CreateUser to the host fails: after the host applied it (the reply
    # was lost) or before (the host never saw it).
    lab.engine.reset_next_call("esxi-01", "CreateUser", applied)
    await lab.vc.hosts.heartbeat_once()
    pending = lab.vc.inventory.host("esxi-01").vpx_password_next_enc
    assert pending is not None, "the new password is kept until a login settles it"

    # vCenter still reaches the host, whichever password the host now has.
    assert (await lab.create("after-failure", host="esxi-01")).state == SUCCESS
    assert (await lab.power_on("after-failure")).state == SUCCESS
    # The next round settles it: the taken password became current (so no rotation is
    # due), or the refused one is dropped and the rotation done again.
    await lab.vc.hosts.heartbeat_once()
    record = lab.vc.inventory.host("esxi-01")
    current = lab.vc.hosts._secrets.open(record.vpx_password_enc)
    assert record.vpx_password_next_enc is None
    assert current != old
    assert lab.clock.now() - record.vpx_password_set < 30 * 86400
    lab.engine.running("esxi-01").accounts.login(VPXUSER, current)
    with pytest.raises(InvalidLogin):
        lab.engine.running("esxi-01").accounts.login(VPXUSER, old)


# The idle session timeout and the login lockout (SSO's policy).

TIMEOUT = SessionPolicy().session_timeout


async def test_the_session_timeout_and_lockout_default_to_vspheres():
    policy = SessionPolicy()
    assert policy.session_timeout == 30 * 60
    assert (policy.lockout.max_failures, policy.lockout.interval) == (5, 180)
    assert policy.lockout.unlock_time == 300


async def test_a_session_idle_past_the_timeout_is_gone_and_each_call_refreshes_it(lab: Lab):
    token = await lab.login()
    for _ in range(3):  # 3 x 29 min: more than the timeout in all, never idle that long
        await lab.clock.advance(TIMEOUT - 60)
        assert lab.vc.table.authenticate(token, "ListVms").user_name == ADMINISTRATOR
    await lab.clock.advance(TIMEOUT + 1)
    with pytest.raises(NotAuthenticated) as expired:
        lab.vc.table.authenticate(token, "ListVms")
    assert "expired" in expired.value.message and "30 minutes" in expired.value.message
    assert lab.vc.inventory.session(token_digest(token)) is None
    with pytest.raises(NotAuthenticated) as again:  # gone, not only refused once
        lab.vc.table.authenticate(token, "ListVms")
    assert "not valid" in again.value.message


async def test_idle_time_survives_a_vcenter_restart(lab: Lab):
    await lab.clock.advance(600)
    lab.vc.table.authenticate(lab.token, "ListVms")
    await lab.stop()
    await lab.clock.advance(TIMEOUT - 120)  # vCenter down for 28 minutes
    await lab.boot(lab.spec)  # boot() calls with lab.token: still valid, and refreshed
    await lab.stop()
    await lab.clock.advance(TIMEOUT + 1)
    with pytest.raises(NotAuthenticated, match="expired"):
        await lab.boot(lab.spec)


async def test_a_stream_keeps_its_session_alive_and_idle_time_counts_from_its_end(lab: Lab):
    token = await lab.login()
    stream = VCenterClient.in_process(lab.vc.table, token).watch_events(await lab.last_event_key())
    follower = asyncio.get_running_loop().create_task(anext(stream))
    await lab.clock.advance(2 * TIMEOUT)  # following events for an hour, none came
    assert lab.vc.table.authenticate(token, "ListVms").user_name == ADMINISTRATOR
    follower.cancel()
    await asyncio.gather(follower, return_exceptions=True)
    await stream.aclose()
    await lab.clock.advance(TIMEOUT - 60)
    lab.vc.table.authenticate(token, "ListVms")
    await lab.clock.advance(TIMEOUT + 1)
    with pytest.raises(NotAuthenticated, match="expired"):
        lab.vc.table.authenticate(token, "ListVms")


async def test_sessions_nobody_returns_with_are_swept_at_a_later_login(lab: Lab):
    abandoned = await lab.login()
    await lab.clock.advance(TIMEOUT + 120)
    await lab.login()
    assert lab.vc.inventory.session(token_digest(abandoned)) is None


async def test_the_session_timeout_is_a_setting(tmp_path, fast_scrypt):
    clock = SimClock(T0)
    inventory = Inventory(tmp_path / INVENTORY_FILE)
    try:
        runtime = Runtime.simulated(clock, 0)
        sessions = SessionManager(inventory, runtime, tmp_path, SessionPolicy(session_timeout=60))
        sessions.ensure_administrator()
        token = await sessions.login(ADMINISTRATOR, sessions.initial_password())
        await clock.advance(59)
        sessions.authenticate(token)
        await clock.advance(61)
        with pytest.raises(NotAuthenticated, match="idle for 61 s, longer than .* 60 s"):
            sessions.authenticate(token)
    finally:
        inventory.close()


async def login_as(lab: Lab, user: str, password: str) -> str:
    return await lab.login(user, password)


async def test_five_failed_logins_lock_the_account_for_300_s_even_for_the_right_password(
    lab: Lab,
):
    right = lab.vc.sessions.initial_password()
    after = await lab.last_event_key()
    for attempt in range(1, 6):
        with pytest.raises(InvalidLogin) as failed:
            await login_as(lab, ADMINISTRATOR, f"wrong-{attempt}")
        assert ("locked for 300 seconds" in failed.value.message) == (attempt == 5)
    with pytest.raises(InvalidLogin) as locked:
        await login_as(lab, ADMINISTRATOR, right)
    assert "is locked for 300 more seconds" in locked.value.message
    assert locked.value.properties == {"locked_seconds": "300"}
    await lab.clock.advance(299.5)
    with pytest.raises(InvalidLogin, match="locked for 1 more seconds"):
        await login_as(lab, ADMINISTRATOR, right)
    await lab.clock.advance(0.5)
    token = await login_as(lab, ADMINISTRATOR, right)
    assert lab.vc.table.authenticate(token, "ListVms").user_name == ADMINISTRATOR
    events = [(e.type, e.user) for e in await lab.events(after)]
    assert events == [("BadUsernameSessionEvent", ADMINISTRATOR)] * 7 + [
        ("UserLoginSessionEvent", ADMINISTRATOR)
    ]
    assert "locked" in (await lab.events(after))[5].message
    # Other sessions were never touched by the lock.
    assert lab.vc.table.authenticate(lab.token, "ListVms").user_name == ADMINISTRATOR


async def test_failures_count_within_180_s_and_a_success_clears_them(lab: Lab):
    right = lab.vc.sessions.initial_password()

    async def fail(times: int) -> None:
        for _ in range(times):
            with pytest.raises(InvalidLogin):
                await login_as(lab, ADMINISTRATOR, "wrong")

    await fail(4)
    await lab.clock.advance(181)  # the first four are out of the window
    await fail(4)
    await login_as(lab, ADMINISTRATOR, right)
    await fail(4)  # the success cleared the count
    await login_as(lab, ADMINISTRATOR, right)


async def test_an_unknown_user_is_locked_like_a_real_one(lab: Lab):
    messages = []
    for user in ("nobody@vsphere.local", ADMINISTRATOR):
        for _ in range(5):
            with pytest.raises(InvalidLogin):
                await login_as(lab, user, "wrong")
        with pytest.raises(InvalidLogin) as locked:
            await login_as(lab, user, "wrong")
        messages.append(locked.value.message.replace(user, "USER"))
    assert messages[0] == messages[1]  # nothing tells which of them exists


async def test_parallel_guesses_cannot_outrun_the_lockout(lab: Lab, monkeypatch):
    checked = []
    real = sessions_module.verify_password

    def counting(password: str, stored: str) -> bool:
        checked.append(password)
        return real(password, stored)

    monkeypatch.setattr(sessions_module, "verify_password", counting)
    results = await asyncio.gather(
        *(login_as(lab, ADMINISTRATOR, f"guess-{i}") for i in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, InvalidLogin) for r in results)
    assert len(checked) == 5  # the other 15 were refused by the lock, unchecked
    assert sum("more seconds" in r.message for r in results) == 15


@pytest.mark.parametrize(
    "token, problem",
    [
        ("tök" + "x" * 40, "non-ASCII"),
        ("\xff" * 43, "non-ASCII"),  # latin-1 bytes as gRPC hands them over
        ("x" * 44, "44 characters long"),
        ("x" * 42 + "=", "other than letters"),
        ("x" * 21 + " " + "x" * 21, "other than letters"),
    ],
)
async def test_a_malformed_token_is_not_authenticated_with_the_reason(lab: Lab, token, problem):
    with pytest.raises(NotAuthenticated) as refused:
        lab.vc.table.authenticate(token, "ListVms")
    assert "malformed" in refused.value.message and problem in refused.value.message
    assert token not in refused.value.message
