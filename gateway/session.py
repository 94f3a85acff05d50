"""One client connection: identity, rooms, rate limit and a bounded send queue.

A session never sees a socket: it writes already-framed bytes to a ``Transport``. Sending never
awaits: frames queue in the session, are coalesced into one write per socket per loop turn, and
a client whose queue (ours plus the kernel-side transport buffer) exceeds the limit is closed with
4503 instead of growing memory or delaying anyone else.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from gateway.backend.base import ConnectionInfo, Publication
from gateway.closecodes import CloseCode
from gateway.gate import RoomGate
from gateway.protocol import FrameId
from gateway.rooms import Identity

if TYPE_CHECKING:
    from gateway.hub import Outbox

# Below this many bytes in the transport's own buffer we hand it more; above it we hold frames
# in our queue so that, on overflow, we can drop them and still send the close frame promptly.
TRANSPORT_HIGH_WATER = 256 * 1024
# The transport's buffer holds at most TRANSPORT_HIGH_WATER plus the last chunk written, so
# below OVERFLOW_MARGIN of the limit our own queue cannot overflow and enqueue skips asking the
# transport. Frames larger than this (large publications) can make the real total pass the limit
# by their excess before the check starts; the limit stays a bound, just a looser one for them.
MAX_FRAME_BYTES = 64 * 1024
OVERFLOW_MARGIN = TRANSPORT_HIGH_WATER + MAX_FRAME_BYTES
RETRY_FLUSH_S = 0.005  # a backpressured socket is retried this often (only while it is)


class Transport(Protocol):
    kind: str  # "ws" or "sio": the hub caches one encoding of each event per kind

    def encode(self, event: str, data_json: bytes, frame_id: FrameId | None) -> bytes:
        """Wire bytes (framed for the socket) of one server frame."""

    def encode_publication(self, pub: Publication) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def buffer_size(self) -> int: ...

    def close(self, code: int, reason: str) -> None:
        """Start closing; must not block."""


class TokenBucket:
    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Session:
    __slots__ = (
        "_out",
        "_out_bytes",
        "_outbox",
        "_retry_handle",
        "bucket",
        "close_code",
        "closed",
        "connected_at",
        "id",
        "identity",
        "info",
        "ip",
        "max_queue_bytes",
        "pending",
        "rooms",
        "strikes",
        "token",
        "transport",
    )

    def __init__(
        self,
        connection_id: str,
        transport: Transport,
        outbox: Outbox,
        *,
        ip: str,
        max_queue_bytes: int,
        rate: float,
        burst: int,
    ) -> None:
        self.id = connection_id
        self.transport = transport
        self._outbox = outbox
        self.ip = ip
        self.max_queue_bytes = max_queue_bytes
        self.bucket = TokenBucket(rate, burst)
        self.strikes = 0
        self.identity: Identity | None = None
        self.token: str | None = None  # held for business events to Django; never logged
        self.info: ConnectionInfo | None = None
        # a list, not a set: a few rooms per connection, and 150 bytes less on each of them
        self.rooms: list[str] = []
        # rooms being joined with history, and just joined: see RoomGate
        self.pending: dict[str, RoomGate] | None = None
        self.connected_at = time.time()
        self.closed = False
        self.close_code: int | None = None  # the code this side closed with, if it did
        self._out: list[bytes] | None = None  # frames not yet handed to the transport
        self._out_bytes = 0
        self._retry_handle: asyncio.TimerHandle | None = None

    def drop_room(self, room: str) -> None:
        if room in self.rooms:
            self.rooms.remove(room)
        self.drop_gate(room)

    # --- joining with history (see gateway/gate.py) ----------------------------------------
    def gate(self, room: str) -> RoomGate:
        """The room's gate, opened (holding) if the session had none."""
        pending = self.pending
        if pending is None:
            pending = self.pending = {}
        gate = pending.get(room)
        if gate is None:
            gate = pending[room] = RoomGate()
        return gate

    def drop_gate(self, room: str) -> list[Publication]:
        """Forget the gate; what it held (if still holding) is returned."""
        if self.pending is None:
            return []
        gate = self.pending.pop(room, None)
        if not self.pending:
            self.pending = None
        return gate.held() if gate is not None else []

    def __repr__(self) -> str:
        return f"<Session {self.id}>"

    # --- sending ----------------------------------------------------------------------------
    def send(self, event: str, data: Any, frame_id: FrameId | None = None) -> None:
        self.enqueue(self.transport.encode(event, orjson.dumps(data), frame_id))

    def send_raw(self, event: str, data_json: bytes, frame_id: FrameId | None = None) -> None:
        self.enqueue(self.transport.encode(event, data_json, frame_id))

    def enqueue(self, wire: bytes) -> None:
        if self.closed:
            return
        out = self._out
        if out is None:
            self._out = [wire]
            self._outbox.mark(self)
        else:
            out.append(wire)
        queued = self._out_bytes = self._out_bytes + len(wire)
        # The transport's buffer stays under TRANSPORT_HIGH_WATER plus a frame, so it is asked (a
        # call per frame on the fan-out path) only once our own queue comes that close.
        limit = self.max_queue_bytes
        if queued + OVERFLOW_MARGIN > limit and queued + self.transport.buffer_size() > limit:
            self._outbox.overflowed(self)
            self.close(CloseCode.SLOW_CONSUMER, "send queue overflow: client too slow")

    def flush(self) -> None:
        """Hand queued frames to the transport in one write, as far as it takes them."""
        out = self._out
        if out is None or self.closed:
            return
        room = TRANSPORT_HIGH_WATER - self.transport.buffer_size()
        if room <= 0:
            self._retry_later()
            return
        if len(out) == 1:
            chunk = out[0]
            self._out = None  # idle connections keep no queue object (memory per connection)
        else:
            size = n = 0
            for part in out:
                size += len(part)
                n += 1
                if size >= room:
                    break
            if n == len(out):
                chunk = b"".join(out)
                self._out = None
            else:
                chunk = b"".join(out[:n])
                del out[:n]
        self._out_bytes -= len(chunk)
        self.transport.write(chunk)
        if self._out is not None:
            self._retry_later()

    def _retry_later(self) -> None:
        if self._retry_handle is None:
            loop = asyncio.get_running_loop()
            self._retry_handle = loop.call_later(RETRY_FLUSH_S, self._retry)

    def _retry(self) -> None:
        self._retry_handle = None
        self.flush()

    @property
    def queued_bytes(self) -> int:
        return self._out_bytes

    def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_code = code
        if self._out:
            self._out.clear()
        self._out_bytes = 0
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        self.transport.close(code, reason)
