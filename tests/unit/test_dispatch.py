"""One dispatch table per server (vsim/dispatch.py): gRPC serving and in-process calls
take the same path, so an unexpected error is a SystemError either way, and the SDK
client reports the same fault in-process as over gRPC."""

from __future__ import annotations

import logging

import pytest
from vclab import Lab

from vsim import dispatch
from vsim.cluster.client import VCenterClient
from vsim.dispatch import ADMINISTRATOR, PUBLIC, SESSION, DispatchTable
from vsim.faults import InvalidArgument, NotAuthenticated, NotFound, SystemError_, VimFault
from vsim.host.hostd.service import SERVICE as HOST_AGENT
from vsim.rpc import RpcClient, open_channel, start_server
from vsim.tls import make_identity
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import vcenter_pb2 as pb

pytestmark = pytest.mark.real_loop  # real gRPC servers on loopback


@pytest.fixture
async def served(lab: Lab):
    """lab's vCenter and esxi-01's hostd behind TLS gRPC servers: their endpoints."""
    hostd = lab.engine.running("esxi-01")
    started, endpoints = [], {}
    for name, table in [("vcenter", lab.vc.table), ("hostd", hostd.table)]:
        server, port = await start_server(make_identity(name), "127.0.0.1", 0, [table])
        started.append(server)
        endpoints[name] = f"127.0.0.1:{port}"
    yield endpoints
    for server in started:
        await server.stop(None)


async def failure(call) -> VimFault:
    with pytest.raises(VimFault) as failed:
        await call
    return failed.value


async def test_an_unexpected_error_in_a_vcenter_handler_is_a_system_error_both_ways(
    lab: Lab, served, monkeypatch, caplog
):
    def broken() -> None:
        raise RuntimeError("the inventory is on fire")

    monkeypatch.setattr(lab.vc.hosts, "list", broken)
    local = VCenterClient.in_process(lab.vc.table, lab.token)
    async with await VCenterClient.connect(served["vcenter"], None, lab.token) as remote:
        with caplog.at_level(logging.ERROR, "vsim.rpc"):
            over_grpc = await failure(remote.hosts())
            in_process = await failure(local.hosts())
    for fault in (over_grpc, in_process):
        assert type(fault) is SystemError_
        assert fault.message == "internal error in ListHosts (RuntimeError); see the server log"
    logged = [r for r in caplog.records if r.getMessage() == "unexpected error in ListHosts"]
    assert len(logged) == 2 and all(r.exc_info for r in logged)


async def test_an_unexpected_error_in_hostd_is_a_system_error_for_both_engines(
    lab: Lab, served, monkeypatch
):
    """The in-process engine's line to a host and a gRPC channel to its hostd."""
    hostd = lab.engine.running("esxi-01")
    hostd.accounts.set_account("tester", "Tester-Pass-01", "Admin")
    token = hostd.accounts.login("tester", "Tester-Pass-01")

    def broken() -> int:
        raise KeyError("vm-001")

    monkeypatch.setattr(hostd.kernel, "vm_count", broken)
    request = hpb.GetHostInfoRequest()
    port = await lab.engine.connect("esxi-01")
    in_process = await failure(port.call("GetHostInfo", request, token))
    channel, _ = await open_channel(served["hostd"])
    try:
        over_grpc = await failure(
            RpcClient(channel, HOST_AGENT).call("GetHostInfo", request, token)
        )
    finally:
        await channel.close()
    for fault in (in_process, over_grpc):
        assert type(fault) is SystemError_
        assert fault.message == "internal error in GetHostInfo (KeyError); see the server log"


