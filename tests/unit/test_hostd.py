"""hostd and the host's accounts: who may call, and what is kept of passwords."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import pytest

from vsim import dispatch, virtual_time
from vsim.clock import SimClock
from vsim.faults import (
    InvalidArgument,
    InvalidLogin,
    NoPermission,
    NotAuthenticated,
    NotFound,
)
from vsim.host.boot import LocalDisk, boot_host
from vsim.host.hostd.accounts import FileAccountStore, HostAccounts, MemoryAccountStore
from vsim.host.hostd.esx_conf import MemoryConfigStore
from vsim.host.hostd.service import Hostd
from vsim.passwords import hash_password, verify_password
from vsim.runtime import Runtime
from vsim.spec import HostSpec
from vsim.v1 import host_agent_pb2 as hpb

ROOT_PASSWORD = "Root-Pass-0123"


@pytest.fixture
def hostd(fast_scrypt: None, tmp_path: Path) -> Hostd:
    spec = HostSpec(
        "esxi-01", uuid="9c1f2e5a-3b4d-4e6f-8a7b-0c1d2e3f4a5b", cpu_cores=4, memory_mb=8192
    )
    disk = LocalDisk(MemoryAccountStore(), MemoryConfigStore(), tmp_path / "vswp")
    hostd = boot_host(
        spec, disk, hash_password(ROOT_PASSWORD), Runtime.simulated(SimClock(10.0), 0), None
    )

    def synchronous(method: str, request, token):
        """One call through hostd's dispatch table (as gRPC and the in-process engine
        make it), driven to the end."""
        return virtual_time.run(dispatch.call(hostd.table, method, request, token))

    hostd.call = synchronous
    return hostd


def login(hostd: Hostd, user: str = "root", password: str = ROOT_PASSWORD) -> str:
    return hostd.call(
        "Login", hpb.HostLoginRequest(user_name=user, password=password), None
    ).session


def register(hostd: Hostd, session: str | None, name: str = "vm-001", memory_mb: int = 1024):
    vm = hpb.HostVm(
        name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), cpus=1, memory_mb=memory_mb
    )
    return hostd.call("RegisterVm", hpb.RegisterVmRequest(vm=vm), session)


def add_user(hostd: Hostd, session: str, user: str, password: str, role: str = "Admin") -> None:
    request = hpb.CreateUserRequest(user_name=user, password=password, role=role)
    hostd.call("CreateUser", request, session)


def test_root_is_created_at_first_boot(hostd: Hostd):
    assert hostd.accounts.users() == ["root"]
    assert login(hostd)


def test_first_boot_without_root_password_is_refused():
    with pytest.raises(ValueError, match="root.s password hash"):
        HostAccounts(MemoryAccountStore(), "")


def test_root_password_of_a_later_boot_does_not_reset_root(fast_scrypt: None):
    store = MemoryAccountStore()
    HostAccounts(store, hash_password(ROOT_PASSWORD))
    accounts = HostAccounts(store, hash_password("another-password"))
    assert accounts.login("root", ROOT_PASSWORD)
    with pytest.raises(InvalidLogin):
        accounts.login("root", "another-password")


@pytest.mark.parametrize(
    "user, password", [("root", "wrong-password"), ("root", ""), ("nobody", ROOT_PASSWORD)]
)
def test_login_with_wrong_credentials_is_invalid_login(hostd: Hostd, user: str, password: str):
    with pytest.raises(InvalidLogin):
        login(hostd, user, password)


def test_each_login_gets_its_own_token(hostd: Hostd):
    first, second = login(hostd), login(hostd)
    assert first != second
    assert hostd.accounts.user_of(first) == hostd.accounts.user_of(second) == "root"


@pytest.mark.parametrize("token", [None, "", "not-a-token"])
@pytest.mark.parametrize(
    "call",
    [
        lambda h, s: register(h, s),
        lambda h, s: h.call("UnregisterVm", hpb.HostVmRequest(name="vm-001"), s),
        lambda h, s: h.call("PowerOnVm", hpb.HostVmRequest(name="vm-001"), s),
        lambda h, s: h.call("PowerOffVm", hpb.HostVmRequest(name="vm-001"), s),
        lambda h, s: h.call("ListVms", hpb.ListHostVmsRequest(), s),
        lambda h, s: add_user(h, s, "eve", "password-1"),
        lambda h, s: h.call("GetHostInfo", hpb.GetHostInfoRequest(), s),
    ],
    ids=[
        "RegisterVm",
        "UnregisterVm",
        "PowerOnVm",
        "PowerOffVm",
        "ListVms",
        "CreateUser",
        "GetHostInfo",
    ],
)
def test_calls_without_a_valid_session_are_not_authenticated(hostd: Hostd, call, token):
    session = login(hostd)
    register(hostd, session)
    with pytest.raises(NotAuthenticated):
        call(hostd, token)
    assert hostd.accounts.users() == ["root"]
    assert [(v.name, v.powered_on) for v in hostd.kernel.vms()] == [("vm-001", False)]


def test_get_host_info_reports_capacity_and_use(hostd: Hostd):
    session = login(hostd)
    register(hostd, session, "vm-a", 1024)
    register(hostd, session, "vm-b", 2048)
    hostd.call("PowerOnVm", hpb.HostVmRequest(name="vm-b"), session)
    info = hostd.call("GetHostInfo", hpb.GetHostInfoRequest(), session)
    assert (info.name, info.uuid, info.cpu_cores, info.memory_mb) == (
        "esxi-01",
        "9c1f2e5a-3b4d-4e6f-8a7b-0c1d2e3f4a5b",
        4,
        8192,
    )
    assert (info.vms, info.vms_powered_on, info.memory_used_mb, info.boot_time) == (
        2,
        1,
        2048,
        10.0,
    )


def test_read_only_user_may_list_but_not_change(hostd: Hostd):
    root = login(hostd)
    register(hostd, root)
    add_user(hostd, root, "viewer", "viewer-pass", "ReadOnly")
    viewer = login(hostd, "viewer", "viewer-pass")
    assert [vm.name for vm in hostd.call("ListVms", hpb.ListHostVmsRequest(), viewer).vms] == [
        "vm-001"
    ]
    with pytest.raises(NoPermission):
        hostd.call("PowerOnVm", hpb.HostVmRequest(name="vm-001"), viewer)
    with pytest.raises(NoPermission):
        register(hostd, viewer, "vm-002")
    with pytest.raises(NoPermission):
        add_user(hostd, viewer, "viewer", "new-password-1", "Admin")
    assert hostd.kernel.vm("vm-001").powered_on is False
    assert [vm.name for vm in hostd.kernel.vms()] == ["vm-001"]
    assert hostd.accounts.user_of(viewer) == "viewer"


def test_create_user_resets_password_and_drops_old_sessions(hostd: Hostd):
    root = login(hostd)
    add_user(hostd, root, "vpxuser", "first-password")
    old = login(hostd, "vpxuser", "first-password")
    add_user(hostd, root, "vpxuser", "second-password")
    with pytest.raises(NotAuthenticated):
        hostd.call("ListVms", hpb.ListHostVmsRequest(), old)
    with pytest.raises(InvalidLogin):
        login(hostd, "vpxuser", "first-password")
    new = login(hostd, "vpxuser", "second-password")
    assert hostd.call("ListVms", hpb.ListHostVmsRequest(), new).vms == []
    # Only vpxuser's sessions went: root's still works.
    assert hostd.accounts.user_of(root) == "root"
    assert hostd.accounts.users() == ["root", "vpxuser"]


@pytest.mark.parametrize(
    "user, password, role",
    [
        ("Bad Name", "password-1", "Admin"),
        ("", "password-1", "Admin"),
        ("x" * 33, "password-1", "Admin"),
        ("ok", "short", "Admin"),
        ("ok", "p" * 129, "Admin"),
        ("ok", "password-1", "Superuser"),
        ("ok", "password-1", ""),
    ],
)
def test_create_user_rejects_bad_input(hostd: Hostd, user: str, password: str, role: str):
    root = login(hostd)
    with pytest.raises(InvalidArgument):
        add_user(hostd, root, user, password, role)
    assert hostd.accounts.users() == ["root"]


def test_register_rejects_oversized_uuid_without_registering(hostd: Hostd):
    root = login(hostd)
    vm = hpb.HostVm(name="vm-001", uuid="u" * 65, cpus=1, memory_mb=1024)
    with pytest.raises(InvalidArgument):
        hostd.call("RegisterVm", hpb.RegisterVmRequest(vm=vm), root)
    assert hostd.kernel.vms() == []


def test_admin_drives_a_vm_through_hostd(hostd: Hostd):
    root = login(hostd)
    register(hostd, root)
    on = hostd.call("PowerOnVm", hpb.HostVmRequest(name="vm-001"), root).vm
    assert (on.name, on.powered_on, on.guest_os) == ("vm-001", True, "otherGuest64")
    off = hostd.call("PowerOffVm", hpb.HostVmRequest(name="vm-001"), root).vm
    assert off.powered_on is False
    gone = hostd.call("UnregisterVm", hpb.HostVmRequest(name="vm-001"), root).vm
    assert gone.name == "vm-001"
    with pytest.raises(NotFound):
        hostd.call("PowerOnVm", hpb.HostVmRequest(name="vm-001"), root)


# The on-disk account store, with the real scrypt parameters.


def test_file_account_store_keeps_only_scrypt_hashes(tmp_path: Path):
    path = tmp_path / "etc" / "shadow.json"
    accounts = HostAccounts(FileAccountStore(path), hash_password(ROOT_PASSWORD))
    vpx_password = "Vpx-Secret-Password-4567"
    accounts.set_account("vpxuser", vpx_password, "Admin")
    data = path.read_bytes()
    assert ROOT_PASSWORD.encode() not in data
    assert vpx_password.encode() not in data
    rows = {row["user_name"]: row for row in json.loads(data)}
    assert set(rows) == {"root", "vpxuser"}
    for row, password in [(rows["root"], ROOT_PASSWORD), (rows["vpxuser"], vpx_password)]:
        assert row["password_hash"].startswith("scrypt$16384$8$1$")
        assert verify_password(password, row["password_hash"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_file_account_store_survives_a_reboot(tmp_path: Path):
    path = tmp_path / "shadow.json"
    first = HostAccounts(FileAccountStore(path), hash_password(ROOT_PASSWORD))
    first.set_account("vpxuser", "vpx-password-1", "Admin")
    token = first.login("vpxuser", "vpx-password-1")
    rebooted = HostAccounts(FileAccountStore(path), "")
    assert rebooted.users() == ["root", "vpxuser"]
    assert rebooted.user_of(rebooted.login("vpxuser", "vpx-password-1")) == "vpxuser"
    with pytest.raises(NotAuthenticated):
        rebooted.user_of(token)  # sessions do not survive a reboot
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_host_spec_with_a_malformed_uuid_is_refused():
    with pytest.raises(InvalidArgument):
        HostSpec("esxi-09", uuid="not-a-uuid").validated()


# ESXi's account lockout (Security.AccountLockFailures 5, Security.AccountUnlockTime 900).


def advance(hostd: Hostd, seconds: float) -> None:
    virtual_time.run(hostd.kernel.clock.advance(seconds))


def test_five_failed_root_logins_lock_root_for_900_s_even_for_the_right_password(
    hostd: Hostd,
):
    for _ in range(5):
        with pytest.raises(InvalidLogin):
            login(hostd, password="wrong-password")
    with pytest.raises(InvalidLogin) as locked:
        login(hostd)
    assert "'root' is locked for 900 more seconds" in locked.value.message
    advance(hostd, 899)
    with pytest.raises(InvalidLogin, match="locked for 1 more seconds"):
        login(hostd)
    advance(hostd, 1)
    assert hostd.accounts.user_of(login(hostd)) == "root"


def test_a_lock_is_per_account_and_a_success_clears_the_count(hostd: Hostd):
    add_user(hostd, login(hostd), "backup", "Backup-Pass-1")
    for _ in range(4):
        with pytest.raises(InvalidLogin):
            login(hostd, password="wrong-password")
    login(hostd)  # clears root's four failures
    for _ in range(4):
        with pytest.raises(InvalidLogin):
            login(hostd, password="wrong-password")
    login(hostd)
    for _ in range(5):
        with pytest.raises(InvalidLogin):
            login(hostd, "backup", "wrong-password")
    with pytest.raises(InvalidLogin, match="locked"):
        login(hostd, "backup", "Backup-Pass-1")
    assert hostd.accounts.user_of(login(hostd)) == "root"


def test_vpxuser_is_never_locked_out_by_failed_logins(hostd: Hostd):
    """Only vCenter knows vpxuser's random 32-character password; a lock would let
    anyone who reaches hostd cut the host off from vCenter (a rotation's pending
    password, tried first, also fails now and then)."""
    add_user(hostd, login(hostd), "vpxuser", "Vpx-Pass-0123456789")
    for _ in range(50):
        with pytest.raises(InvalidLogin) as failed:
            login(hostd, "vpxuser", "a-guessed-password")
        assert "locked" not in failed.value.message
    assert hostd.accounts.user_of(login(hostd, "vpxuser", "Vpx-Pass-0123456789")) == "vpxuser"


@pytest.mark.parametrize("token", ["tök" + "x" * 40, "\xff" * 43, "x" * 10_000, "x" * 43 + "\n"])
def test_a_malformed_host_session_token_is_not_authenticated(hostd: Hostd, token: str):
    with pytest.raises(NotAuthenticated, match="malformed"):
        hostd.call("ListVms", hpb.ListHostVmsRequest(), token)
