"""Delivery receipts (contract §8): which users and connections received an event that asked.

A publish with ``receipts=True`` marks the event's body (``"receipts":true``, last, so a node tells
it by one comparison) and opens one record per room: its offset, the room's members at publish
time and, as receivers acknowledge, ``connections`` (how many acknowledged) and ``users`` (the
first time each user did; for the broadcast rooms ``all_*`` only a count). Records live as long as
the room's history (``GATEWAY_HISTORY_TTL_SECONDS``) and no longer.

A node accepts a receipt only from a connection that is a member and was sent that very event
(gateway/receipts.py keeps, per connection, the marked events it was sent); the store is told
only of accepted receipts. Two implementations: ``MemoryReceipts`` and ``redis_receipts``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Counts = tuple[int, int]


def is_broadcast(room: str) -> bool:
    """``all_clientes`` / ``all_proveedores``: receipts are counted, not listed per user."""
    return room.startswith("all_")


@dataclass(slots=True)
class RoomReceipts:
    offset: int
    members: int  # connections in the room when the event was published
    connections: int = 0
    users: dict[str, int] = field(default_factory=dict)  # userId -> first receipt (ms)
    user_count: int = 0  # broadcast rooms: distinct users, counted

    def as_dict(self, room: str) -> dict[str, Any]:
        users: dict[str, int] | int = self.user_count if is_broadcast(room) else self.users
        return {
            "offset": self.offset,
            "users": users,
            "connections": self.connections,
            "members": self.members,
        }


def answer(event_id: str, rooms: Mapping[str, RoomReceipts]) -> dict[str, Any]:
    """The body of ``GET /api/receipts/<eventId>`` and of ``Publisher.receipts()``."""
    return {"eventId": event_id, "rooms": {room: r.as_dict(room) for room, r in rooms.items()}}


class ReceiptStore(Protocol):
    async def opened(
        self, event_id: str, offsets: Mapping[str, int], members: Mapping[str, int]
    ) -> None:
        """A publish with receipts happened (Redis: the per-room records were written by the
        publish itself; this writes the event's index of rooms)."""

    async def record(self, room: str, event_id: str, user_id: str, ts: int) -> bool:
        """An accepted receipt; False when the event's record is gone (past the history TTL)."""

    async def receipts(self, event_id: str) -> dict[str, RoomReceipts] | None:
        """Per room, or None for an unknown or expired event."""

    async def counts(self, items: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Counts]:
        """``(room, eventId)`` -> ``(connections that acknowledged, members at publish)`` for
        the items that asked for receipts (the dashboard's live log)."""


class MemoryReceipts:
    """Embedded mode: records in a dict, dropped oldest first once past the TTL."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._events: OrderedDict[str, tuple[float, dict[str, RoomReceipts]]] = OrderedDict()

    def _prune(self) -> None:
        now = time.monotonic()
        while self._events:
            event_id, (expires, _) = next(iter(self._events.items()))
            if expires > now:
                return
            del self._events[event_id]

    async def opened(
        self, event_id: str, offsets: Mapping[str, int], members: Mapping[str, int]
    ) -> None:
        self._prune()
        rooms = {
            room: RoomReceipts(offset, members.get(room, 0)) for room, offset in offsets.items()
        }
        self._events[event_id] = (time.monotonic() + self.ttl_s, rooms)

    async def record(self, room: str, event_id: str, user_id: str, ts: int) -> bool:
        found = self._events.get(event_id)
        if found is None or found[0] <= time.monotonic() or room not in found[1]:
            return False
        record = found[1][room]
        record.connections += 1
        if user_id not in record.users:
            record.users[user_id] = ts
            record.user_count += 1
        return True

    async def receipts(self, event_id: str) -> dict[str, RoomReceipts] | None:
        found = self._events.get(event_id)
        if found is None or found[0] <= time.monotonic():
            return None
        return found[1]

    async def counts(self, items: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Counts]:
        out = {}
        for room, event_id in items:
            found = self._events.get(event_id)
            record = found[1].get(room) if found is not None else None
            if record is not None:
                out[(room, event_id)] = (record.connections, record.members)
        return out
