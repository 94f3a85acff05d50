"""The Socket.IO WebSocket transport: ``/socket.io/?EIO=4&transport=websocket`` over aiohttp.

Two ways in:

- without ``sid``: a new Engine.IO session on this WebSocket (``transports: ["websocket"]``);
- with ``sid``: the upgrade of a long-polling session. When this node owns the session the
  socket becomes its carrier after the probe; when another node does, this node relays the
  socket to it (``forwarding.Relay``) for the life of the connection.

This module owns the socket: after aiohttp has parsed and routed the upgrade request, the
gateway's own frame reader takes the connection over (gateway.wstakeover: the bounds and rules
of ``/ws``); ``SioTransport`` writes frames and runs the closing handshake (gateway.wsframes);
``read_frames`` reads messages into whatever the socket carries (an ``EngineSession`` here, or a
``Relay``). The Engine.IO and Socket.IO state is ``engine``'s and ``namespace``'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiohttp import WSMsgType, web

from gateway.socketio.codec import UNKNOWN_SID, EngineErrorCode, Handshake, HandshakeError
from gateway.socketio.engine import ABNORMAL_CLOSURE, Carrier, RequestRefused
from gateway.socketio.forwarding import ForwardError, OwnerGone
from gateway.socketio.sessions import Server, error_response, owner_of
from gateway.wsframes import ServerClose, ws_frame
from gateway.wstakeover import MessageStream, Upgraded, take_over

log = logging.getLogger("gateway.socketio")

CLOSE_TIMEOUT_S = 5.0


class Sink(Protocol):
    """What a WebSocket's frames go to."""

    def receive_from(self, carrier: Carrier, text: str | bytes) -> None: ...

    def carrier_ended(self, carrier: Carrier, code: int | None) -> None: ...

    async def room(self) -> None:
        """Wait until more frames may be read (backpressure)."""

    async def drain(self) -> None:
        """The client half-closed: answer what it sent before the connection ends."""


