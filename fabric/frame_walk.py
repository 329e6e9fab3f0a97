"""One frame's walk from a VM's vNIC across the hosts and the physical switch, and the
trace it leaves: who received the frame (and as what), who dropped it and why.

The walk is the same whoever carries the frames: the sender's host sends the frame
through its vSwitch, which hands back (uplink, frame) pairs for the wire; the switch
turns each into (host, uplink, frame) deliveries; each goes into that host's vSwitch
at the uplink, which delivers it to local ports only and never sends it out again (no
loops), so the walk ends there. `walk` is that walk as a generator of steps: it yields
`Send` and `Receive`, a driver answers each with what the hosts did (`HostPart`, or
`Unreachable` for a host it cannot reach, whose copy then stops at its switch port with
DROP_HOST_UNREACHABLE), and it returns the `Trace`. A generator lets one walk serve a
driver that calls cores in-process (`run`: fabric.network.Network) and one that calls
hosts over RPC (`run_async`: vCenter's SendTestFrame, all copies of one forwarding at
once).

A driver also names the drops that only say a host discarded a copy flooded to it
(`flooded_copy_discards`); the walk leaves those out of what the receiving hosts did.

Never does: look inside a host (it sees what the driver reports), change the switch's
configuration, I/O or time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from vsim.ethernet_frame import Frame
from vsim.fabric.physical_switch import DROP_HOST_UNREACHABLE, FabricDrop, PhysicalSwitch


@dataclass(frozen=True)
class Reception:
    """One vNIC that received the frame."""

    host: str
    vm: str
    nic: str
    frame: Frame
    """As its guest got it (the tag kept only on a VGT port group)."""


@dataclass(frozen=True)
class TraceDrop:
    """One place the frame (or a copy) stopped."""

    host: str
    where: str
    """A vNIC ("vm-001/ethernet0"), a host's uplink ("vmnic0") or a switch port
    ("pswitch-01:esxi-02/vmnic1")."""
    reason: str
    """The vSwitch's or the switch's DROP_* value."""
    detail: str
    switch: str = ""
    """The physical switch whose port it stopped at; "" when a host stopped it."""


@dataclass(frozen=True)
class Trace:
    """A frame's whole journey."""

    host: str
    vm: str
    nic: str
    frame: Frame
    """What the guest sent."""
    received: tuple[Reception, ...]
    dropped: tuple[TraceDrop, ...]
    wire: tuple[tuple[str, str, Frame], ...]
    """(host, uplink, frame) each time a copy went between a host and the switch:
    first what left the sender's host, then what the switch delivered."""

    def receivers(self) -> list[tuple[str, str, str]]:
        """(host, vm, nic) of every receiver, in delivery order."""
        return [(r.host, r.vm, r.nic) for r in self.received]

    def reasons(self) -> Counter[str]:
        return Counter(d.reason for d in self.dropped)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `-o json`."""
        return {
            "from": {"host": self.host, "vm": self.vm, "nic": self.nic},
            "frame": _frame_dict(self.frame),
            "received": [
                {"host": r.host, "vm": r.vm, "nic": r.nic, "vlan": r.frame.vlan}
                for r in self.received
            ],
            "dropped": [
                {"host": d.host, "where": d.where, "reason": d.reason, "detail": d.detail}
                for d in self.dropped
            ],
            "wire": [{"host": h, "uplink": u, "vlan": f.vlan} for h, u, f in self.wire],
        }


def _frame_dict(frame: Frame) -> dict[str, Any]:
    return {
        "src_mac": frame.src_mac,
        "dst_mac": frame.dst_mac,
        "vlan": frame.vlan,
        "protocol": frame.protocol,
        "src_ip": frame.src_ip,
        "dst_ip": frame.dst_ip,
        "src_port": frame.src_port,
        "dst_port": frame.dst_port,
        "payload_bytes": len(frame.payload),
    }


# ---- what a driver reports, and what the walk asks of it


class HostPart(NamedTuple):
    """What one host did with the frame or a copy. (A tuple: built per frame.)"""

    received: tuple[Reception, ...]
    dropped: tuple[TraceDrop, ...]
    sent: tuple[tuple[str, Frame], ...] = ()
    """(uplink, frame as it goes on the wire); a host sends nothing on from an uplink."""


class Unreachable(NamedTuple):
    """The host did not take its copy (it is down, or does not answer)."""

    detail: str


class Send(NamedTuple):
    """Step: the guest of vm sends `frame` out of adapter `nic` on `host`; answer with
    a HostPart."""

    host: str
    vm: str
    nic: str
    frame: Frame


class Receive(NamedTuple):
    """Step: each (host, uplink, frame) arrives at that host's uplink; answer with one
    HostPart or Unreachable per delivery, in the same order."""

    deliveries: tuple[tuple[str, str, Frame], ...]


Step = Send | Receive
Answer = HostPart | Sequence[HostPart | Unreachable]


class HostDriver(Protocol):
    """The hosts, called in-process."""

    @property
    def flooded_copy_discards(self) -> frozenset[str]:
        """Drop reasons a receiving host's part of the trace leaves out."""
        ...

    def send(self, host: str, vm: str, nic: str, frame: Frame) -> HostPart: ...

    def receive(self, host: str, uplink: str, frame: Frame) -> HostPart | Unreachable: ...


