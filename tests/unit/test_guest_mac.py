"""The guest's MAC and the port security policy, through hostd, the vCenter core and
the CLI: SetGuestMac (runtime state of the guest, reset at every power-on), MAC
address changes, forged transmits (SendTestFrame's source MAC) and promiscuous mode,
set per vSwitch and port group from the API and from `vsim network ... add`.

The CLI runs its real handlers over the SDK client in-process: through vCenter's
dispatch table, with its session check, message copies and faults, as over gRPC.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vcenter_kernel import create, drops, get_vm, nic, receivers, send
from vclab import SUCCESS, Lab, small_cluster

from vsim import dispatch, virtual_time
from vsim.clock import SimClock
from vsim.cluster.cli import build_parser
from vsim.cluster.client import IN_PROCESS, VCenterClient
from vsim.dispatch import LocalTransport
from vsim.ethernet_frame import Frame
from vsim.faults import InvalidArgument, InvalidPowerState, NotFound, VimFault
from vsim.host.hostd.accounts import HostAccounts, MemoryAccountStore
from vsim.host.hostd.service import Hostd, vm_from_proto
from vsim.host.kernel.vmkernel import HostKernel
from vsim.host.storage.storage_stack import StorageStack
from vsim.network_messages import frame_to_proto
from vsim.passwords import hash_password
from vsim.runtime import Runtime
from vsim.spec import HostSpec
from vsim.v1 import host_agent_pb2 as hpb
from vsim.v1 import kernel_pb2 as kpb

BROADCAST = "ff:ff:ff:ff:ff:ff"
GUEST_MAC = "02:00:00:00:be:ef"
"""A locally administered MAC a guest might pick."""
OTHER_MAC = "02:00:00:00:ca:fe"


async def port_group(lab: Lab, name: str, vlan: int = 0, host: str = "esxi-01", **security):
    return await lab.client.add_port_group(
        host, name, vswitch="vSwitch0", vlan=vlan, security=kpb.SecurityPolicy(**security)
    )


async def set_guest_mac(lab: Lab, vm: str, mac: str, nic_: str = "") -> kpb.ConnectedNic:
    return await lab.client.set_guest_mac(vm, mac, nic=nic_)


async def running(lab: Lab, *vms: tuple[str, str]) -> None:
    """Creates and powers on each (name, port group) on esxi-01."""
    for name, pg in vms:
        assert (await create(lab, name, nics=[nic(pg)])).state == SUCCESS
        assert (await lab.power_on(name)).state == SUCCESS


async def mac_of(lab: Lab, vm: str) -> str:
    """The VM's configured MAC (ethernet0), as the inventory has it."""
    return (await get_vm(lab, vm)).nics[0].mac


async def ports(lab: Lab, host: str = "esxi-01") -> dict[tuple[str, str], kpb.ConnectedNic]:
    network = await lab.client.host_network(host)
    return {(n.vm, n.nic): n for n in network.nics}


@pytest.fixture
async def one_host(make_lab) -> Lab:
    return await make_lab(small_cluster(hosts=1))


# MAC address changes


