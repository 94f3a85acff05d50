"""The node's local index of room -> sessions, and local fan-out.

Each publication is encoded once per transport kind on this node and the same bytes go to every
local member. Writes are coalesced: all frames for a session produced in one loop turn leave in
one ``transport.write``.
"""

from __future__ import annotations

import asyncio
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


class Hub:
    def __init__(self) -> None:
        self.rooms: dict[str, dict[Session, None]] = {}
        # last (offset, epoch) seen live per room, to detect gaps in the stream
        self._last: dict[str, tuple[int, str]] = {}
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
        return True

    def members(self, room: str) -> Iterable[Session]:
        return tuple(self.rooms.get(room, ()))

    def reset(self, rooms: Iterable[str]) -> None:
        """Forget live positions (after a lost subscription) so the next event starts afresh."""
        for room in rooms:
            self._last.pop(room, None)

    def deliver(self, pub: Publication) -> bool:
        """Fan a publication out to local members. Returns False when a gap was detected: the
        caller then tells the room's members to ``rejoin`` (recover from history)."""
        members = self.rooms.get(pub.room)
        if not members:
            return True
        last = self._last.get(pub.room)
        in_order = True
        if last is not None and last[1] == pub.epoch:
            if pub.offset <= last[0]:
                self.duplicates += 1
                return True  # already delivered (e.g. redelivery after a resubscribe)
            if pub.offset != last[0] + 1:
                self.gaps += 1
                in_order = False
        elif last is not None:
            in_order = False  # new epoch: history was lost, clients should refetch
        self._last[pub.room] = (pub.offset, pub.epoch)
        encoded: dict[str, bytes] = {}
        for session in members:
            pending = session.pending
            if pending is not None and pub.room in pending:
                pending[pub.room].append(pub)
                continue
            kind = session.transport.kind
            wire = encoded.get(kind)
            if wire is None:
                wire = encoded[kind] = session.transport.encode_publication(pub)
            session.enqueue(wire)
        self.deliveries += len(members)
        return in_order
