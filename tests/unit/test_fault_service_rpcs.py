"""The fault service (cluster/fault_service.py) on a vCenter core with the in-process
engine and array, called as a client would (the SDK, through its dispatch table):
bad input to every RPC is a clear fault that changes nothing, every call is an
administrator's, calls that change something are events, and disk latency, the
array's restart, list and clear do what they say on the array itself."""

from __future__ import annotations

import asyncio
import math

import pytest
from vclab import Lab

from vsim.cluster.client import VCenterClient
from vsim.cluster.fault_service import FaultService
from vsim.faults import InvalidArgument, InvalidState, NoPermission, NotAuthenticated, NotFound
from vsim.iscsi import initiator_name
from vsim.passwords import hash_password
from vsim.spec import ClusterSpec
from vsim.v1 import fault_pb2 as pb
from vsim.v1 import host_agent_pb2 as hpb


@pytest.fixture
async def lab(tmp_path, fast_scrypt):
    lab = Lab(tmp_path / "vc", array=True)
    await lab.boot(ClusterSpec.default(2))
    lab.faults = FaultService(lab.vc)
    lab.client = VCenterClient.in_process(lab.vc.table, lab.token, lab.faults.table)
    yield lab
    await lab.close()


def state(lab: Lab) -> tuple:
    """What a fault call could change: the service's faults, the array's latencies
    and reservations, the hosts' connection states, the event log's length."""
    return (
        dict(lab.faults._faults),
        dict(lab.array.latency),
        {i: lun.reservation for i, lun in lab.array.luns.items()},
        lab.array.generation,
        [(h.name, h.connection_state) for h in lab.vc.inventory.hosts()],
        len(lab.vc.inventory.events_after(0, 10_000)),
    )


BAD_INPUT = [
    ("CrashHost", pb.HostFaultRequest(host="esxi-99"), NotFound),
    ("CrashHost", pb.HostFaultRequest(host=""), NotFound),
    ("HangHost", pb.HangHostRequest(host="esxi-99", seconds=5), NotFound),
    ("HangHost", pb.HangHostRequest(host="esxi-01", seconds=-1), InvalidArgument),
    ("HangHost", pb.HangHostRequest(host="esxi-01", seconds=math.nan), InvalidArgument),
    ("HangHost", pb.HangHostRequest(host="esxi-01", seconds=1e9), InvalidArgument),
    ("PowerOnHost", pb.HostFaultRequest(host="esxi-99"), NotFound),
    ("SetLink", pb.SetLinkRequest(host="esxi-99", network="storage", state="down"), NotFound),
    (
        "SetLink",
        pb.SetLinkRequest(host="esxi-01", network="backup", state="down"),
        InvalidArgument,
    ),
    ("SetLink", pb.SetLinkRequest(host="esxi-01", network="", state="down"), InvalidArgument),
    (
        "SetLink",
        pb.SetLinkRequest(host="esxi-01", network="storage", state="sideways"),
        InvalidArgument,
    ),
    ("SetLink", pb.SetLinkRequest(host="esxi-01", network="storage"), InvalidArgument),
    ("SetDiskLatency", pb.DiskLatencyRequest(datastore="nope", milliseconds=5), NotFound),
    ("SetDiskLatency", pb.DiskLatencyRequest(datastore="", milliseconds=5), NotFound),
    (
        "SetDiskLatency",
        pb.DiskLatencyRequest(datastore="vmfs-01", milliseconds=-5),
        InvalidArgument,
    ),
    (
        "SetDiskLatency",
        pb.DiskLatencyRequest(datastore="nfs-01", milliseconds=60_001),
        InvalidArgument,
    ),
    (
        "SetDiskLatency",
        pb.DiskLatencyRequest(datastore="vmfs-01", milliseconds=math.inf),
        InvalidArgument,
    ),
]


@pytest.mark.parametrize(
    "method, request_, fault", BAD_INPUT, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD_INPUT)]
)
async def test_bad_input_is_a_clear_fault_and_changes_nothing(lab, method, request_, fault):
    await lab.client.set_disk_latency("nfs-01", 7)  # something in place already
    before = state(lab)
    with pytest.raises(fault) as raised:
        await lab.client._fault(method, request_)
    assert len(raised.value.message) > 20  # says what was wrong
    assert state(lab) == before


ALL_CALLS = [
    ("CrashHost", pb.HostFaultRequest(host="esxi-01")),
    ("HangHost", pb.HangHostRequest(host="esxi-01", seconds=5)),
    ("PowerOnHost", pb.HostFaultRequest(host="esxi-01")),
    ("SetLink", pb.SetLinkRequest(host="esxi-01", network="storage", state="down")),
    ("SetDiskLatency", pb.DiskLatencyRequest(datastore="vmfs-01", milliseconds=5)),
    ("RestartArray", pb.RestartArrayFaultRequest()),
    ("ListFaults", pb.ListFaultsRequest()),
    ("ClearFaults", pb.ClearFaultsRequest()),
]


def test_every_rpc_of_the_service_is_an_administrators():
    from vsim.dispatch import ADMINISTRATOR
    from vsim.v1 import fault_pb2

    methods = {m.name for m in fault_pb2.DESCRIPTOR.services_by_name["Faults"].methods}
    assert methods == {m for m, _ in ALL_CALLS}
    for method in methods:
        assert getattr(FaultService, method).__vsim_need__ is ADMINISTRATOR


