"""The oracle: what one client received, judged against the delivery guarantee (contract v3 §2).

Per client and room, the events handed to the application must be one sequence: offsets +1 within
one epoch, no duplicate, no gap, never a new epoch and never ``recovered: false`` (in the campaign
Redis never loses an acknowledged write, so the contract allows neither). ``ClientOracle`` is fed
the raw frames in the order they arrived and models a client that follows the protocol exactly:

- while a ``join_room`` is in flight (after ``auth_success`` for the automatic rooms, after a
  ``rejoin``, after a reconnect) live events of that room are buffered;
- the answer's ``missed`` events come first, then the buffered ones. A buffered event that
  ``missed`` already covered is an *overlap*: it was sent live before the node read the history
  the answer came from, so the client cannot avoid seeing it twice on the wire; it is counted,
  checked to be the very same event, and not delivered again. An event the client already had
  that a node sends again on a new connection before ``auth_success`` (the automatic rooms'
  live backlog) is a ``stale_duplicate``. Everything else is strict;
- after the answer, live events must continue at +1.

``RoomLog`` is what all clients saw, by room and position: two different events at one
(epoch, offset) are a violation too. ``ledger.check_final`` holds the acknowledged publishes
against every client at the end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

TRACE_BEFORE = 48  # entries of the client's trace kept before a violation
TRACE_AFTER = 8  # and after it
MAX_SKIPPED = 5000  # offsets remembered from gaps, to tell a late event from a duplicate
EARLY = "_campaign_early"  # marks a buffered event that came before auth_success
# violations after which a client's position restarts: what it lacks is counted there
RESETS = frozenset({"not_recovered", "new_epoch", "fence_missing", "missed_incomplete"})

Position = tuple[str, int]  # (epoch, offset)


@dataclass
class Violation:
    kind: str  # gap, duplicate, reorder, new_epoch, not_recovered, missed_incomplete, ...
    client: str
    room: str
    at_s: float
    detail: str
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    def render(self, context: int = TRACE_BEFORE) -> str:
        """The violation with the last ``context`` trace lines before it."""
        lines = [f"[{self.kind}] t={self.at_s:.3f}s client={self.client} room={self.room}"]
        lines.append(f"  {self.detail}")
        if self.faults:
            lines.append("  faults in effect (t-5s..t):")
            lines += [f"    {f}" for f in self.faults]
        if self.before or self.after:
            lines.append("  trace (before ... >>> violation <<< ... after):")
            lines += [f"    {line}" for line in self.before[-context:]]
            lines.append("    >>> here <<<")
            lines += [f"    {line}" for line in self.after]
        return "\n".join(lines)


def short(epoch: object) -> str:
    return str(epoch)[:8]


def tag_of(data: dict[str, Any]) -> str:
    """The publish's own tag, carried in the payload (``tag``; ``text`` for comments)."""
    payload = data.get("payload")
    if isinstance(payload, dict):
        tag = payload.get("tag") or payload.get("text")
        if isinstance(tag, str):
            return tag
    return ""


def describe(data: dict[str, Any]) -> str:
    return (
        f"{data.get('room')} {short(data.get('epoch'))}:{data.get('offset')} "
        f"id={str(data.get('id'))[:12]} tag={tag_of(data)}"
    )


