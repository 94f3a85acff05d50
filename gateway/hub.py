"""The node's local index of room -> sessions, and local fan-out.

Each publication is encoded once per transport kind on this node and the same bytes go to every
local member. Writes are coalesced: all frames for a session produced in one loop turn leave in
one ``transport.write``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable, Iterable

from gateway.backend.base import Publication
from gateway.session import Session

log = logging.getLogger("gateway.hub")


class Outbox:
    """Sessions with queued frames, flushed once per event-loop turn."""

    __slots__ = ("_dirty", "_loop", "_scheduled", "on_overflow")

    def __init__(self, on_overflow: Callable[[Session], None] | None = None) -> None:
        self._dirty: list[Session] = []
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_overflow = on_overflow

    def mark(self, session: Session) -> None:
        self._dirty.append(session)
        if not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:  # looked up once: on Python 3.11 each lookup is a system call
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def overflowed(self, session: Session) -> None:
        if self.on_overflow is not None:
            self.on_overflow(session)

    def flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, []
        for session in dirty:
            session.flush()


class Order(enum.Enum):
    """How a live publication relates to what the node saw of its room before."""

    IN_ORDER = "in_order"
    GAP = "gap"  # offsets were skipped, or the epoch changed: members must rejoin
    DUPLICATE = "duplicate"  # the very same publication again: ignored
    REUSED = "reused"  # an offset at or below one already seen in this epoch: Redis went back


class Hub:
    def __init__(self) -> None:
        self.rooms: dict[str, dict[Session, None]] = {}
        # High-water mark per room: the last (offset, epoch, body) seen live. It survives a lost
        # subscription (the next event after a resubscribe shows whether anything was missed)
        # and is the node's evidence when Redis hands out an offset a second time.
        self._last: dict[str, tuple[int, str, bytes]] = {}
        self._retired: dict[str, str] = {}  # room -> the epoch it left after time travel
        self.deliveries = 0
        self.gaps = 0
        self.duplicates = 0

    def add(self, session: Session, room: str) -> bool:
        """Add a member; True when it is the node's first member of the room."""
        members = self.rooms.get(room)
        if members is None:
            self.rooms[room] = {session: None}
            return True
        members[session] = None
        return False

    def remove(self, session: Session, room: str) -> bool:
        """Remove a member; True when the room has no local member left."""
        members = self.rooms.get(room)
        if members is None:
            return False
        members.pop(session, None)
        if members:
            return False
        del self.rooms[room]
        self._last.pop(room, None)
        self._retired.pop(room, None)
        return True

    def members(self, room: str) -> Iterable[Session]:
        return tuple(self.rooms.get(room, ()))

    def high_water(self, room: str) -> tuple[int, str] | None:
        """The last (offset, epoch) this node saw live in ``room``."""
        last = self._last.get(room)
        return (last[0], last[1]) if last is not None else None

    def moved_to(self, room: str, old_epoch: str, offset: int, epoch: str) -> None:
        """The room left ``old_epoch`` (time travel): count from its new position, and drop
        what is still in flight from the old one."""
        if room in self.rooms:
            self._last[room] = (offset, epoch, b"")
            self._retired[room] = old_epoch

    def deliver(self, pub: Publication) -> Order:
        """Fan a publication out to local members and say how it fits the room's stream. On a
        GAP it is not delivered: the caller holds it for the members it tells to rejoin (their
        joins then send it after ``missed``, in order). On REUSED it is not delivered either: the
        caller starts a new epoch, since that (epoch, offset) was already given to another
        event."""
        members = self.rooms.get(pub.room)
        if not members:
            return Order.IN_ORDER
        last = self._last.get(pub.room)
        order = Order.IN_ORDER
        if last is not None:
            if last[1] != pub.epoch:
                if self._retired.get(pub.room) == pub.epoch:
                    return Order.REUSED  # still in flight from the epoch we left
                order = Order.GAP  # a new epoch: history was lost, clients should refetch
            elif pub.offset <= last[0]:
                if pub.offset == last[0] and pub.body == last[2]:
                    self.duplicates += 1
                    return Order.DUPLICATE
                return Order.REUSED
            elif pub.offset != last[0] + 1:
                self.gaps += 1
                order = Order.GAP
        self._last[pub.room] = (pub.offset, pub.epoch, pub.body)
        if order is Order.GAP:
            return order  # not delivered as is: the node holds it for members told to rejoin
        encoded: dict[str, bytes] = {}
        for session in members:
            pending = session.pending
            if pending is not None:
                gate = pending.get(pub.room)
                if gate is not None:
                    if gate.hold(pub):
                        continue
                    session.drop_gate(pub.room)  # past the floor: in order from here on
            kind = session.transport.kind
            wire = encoded.get(kind)
            if wire is None:
                wire = encoded[kind] = session.transport.encode_publication(pub)
            session.enqueue(wire)
        self.deliveries += len(members)
        return order