async def test_mac_changes_reject_blocks_the_adapter_until_the_guest_changes_back(one_host):
    lab = one_host
    await port_group(lab, "Locked", mac_changes=False)
    await running(lab, ("a", "VM Network"), ("b", "Locked"))
    assert receivers(await send(lab, "a", dst_vm="b")) == [("esxi-01", "b", "ethernet0")]

    port = await set_guest_mac(lab, "b", GUEST_MAC.upper())
    assert (port.vm, port.nic, port.port_group) == ("b", "ethernet0", "Locked")
    assert (port.mac, port.effective_mac) == (await mac_of(lab, "b"), GUEST_MAC)
    for frame in ({"dst_mac": await mac_of(lab, "b")}, {"dst_mac": BROADCAST}):
        trace = await send(lab, "a", **frame)
        assert receivers(trace) == []
        assert drops(trace) == {("esxi-01", "b/ethernet0", "mac_change")}
        assert GUEST_MAC in trace.dropped[0].detail
    # The new MAC is no address of the port either: that frame finds no one.
    trace = await send(lab, "a", dst_mac=GUEST_MAC)
    assert (receivers(trace), drops(trace)) == ([], set())
    stats = await lab.client.vm_stats("b")
    assert stats.nics["ethernet0"].dropped["mac_change"] == 2

    port = await set_guest_mac(lab, "b", "")  # back to the configured MAC
    assert port.effective_mac == port.mac == await mac_of(lab, "b")
    assert receivers(await send(lab, "a", dst_vm="b")) == [("esxi-01", "b", "ethernet0")]
    await set_guest_mac(lab, "b", GUEST_MAC)
    await set_guest_mac(lab, "b", await mac_of(lab, "b"))  # the configured MAC, given explicitly
    assert receivers(await send(lab, "a", dst_vm="b")) == [("esxi-01", "b", "ethernet0")]


async def test_mac_changes_accept_the_adapter_is_known_by_its_new_mac(one_host):
    lab = one_host
    await port_group(lab, "Open", mac_changes=True, forged_transmits=False)
    await running(lab, ("a", "VM Network"), ("b", "Open"))
    await set_guest_mac(lab, "b", GUEST_MAC)
    trace = await send(lab, "a", dst_mac=GUEST_MAC)
    assert (receivers(trace), drops(trace)) == ([("esxi-01", "b", "ethernet0")], set())
    assert receivers(await send(lab, "a", dst_vm="b")) == []  # the configured MAC: gone
    # The guest sends with the MAC it set: no forged transmit, although they are rejected.
    trace = await send(lab, "b", dst_vm="a")
    assert trace.frame.src_mac == GUEST_MAC
    assert (receivers(trace), drops(trace)) == ([("esxi-01", "a", "ethernet0")], set())
    # Its configured MAC is now another MAC than its own.
    trace = await send(lab, "b", dst_vm="a", src_mac=await mac_of(lab, "b"))
    assert receivers(trace) == []
    assert drops(trace) == {("esxi-01", "b/ethernet0", "forged_transmit")}


async def test_the_guest_mac_is_runtime_state_and_resets_at_power_on(one_host):
    lab = one_host
    await running(lab, ("a", "VM Network"))
    configured = await mac_of(lab, "a")
    vms, events = await lab.vms(), len(await lab.events())
    await set_guest_mac(lab, "a", GUEST_MAC)
    assert (await ports(lab))["a", "ethernet0"].effective_mac == GUEST_MAC
    assert await lab.vms() == vms  # the inventory keeps the configuration only
    assert len(await lab.events()) == events
    host_vm = lab.engine.running("esxi-01").kernel.vm("a")
    assert [n.mac for n in host_vm.nics] == [configured]
    await lab.restart()
    assert (await ports(lab))["a", "ethernet0"].effective_mac == GUEST_MAC  # the host's state
    assert (await lab.power_off("a")).state == SUCCESS
    with pytest.raises(InvalidPowerState, match="powered off"):
        await set_guest_mac(lab, "a", GUEST_MAC)
    assert (await lab.power_on("a")).state == SUCCESS
    port = (await ports(lab))["a", "ethernet0"]
    assert port.effective_mac == port.mac == configured


async def test_bad_guest_macs_are_refused_and_change_nothing(one_host):
    lab = one_host
    assert (await create(lab, "two", nics=[nic(), nic()])).state == SUCCESS
    assert (await lab.power_on("two")).state == SUCCESS
    await set_guest_mac(lab, "two", GUEST_MAC, "ethernet1")
    before, events = await ports(lab), len(await lab.events())
    for vm, nic_, mac, fault, words in [
        ("two", "", "00:50:56:zz:00:01", InvalidArgument, "not a MAC"),
        ("two", "", "01:00:5e:00:00:01", InvalidArgument, "multicast"),
        ("two", "", BROADCAST, InvalidArgument, "multicast"),
        ("two", "", "00:00:00:00:00:00", InvalidArgument, "not a usable"),
        ("two", "ethernet3", OTHER_MAC, NotFound, "ethernet3"),
        ("two", "eth0", OTHER_MAC, NotFound, "eth0"),
        ("nope", "", OTHER_MAC, NotFound, "nope"),
    ]:
        with pytest.raises(fault, match=words):
            await set_guest_mac(lab, vm, mac, nic_)
        assert await ports(lab) == before
        assert len(await lab.events()) == events
    assert before["two", "ethernet1"].effective_mac == GUEST_MAC