class RoomLog:
    """Every event any client delivered, by room and position; shared by all oracles."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str, int], tuple[str, str]] = {}  # -> (event id, tag)
        self.by_id: dict[tuple[str, str], set[Position]] = {}
        self.by_tag: dict[tuple[str, str], set[Position]] = {}

    def record(self, room: str, epoch: str, offset: int, event_id: str, tag: str) -> str | None:
        """Remember the event; returns the other event's id when the position already held a
        different one (an (epoch, offset) pair given to two events)."""
        key = (room, epoch, offset)
        known = self.at.get(key)
        if known is not None:
            return None if known[0] == event_id else known[0]
        self.at[key] = (event_id, tag)
        self.by_id.setdefault((room, event_id), set()).add((epoch, offset))
        if tag:
            self.by_tag.setdefault((room, tag), set()).add((epoch, offset))
        return None

    def event_at(self, room: str, epoch: str, offset: int) -> str | None:
        known = self.at.get((room, epoch, offset))
        return None if known is None else known[0]

    def positions(self, room: str, *, event_id: str = "", tag: str = "") -> set[Position]:
        found: set[Position] = set()
        if event_id:
            found |= self.by_id.get((room, event_id), set())
        if tag:
            found |= self.by_tag.get((room, tag), set())
        return found


class Trace:
    """The client's recent history, as lines; ``room=None`` lines concern the connection."""

    def __init__(self, maxlen: int = 1000) -> None:
        self.lines: deque[tuple[str | None, str]] = deque(maxlen=maxlen)

    def add(self, room: str | None, line: str) -> None:
        self.lines.append((room, line))

    def tail(self, room: str, n: int) -> list[str]:
        picked = [line for r, line in reversed(self.lines) if r is None or r == room]
        return list(reversed(picked[:n]))


@dataclass
class RoomTrack:
    """One client's position in one room."""

    epoch: str | None = None  # None until the first answer gave a baseline
    offset: int = 0  # the last delivered offset (or the baseline)
    joining: bool = False
    buffer: list[dict[str, Any]] = field(default_factory=list)
    skipped: set[Position] = field(default_factory=set)
    # delivered stretches: [epoch, first, last] (the baseline itself is not delivered)
    spans: list[list[Any]] = field(default_factory=list)

    def since(self) -> dict[str, Any] | None:
        if self.epoch is None:
            return None
        return {"offset": self.offset, "epoch": self.epoch}

    def has(self, epoch: str, offset: int) -> bool:
        return any(e == epoch and lo <= offset <= hi for e, lo, hi in self.spans)

    def mark(self, epoch: str, offset: int) -> None:
        last = self.spans[-1] if self.spans else None
        if last is not None and last[0] == epoch and last[2] + 1 == offset:
            last[2] = offset
        else:
            self.spans.append([epoch, offset, offset])


@dataclass
class Counters:
    delivered: int = 0  # events handed to the application
    live: int = 0
    recovered_events: int = 0  # of which came in ``missed``
    overlaps: int = 0  # buffered live events already covered by ``missed`` (not delivered)
    joins: int = 0
    recoveries: int = 0  # answers to a join with ``since``
    rejoin_frames: int = 0
    connections: int = 0
    early_events: int = 0  # events a node sent before ``auth_success`` (automatic rooms)
    max_missed: int = 0  # the longest ``missed`` list one answer carried (not summed)