class AsyncHostDriver(Protocol):
    """The hosts, called over RPC."""

    @property
    def flooded_copy_discards(self) -> frozenset[str]:
        """Drop reasons a receiving host's part of the trace leaves out."""
        ...

    async def send(self, host: str, vm: str, nic: str, frame: Frame) -> HostPart: ...

    async def receive(self, host: str, uplink: str, frame: Frame) -> HostPart | Unreachable: ...


# ---- the walk


def walk(
    switch: PhysicalSwitch,
    host: str,
    vm: str,
    nic: str,
    frame: Frame,
    flooded_copy_discards: frozenset[str] = frozenset(),
) -> Generator[Step, Any, Trace]:
    """The frame's walk, one step per yield; returns its trace."""
    first: HostPart = yield Send(host, vm, nic, frame)
    received = list(first.received)
    dropped = list(first.dropped)
    wire: list[tuple[str, str, Frame]] = []
    for uplink, copy in first.sent:
        wire.append((host, uplink, copy))
        forwarding = switch.forward(host, uplink, copy)
        for drop in forwarding.dropped:
            dropped.append(_at_switch(switch.name, drop))
        if not forwarding.deliveries:
            continue
        wire.extend(forwarding.deliveries)
        parts = yield Receive(forwarding.deliveries)
        # The parts join the trace in the switch's port order, so a trace reads the
        # same however the driver ran the deliveries.
        for (to_host, to_uplink, _), part in zip(forwarding.deliveries, parts, strict=True):
            if isinstance(part, Unreachable):
                drop = FabricDrop(to_host, to_uplink, DROP_HOST_UNREACHABLE, part.detail)
                dropped.append(_at_switch(switch.name, drop))
                continue
            received.extend(part.received)
            if part.dropped:
                dropped.extend(d for d in part.dropped if d.reason not in flooded_copy_discards)
    return Trace(host, vm, nic, frame, tuple(received), tuple(dropped), tuple(wire))


def _at_switch(switch: str, drop: FabricDrop) -> TraceDrop:
    where = f"{switch}:{drop.host}/{drop.uplink}"
    return TraceDrop(drop.host, where, drop.reason, drop.detail, switch)


def run(
    switch: PhysicalSwitch, driver: HostDriver, host: str, vm: str, nic: str, frame: Frame
) -> Trace:
    """The walk, with each step answered by calling the driver."""
    steps = walk(switch, host, vm, nic, frame, driver.flooded_copy_discards)
    send, receive = driver.send, driver.receive
    step = next(steps)
    while True:
        answer: Answer
        if type(step) is Send:
            answer = send(*step)
        else:
            answer = [receive(h, u, f) for h, u, f in step.deliveries]
        try:
            step = steps.send(answer)
        except StopIteration as done:
            return done.value


async def run_async(
    switch: PhysicalSwitch, driver: AsyncHostDriver, host: str, vm: str, nic: str, frame: Frame
) -> Trace:
    """The walk, with each step awaited; the hosts of one forwarding take their
    copies at once."""
    steps = walk(switch, host, vm, nic, frame, driver.flooded_copy_discards)
    step = next(steps)
    while True:
        answer: Answer
        if isinstance(step, Send):
            answer = await driver.send(step.host, step.vm, step.nic, step.frame)
        else:
            answer = await asyncio.gather(*(driver.receive(h, u, f) for h, u, f in step.deliveries))
        try:
            step = steps.send(answer)
        except StopIteration as done:
            return done.value