# forged transmits and promiscuous mode


async def test_forged_transmits_reject_drops_a_frame_from_another_mac(one_host):
    lab = one_host
    await port_group(lab, "Strict", forged_transmits=False)
    await port_group(lab, "Loose", forged_transmits=True)
    await running(lab, ("s", "Strict"), ("l", "Loose"), ("dst", "VM Network"))
    forged = "00:50:56:3f:00:01"
    trace = await send(lab, "s", dst_vm="dst", src_mac=forged)
    assert (trace.frame.src_mac, receivers(trace)) == (forged, [])
    (drop,) = trace.dropped
    assert (drop.host, drop.where, drop.reason) == ("esxi-01", "s/ethernet0", "forged_transmit")
    assert forged in drop.detail and await mac_of(lab, "s") in drop.detail
    own = await send(lab, "s", dst_vm="dst", src_mac=(await mac_of(lab, "s")).upper())
    assert receivers(own) == [("esxi-01", "dst", "ethernet0")]
    trace = await send(lab, "l", dst_vm="dst", src_mac=forged)
    assert (receivers(trace), drops(trace)) == ([("esxi-01", "dst", "ethernet0")], set())
    assert trace.frame.src_mac == forged
    stats = await lab.client.vm_stats("s")
    assert (stats.nics["ethernet0"].tx, stats.nics["ethernet0"].dropped["forged_transmit"]) == (
        1,
        1,
    )


async def test_promiscuous_accept_sees_unicast_of_others_in_its_vlan_only(one_host):
    lab = one_host
    await port_group(lab, "Prod", vlan=10)
    await port_group(lab, "Dev", vlan=20)
    await port_group(lab, "Tap", vlan=10, allow_promiscuous=True)
    vms = {"a": "Prod", "b": "Prod", "c": "Prod", "tap": "Tap", "d1": "Dev", "d2": "Dev"}
    await running(lab, *vms.items())
    trace = await send(lab, "a", dst_vm="b")
    assert sorted(receivers(trace)) == [
        ("esxi-01", "b", "ethernet0"),
        ("esxi-01", "tap", "ethernet0"),
    ]  # not c, in VLAN 10 too but not promiscuous
    assert receivers(await send(lab, "d1", dst_vm="d2")) == [("esxi-01", "d2", "ethernet0")]
    # A frame for a MAC nobody has in VLAN 10 leaves the host; the tap sees it too.
    assert receivers(await send(lab, "a", dst_mac=OTHER_MAC)) == [("esxi-01", "tap", "ethernet0")]
    assert receivers(await send(lab, "d1", dst_mac=OTHER_MAC)) == []


# hostd: a model of the effective MAC over random histories


class _Root:
    """One host's hostd, called as root through its dispatch table (the session
    check and message copies a remote caller gets)."""

    def __init__(self, hostd: Hostd) -> None:
        self.hostd = hostd
        self.session = hostd.accounts.login("root", ROOT_PASSWORD)

    async def __call__(self, method: str, request):
        return await dispatch.call(self.hostd.table, method, request, self.session)


