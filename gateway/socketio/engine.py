"""One Engine.IO session, whatever carries it: long-polling requests, a WebSocket here, or a
WebSocket held by another node (``forwarding``).

The session is what the gateway core writes to (it has the shape of the ``/ws`` transport:
``kind``, ``encode``, ``encode_publication``, ``write``, ``buffer_size``, ``close``), so
sessions, the hub and fan-out do not know which protocol or transport a client uses. It owns:

- the way out: ``Delivery`` (records to packets, in order) then ``emit``: to the WebSocket
  carrier, or into a bounded queue that the next long-poll takes;
- the heartbeat: a ping every ``pingInterval``, the session closed when no pong comes within
  ``pingTimeout`` (so a polling client silent for ``pingInterval + pingTimeout`` is closed);
- the upgrade from long-polling to a WebSocket (``2probe``/``3probe``, a NOOP to release the
  pending long-poll, ``5``), with a deadline;
- how it ends: Socket.IO packets first when the close means something to the client
  (``SocketLayer.closing_packets``), then the transport's close.

Socket.IO itself (namespaces, events, acknowledgements, authentication) is ``namespace``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from gateway.backend.base import Publication
from gateway.protocol import FrameId
from gateway.socketio import wire
from gateway.socketio.codec import (
    CLOSE,
    NOOP,
    PING,
    EnginePacket,
    EngineType,
    PacketError,
    decode_frame,
    encode_payload,
)
from gateway.socketio.delivery import Delivery

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.socketio.namespace import SocketLayer

log = logging.getLogger("gateway.socketio")

ABNORMAL_CLOSURE = 1006  # reported, never sent: the connection was lost or abandoned
PROTOCOL_ERROR = 1002
NORMAL_CLOSURE = 1000
SLOW_CONSUMER = 4503


@dataclass(frozen=True, slots=True)
class SocketIOOptions:
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 20.0
    max_payload: int = 65536  # bytes of one Engine.IO packet, and of one POST body
    connect_timeout_s: float = 10.0  # from the handshake to the Socket.IO CONNECT
    upgrade_timeout_s: float = 10.0  # from the probe to the upgrade packet
    recovery: bool = True  # Socket.IO connection state recovery (pid and offsets)
    tombstone_s: float = 5.0  # a closed long-polling session waits this long for its last poll
    max_queue_bytes: int = 1048576  # packets waiting for a long-poll, or held back, at most

    @classmethod
    def from_settings(cls, settings: Settings) -> SocketIOOptions:
        return cls(
            ping_interval_s=settings.socketio_ping_interval_s,
            ping_timeout_s=settings.socketio_ping_timeout_s,
            max_payload=settings.max_message_bytes,
            connect_timeout_s=settings.auth_timeout_s,
            recovery=settings.socketio_recovery,
            max_queue_bytes=settings.send_queue_bytes,
        )


class Carrier(Protocol):
    """A WebSocket carrying a session: here (``transport.WsCarrier``) or on another node
    (``forwarding.RelayCarrier``). Sends never block."""

    def send(self, packets: list[bytes]) -> None: ...

    def buffer_size(self) -> int: ...

    def close(self, code: int, reason: str) -> None:
        """Close after what was sent (the WebSocket closing handshake)."""

    def abort(self, reason: str) -> None:
        """Drop the connection at once (the peer stopped answering)."""


class Poll(Protocol):
    """A long-poll GET waiting for packets: here (``polling``) or on another node."""

    def answer(self, payload: bytes) -> None: ...


class State(Enum):
    POLLING = "polling"
    WEBSOCKET = "websocket"
    CLOSED = "closed"


class RequestRefused(Exception):
    """A polling request or an upgrade the session refuses (400 and an Engine.IO message)."""


class SessionGone(RequestRefused):
    """The session has ended (and its last packets were taken): "Session ID unknown"."""


Ended = Callable[["EngineSession", int], None]


class EngineSession:
    kind = "sio"  # the hub encodes each publication once for every Socket.IO session

    def __init__(
        self,
        sid: str,
        options: SocketIOOptions,
        on_end: Ended,
        carrier: Carrier | None = None,
    ) -> None:
        self.sid = sid
        self.options = options
        self.ip = ""  # the client's address, for the backoff after auth_unavailable
        self.carrier = carrier
        self.state = State.WEBSOCKET if carrier is not None else State.POLLING
        self.delivery = Delivery(self.emit)
        self.socket: SocketLayer | None = None  # set by the SocketLayer it is given to
        self.close_code: int | None = None
        self.close_reason = ""
        self._on_end = on_end
        self._queue: list[bytes] = []
        self._queue_bytes = 0
        self._poll: Poll | None = None
        self._close_pending = False  # a CLOSE is owed to the next long-poll
        self._poll_stamp = ""  # the pending long-poll's ``t``
        self._last_stamp = ""  # the ``t`` of the last long-poll answered
        self._posting = False
        self._upgrade: Carrier | None = None
        self._upgrade_probed = False
        self._upgrade_timer: asyncio.TimerHandle | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self._schedule_ping()

    def __repr__(self) -> str:
        return f"<EngineSession {self.sid} {self.state.value}>"

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    # --- the core's side (gateway.session.Transport) -------------------------------------------
    def encode(self, event: str, data_json: bytes, frame_id: FrameId | None) -> bytes:
        assert self.socket is not None
        return self.socket.encode(event, data_json, frame_id)

    def encode_publication(self, pub: Publication) -> bytes:
        return wire.publication(pub)

    def write(self, data: bytes) -> None:
        if self.state is not State.CLOSED:
            self.delivery.write(data)
            self._check_queue()

    def buffer_size(self) -> int:
        """The socket's own buffer: what waits for a long-poll, or is held back, is bounded
        here (``_check_queue``), so the core never stops handing it packets."""
        return self.carrier.buffer_size() if self.carrier is not None else 0

    def _check_queue(self) -> None:
        if self._queue_bytes + self.delivery.held_bytes > self.options.max_queue_bytes:
            log.info("socket.io session %s closed: queue overflow (slow consumer)", self.sid)
            self.close(SLOW_CONSUMER, "send queue overflow: client too slow")

    def close(self, code: int, reason: str) -> None:
        """End the session; never blocks. The Socket.IO packet that explains the close (if
        any) goes first, then the transport ends: a close frame with ``code`` on a WebSocket,
        a CLOSE packet to the next long-poll (unless the client was told to disconnect)."""
        if self.state is State.CLOSED:
            return
        packets = self.socket.closing_packets(code) if self.socket is not None else []
        if self.socket is not None and not self.socket.connected:
            self.delivery.discard()  # never acknowledged: nothing of it goes out
        carrier = self.carrier
        if carrier is None:
            # The CLOSE goes alone, in a long-poll of its own: socket.io-client handles the
            # packets of a body a tick later than a CLOSE in the same body, and would take the
            # events it carries for after the reconnection (and report an older offset).
            self._queue.extend(packets)
            self._queue_bytes += sum(len(p) for p in packets)
            self._close_pending = not packets
        self._end(code, reason)
        if carrier is None:
            self._answer_poll()
            return
        if packets:
            carrier.send(packets)
        carrier.close(code, reason)

    def abort(self, code: int, reason: str) -> None:
        """End at once, sending nothing (the client stopped answering, or its link broke)."""
        if self.state is State.CLOSED:
            return
        self._end(code, reason)
        if self.carrier is not None:
            self.carrier.abort(reason)
        elif self._poll is not None:  # let the request end; the client is gone or going
            self._poll.answer(CLOSE)
            self._poll = None

    def _end(self, code: int, reason: str) -> None:
        self.close_code = code
        self.close_reason = reason
        self.state = State.CLOSED
        for timer in (self._ping_timer, self._pong_timer):
            if timer is not None:
                timer.cancel()
        if self._upgrade is not None and not self._upgrade_probed:
            self._drop_upgrade(self._upgrade, NORMAL_CLOSURE, "session closed")
        # Probed, the client has paused long-polling and will only speak on the new socket: the
        # close reaches it there, after its upgrade packet (_on_upgrade_packet).
        self._on_end(self, code)

    # --- the way out ----------------------------------------------------------------------------
    def emit(self, packets: list[bytes]) -> None:
        """Send packets (already out of ``Delivery``, or the session's own) in order."""
        if self.state is State.CLOSED or not packets:
            return
        if self.state is State.WEBSOCKET:
            assert self.carrier is not None
            self.carrier.send(packets)
            return
        self._queue.extend(packets)
        self._queue_bytes += sum(len(p) for p in packets)
        self._answer_poll()
        self._check_queue()

    def _answer_poll(self) -> None:
        poll = self._poll
        if poll is None:
            return
        if not self._queue:
            if self._close_pending:
                self._close_pending, self._poll = False, None
                poll.answer(CLOSE)
            return
        payload = encode_payload(self._queue)
        self._queue, self._queue_bytes, self._poll = [], 0, None
        self._last_stamp = self._poll_stamp
        poll.answer(payload)

    # --- long-polling ---------------------------------------------------------------------------
    def poll(self, poll: Poll, stamp: str = "") -> None:
        """A long-poll GET. Raises ``RequestRefused`` for a second concurrent one (and closes
        the session, as Engine.IO does) or when the session has moved to a WebSocket.

        ``stamp`` is the request's cache-busting ``t`` (socket.io-client makes one per request).
        The stamp of the last answered long-poll again is most likely that request again: a
        balancer retried it after its answer was lost on the way (nginx retries a GET whose
        node died before the answer's head), and the packets in it never reached the client.
        The session is closed (this request gets the CLOSE): the client reconnects and
        recovers them. (Two requests of one client with one stamp, a one-in-46,656 chance when
        they are made in the same millisecond, cost the same reconnection, and lose nothing.)"""
        if stamp and stamp == self._last_stamp and self.state is not State.CLOSED:
            # nothing after the lost packets may reach the client before its recovery
            self._queue, self._queue_bytes = [], 0
            self.delivery.discard()
            self.close(ABNORMAL_CLOSURE, "a long-poll came again: its answer was lost")
        if self.state is State.CLOSED:
            if self._queue:  # the last packets; the CLOSE, if any, with the next poll
                payload = encode_payload(self._queue)
                self._queue, self._queue_bytes = [], 0
            elif self._close_pending:
                self._close_pending, payload = False, CLOSE
            else:
                raise SessionGone("Session ID unknown")
            poll.answer(payload)
            return
        if self.state is State.WEBSOCKET:
            raise RequestRefused("Bad request: this session has upgraded to a WebSocket")
        if self._poll is not None:
            self.close(PROTOCOL_ERROR, "overlapping long-polls")
            raise RequestRefused("Bad request: a long-poll is already pending for this session")
        self._poll, self._poll_stamp = poll, stamp
        if self._upgrade_probed:
            self._queue.append(NOOP)  # the client is upgrading: release it at once
            self._queue_bytes += len(NOOP)
        self._answer_poll()

    def poll_cancelled(self, poll: Poll) -> None:
        """A pending long-poll withdrawn unanswered (its node shuts down): the next one will
        take the packets."""
        if self._poll is poll:
            self._poll = None

    def poll_lost(self, poll: Poll) -> None:
        """A pending long-poll's client went away before its answer."""
        if self._poll is poll:
            self._poll = None
            self.abort(ABNORMAL_CLOSURE, "long-poll connection closed prematurely")

    async def post(self, body: str) -> None:
        """A POST's packets, handled in order. Raises ``RequestRefused`` for one that overlaps
        another (and closes the session)."""
        if self.state is State.CLOSED:
            raise SessionGone("Session ID unknown")
        if self.state is State.WEBSOCKET:
            raise RequestRefused("Bad request: this session has upgraded to a WebSocket")
        if self._posting:
            self.close(PROTOCOL_ERROR, "overlapping posts")
            raise RequestRefused("Bad request: a POST is already in progress for this session")
        self._posting = True
        try:
            for text in body.split("\x1e"):
                if self.closed:
                    break
                self.receive(text)
                await self.room()  # read no further while the core is behind
        finally:
            self._posting = False

    # --- packets from the client ----------------------------------------------------------------
    async def room(self) -> None:
        """Wait until the core has caught up enough to read more from this client."""
        if self.socket is not None:
            await self.socket.room()

    async def drain(self) -> None:
        """The client half-closed: let the core answer everything it sent."""
        if self.socket is not None:
            await self.socket.drain()

    def receive(self, text: str | bytes) -> None:
        """One packet from the current transport (a POST's, or a WebSocket frame)."""
        assert self.socket is not None
        try:
            packet = decode_frame(text)
        except PacketError as exc:
            self.socket.on_invalid(exc)
            return
        if isinstance(packet, EnginePacket):
            self._on_engine(packet)
        else:
            self.socket.on_packet(packet)

    def _on_engine(self, packet: EnginePacket) -> None:
        if packet.type is EngineType.PONG:
            self._on_pong()
        elif packet.type is EngineType.PING:  # not sent by v4 clients; answer it anyway
            self.emit([b"3" + packet.data.encode()])
        elif packet.type is EngineType.CLOSE:
            self.close(NORMAL_CLOSURE, "client close")
        elif packet.type is EngineType.OPEN:
            self.close(PROTOCOL_ERROR, "clients do not send OPEN")
        # NOOP, and UPGRADE on the transport already in use, mean nothing

    # --- the WebSocket upgrade ------------------------------------------------------------------
    def attach(self, carrier: Carrier) -> None:
        """A WebSocket opened with this session's sid, before its probe. Raises
        ``RequestRefused`` unless the session is long-polling and not already upgrading."""
        if self.state is not State.POLLING or self._upgrade is not None:
            raise RequestRefused("Bad request: this session cannot be upgraded now")
        self._upgrade = carrier
        self._upgrade_timer = self._loop.call_later(
            self.options.upgrade_timeout_s, self._upgrade_expired, carrier
        )

    def receive_from(self, carrier: Carrier, text: str | bytes) -> None:
        """A frame from a WebSocket: the session's carrier, or the one being upgraded to."""
        if carrier is self.carrier:
            self.receive(text)
        elif carrier is self._upgrade:
            self._on_upgrade_packet(carrier, text)

    def _on_upgrade_packet(self, carrier: Carrier, text: str | bytes) -> None:
        if text == "2probe" and not self._upgrade_probed:
            self._upgrade_probed = True
            carrier.send([b"3probe"])
            if self._poll is not None:  # release the pending long-poll: the client pauses
                self.emit([NOOP])
        elif text == "5" and self._upgrade_probed and self.state is State.CLOSED:
            self._drop_upgrade(carrier, self.close_code or NORMAL_CLOSURE, self.close_reason)
        elif text == "5" and self._upgrade_probed:
            self._upgraded(carrier)
        else:
            self._drop_upgrade(carrier, PROTOCOL_ERROR, "unexpected packet during the upgrade")

    def _upgraded(self, carrier: Carrier) -> None:
        if self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
        self._upgrade, self._upgrade_probed = None, False
        self.carrier = carrier
        self.state = State.WEBSOCKET
        if self._poll is not None:  # should not be: the client waited for it before "5"
            self._poll.answer(NOOP)
            self._poll = None
        queued, self._queue, self._queue_bytes = self._queue, [], 0
        if queued:
            carrier.send(queued)

    def _upgrade_expired(self, carrier: Carrier) -> None:
        self._drop_upgrade(carrier, NORMAL_CLOSURE, "upgrade timeout")

    def _drop_upgrade(self, carrier: Carrier, code: int, reason: str) -> None:
        if carrier is not self._upgrade:
            return
        if self._upgrade_timer is not None:
            self._upgrade_timer.cancel()
        self._upgrade, self._upgrade_probed = None, False
        if self.state is State.CLOSED and self._queue:  # the last packets, then the close
            carrier.send(self._queue)
            self._queue, self._queue_bytes, self._close_pending = [], 0, False
        carrier.close(code, reason)

    def carrier_ended(self, carrier: Carrier, code: int | None) -> None:
        """A WebSocket of this session is gone (closed by the client, lost, or too large a
        message: ``code``)."""
        if carrier is self._upgrade:
            if self._upgrade_timer is not None:
                self._upgrade_timer.cancel()
            self._upgrade, self._upgrade_probed = None, False
        elif carrier is self.carrier and self.state is not State.CLOSED:
            self._end(code or ABNORMAL_CLOSURE, "connection closed")

    # --- heartbeat ------------------------------------------------------------------------------
    def _schedule_ping(self) -> None:
        self._ping_timer = self._loop.call_later(self.options.ping_interval_s, self._ping)

    def _ping(self) -> None:
        self.emit([PING])
        self._pong_timer = self._loop.call_later(self.options.ping_timeout_s, self._no_pong)

    def _on_pong(self) -> None:
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
            self._schedule_ping()

    def _no_pong(self) -> None:
        log.info("socket.io session %s: ping timeout", self.sid)
        self.abort(ABNORMAL_CLOSURE, "ping timeout")
