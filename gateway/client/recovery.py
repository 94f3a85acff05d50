"""The client's decisions, without I/O: reconnect backoff, URL rotation, and room offsets.

``RoomTracker`` is where exactly-once, in-order delivery is kept on the client's side: it drops
duplicates by offset, notices gaps and epoch changes, and merges a join's recovered (``missed``)
events with the live ones that arrived while the join was in flight.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` waits ``uniform(0, min(max, base*2^n))``.

    Full jitter spreads a reconnect storm (every client of a drained node at once) over the
    whole window instead of moving it a little later.
    """

    base_s: float = 0.25
    max_s: float = 10.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.max_s < self.base_s:
            raise ValueError("backoff needs 0 < base_s <= max_s")

    def ceiling(self, attempt: int) -> float:
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        return min(self.max_s, math.ldexp(self.base_s, min(attempt, 64)))

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = self.ceiling(attempt)
        return rng.uniform(0.0, ceiling) if rng is not None else random.uniform(0.0, ceiling)


class UrlRotation:
    """The URLs to try, in order: ``current`` is the one in use, ``advance()`` moves to the next."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("at least one gateway URL is needed")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in {"ws", "wss"} or not parts.hostname:
                raise ValueError(f"not a ws:// or wss:// URL: {url!r}")
        self._index = 0

    @property
    def current(self) -> str:
        return self.urls[self._index]

    def advance(self) -> str:
        self._index = (self._index + 1) % len(self.urls)
        return self.current


class Verdict(enum.Enum):
    DELIVER = "deliver"  # hand it to the handlers
    DUPLICATE = "duplicate"  # already delivered: drop it
    BUFFERED = "buffered"  # a join is in flight: it waits for the merge
    RESYNC = "resync"  # a gap or a new epoch: join again with ``since`` (the event is buffered)


@dataclass
class RoomCursor:
    """Where the client stands in one room's sequence of events."""

    epoch: str | None = None  # None: not known yet, nothing to recover from
    offset: int = 0  # the ``since`` position: the join's baseline or the last delivered event
    floor: int | None = None  # the last delivered offset: at or below it is a duplicate
    joining: bool = False  # a join is in flight: live events wait in ``buffer``
    buffer: list[JsonObject] = field(default_factory=list)


@dataclass(frozen=True)
class JoinOutcome:
    deliver: list[JsonObject]  # in order: missed events first, then those that came live
    recovered: bool | None  # None: the join did not ask to recover
    missed: int  # how many of ``deliver`` came from ``missed``
    resync: bool = False  # the recovered events left a gap to the live ones: join again


def _position(event: JsonObject) -> tuple[str, int] | None:
    epoch, offset = event.get("epoch"), event.get("offset")
    if isinstance(epoch, str) and isinstance(offset, int) and not isinstance(offset, bool):
        return epoch, offset
    return None


