"""vCenter sessions and secrets at rest: who may call, and what the data dir holds."""

from __future__ import annotations

import stat

import pytest
from vclab import SUCCESS, Lab

from vsim.faults import HostConnectFault, InvalidArgument, InvalidLogin, NotAuthenticated
from vsim.host.accounts import HostAccounts
from vsim.v1 import vcenter_pb2 as pb
from vsim.vcenter.host_system import VPXUSER
from vsim.vcenter.secrets import KEY_FILE
from vsim.vcenter.service import INVENTORY_FILE
from vsim.vcenter.sessions import ADMINISTRATOR, INITIAL_PASSWORD_FILE


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
        lab.vc.authenticate(token, method)


async def test_login_is_public(lab: Lab):
    assert lab.vc.authenticate(None, "Login") is None
    assert lab.vc.authenticate("garbage", "Login") is None


async def test_login_returns_a_working_session(lab: Lab):
    after = lab.last_event_key()
    reply = await lab.vc.Login(
        pb.LoginRequest(user_name=ADMINISTRATOR, password=lab.vc.sessions.initial_password()),
        None,
    )
    assert reply.user_name == ADMINISTRATOR
    assert reply.session != lab.token
    session = lab.vc.authenticate(reply.session, "ListVms")
    assert session.user_name == ADMINISTRATOR
    assert [(e.type, e.user) for e in lab.events(after)] == [
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
    events = len(lab.events())
    with pytest.raises(InvalidLogin):
        await lab.vc.Login(pb.LoginRequest(user_name=user, password=password), None)
    assert len(lab.events()) == events


async def test_login_with_10_mb_password_is_invalid_argument(lab: Lab):
    with pytest.raises(InvalidArgument) as excinfo:
        await lab.vc.Login(
            pb.LoginRequest(user_name=ADMINISTRATOR, password="p" * 10_000_000), None
        )
    assert len(excinfo.value.message) < 300


async def test_logout_invalidates_the_token(lab: Lab):
    token = await lab.login()
    session = lab.vc.authenticate(token, "Logout")
    lab.vc.Logout(pb.LogoutRequest(), session)
    with pytest.raises(NotAuthenticated):
        lab.vc.authenticate(token, "ListVms")
    # Other sessions stay valid.
    assert lab.vc.authenticate(lab.token, "ListVms").user_name == ADMINISTRATOR
    assert lab.events()[-1].type == "UserLogoutSessionEvent"


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
        accounts: HostAccounts = lab.engine._hostd[name].accounts
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
    for name, spec in lab.engine._specs.items():
        assert len(spec.root_password) >= 16
        assert spec.root_password.encode() not in data, name


async def test_vpxuser_password_is_rotated_once_30_days_old(lab: Lab):
    before = {name: lab.vc.hosts._vpx_password(name) for name in ("esxi-01", "esxi-02")}
    after_key = lab.last_event_key()
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
    assert [(e.type, e.host) for e in lab.events(after_key)] == [
        ("HostVpxuserPasswordChangedEvent", "esxi-01")
    ]
    # vCenter keeps working with the new password.
    assert (await lab.create("after-rotation", host="esxi-01")).state == SUCCESS
    assert (await lab.power_on("after-rotation")).state == SUCCESS
    assert lab.vms()["after-rotation"].power_state == pb.POWER_STATE_POWERED_ON


def _fail_create_user(lab: Lab, host: str, applied: bool) -> None:
    """Makes vCenter's next CreateUser to host fail: after the host applied it (the reply
    was lost) or before (the host refused)."""
    port = lab.vc.hosts._links[host].port
    original = port.call

    async def call(method, request, session):
        if method == "CreateUser":
            port.call = original
            if applied:
                await original(method, request, session)
            raise HostConnectFault("connection reset")
        return await original(method, request, session)

    port.call = call


@pytest.mark.parametrize("applied", [True, False], ids=["reply-lost", "host-refused"])
async def test_a_failed_rotation_never_locks_vcenter_out(lab: Lab, applied: bool):
    old = lab.vc.hosts._vpx_password("esxi-01")
    lab.vc.inventory.update_host("esxi-01", vpx_password_set=lab.clock.now() - 30 * 86400)
    _fail_create_user(lab, "esxi-01", applied)
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
