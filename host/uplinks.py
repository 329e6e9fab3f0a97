"""A host's physical uplinks, one per network it has (management, storage, vmotion),
and whether the host itself is hung: the state the fault service breaks and mends on
a live host (the Ray actor's shell holds one).

Every message a host sends or answers crosses one of them (`cross`): hostd's calls
cross management, the host's SCSI and NFS commands storage. A cut uplink drops the
traffic both ways - the call fails at once as a refused connection would
(HostConnectFault), the other networks keep working. While the host is hung nothing
crosses any uplink until the hang ends: calls wait, as on a host whose hostd and
storage stack stall (the caller's own timeout is what ends its wait). Nothing crosses
vmotion yet (vMotion is a later issue): its state is kept and enforced on whatever
will cross it.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from vsim.clock import Clock
from vsim.dispatch import DispatchTable, Entry
from vsim.faults import HostConnectFault, InvalidArgument

NETWORKS = ("management", "storage", "vmotion")
MAX_HANG = 3600.0
"""The longest hang (seconds): long enough for any timeout to fire, short enough
that a forgotten one ends by itself."""


class Uplinks:
    def __init__(self, host: str, clock: Clock) -> None:
        self.host = host
        self.clock = clock
        self.down: set[str] = set()
        self.hung_until = 0.0
        """Clock time the current hang ends (0 or past: not hung)."""
        self._resumed = asyncio.Event()
        self._resumed.set()

    def set_link(self, network: str, up: bool) -> None:
        check_network(network)
        if up:
            self.down.discard(network)
        else:
            self.down.add(network)

    def hang(self, seconds: float) -> None:
        """Stalls the host for `seconds` (0 ends a hang now)."""
        check_hang(seconds, allow_zero=True)
        self.hung_until = self.clock.now() + seconds if seconds else 0.0
        if seconds:
            self._resumed.clear()
        else:
            self._resumed.set()

    @property
    def hung(self) -> bool:
        return self.hung_until > self.clock.now()

    async def cross(self, network: str) -> None:
        """Waits out a hang, then fails if `network` is cut."""
        while self.hung:
            # Wake at the deadline (on the host's clock) or at an early end, first of two.
            deadline = asyncio.ensure_future(self.clock.sleep(self.hung_until - self.clock.now()))
            resumed = asyncio.ensure_future(self._resumed.wait())
            try:
                await asyncio.wait({deadline, resumed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                deadline.cancel()
                resumed.cancel()
        if network in self.down:
            raise HostConnectFault(
                f"{self.host} cannot be reached over its {network} network: the link is down"
            )

    def state(self) -> dict[str, object]:
        return {
            "down": sorted(self.down),
            "hung_for": max(0.0, self.hung_until - self.clock.now()),
        }


def check_network(network: str) -> str:
    if network not in NETWORKS:
        raise InvalidArgument(
            f"a host's network is one of {', '.join(NETWORKS)}, got {network[:40]!r}"
        )
    return network


def check_hang(seconds: float, allow_zero: bool = False) -> float:
    low_ok = seconds >= 0 if allow_zero else seconds > 0
    if not (math.isfinite(seconds) and low_ok and seconds <= MAX_HANG):
        raise InvalidArgument(
            f"a hang lasts more than 0 and at most {MAX_HANG:g} seconds, got {seconds!r}"
        )
    return seconds


def over_uplink(table: DispatchTable, uplinks: Uplinks, network: str) -> DispatchTable:
    """The same service, every call crossing `network` first: what a server on that
    network serves (the actor's hostd on management). Still one table: each entry
    keeps its need and handler, behind the uplink."""
    check_network(network)

    def behind(entry: Entry) -> Callable[[Any, Any], Any]:
        if entry.streaming:

            async def stream(request: Any, caller: Any) -> AsyncIterator[Any]:
                await uplinks.cross(network)
                async for item in entry.handler(request, caller):
                    yield item

            return stream

        async def unary(request: Any, caller: Any) -> Any:
            await uplinks.cross(network)
            answer = entry.handler(request, caller)
            return await answer if inspect.isawaitable(answer) else answer

        return unary

    handlers = {name: (e.need, behind(e)) for name, e in table.entries.items()}
    return DispatchTable(table.service, table.gate, handlers)
