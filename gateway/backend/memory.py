"""The embedded backend: one process serves everything from memory; nothing is shared."""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backend.base import (
    IDEMPOTENCY_TTL_S,
    ConnectionInfo,
    ControlHandler,
    ControlMessage,
    NodeStats,
    Page,
    Position,
    PresenceMember,
    Publication,
    PublicationHandler,
    PublishResult,
    Recovery,
    ResyncHandler,
)
from gateway.backend.pages import page_after
from gateway.events import UNPUBLISHED_EPOCH, build_body, new_epoch, new_event_id, now_ms

EVENT_LOG_SIZE = 1000


@dataclass(slots=True)
class _Room:
    epoch: str
    offset: int = 0
    history: deque[Publication] = field(default_factory=deque)
    expires_at: float = 0.0  # history expiry (monotonic)
    meta_expires_at: float = 0.0


class MemoryBackend:
    name = "memory"

    def __init__(
        self,
        history_size: int = 100,
        history_ttl_s: float = 600,
        history_meta_ttl_s: float = 86400,
    ) -> None:
        self._history_size = history_size
        self._history_ttl_s = history_ttl_s
        self._meta_ttl_s = history_meta_ttl_s
        self._rooms: dict[str, _Room] = {}
        self._idempotency: dict[tuple[str, str], tuple[float, int, str, str]] = {}
        self._subscribed: set[str] = set()
        self._connections: dict[str, ConnectionInfo] = {}
        self._presence: dict[str, dict[str, ConnectionInfo]] = defaultdict(dict)
        self._events: deque[tuple[str, dict[str, Any]]] = deque(maxlen=EVENT_LOG_SIZE)
        self._per_minute: Counter[int] = Counter()
        self._stats: NodeStats | None = None
        self._node_id = ""
        self._on_publication: PublicationHandler | None = None
        self._on_control: ControlHandler | None = None

    async def start(
        self,
        node_id: str,
        on_publication: PublicationHandler,
        on_control: ControlHandler,
        on_resync: ResyncHandler,
    ) -> None:
        self._node_id = node_id
        self._on_publication = on_publication
        self._on_control = on_control

    async def close(self) -> None:
        self._on_publication = None

    async def ready(self) -> bool:
        return True

    # --- fan-out ------------------------------------------------------------------------------
    async def subscribe(self, room: str) -> None:
        self._subscribed.add(room)

    def unsubscribe(self, room: str) -> None:
        self._subscribed.discard(room)

    def _room(self, room: str) -> _Room:
        now = time.monotonic()
        state = self._rooms.get(room)
        if state is None or state.meta_expires_at <= now:
            state = _Room(epoch=new_epoch(), meta_expires_at=now + self._meta_ttl_s)
            self._rooms[room] = state
        if state.expires_at <= now:
            state.history.clear()
        return state

    async def publish(
        self,
        rooms: Sequence[str],
        type_: str,
        payload_json: bytes,
        source: str,
        *,
        event_id: str | None = None,
        idempotency_key: str | None = None,
        receipts: bool = False,
    ) -> PublishResult:
        # A caller's event id publishes once, like an idempotency key (it may retry with it).
        dedupe = idempotency_key or (f"\x00{event_id}" if event_id else None)
        event_id = event_id or new_event_id()
        ts = now_ms()
        offsets: dict[str, int] = {}
        duplicate = False
        for room in rooms:
            seen = self._idempotency_hit(room, dedupe)
            if seen is not None:
                offsets[room], event_id, duplicate = seen[1], seen[3], True
                continue
            body = build_body(room, type_, payload_json, event_id, ts, source, receipts)
            pub = self._append(room, body)
            offsets[room] = pub.offset
            if dedupe:
                expires = time.monotonic() + IDEMPOTENCY_TTL_S
                self._idempotency[(room, dedupe)] = (
                    expires,
                    pub.offset,
                    pub.epoch,
                    event_id,
                )
            self._record(room, type_, event_id, ts, source)
            if room in self._subscribed and self._on_publication is not None:
                self._on_publication(pub)
        return PublishResult(event_id=event_id, offsets=offsets, duplicate=duplicate)

    def _idempotency_hit(self, room: str, key: str | None) -> tuple[float, int, str, str] | None:
        if not key:
            return None
        seen = self._idempotency.get((room, key))
        if seen is None or seen[0] <= time.monotonic():
            return None
        return seen

    def _append(self, room: str, body: bytes) -> Publication:
        state = self._room(room)
        state.offset += 1
        pub = Publication(room=room, offset=state.offset, epoch=state.epoch, body=body)
        now = time.monotonic()
        state.meta_expires_at = now + self._meta_ttl_s
        if self._history_size > 0:
            state.history.append(pub)
            while len(state.history) > self._history_size:
                state.history.popleft()
            state.expires_at = now + self._history_ttl_s
        return pub

    def _record(self, room: str, type_: str, event_id: str, ts: int, source: str) -> None:
        summary = {"room": room, "type": type_, "id": event_id, "ts": ts, "source": source}
        self._events.append((f"{ts:015d}-{len(self._events):06d}-{event_id}", summary))
        self._per_minute[ts // 60000] += 1

    async def history_since(self, room: str, since: Position | None) -> Recovery:
        now = time.monotonic()
        state = self._rooms.get(room)
        if state is None or state.meta_expires_at <= now:  # nothing published: nothing created
            position = Position(offset=0, epoch=UNPUBLISHED_EPOCH)
            covered = since is not None and since.offset == 0
            return Recovery(position=position, recovered=covered)
        if state.expires_at <= now:
            state.history.clear()
        position = Position(offset=state.offset, epoch=state.epoch)
        if since is None or since.offset > state.offset:
            return Recovery(position=position, recovered=False)
        if since.offset > 0 and since.epoch != state.epoch:
            return Recovery(position=position, recovered=False)
        missed = [p for p in state.history if p.offset > since.offset]
        expected = state.offset - since.offset
        if len(missed) != expected:
            return Recovery(position=position, recovered=False)
        return Recovery(position=position, recovered=True, publications=missed)

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]:
        return {room: (await self.history_since(room, None)).position for room in rooms}

    async def new_epoch(self, room: str, old_epoch: str) -> Position:
        state = self._rooms.get(room)
        if state is None or state.meta_expires_at <= time.monotonic():
            return Position(offset=0, epoch=UNPUBLISHED_EPOCH)
        if state.epoch == old_epoch:
            state.epoch = new_epoch()
            state.history.clear()
        return Position(offset=state.offset, epoch=state.epoch)

    async def control(self, message: ControlMessage) -> None:
        if self._on_control is not None:
            self._on_control(message)

    # --- membership and presence --------------------------------------------------------------
    async def add_connection(self, conn: ConnectionInfo, rooms: Sequence[str] = ()) -> None:
        self._connections[conn.connection_id] = conn
        await self.join(conn, rooms)

    async def join_and_recover(
        self,
        conn: ConnectionInfo,
        room: str,
        since: Position | None,
        all_rooms: Sequence[str],
    ) -> Recovery:
        await self.join(conn, [room], all_rooms)
        return await self.history_since(room, since)

    async def remove_connection(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        await self.leave(conn, rooms, ())
        self._connections.pop(conn.connection_id, None)

    async def join(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str] = ()
    ) -> None:
        for room in rooms:
            self._presence[room][conn.connection_id] = conn

    async def leave(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str] = ()
    ) -> None:
        for room in rooms:
            members = self._presence.get(room)
            if members is not None:
                members.pop(conn.connection_id, None)
                if not members:
                    del self._presence[room]

    async def presence(self, room: str) -> list[PresenceMember]:
        counts: Counter[tuple[str, str]] = Counter(
            (c.user_id, c.role) for c in self._presence.get(room, {}).values()
        )
        return [PresenceMember(u, r, n) for (u, r), n in sorted(counts.items())]

    async def room_count(self, room: str) -> int:
        return len(self._presence.get(room, ()))

    # --- node registry, dashboard -------------------------------------------------------------
    async def heartbeat(self, stats: NodeStats) -> bool:
        self._stats = stats
        return True

    async def deregister(self) -> None:
        self._connections.clear()
        self._presence.clear()

    async def nodes(self) -> list[dict[str, Any]]:
        if self._stats is None:
            return []
        return [{**self._stats.as_dict(), "alive": True, "lastSeenMs": now_ms()}]

    async def list_clients(self, limit: int, cursor: str | None) -> Page:
        rooms_of: dict[str, list[str]] = defaultdict(list)
        for room, members in self._presence.items():
            for conn_id in members:
                rooms_of[conn_id].append(room)
        items = [
            (
                conn.connection_id,
                {
                    "connectionId": conn.connection_id,
                    "userId": conn.user_id,
                    "role": conn.role,
                    "node": conn.node,
                    "rooms": sorted(rooms_of.get(conn.connection_id, [])),
                    "connectedAt": conn.connected_at_ms,
                },
            )
            for conn in self._connections.values()
        ]
        return page_after(items, limit, cursor)

    async def list_rooms(self, limit: int, cursor: str | None) -> Page:
        items = [(room, {"room": room, "members": len(m)}) for room, m in self._presence.items()]
        return page_after(items, limit, cursor)

    async def recent_events(self, limit: int, cursor: str | None) -> Page:
        items = [(key, summary) for key, summary in self._events]
        return page_after(items, limit, cursor, newest_first=True)

    async def events_per_minute(self, now_ms_: int) -> list[int]:
        minute = now_ms_ // 60000
        for old in [m for m in self._per_minute if m <= minute - 60]:
            del self._per_minute[old]
        return [self._per_minute.get(m, 0) for m in range(minute - 59, minute + 1)]

    async def cleanup(self) -> dict[str, int]:
        # One process: nothing can be left behind by a dead node. Stale history is dropped.
        now = time.monotonic()
        stale = [room for room, s in self._rooms.items() if s.meta_expires_at <= now]
        for room in stale:
            del self._rooms[room]
        expired = [k for k, v in self._idempotency.items() if v[0] <= now]
        for k in expired:
            del self._idempotency[k]
        return {"nodes": 0, "connections": 0, "memberships": 0, "presence": 0, "rooms": len(stale)}


def event_summary(body: bytes) -> dict[str, Any]:
    data = orjson.loads(body)
    return {k: data[k] for k in ("room", "type", "id", "ts", "source")}
