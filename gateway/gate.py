"""A session's gate on one room: what it may be sent live while, and after, it (re)joins.

The node holds a room's live publications for a session from the moment it reads the room's
history for that session — or from the moment it tells the session to ``rejoin`` — until its
answer, and afterwards keeps a floor. With that, a join's ``missed`` and the live stream meet with
no gap, no duplicate and no reordering (docs/cluster.md, "Why recovery is exact"):

* holding: live publications are kept in order (up to ``MAX_HELD``; past it they are dropped and
  the gate is *lossy*: the node sends another ``rejoin`` after the answer, and history covers
  them);
* a ``rejoin`` sent while a join is already reading history makes that join's answer stale: its
  release delivers nothing and the gate keeps holding for the join that answers the ``rejoin``
  (``generation``);
* floor: after the answer at ``(epoch, offset)``, a live publication of that epoch at or below it
  (its copy still in flight on the pub/sub connection) is not sent again; the first one above it
  removes the gate;
* a hold started by ``rejoin`` for a client that never answers it ends at ``deadline``: what was
  held is delivered live (such a client has only at-most-once delivery anyway).
"""

from __future__ import annotations

from gateway.backend.base import Publication

MAX_HELD = 1000


class RoomGate:
    __slots__ = ("buffer", "deadline", "epoch", "generation", "lossy", "offset")

    def __init__(self) -> None:
        self.buffer: list[Publication] | None = []  # None: a floor, not holding
        self.epoch = ""
        self.offset = 0
        self.generation = 0  # rejoins sent while holding
        self.deadline: float | None = None  # monotonic; only for holds awaiting a rejoin
        self.lossy = False

    @property
    def holding(self) -> bool:
        return self.buffer is not None

    def hold(self, pub: Publication) -> bool:
        """True when ``pub`` must not be sent now (held, or covered by the join's answer)."""
        buffer = self.buffer
        if buffer is not None:
            if self.lossy:
                return True
            if len(buffer) >= MAX_HELD:
                buffer.clear()  # bounded: history has them, and the node sends rejoin again
                self.lossy = True
                return True
            buffer.append(pub)
            return True
        return pub.epoch == self.epoch and pub.offset <= self.offset

    def start_holding(self) -> None:
        if self.buffer is None:
            self.buffer = []

    def begin_join(self) -> int:
        """A join starts reading history: hold, and no deadline (the join answers)."""
        self.start_holding()
        self.deadline = None
        return self.generation

    def await_rejoin(self, deadline: float) -> None:
        """The session was told to rejoin: hold until it does (or until ``deadline``)."""
        self.start_holding()
        self.generation += 1
        self.deadline = deadline

    def release(
        self, generation: int, epoch: str, offset: int
    ) -> tuple[list[Publication], bool] | None:
        """The join that began at ``generation`` answered at ``(epoch, offset)``: what was held
        and is newer, in order, and whether some was dropped (``lossy``); the gate becomes a
        floor. None when a rejoin was sent since: the answer is stale, and the gate keeps
        holding for the join that answers the rejoin."""
        if generation != self.generation or self.buffer is None:
            return None
        held, self.buffer = self.buffer, None
        lossy, self.lossy = self.lossy, False
        self.epoch, self.offset = epoch, offset
        self.deadline = None
        return [p for p in held if p.epoch != epoch or p.offset > offset], lossy

    def held(self) -> list[Publication]:
        return self.buffer or []