BAD_CALLS = {
    "unknown VM": (lambda c: c.vm("no-such-vm"), NotFound),
    "unknown host": (lambda c: c.host_stats("no-such-host"), NotFound),
    "negative event key": (lambda c: c.events(after_key=-1), InvalidArgument),
    "bad task wait": (lambda c: c.wait("task-99999", timeout=5), NotFound),
    "list limit": (lambda c: c.tasks(limit=-1), InvalidArgument),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
async def test_the_in_process_client_reports_the_fault_grpc_does(lab: Lab, served, name: str):
    call, expected = BAD_CALLS[name]
    local = VCenterClient.in_process(lab.vc.table, lab.token)
    async with await VCenterClient.connect(served["vcenter"], None, lab.token) as remote:
        over_grpc = await failure(call(remote))
    in_process = await failure(call(local))
    assert type(over_grpc) is type(in_process) is expected
    assert (in_process.message, in_process.properties) == (
        over_grpc.message,
        over_grpc.properties,
    )


@pytest.mark.parametrize(
    "session", [None, "x" * 43, "tök" + "x" * 40], ids=["none", "unknown", "utf-8"]
)
async def test_both_clients_refuse_the_same_sessions(lab: Lab, served, session):
    local = VCenterClient.in_process(lab.vc.table, session)
    async with await VCenterClient.connect(served["vcenter"], None, session) as remote:
        over_grpc = await failure(remote.status())
    in_process = await failure(local.status())
    assert type(over_grpc) is type(in_process) is NotAuthenticated
    assert in_process.message == over_grpc.message


async def test_the_in_process_client_logs_in_and_follows_events(lab: Lab):
    """What the unit tests need of it: Login, the session token, a streaming call."""
    client = VCenterClient.in_process(lab.vc.table)
    token = await client.login("administrator@vsphere.local", lab.vc.sessions.initial_password())
    assert client.session == token and lab.vc.table.authenticate(token, "GetStatus")
    key = lab.vc.events.post("TestEvent", "followed").key
    events = client.watch_events(after_key=key - 1)
    first = await anext(events)
    await events.aclose()
    assert (first.key, first.message) == (key, "followed")
    with pytest.raises(InvalidArgument):
        await anext(client.watch_events(after_key=-1))


async def test_in_process_calls_get_copies_not_the_servers_messages(lab: Lab):
    """As over a wire: changing a reply changes nothing on the server."""
    tasks = await dispatch.call(lab.vc.table, "ListTasks", pb.ListTasksRequest(), lab.token)
    assert tasks.tasks
    tasks.tasks[0].state = 99
    again = await dispatch.call(lab.vc.table, "ListTasks", pb.ListTasksRequest(), lab.token)
    assert again.tasks[0].state != 99


class OpenGate:
    judges = frozenset({PUBLIC, SESSION})

    def admit(self, token, entry):
        return None


def test_a_table_declares_every_rpc_once_and_only_needs_its_gate_judges():
    handlers = {m.name: (SESSION, print) for m in HOST_AGENT.methods}
    DispatchTable(HOST_AGENT, OpenGate(), handlers)
    with pytest.raises(ValueError, match="missing \\['Login'\\]"):
        DispatchTable(HOST_AGENT, OpenGate(), {k: v for k, v in handlers.items() if k != "Login"})
    with pytest.raises(ValueError, match="not in the service \\['Nope'\\]"):
        DispatchTable(HOST_AGENT, OpenGate(), {**handlers, "Nope": (SESSION, print)})
    with pytest.raises(ValueError, match="administrator"):
        DispatchTable(HOST_AGENT, OpenGate(), {**handlers, "Login": (ADMINISTRATOR, print)})


def test_hostd_declares_what_each_call_needs(lab: Lab):
    needs = {name: e.need for name, e in lab.engine.running("esxi-01").table.entries.items()}
    assert needs["Login"] is PUBLIC
    assert needs["ListVms"] is needs["GetHostInfo"] is SESSION
    assert needs["PowerOnVm"] is needs["CreateUser"] is ADMINISTRATOR
    assert needs["PrepareVmotion"] is needs["StartVmotion"] is ADMINISTRATOR
    assert needs["ConfigureFdm"] is needs["GetFdmState"] is ADMINISTRATOR
    assert sum(n is ADMINISTRATOR for n in needs.values()) == 38
    # Host to host, a migration's stream is let in by its ticket alone (checked by the
    # service's own gate), never by a session.
    migrations = lab.engine.running("esxi-01").migrations.table
    assert {e.need for e in migrations.entries.values()} == {PUBLIC}
    # Likewise the HA agents' calls: the cluster's secret lets them in (Fdm.admit).
    fdm = lab.engine.running("esxi-01").fdm.table
    assert {e.need for e in fdm.entries.values()} == {PUBLIC}