async def _hostd() -> _Root:
    """One host with VM "g": ethernet0 on a port group rejecting MAC changes,
    ethernet1 on VM Network (accepting them); and VM "peer" on VM Network."""
    spec = HostSpec("esxi-01", cpu_cores=4, cpu_mhz=2000, memory_mb=8192)
    accounts = HostAccounts(MemoryAccountStore(), _root_hash())
    clock = SimClock(100.0)
    runtime = Runtime.simulated(clock, 0)
    storage = StorageStack(spec.host_uuid, spec.name, runtime)
    root = _Root(Hostd(HostKernel(spec, clock), accounts, storage, runtime))
    hostd = root.hostd
    pg = kpb.PortGroup(
        name="Locked", vswitch="vSwitch0", security=kpb.SecurityPolicy(mac_changes=False)
    )
    await root("AddPortGroup", hpb.AddPortGroupRequest(port_group=pg))
    for name, nics in (("g", [("ethernet0", "Locked"), ("ethernet1", "VM Network")]),
                       ("peer", [("ethernet0", "VM Network")])):  # fmt: skip
        vm = hpb.HostVm(
            name=name,
            uuid=f"00000000-0000-0000-0000-{len(name):012d}",
            cpus=1,
            memory_mb=64,
            resources=kpb.VmResources(
                memory_workload=kpb.GuestMemoryWorkload(working_set_pct=1, boot_touch_pct=1)
            ),
            nics=[kpb.VmNic(name=n, port_group=pg_, mac=CONFIGURED[name, n]) for n, pg_ in nics],
        )
        hostd.kernel.register_vm(vm_from_proto(vm))
    hostd.kernel.power_on("peer")
    return root


CONFIGURED = {
    ("g", "ethernet0"): "00:50:56:80:00:01",
    ("g", "ethernet1"): "00:50:56:80:00:02",
    ("peer", "ethernet0"): "00:50:56:80:00:03",
}
ROOT_PASSWORD = "Root-Pass-0123"
_ROOT_HASH: list[str] = []


def _root_hash() -> str:
    if not _ROOT_HASH:  # one scrypt for the whole module
        _ROOT_HASH.append(hash_password(ROOT_PASSWORD))
    return _ROOT_HASH[0]


MACS = st.sampled_from(
    ["", GUEST_MAC, OTHER_MAC, "02-00-00-00-CA-FE", "00:50:56:80:00:01", "00:50:56:80:00:02",
     "01:00:5e:00:00:01", BROADCAST, "bad", "00:00:00:00:00:00"]
)  # fmt: skip
OPS = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(["", "ethernet0", "ethernet1", "ethernet7"]), MACS),
    st.tuples(st.just("power"), st.booleans()),
)


def _canonical(mac: str) -> str | None:
    """What a guest's MAC becomes, or None if the host must refuse it."""
    try:
        frame = Frame(mac, BROADCAST)
    except VimFault:
        return None
    first = int(frame.src_mac[:2], 16)
    if first & 1 or frame.src_mac == "00:00:00:00:00:00":
        return None
    return frame.src_mac


