"""The Backend contract: membership, presence, history with offsets and epochs, fan-out.

Two implementations honour it and pass one shared test suite (tests/contract/):
``memory.MemoryBackend`` (one process, nothing shared) and ``redis.RedisBackend`` (a cluster of
stateless nodes). Guarantees every implementation gives:

* ``publish`` is atomic per room: the room's next offset (previous + 1), the history append and the
  fan-out happen together or not at all. An idempotency key seen within ``IDEMPOTENCY_TTL_S``
  returns the first result and delivers nothing.
* Live delivery is at most once and in offset order per room, to nodes subscribed to the room.
* A room's epoch changes only when its history was lost; offsets restart at 1 in a new epoch.
* ``history_since`` returns exactly the events after a position, in order, or says it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

IDEMPOTENCY_TTL_S = 300
# How long an event id the gateway made itself is remembered against a retried publish script:
# redis-py retries a command once after its socket timeout (5 s), so this covers it with room.
GENERATED_EVENT_DEDUPE_TTL_S = 30


@dataclass(frozen=True, slots=True)
class Publication:
    """One event in one room. ``body`` is the JSON object ``{"room","type","payload","id","ts",
    "source"}`` serialized once by the publisher; offset and epoch are assigned by the backend."""

    room: str
    offset: int
    epoch: str
    body: bytes

    def event_data(self) -> bytes:
        """The ``data`` of the client's ``event`` frame, built by splicing, not re-serializing."""
        return b'{"offset":%d,"epoch":"%s",%s' % (self.offset, self.epoch.encode(), self.body[1:])

    def frame(self) -> bytes:
        return b'{"event":"event","data":%s}' % self.event_data()


@dataclass(frozen=True, slots=True)
class PublishResult:
    event_id: str
    offsets: dict[str, int]
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class Position:
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Recovery:
    """The answer to ``history_since``: the room's position now, and the missed events when
    history covers them (``recovered``), else an empty list."""

    position: Position
    recovered: bool
    publications: list[Publication] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    connection_id: str
    user_id: str
    role: str
    node: str
    connected_at_ms: int


@dataclass(frozen=True, slots=True)
class PresenceMember:
    user_id: str
    role: str
    connections: int


@dataclass(frozen=True, slots=True)
class NodeStats:
    node: str
    connections: int
    by_role: dict[str, int]
    rooms: int
    rss_bytes: int
    uptime_s: float
    started_at_ms: int
    frames_in: int
    frames_out: int
    connection_seconds_sum: float
    django: dict[str, Any]
    ready: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "connections": self.connections,
            "byRole": self.by_role,
            "rooms": self.rooms,
            "rssBytes": self.rss_bytes,
            "uptimeSeconds": round(self.uptime_s, 1),
            "startedAt": self.started_at_ms,
            "framesIn": self.frames_in,
            "framesOut": self.frames_out,
            "connectionSecondsSum": round(self.connection_seconds_sum, 3),
            "django": self.django,
            "ready": self.ready,
        }


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    total: int
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """A cluster-wide command to every node, e.g. ``disconnect`` a user."""

    action: str
    args: dict[str, Any]


PublicationHandler = Callable[[Publication], None]
ControlHandler = Callable[[ControlMessage], None]
ResyncHandler = Callable[[Sequence[str]], None]


class Backend(Protocol):
    name: str

    async def start(
        self,
        node_id: str,
        on_publication: PublicationHandler,
        on_control: ControlHandler,
        on_resync: ResyncHandler,
    ) -> None:
        """Begin receiving. ``on_resync(rooms)`` is called when live delivery for those rooms
        may have missed events (subscription lost and restored); nodes send ``rejoin``."""

    async def close(self) -> None: ...

    async def ready(self) -> bool:
        """True while the backend can serve requests (``/readyz``)."""

    # --- fan-out ------------------------------------------------------------------------------
    async def subscribe(self, room: str) -> None:
        """Receive the room's live publications. Returns once delivery is active, so a history
        read made afterwards overlaps live delivery and no event falls between them."""

    def unsubscribe(self, room: str) -> None:
        """Stop receiving the room (may be deferred and batched)."""

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
        """``receipts``: the event asks its receivers to acknowledge it (contract §8); its body
        ends with ``"receipts":true`` and its per-room receipt records are opened atomically
        with the publish."""

    async def history_since(self, room: str, since: Position | None) -> Recovery:
        """The room's position and, when history covers ``since``, what came after it. Creates
        nothing: a room never published to is at offset 0 of ``UNPUBLISHED_EPOCH``, and a
        ``since`` at offset 0 (nothing seen) is covered by any epoch's history from offset 1."""

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]:
        """The rooms' positions now, in one round trip per server (nothing is created)."""

    async def new_epoch(self, room: str, old_epoch: str) -> Position:
        """Move the room out of ``old_epoch`` (if it is still in it) into a new epoch, dropping
        its history: Redis went back in time. Returns the room's position afterwards."""

    async def control(self, message: ControlMessage) -> None:
        """Send a control message to every node (this one included)."""

    # --- membership and presence --------------------------------------------------------------
    async def add_connection(self, conn: ConnectionInfo, rooms: Sequence[str] = ()) -> None:
        """Register a connection, joined to ``rooms`` (its automatic rooms)."""

    async def join_and_recover(
        self,
        conn: ConnectionInfo,
        room: str,
        since: Position | None,
        all_rooms: Sequence[str],
    ) -> Recovery:
        """``join`` plus ``history_since`` in one round trip (the node has subscribed first)."""

    async def remove_connection(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None: ...

    async def join(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        """Add ``rooms`` to the connection's memberships; ``all_rooms`` is its full list now."""

    async def leave(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None: ...

    async def presence(self, room: str) -> list[PresenceMember]:
        """The room's members, cluster-wide, with their connection counts. Not for broadcast
        rooms (``all_clientes``, ``all_proveedores``), which keep a count only: ``room_count``."""

    async def room_count(self, room: str) -> int:
        """How many connections are in the room, cluster-wide; O(1) whatever its size."""

    # --- node registry, dashboard -------------------------------------------------------------
    async def heartbeat(self, stats: NodeStats) -> bool:
        """Refresh this node's lease and stats snapshot. False when the backend had lost the
        node's registration (the node then registers its connections and memberships again)."""

    async def deregister(self) -> None:
        """Remove this node's connections, memberships and registry entry (drain, shutdown)."""

    async def nodes(self) -> list[dict[str, Any]]:
        """Every known node: its stats snapshot (``NodeStats.as_dict``) plus ``alive`` and
        ``lastSeenMs``; a node whose lease expired has only ``node``, ``alive``, ``lastSeenMs``."""

    async def list_clients(self, limit: int, cursor: str | None) -> Page: ...

    async def list_rooms(self, limit: int, cursor: str | None) -> Page: ...

    async def recent_events(self, limit: int, cursor: str | None) -> Page: ...

    async def events_per_minute(self, now_ms: int) -> list[int]:
        """Events published in each of the last 60 minutes, oldest first."""

    async def cleanup(self) -> dict[str, int]:
        """Remove state of dead nodes; report what was removed. Idempotent, and never
        overlapping another sweep of the cluster (``leases.LeaseBusy`` when one runs too long)."""
