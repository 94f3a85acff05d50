"""Socket.IO connection state recovery, mapped onto room offsets.

socket.io-client remembers two things across a reconnection: the ``pid`` the server gave in the
CONNECT acknowledgement, and the last string argument of the last event it received (its
``offset``); it sends both back in its next CONNECT. Here:

- the ``pid`` names a *record*, kept in the backend for the history window: the user, and for
  each room of the session an index, and the (epoch, offset) at which the session joined it.
  It is saved before the client can learn of a join or a leave, so it always holds the rooms
  the client believes it is in;
- the offset string the server appends to each event it sends,
  ``1;<tag>;<index>:<offset>[:<epoch>],…``, names the position of every room where the client
  has received events since it joined (the epoch only when it differs from the record's). A
  string is only read with a record of its own lineage (the tag); a restored record keeps the
  tag and its rooms' indexes, so a string stays valid across recoveries, even when the
  restore was partial and the session got a new pid (``socket.recovered`` false).

A client that comes back with both is joined to the record's rooms, each with ``since`` = its
position in the string, or the record's join position when the string has none (it received
nothing in that room after joining), through the node's join-with-``since`` path.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.backend.base import Position

log = logging.getLogger("gateway.socketio")

FORMAT = b"1"
MAX_OFFSET_CHARS = 16_384  # an offset string longer than any the server sends is ignored


def new_pid() -> str:
    return secrets.token_urlsafe(18)


def new_tag() -> str:
    return secrets.token_hex(4)


@dataclass(slots=True)
class Record:
    """A session's rooms, as the client knows them: room -> (index, epoch, join offset)."""

    user_id: str
    rooms: dict[str, tuple[int, str, int]] = field(default_factory=dict)
    next_index: int = 0
    tag: str = field(default_factory=new_tag)  # the lineage of the offset strings it reads

    def join(self, room: str, epoch: str, offset: int) -> None:
        entry = self.rooms.get(room)
        if entry is None:
            entry = (self.next_index, epoch, offset)
            self.next_index += 1
        self.rooms[room] = (entry[0], epoch, offset)

    def leave(self, room: str) -> None:
        self.rooms.pop(room, None)

    def successor(self) -> Record:
        """The record of the same session restored elsewhere: same indexes, rooms re-added as
        they are joined again (``keep`` drops those that were not)."""
        return Record(self.user_id, dict(self.rooms), self.next_index, self.tag)

    def keep(self, rooms: set[str]) -> None:
        for room in [r for r in self.rooms if r not in rooms]:
            del self.rooms[room]

    def dumps(self) -> bytes:
        return orjson.dumps(
            {"u": self.user_id, "r": self.rooms, "n": self.next_index, "t": self.tag}
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> Record | None:
        try:
            obj = orjson.loads(raw)
            rooms = {str(r): (int(i), str(e), int(o)) for r, (i, e, o) in obj["r"].items()}
            return cls(str(obj["u"]), rooms, int(obj["n"]), str(obj["t"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def positions(self, offset: Any) -> dict[str, Position]:
        """``since`` for each room: the client's offset string where it names the room (and is
        not behind the join position), else the join position."""
        sent = parse_offset(offset, self.tag)
        since = {}
        for room, (index, epoch, join_offset) in self.rooms.items():
            position = Position(join_offset, epoch)
            if index in sent:
                offset_, epoch_ = sent[index]
                epoch_ = epoch_ or epoch
                if epoch_ != epoch or offset_ > join_offset:
                    position = Position(offset_, epoch_)
            since[room] = position
        return since


def parse_offset(offset: Any, tag: str) -> dict[int, tuple[int, str | None]]:
    """``1;<tag>;0:17,1:4:ab12cd34`` -> {0: (17, None), 1: (4, "ab12cd34")} when the tag is
    ``tag``; anything else -> {}."""
    if not isinstance(offset, str) or len(offset) > MAX_OFFSET_CHARS:
        return {}
    version, _, rest = offset.partition(";")
    got, _, body = rest.partition(";")
    if version != FORMAT.decode() or got != tag or not body:
        return {}
    out: dict[int, tuple[int, str | None]] = {}
    for entry in body.split(","):
        parts = entry.split(":")
        try:
            index, position = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            return {}
        if len(parts) > 3 or index < 0 or position < 0:
            return {}
        out[index] = (position, parts[2] if len(parts) == 3 else None)
    return out


class Tracker:
    """One session's recovery state: its record, and the offset string of what it was sent."""

    __slots__ = ("_entries", "_head", "_known", "_text", "pid", "record")

    def __init__(self, pid: str, record: Record) -> None:
        self.pid = pid
        self.record = record
        self._head = FORMAT + b";" + record.tag.encode() + b";"
        self._entries: dict[bytes, bytes] = {}  # room -> b"index:offset[:epoch]"
        self._known: dict[bytes, tuple[bytes, bytes] | None] = {}  # room -> (b"index:", epoch)
        self._text: bytes | None = None

    def sent(self, room: bytes, epoch: bytes, offset: int) -> bytes:
        """An event of ``room`` at (epoch, offset) goes to the client: the offset string that
        rides with it. Runs once per event and recipient: kept to a few dict lookups."""
        known = self._known[room] if room in self._known else self._learn(room)
        if known is not None:
            text = known[0] + b"%d" % offset
            if epoch != known[1]:
                text += b":" + epoch
            self._entries[room] = text
            self._text = None
        if self._text is None:
            self._text = self._head + b",".join(self._entries.values())
        return self._text

    def _learn(self, room: bytes) -> tuple[bytes, bytes] | None:
        entry = self.record.rooms.get(room.decode())
        known = None if entry is None else (b"%d:" % entry[0], entry[1].encode())
        self._known[room] = known
        return known

    def joined(self, room: bytes, epoch: bytes, offset: int) -> None:
        self.record.join(room.decode(), epoch.decode(), offset)
        self._forget(room)

    def left(self, room: bytes) -> None:
        self.record.leave(room.decode())
        self._forget(room)

    def _forget(self, room: bytes) -> None:
        self._known.pop(room, None)
        if self._entries.pop(room, None) is not None:
            self._text = None


# --- where records live ----------------------------------------------------------------------


class RecordStore(Protocol):
    ttl_s: float

    async def load(self, pid: str) -> Record | None: ...

    async def save(self, pid: str, record: Record) -> None: ...

    async def delete(self, pid: str) -> None: ...

    async def touch(self, pids: Iterable[str]) -> None:
        """Keep the records of live sessions for another ``ttl_s``."""


class MemoryRecordStore:
    """Embedded mode: records in this process, for ``ttl_s``."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._records: dict[str, tuple[float, bytes]] = {}

    async def load(self, pid: str) -> Record | None:
        self._sweep()
        entry = self._records.get(pid)
        return Record.loads(entry[1]) if entry is not None else None

    async def save(self, pid: str, record: Record) -> None:
        self._records[pid] = (time.monotonic() + self.ttl_s, record.dumps())

    async def delete(self, pid: str) -> None:
        self._records.pop(pid, None)

    async def touch(self, pids: Iterable[str]) -> None:
        expires = time.monotonic() + self.ttl_s
        for pid in pids:
            entry = self._records.get(pid)
            if entry is not None:
                self._records[pid] = (expires, entry[1])
        self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        for pid in [p for p, (expires, _) in self._records.items() if expires <= now]:
            del self._records[pid]


class RedisRecordStore:
    """One string per record (``Keys.sio_record``), expiring ``ttl_s`` after its last save or
    touch; a node touches its live sessions' records every ``ttl_s / 3``."""

    def __init__(self, client: Any, keys: Any, ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s

    async def load(self, pid: str) -> Record | None:
        raw = await self.client.get(self.keys.sio_record(pid))
        return Record.loads(raw) if raw is not None else None

    async def save(self, pid: str, record: Record) -> None:
        await self.client.set(self.keys.sio_record(pid), record.dumps(), px=self._ttl_ms())

    async def delete(self, pid: str) -> None:
        await self.client.delete(self.keys.sio_record(pid))

    async def touch(self, pids: Iterable[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        count = 0
        for pid in pids:
            pipe.pexpire(self.keys.sio_record(pid), self._ttl_ms())
            count += 1
        if count:
            await pipe.execute()

    def _ttl_ms(self) -> int:
        return int(self.ttl_s * 1000)


def make_store(backend: Any, ttl_s: float) -> RecordStore:
    client, keys = getattr(backend, "client", None), getattr(backend, "keys", None)
    if backend.name == "redis" and client is not None and keys is not None:
        return RedisRecordStore(client, keys, ttl_s)
    return MemoryRecordStore(ttl_s)
