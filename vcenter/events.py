"""vCenter's event log: every change to the inventory is an event, kept in SQLite
and followed live by WatchEvents."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from vsim.clock import Clock
from vsim.v1 import common_pb2
from vsim.vcenter.inventory import Inventory

PAGE = 1000


class EventLog:
    def __init__(self, inventory: Inventory, clock: Clock) -> None:
        self._inventory = inventory
        self._clock = clock
        self._changed = asyncio.Event()
        self.listeners: list[Callable[[common_pb2.Event], None]] = []
        """Called with each event as it is posted (after it is stored)."""

    def post(
        self,
        type_: str,
        message: str,
        *,
        user: str = "",
        host: str = "",
        vm: str = "",
        at: float | None = None,
    ) -> common_pb2.Event:
        """`at`: when it happened, if not now (what a host's agent did while vCenter
        could not hear it)."""
        event = self._inventory.add_event(
            common_pb2.Event(
                created_time=self._clock.now() if at is None else at,
                type=type_,
                message=message,
                user=user,
                host=host,
                vm=vm,
            )
        )
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self.listeners:
            listener(event)
        return event

    def after(self, key: int, limit: int = PAGE) -> list[common_pb2.Event]:
        return self._inventory.events_after(key, limit)

    def newest(self, after_key: int, limit: int) -> list[common_pb2.Event]:
        """The newest `limit` events after after_key, oldest first."""
        return self._inventory.newest_events(after_key, limit)

    def count(self, after_key: int, before_key: int | None = None) -> int:
        """How many events lie after after_key (and before before_key)."""
        return self._inventory.count_events(after_key, before_key)

    async def follow(self, after_key: int) -> AsyncIterator[common_pb2.Event]:
        """Every event after after_key, then each new one as it is posted."""
        while True:
            changed = self._changed
            events = self.after(after_key)
            for event in events:
                yield event
                after_key = event.key
            if len(events) < PAGE:
                await changed.wait()