class SioTransport:
    """One Socket.IO WebSocket, written to: ``send`` frames each packet; ``close`` sends the
    close frame after what is already written; nothing here blocks."""

    __slots__ = ("_closing", "_transport", "close_code", "close_reason", "closer")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None  # set once the upgrade is answered
        self.closer: ServerClose | None = None  # made when the connection starts to close
        self.close_code: int | None = None
        self.close_reason = ""
        self._closing = False

    def bind(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def send(self, packets: list[bytes]) -> None:
        if len(packets) == 1:
            self.write(ws_frame(packets[0]))
        else:
            self.write(b"".join(ws_frame(p) for p in packets))

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None and self.closer is None and not transport.is_closing():
            transport.write(data)

    def buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def close(self, code: int, reason: str) -> None:
        """Start closing; never blocks (the close frame goes after what is written)."""
        if self._closing:
            return
        self._closing = True
        self.close_code = code
        self.close_reason = reason
        if self._transport is not None:
            self.closer = ServerClose(self._transport, CLOSE_TIMEOUT_S)
            self.closer.start(code, reason)

    @property
    def closing(self) -> bool:
        return self._closing

    def abort(self, reason: str) -> None:
        """Drop the connection without a close handshake (the peer stopped answering)."""
        if self.close_code is None:
            self.close_code = ABNORMAL_CLOSURE
            self.close_reason = reason
        self._closing = True
        if self._transport is not None:
            self._transport.abort()
        if self.closer is not None:
            self.closer.abort()  # and its timer

    def closed_by_error(self, code: int, reason: str) -> None:
        """The client broke the WebSocket protocol (gateway.wsframes.FrameReader: 1002, 1007,
        1008 for unread pongs, 1009): our close frame is the last thing sent and the write side
        ends at once (``ServerClose.end_writing``)."""
        log.info("socket.io connection broke the protocol: %s", reason)
        self.close(code, reason)
        if self.closer is not None:
            self.closer.end_writing()

    def end(self) -> None:
        """The connection is done on our side: end TCP after what is written (the client
        half-closed, or its close handshake is under way; ``ServerClose`` bounds the wait)."""
        if self._transport is None:
            return
        if self.closer is None:
            self.closer = ServerClose(self._transport, CLOSE_TIMEOUT_S)
        self.closer.peer_gone()

    @property
    def peer_code(self) -> int | None:
        """The code of the client's close frame, if one came."""
        return self.closer.peer_code if self.closer is not None else None

    def peer_closed(self, code: int | None) -> None:
        """The client's close frame: answer it (or end our own close) and end the connection."""
        self._closing = True
        if self._transport is None:
            return
        if self.closer is None:
            self.closer = ServerClose(self._transport, CLOSE_TIMEOUT_S)
        self.closer.peer_closed(code)


async def read_frames(stream: MessageStream, carrier: SioTransport, sink: Sink) -> bool:
    """Read the socket into ``sink`` until it ends; True when the client half-closed (it
    sends nothing more but still reads its answers)."""
    while True:
        msg = await stream.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if carrier.closing:
                continue  # closing: read on until the close handshake, but act on nothing
            sink.receive_from(carrier, msg.data)
            await sink.room()
        elif msg.type is WSMsgType.CLOSE:
            carrier.peer_closed(msg.data)
            return False
        elif msg.type is WSMsgType.ERROR:  # a protocol violation: close, read on
            carrier.closed_by_error(int(msg.data.code), str(msg.data))
        else:  # CLOSING: the client half-closed (HALF_CLOSED); CLOSED: the connection is gone
            return msg.type is WSMsgType.CLOSING and not carrier.closing


def _accept(request: web.Request, server: Server, carrier: SioTransport) -> MessageStream:
    """Answer the upgrade; the gateway's frame reader reads the connection from now on."""
    options = server.options
    stream = MessageStream(options.max_payload, options.ping_timeout_s / 2)
    early = take_over(request, stream)
    transport = request.transport
    assert transport is not None  # set for a request that was just upgraded
    carrier.bind(transport)
    stream.writer = carrier
    if early:
        stream.data_received(early)
    return stream


async def _serve(stream: MessageStream, carrier: SioTransport, sink: Sink) -> None:
    """Read until the connection ends; then the sink learns why, and TCP ends."""
    half_closed = False
    try:
        half_closed = await read_frames(stream, carrier, sink)
        if half_closed:
            await sink.drain()
    finally:
        code = carrier.close_code or carrier.peer_code or ABNORMAL_CLOSURE
        sink.carrier_ended(carrier, code)
        carrier.end()
        await stream.wait_closed()


def _upgradable(request: web.Request) -> bool:
    return bool(web.WebSocketResponse().can_prepare(request).ok)


async def open_websocket(request: web.Request, server: Server, ip: str) -> web.StreamResponse:
    """A new session on a WebSocket (no ``sid``)."""
    if not _upgradable(request):
        return error_response(HandshakeError(400, EngineErrorCode.BAD_REQUEST, "Bad handshake"))
    refused = await server.refuse(request)  # admitted: the client's address is counted
    if refused is not None:
        return refused
    carrier = SioTransport()
    stream = _accept(request, server, carrier)
    engine = server.new_engine(request, ip, carrier)
    options = server.options
    carrier.send(
        [
            Handshake(
                sid=engine.sid,
                ping_interval_ms=round(options.ping_interval_s * 1000),
                ping_timeout_ms=round(options.ping_timeout_s * 1000),
                max_payload=options.max_payload,
            ).encode()
        ]
    )
    await _serve(stream, carrier, engine)
    return Upgraded()


async def upgrade(request: web.Request, server: Server, sid: str) -> web.StreamResponse:
    """The WebSocket upgrade of a long-polling session (``sid``), here or on its node."""
    refused = server.origin_refused(request)
    if refused is not None:
        return refused
    if not _upgradable(request):
        return error_response(HandshakeError(400, EngineErrorCode.BAD_REQUEST, "Bad handshake"))
    if server.draining():  # a socket here would be closed soon: a balancer retries elsewhere
        return error_response(HandshakeError(503, EngineErrorCode.BAD_REQUEST, "node draining"))
    carrier = SioTransport()
    engine = server.registry.get(sid)
    sink: Sink
    try:
        if engine is not None:
            engine.attach(carrier)
            sink = engine
        else:
            sink = await _relay(server, sid, carrier)
    except OwnerGone:
        return error_response(UNKNOWN_SID)
    except RequestRefused as exc:
        return error_response(HandshakeError(400, EngineErrorCode.BAD_REQUEST, str(exc)))
    except ForwardError as exc:
        return error_response(HandshakeError(503, EngineErrorCode.BAD_REQUEST, str(exc)))
    try:
        stream = _accept(request, server, carrier)
    except BaseException:
        sink.carrier_ended(carrier, ABNORMAL_CLOSURE)
        raise
    await _serve(stream, carrier, sink)
    return Upgraded()


async def _relay(server: Server, sid: str, carrier: SioTransport) -> Sink:
    owner = owner_of(sid)
    forwarder = server.forwarder
    if owner is None or forwarder is None or server.registry.is_local(sid):
        raise OwnerGone(sid)
    relay = forwarder.relay(owner, sid, carrier)
    await relay.attach()
    return relay
