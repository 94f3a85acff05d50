"""The way out of one Socket.IO session: what the core wrote (``wire`` records), in order, to
whatever carries the session now.

Without connection state recovery this only strips annotations. With it, it also:

- keeps the (epoch, offset) of every room the client was sent, and appends the offset string
  (``recovery.Tracker``) to each event, as Socket.IO servers with recovery do;
- drops an event the client already has (at or behind its room's position), and, while a
  recovering session's rooms are being restored, the live events that the restore's history
  read covers; a live event after a gap is not sent: the room is restored (``on_gap``) from
  the last event sent, history then live;
- holds everything back until the CONNECT is acknowledged (``CONNECT`` hold), and while a
  change of rooms is being saved (``SAVING`` hold), so the client never learns of a join or a
  leave that a recovery elsewhere would not know.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.socketio import wire
from gateway.socketio.recovery import Tracker

CONNECT = 1  # the namespace is not connected yet
SAVING = 2  # the recovery record is being saved

Emit = Callable[[list[bytes]], None]


class Delivery:
    __slots__ = (
        "_emit",
        "_held",
        "_held_bytes",
        "_holds",
        "_missed",
        "on_gap",
        "on_record_change",
        "positions",
        "recovering",
        "tracker",
    )

    def __init__(self, emit: Emit, *, held: bool = True) -> None:
        self._emit = emit
        self._holds = CONNECT if held else 0
        self._held: list[bytes] = []
        self._missed: list[int] = []  # indexes in _held of restored events (dropped if it fails)
        self._held_bytes = 0
        self.tracker: Tracker | None = None
        self.positions: dict[bytes, tuple[bytes, int]] = {}
        self.recovering: set[bytes] = set()  # rooms whose restore has not joined yet
        self.on_record_change: Callable[[], None] | None = None
        self.on_gap: Callable[[str], None] | None = None

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    # --- the core's bytes ---------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.tracker is None and not self.recovering:
            self._send(wire.packets(data))
            return
        if data[:2] == b"\x1fP" and data.find(wire.END) == len(data) - 1:
            self._one_publication(data)  # fan-out's case
            return
        out: list[bytes] = []
        for tag, room, epoch, offset, packet in wire.records(data):
            if tag in (wire.PUBLICATION, wire.MISSED):
                sent = self._event(tag, room, epoch, offset, packet)
                if sent is None:
                    continue
                if tag == wire.MISSED and self._holds:
                    self._send(out)
                    out = []
                    self._missed.append(len(self._held))
                packet = sent
            elif tag == wire.JOINED:
                self._joined(room, epoch, offset)
                self._send(out)  # what came before the join may go; the join waits for its save
                out = []
            elif tag == wire.LEFT:
                self.positions.pop(room, None)
                if self.tracker is not None:
                    self.tracker.left(room)
                    self._record_changed()
                self._send(out)
                out = []
            if packet:
                out.append(packet)
        self._send(out)

    def _one_publication(self, data: bytes) -> None:
        """One live publication: no generator, no list of records."""
        room, epoch, offset, packet = data[2:-1].split(b"\x1f", 3)
        sent = self._event(wire.PUBLICATION, room, epoch, int(offset), packet)
        if sent is not None:
            self._send([sent])

    def _event(
        self, tag: int, room: bytes, epoch: bytes, offset: int, packet: bytes
    ) -> bytes | None:
        if tag == wire.PUBLICATION and room in self.recovering:
            return None  # the restore reads history after this was published: it has it
        position = self.positions.get(room)
        if position is not None and position[0] == epoch:
            if offset <= position[1]:
                return None  # already sent (or before the join)
            if offset > position[1] + 1 and tag == wire.PUBLICATION and self.on_gap is not None:
                self.on_gap(room.decode())  # restored from position[1]: history, then live
                return None
        self.positions[room] = (epoch, offset)
        if self.tracker is None:
            return packet
        return packet[:-1] + b',"' + self.tracker.sent(room, epoch, offset) + b'"]'

    def _joined(self, room: bytes, epoch: bytes, offset: int) -> None:
        self.recovering.discard(room)
        self.positions[room] = (epoch, offset)
        if self.tracker is not None:
            self.tracker.joined(room, epoch, offset)
            self._record_changed()

    def _record_changed(self) -> None:
        self._holds |= SAVING
        if self.on_record_change is not None:
            self.on_record_change()

    # --- holding ------------------------------------------------------------------------------
    def _send(self, packets: list[bytes]) -> None:
        if not packets:
            return
        if self._holds:
            self._held.extend(packets)
            self._held_bytes += sum(len(p) for p in packets)
        else:
            self._emit(packets)

    def release(self, hold: int, *, drop_missed: bool = False) -> None:
        """End ``hold``; once none is left, send what was held (without the restored events
        when ``drop_missed``: the recovery failed and the client starts afresh)."""
        self._holds &= ~hold
        if drop_missed and self._missed:
            dropped = set(self._missed)
            self._held = [p for i, p in enumerate(self._held) if i not in dropped]
            self._missed = []
        if self._holds or not self._held:
            return
        held, self._held, self._held_bytes, self._missed = self._held, [], 0, []
        self._emit(held)

    def hold(self, hold: int) -> None:
        self._holds |= hold

    def holding(self, hold: int) -> bool:
        return bool(self._holds & hold)

    def discard(self) -> None:
        """The session is closing: what was held will not be sent."""
        self._held, self._held_bytes, self._missed = [], 0, []