@pytest.mark.parametrize("method, request_", ALL_CALLS, ids=[m for m, _ in ALL_CALLS])
async def test_only_an_administrator_may_call(lab, method, request_):
    lab.vc.inventory.set_account("viewer", hash_password("Viewer-Pass-01"), "ReadOnly")
    viewer = await lab.login("viewer", "Viewer-Pass-01")
    lab.array.luns[0].reserve(initiator_name("esxi-01"))
    before = state(lab)
    as_viewer = VCenterClient.in_process(lab.vc.table, viewer, lab.faults.table)
    with pytest.raises(NoPermission):
        await as_viewer._fault(method, request_)
    anonymous = VCenterClient.in_process(lab.vc.table, None, lab.faults.table)
    with pytest.raises(NotAuthenticated):
        await anonymous._fault(method, request_)
    assert state(lab) == before
    assert lab.array.luns[0].reservation == initiator_name("esxi-01")


async def events_of(lab: Lab, kind: str) -> list:
    return [e for e in await lab.client.events() if e.type == kind]


async def test_disk_latency_reaches_the_array_is_listed_and_is_an_event(lab):
    answer = await lab.client.set_disk_latency("vmfs-01", 250)
    lun = lab.vc.inventory.datastore("vmfs-01").lun
    assert lab.array.lun_latency(lun) == 0.25
    assert [(f.kind, f.target, f.detail) for f in answer.faults] == [
        ("disk-latency", "vmfs-01", "250 ms")
    ]
    await lab.client.set_disk_latency("nfs-01", 40)
    assert lab.array.export_latency("nfs-01") == 0.04
    (event, _) = await events_of(lab, "FaultInjectedEvent")
    assert "vmfs-01" in event.message and "250 ms" in event.message
    assert event.user == "administrator@vsphere.local"
    listed = await lab.client.faults()
    assert {f.target for f in listed.faults} == {"vmfs-01", "nfs-01"}
    await lab.client.set_disk_latency("vmfs-01", 0)  # mended
    assert lab.array.lun_latency(lun) == 0
    assert [f.target for f in (await lab.client.faults()).faults] == ["nfs-01"]


async def test_array_restart_drops_reservations_and_is_an_event(lab):
    lab.array.luns[0].reserve(initiator_name("esxi-02"))
    answer = await lab.client.restart_array()
    assert lab.array.luns[0].reservation is None
    assert lab.array.generation == 1
    assert "LUNs: 0" in answer.message
    (event,) = await events_of(lab, "FaultInjectedEvent")
    assert "Restarted the storage array" in event.message


async def test_clear_mends_every_disk_and_is_an_event(lab):
    await lab.client.set_disk_latency("vmfs-01", 100)
    await lab.client.set_disk_latency("nfs-01", 100)
    answer = await lab.client.clear_faults()
    assert list(answer.faults) == []
    assert lab.array.latency == {}
    (event,) = await events_of(lab, "FaultClearedEvent")
    assert event.message == "Cleared 2 fault(s)"


# host faults, through the in-process engine's fault methods


async def test_crash_and_power_on_act_on_the_engine_and_are_events(lab):
    answer = await lab.client.crash_host("esxi-01")
    assert lab.engine.running("esxi-01") is None
    assert [(f.kind, f.target) for f in answer.faults] == [("host-crash", "esxi-01")]
    before = state(lab)
    for again in (
        lab.client.crash_host("esxi-01"),
        lab.client.hang_host("esxi-01", 5),
        lab.client.set_link("esxi-01", "storage", "down"),
    ):
        with pytest.raises(InvalidState, match="crashed; power it on"):
            await again
    assert state(lab) == before
    await lab.client.power_on_host("esxi-01")
    assert lab.engine.running("esxi-01") is not None
    assert list((await lab.client.faults()).faults) == []
    messages = [e.message for e in await events_of(lab, "FaultInjectedEvent")]
    assert messages == ["Crashed host esxi-01 (pulled the plug)", "Powered on host esxi-01"]


async def test_links_cut_one_network_and_clear_mends_them(lab):
    await lab.client.set_link("esxi-02", "storage", "down")
    await lab.client.set_link("esxi-02", "vmotion", "down")
    assert not lab.engine.link_up("esxi-02", "storage")
    assert not lab.engine.link_up("esxi-02", "vmotion")
    assert lab.engine.link_up("esxi-02", "management")
    listed = await lab.client.faults()
    assert sorted(f.detail for f in listed.faults) == ["storage down", "vmotion down"]
    await lab.client.set_link("esxi-02", "vmotion", "up")
    assert lab.engine.link_up("esxi-02", "vmotion")
    await lab.client.crash_host("esxi-01")
    answer = await lab.client.clear_faults()
    assert answer.message == "Cleared 2 fault(s)"
    assert lab.engine.link_up("esxi-02", "storage")
    assert lab.engine.running("esxi-01") is not None


async def test_a_hang_is_listed_until_it_ends_by_itself(lab):
    await lab.client.hang_host("esxi-02", 20)
    assert lab.engine.hung("esxi-02")
    (hang,) = (await lab.client.faults()).faults
    assert (hang.kind, hang.target, hang.detail) == ("host-hang", "esxi-02", "for 20.0 s more")
    await lab.clock.sleep(19)
    assert lab.engine.hung("esxi-02")
    await lab.clock.sleep(2)
    assert not lab.engine.hung("esxi-02")
    assert list((await lab.client.faults()).faults) == []


async def test_clear_ends_a_hang_at_once_and_the_host_answers_again(lab):
    await lab.client.hang_host("esxi-02", 600)
    answer = await lab.client.clear_faults()
    assert answer.message == "Cleared 1 fault(s)"
    assert not lab.engine.hung("esxi-02")
    assert list((await lab.client.faults()).faults) == []
    async with asyncio.timeout(1):  # answered now, not when the 600 s would have passed
        info = await lab.vc.hosts.call("esxi-02", "GetHostInfo", hpb.GetHostInfoRequest())
    assert info.name == "esxi-02"