class RoomTracker:
    """Offsets per room: de-duplicates live events, detects gaps, merges recovered events.

    A live event at or below the last delivered offset (same epoch) is a duplicate. One that skips
    an offset, or comes with another epoch, means something was missed: the room is joined again
    with ``since`` and events wait in a buffer until the answer, so the handlers see every event
    once and in order.
    """

    def __init__(self) -> None:
        self._rooms: dict[str, RoomCursor] = {}

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    def rooms(self) -> list[str]:
        return list(self._rooms)

    def cursor(self, room: str) -> RoomCursor | None:
        return self._rooms.get(room)

    def since(self, room: str) -> JsonObject | None:
        cursor = self._rooms.get(room)
        if cursor is None or cursor.epoch is None:
            return None
        return {"offset": cursor.offset, "epoch": cursor.epoch}

    def begin_join(self, room: str) -> JsonObject | None:
        """Start buffering the room's live events; returns the ``since`` to join with."""
        cursor = self._rooms.setdefault(room, RoomCursor())
        cursor.joining = True
        return self.since(room)

    def is_joining(self, room: str) -> bool:
        cursor = self._rooms.get(room)
        return cursor is not None and cursor.joining

    def forget(self, room: str) -> None:
        self._rooms.pop(room, None)

    def offer(self, event: JsonObject) -> Verdict:
        """Judge one live ``event`` frame's data."""
        cursor = self._rooms.get(str(event.get("room")))
        if cursor is None:
            return Verdict.DELIVER  # a room we do not track (e.g. joined by someone else's code)
        if cursor.joining:
            cursor.buffer.append(event)
            return Verdict.BUFFERED
        verdict = self._step(cursor, event, strict=True)
        if verdict is Verdict.RESYNC:
            cursor.joining = True
            cursor.buffer.append(event)
        return verdict

    def apply_joined(self, room: str, data: JsonObject, since: JsonObject | None) -> JoinOutcome:
        """Merge a ``room_joined`` answer with what was buffered while the join was in flight."""
        cursor = self._rooms.setdefault(room, RoomCursor())
        buffered, cursor.buffer, cursor.joining = cursor.buffer, [], False
        recovered: bool | None = None
        missed: list[JsonObject] = []
        if since is not None:
            recovered = data.get("recovered") is True
        if recovered:
            assert since is not None
            epoch, offset = str(since["epoch"]), int(since["offset"])
            if cursor.epoch == epoch and cursor.floor is not None:
                # Another join answered first and delivered past ``since``: never step back.
                offset = max(offset, cursor.floor)
            cursor.epoch, cursor.offset, cursor.floor = epoch, offset, offset
            missed = [e for e in data.get("missed") or [] if isinstance(e, dict)]
        else:
            # A fresh start: the baseline is the room's latest offset. Whatever came live was
            # published after the subscription, so it is new to us even if its offset is not
            # above the baseline: only duplicates among those events are dropped.
            joined_epoch, joined_offset = data.get("epoch"), data.get("offset")
            cursor.epoch = joined_epoch if isinstance(joined_epoch, str) else None
            cursor.offset = joined_offset if isinstance(joined_offset, int) else 0
            cursor.floor = None
        deliver: list[JsonObject] = []
        from_missed = 0
        queue = missed + buffered
        for index, event in enumerate(queue):
            verdict = self._step(cursor, event, strict=bool(recovered))
            if verdict is Verdict.DELIVER:
                deliver.append(event)
                from_missed += index < len(missed)
            elif verdict is Verdict.RESYNC:
                cursor.joining = True
                cursor.buffer = queue[index:]
                return JoinOutcome(deliver, recovered, from_missed, resync=True)
        return JoinOutcome(deliver, recovered, from_missed)

    def abandon_join(self, room: str, *, forget: bool) -> list[JsonObject]:
        """The join failed: stop buffering; returns the buffered events to hand over as they are."""
        cursor = self._rooms.get(room)
        if cursor is None:
            return []
        buffered, cursor.buffer, cursor.joining = cursor.buffer, [], False
        if forget:
            del self._rooms[room]
            return []
        for event in buffered:
            self._advance(cursor, event)
        return buffered

    def _step(self, cursor: RoomCursor, event: JsonObject, *, strict: bool) -> Verdict:
        position = _position(event)
        if position is None:
            return Verdict.DELIVER  # not a history event: nothing to track
        epoch, offset = position
        if cursor.floor is not None and epoch == cursor.epoch and offset <= cursor.floor:
            return Verdict.DUPLICATE
        if strict and cursor.epoch is not None:
            last = cursor.floor if cursor.floor is not None else cursor.offset
            # At offset 0 nothing was seen: a room's first event (offset 1) is next in any epoch
            # (a room nothing was published to reports a placeholder epoch until its first event).
            first = last == 0 and offset == 1
            if not first and (epoch != cursor.epoch or offset > last + 1):
                return Verdict.RESYNC
        self._advance(cursor, event)
        return Verdict.DELIVER

    @staticmethod
    def _advance(cursor: RoomCursor, event: JsonObject) -> None:
        position = _position(event)
        if position is None:
            return
        epoch, offset = position
        if epoch != cursor.epoch:
            cursor.epoch, cursor.offset, cursor.floor = epoch, offset, offset
        else:
            cursor.floor = offset
            cursor.offset = max(cursor.offset, offset)