class ClientOracle:
    """Judges one client's frames; see the module doc. ``clock()`` gives seconds since start;
    ``on_violation`` (optional) sees each violation as it is found (to attach the faults)."""

    def __init__(
        self,
        name: str,
        log: RoomLog,
        clock: Callable[[], float],
        on_violation: Callable[[Violation], None] | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self.clock = clock
        self.on_violation = on_violation
        self.rooms: dict[str, RoomTrack] = {}
        self.violations: list[Violation] = []
        self.count = Counters()
        self.trace = Trace()
        self._open: list[Violation] = []  # still collecting their ``after`` lines

    # --- what the client did ------------------------------------------------------------------
    def note(self, line: str, room: str | None = None) -> None:
        entry = f"{self.clock():9.3f} {line}"
        self.trace.add(room, entry)
        still_open = []
        for violation in self._open:
            if room is None or room == violation.room:
                violation.after.append(entry)
            if len(violation.after) < TRACE_AFTER:
                still_open.append(violation)
        self._open = still_open

    def begin_join(self, room: str) -> dict[str, Any] | None:
        """The client sends ``join_room`` now: buffer the room's live events until the answer.
        Returns the ``since`` to send (None before the first baseline)."""
        track = self.rooms.setdefault(room, RoomTrack())
        track.joining = True
        since = track.since()
        self.count.joins += 1
        self.note(f"join {room} since={_pos(since)}", room)
        return since

    def hold(self, rooms: Iterable[str]) -> None:
        """A new connection opened: the client will join every room again with ``since``, so
        their live events wait from now on (a node may send an automatic room's events before
        ``auth_success``)."""
        for room in rooms:
            self.rooms.setdefault(room, RoomTrack()).joining = True

    def joining(self, room: str) -> bool:
        track = self.rooms.get(room)
        return track is not None and track.joining

    def position(self, room: str) -> Position | None:
        track = self.rooms.get(room)
        if track is None or track.epoch is None:
            return None
        return track.epoch, track.offset

    def delivered(self, room: str, epoch: str, offset: int) -> bool:
        track = self.rooms.get(room)
        return track is not None and track.has(epoch, offset)

    def accounted(self, room: str, epoch: str, offset: int) -> bool:
        """Whether not having ``(epoch, offset)`` is already one of this client's violations
        (a gap that skipped it, a lost position, a room that went deaf)."""
        track = self.rooms.get(room)
        if track is not None and (epoch, offset) in track.skipped:
            return True
        return any(v.room == room and v.kind in RESETS for v in self.violations)

    # --- what the client received -------------------------------------------------------------
    def on_event(self, data: dict[str, Any], *, early: bool = False) -> None:
        """A live ``event`` frame; ``early``: it came before ``auth_success`` on a new
        connection (from the automatic room the node joined at authentication)."""
        room = str(data.get("room"))
        self.note(f"event {describe(data)}{' (before auth_success)' if early else ''}", room)
        if early:
            data[EARLY] = True
        track = self.rooms.get(room)
        if track is None:
            self.flag("stray_event", room, f"an event of a room never joined: {describe(data)}")
            return
        if track.joining:
            track.buffer.append(data)
            return
        self._step(room, track, data, origin="live")

    def on_rejoin_frame(self, room: str, reason: str) -> None:
        self.count.rejoin_frames += 1
        self.note(f"rejoin {room} reason={reason}", room)

    def on_joined(self, room: str, data: dict[str, Any], since: dict[str, Any] | None) -> None:
        """The answer to the join that sent ``since``: merge ``missed`` and the buffer."""
        track = self.rooms.setdefault(room, RoomTrack())
        missed = [e for e in data.get("missed") or [] if isinstance(e, dict)]
        self.note(
            f"room_joined {room} {short(data.get('epoch'))}:{data.get('offset')} "
            f"recovered={data.get('recovered')} missed={_span(missed)} "
            f"buffered={len(track.buffer)}",
            room,
        )
        buffered, track.buffer, track.joining = track.buffer, [], False
        self.count.max_missed = max(self.count.max_missed, len(missed))
        epoch, offset = str(data.get("epoch")), int(data.get("offset") or 0)
        if since is None or track.epoch is None:
            self._baseline(room, track, epoch, offset, buffered)
            return
        self.count.recoveries += 1
        if data.get("recovered") is not True:
            self.flag("not_recovered", room, f"since {_pos(since)} answered recovered=false")
            self._baseline(room, track, epoch, offset, buffered)
            return
        if epoch != track.epoch and track.offset == 0:
            track.epoch = epoch  # nothing seen yet: any epoch's history from offset 1 covers it
        if epoch != track.epoch:
            self.flag("new_epoch", room, f"since {_pos(since)} answered epoch {short(epoch)}")
            self._baseline(room, track, epoch, offset, buffered)
            return
        for event in missed:
            self._step(room, track, event, origin="missed")
        covered = {(str(e.get("epoch")), int(e.get("offset") or 0)) for e in missed}
        for event in buffered:
            self._merge_buffered(room, track, event, covered)
        if track.epoch == epoch and track.offset < offset:
            self.flag(
                "missed_incomplete",
                room,
                f"answered at {offset}, but missed and the buffered live events end at "
                f"{track.offset}: {track.offset + 1}..{offset} never sent",
            )
            self._skip(track, epoch, track.offset + 1, offset)
            track.offset = offset

    # --- judging ------------------------------------------------------------------------------
    def _baseline(
        self, room: str, track: RoomTrack, epoch: str, offset: int, buffered: list[dict[str, Any]]
    ) -> None:
        """A fresh start at the answer's position; buffered events at or below it came before."""
        track.epoch, track.offset = epoch, offset
        for event in buffered:
            if str(event.get("epoch")) == epoch and int(event.get("offset") or 0) <= offset:
                continue
            self._step(room, track, event, origin="live")

    def _merge_buffered(
        self, room: str, track: RoomTrack, event: dict[str, Any], covered: set[Position]
    ) -> None:
        """A live event that came while the join was in flight: an overlap when this answer's
        ``missed`` had it (not delivered twice), otherwise judged like any live event."""
        epoch, offset = str(event.get("epoch")), int(event.get("offset") or 0)
        if (epoch, offset) in covered:
            known = self.log.event_at(room, epoch, offset)
            if known is not None and known != str(event.get("id")):
                self.flag(
                    "conflict",
                    room,
                    f"two events at {short(epoch)}:{offset}: {known} and {describe(event)}",
                )
            self.count.overlaps += 1
            return
        if event.get(EARLY) and epoch == track.epoch and track.has(epoch, offset):
            self.flag(
                "stale_duplicate",
                room,
                f"event {offset}, which the client already had, sent again on its new connection "
                f"before auth_success (the node's live backlog for an automatic room)",
            )
            return
        self._step(room, track, event, origin="live")

    def _step(self, room: str, track: RoomTrack, event: dict[str, Any], *, origin: str) -> None:
        epoch, offset = str(event.get("epoch")), int(event.get("offset") or 0)
        other = self.log.record(room, epoch, offset, str(event.get("id")), tag_of(event))
        if other is not None:
            self.flag(
                "conflict", room, f"two events at {short(epoch)}:{offset}: {other} and "
                f"{describe(event)}"
            )  # fmt: skip
        if epoch != track.epoch and track.offset == 0:
            track.epoch = epoch  # the room's first publish ends the placeholder epoch "0"
        if epoch != track.epoch:
            self.flag(
                "new_epoch",
                room,
                f"{origin} event in epoch {short(epoch)} after {short(track.epoch)}:"
                f"{track.offset}: {describe(event)}",
            )
            track.epoch, track.offset = epoch, offset
            self._deliver(track, epoch, offset, origin)
            return
        if offset == track.offset + 1:
            track.offset = offset
            self._deliver(track, epoch, offset, origin)
        elif offset > track.offset + 1:
            self.flag(
                "gap",
                room,
                f"{origin} event {offset} after {track.offset}: "
                f"{track.offset + 1}..{offset - 1} missing",
            )
            self._skip(track, epoch, track.offset + 1, offset - 1)
            track.offset = offset
            self._deliver(track, epoch, offset, origin)
        elif (epoch, offset) in track.skipped:
            self.flag("reorder", room, f"{origin} event {offset} after {track.offset} (late)")
            track.skipped.discard((epoch, offset))
            self._deliver(track, epoch, offset, origin)
        else:
            self.flag(
                "duplicate", room, f"{origin} event {offset} again (at {track.offset}): "
                f"{describe(event)}"
            )  # fmt: skip

    def _deliver(self, track: RoomTrack, epoch: str, offset: int, origin: str) -> None:
        track.mark(epoch, offset)
        self.count.delivered += 1
        if origin == "missed":
            self.count.recovered_events += 1
        else:
            self.count.live += 1

    @staticmethod
    def _skip(track: RoomTrack, epoch: str, first: int, last: int) -> None:
        if last - first < MAX_SKIPPED and len(track.skipped) < MAX_SKIPPED:
            track.skipped.update((epoch, o) for o in range(first, last + 1))

    def flag(self, kind: str, room: str, detail: str) -> Violation:
        violation = Violation(
            kind, self.name, room, self.clock(), detail, self.trace.tail(room, TRACE_BEFORE)
        )
        self.violations.append(violation)
        self._open.append(violation)
        if self.on_violation is not None:
            self.on_violation(violation)
        return violation


def _pos(since: dict[str, Any] | None) -> str:
    return "-" if since is None else f"{short(since['epoch'])}:{since['offset']}"


def _span(events: Sequence[dict[str, Any]]) -> str:
    if not events:
        return "[]"
    return f"[{events[0].get('offset')}..{events[-1].get('offset')}]({len(events)})"