@settings(
    max_examples=200,
    deadline=None,
    # fast_scrypt holds for every example: each logs in as root.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=st.lists(OPS, max_size=25))
def test_the_effective_mac_follows_a_model_and_gates_reception(fast_scrypt, ops):
    virtual_time.run(_effective_mac_history(ops))


async def _effective_mac_history(ops) -> None:
    root = await _hostd()
    kernel = root.hostd.kernel
    powered = False
    model: dict[str, str] = {}
    for kind, *args in ops:
        if kind == "power":
            if args[0] and not powered:
                kernel.power_on("g")
                model = {n: CONFIGURED["g", n] for n in ("ethernet0", "ethernet1")}
            elif not args[0] and powered:
                kernel.power_off("g")
                model = {}
            powered = kernel.vm("g").powered_on
            continue
        nic_, mac = args
        request = kpb.SetGuestMacRequest(vm="g", nic=nic_, mac=mac)
        name = nic_ or "ethernet0"
        wanted = CONFIGURED.get(("g", name)) if mac == "" else _canonical(mac)
        others = [n for n in model if n != name]
        taken = {CONFIGURED["peer", "ethernet0"]}
        taken |= {CONFIGURED["g", n] for n in others} | {model[n] for n in others}
        if wanted in taken:  # another adapter's address on the vSwitch: refused
            wanted = None
        try:
            port = await root("SetGuestMac", request)
        except InvalidPowerState:
            assert not powered
        except NotFound:
            assert powered and name not in model
        except InvalidArgument:
            assert powered and name in model and wanted is None
        else:
            assert powered and wanted is not None
            model[name] = wanted
            assert (port.nic, port.mac, port.effective_mac) == (name, CONFIGURED["g", name], wanted)
        # The configuration never changes; the ports are exactly the model.
        assert [n.mac for n in kernel.vm("g").nics] == [
            CONFIGURED["g", "ethernet0"],
            CONFIGURED["g", "ethernet1"],
        ]
        network = await root("GetNetwork", hpb.GetNetworkRequest())
        assert {n.nic: n.effective_mac for n in network.nics if n.vm == "g"} == model
        if not powered:
            continue
        # A broadcast reaches ethernet1 always and ethernet0 only while unchanged; a
        # frame to ethernet1's effective MAC reaches it.
        frame = frame_to_proto(Frame(CONFIGURED["peer", "ethernet0"], BROADCAST))
        sent = await root("SendFrame", hpb.SendFrameRequest(vm="peer", frame=frame))
        got = {(r.vm, r.nic) for r in sent.received}
        locked_open = model["ethernet0"] == CONFIGURED["g", "ethernet0"]
        assert (("g", "ethernet0") in got) == locked_open
        assert ("g", "ethernet1") in got
        frame.dst_mac = model["ethernet1"]
        sent = await root("SendFrame", hpb.SendFrameRequest(vm="peer", frame=frame))
        assert ("g", "ethernet1") in {(r.vm, r.nic) for r in sent.received}


# the CLI


class Recorded(LocalTransport):
    """`VCenterClient.in_process`'s transport (vCenter's dispatch table in this
    process), noting the name of every call the client makes."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(lab.vc.table)
        self.calls: list[str] = []

    async def call(self, method: str, request, session: str | None, timeout=None):
        self.calls.append(method)
        return await super().call(method, request, session, timeout)


class Shell:
    """What a command handler needs of cli.Context: a client, and somewhere to show."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.rpc = Recorded(lab)
        self.shown: list[tuple[object, str]] = []

    async def client(self) -> VCenterClient:
        return VCenterClient(self.rpc, IN_PROCESS, "", self.lab.token)

    def show(self, value: object, text: str) -> None:
        self.shown.append((value, text))


async def vsim(lab: Lab, *argv: str) -> tuple[object, str, list[str]]:
    """Runs one CLI command; what it showed and the RPCs it made."""
    args = build_parser().parse_args(list(argv))
    shell = Shell(lab)
    await args.handler(args, shell)
    ((value, text),) = shell.shown
    return value, text, shell.rpc.calls


def rows(text: str) -> dict[str, list[str]]:
    """A table's rows by their first cell (cells split on runs of 2+ spaces)."""
    lines = [re.split(r"\s{2,}", line.strip()) for line in text.splitlines()]
    head, *body = lines
    return {row[0]: row for row in [head, *body]}


async def test_cli_sets_security_policy_and_lists_it(one_host):
    lab = one_host
    _, text, _ = await vsim(
        lab, "network", "vswitch", "add", "esxi-01", "vSwitch1", "--uplink", "vmnic1",
        "--promiscuous", "accept", "--forged-transmits", "reject",
    )  # fmt: skip
    table = rows(text)
    assert table["NAME"][-3:] == ["PROMISCUOUS", "MAC_CHANGES", "FORGED_TRANSMITS"]
    assert table["vSwitch1"][-3:] == ["accept", "accept", "reject"]  # unset: the default
    assert table["vSwitch0"][-3:] == ["reject", "accept", "accept"]
    await vsim(lab, "network", "portgroup", "add", "esxi-01", "Locked", "--mac-changes", "reject")
    await vsim(lab, "network", "portgroup", "add", "esxi-01", "Lab", "--vswitch", "vSwitch1",
               "--vlan", "30", "--promiscuous", "reject")  # fmt: skip
    value, text, _ = await vsim(lab, "network", "portgroup", "list", "esxi-01")
    table = rows(text)
    assert table["Locked"][-3:] == ["inherit (reject)", "reject", "inherit (accept)"]
    assert table["Lab"][-3:] == ["reject", "inherit (accept)", "inherit (reject)"]
    by_name = {p.name: p for p in value}
    assert by_name["Locked"].security == kpb.SecurityPolicy(mac_changes=False)
    assert not by_name["Lab"].security.HasField("mac_changes")
    network = lab.engine.running("esxi-01").kernel.network
    assert network.effective_security("Lab").allow_promiscuous is False
    assert network.effective_security("Lab").forged_transmits is False
    assert network.vswitch("vSwitch1").security.allow_promiscuous is True
    events = [e.message for e in (await lab.events())[-3:]]
    assert "promiscuous mode accept, forged transmits reject" in events[0]
    assert "VLAN 0, MAC address changes reject" in events[1]
    with pytest.raises(SystemExit):  # argparse: not accept or reject
        build_parser().parse_args(["network", "portgroup", "add", "h", "p", "--mac-changes", "no"])


async def test_cli_guest_mac_and_a_forged_frame(one_host, capsys):
    lab = one_host
    await vsim(lab, "network", "portgroup", "add", "esxi-01", "Strict",
               "--mac-changes", "reject", "--forged-transmits", "reject")  # fmt: skip
    await running(lab, ("a", "VM Network"), ("b", "Strict"))
    port, text, calls = await vsim(lab, "vm", "nic", "guest-mac", "b", GUEST_MAC.upper())
    assert calls == ["SetGuestMac"]
    assert port.effective_mac == GUEST_MAC
    assert text == (
        f"b/ethernet0 on Strict: MAC {GUEST_MAC} (configured {await mac_of(lab, 'b')}, "
        "changed by the guest)"
    )
    trace, text, _ = await vsim(lab, "network", "send-frame", "a", "--to-vm", "b")
    assert drops(trace) == {("esxi-01", "b/ethernet0", "mac_change")}
    assert "b/ethernet0: mac_change" in text
    trace, text, _ = await vsim(
        lab, "network", "send-frame", "b", "--to-vm", "a", "--src-mac", await mac_of(lab, "b")
    )
    assert drops(trace) == {("esxi-01", "b/ethernet0", "forged_transmit")}
    assert "forged_transmit" in text and receivers(trace) == []
    port, text, _ = await vsim(lab, "vm", "nic", "guest-mac", "b", "reset", "--nic", "ethernet0")
    assert port.effective_mac == port.mac and "changed" not in text
    trace, _, _ = await vsim(lab, "network", "send-frame", "a", "--to-vm", "b")
    assert receivers(trace) == [("esxi-01", "b", "ethernet0")]
    trace, _, _ = await vsim(
        lab, "network", "send-frame", "b", "--to-vm", "a", "--src-mac", await mac_of(lab, "b")
    )
    assert receivers(trace) == [("esxi-01", "a", "ethernet0")]  # its own MAC again
    # What the user typed is checked before anything is sent.
    for argv, words in [
        (("vm", "nic", "guest-mac", "b", "01:00:5e:00:00:01"), "multicast"),
        (("vm", "nic", "guest-mac", "b", "nonsense"), "not a MAC"),
        (("network", "send-frame", "a", "--to-vm", "b", "--src-mac", "zz"), "--src-mac"),
    ]:
        shell = Shell(lab)
        args = build_parser().parse_args(list(argv))
        with pytest.raises(InvalidArgument, match=words):
            await args.handler(args, shell)
        assert shell.rpc.calls == []
    with pytest.raises(NotFound, match="ethernet4"):
        await vsim(lab, "vm", "nic", "guest-mac", "b", GUEST_MAC, "--nic", "ethernet4")
    assert (await ports(lab))["b", "ethernet0"].effective_mac == await mac_of(lab, "b")
