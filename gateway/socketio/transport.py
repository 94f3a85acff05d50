"""The Socket.IO WebSocket transport: ``/socket.io/?EIO=4&transport=websocket`` over aiohttp.

Two ways in:

- without ``sid``: a new Engine.IO session on this WebSocket (``transports: ["websocket"]``);
- with ``sid``: the upgrade of a long-polling session. When this node owns the session the
  socket becomes its carrier after the probe; when another node does, this node relays the
  socket to it (``forwarding.Relay``) for the life of the connection.

This module owns the socket: ``SioTransport`` writes frames and runs the closing handshake
(gateway.wsframes), ``read_frames`` reads them into whatever the socket carries (an
``EngineSession`` here, or a ``Relay``). The Engine.IO and Socket.IO state is ``engine``'s and
``namespace``'s.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from aiohttp import WebSocketError, WSMsgType, web

from gateway.socketio.codec import UNKNOWN_SID, EngineErrorCode, Handshake, HandshakeError
from gateway.socketio.engine import ABNORMAL_CLOSURE, Carrier, RequestRefused
from gateway.socketio.forwarding import ForwardError, OwnerGone
from gateway.socketio.sessions import Server, error_response, owner_of
from gateway.wsframes import ServerClose, ws_frame

log = logging.getLogger("gateway.socketio")

CLOSE_TIMEOUT_S = 5.0


class Sink(Protocol):
    """What a WebSocket's frames go to."""

    def receive_from(self, carrier: Carrier, text: str | bytes) -> None: ...

    def carrier_ended(self, carrier: Carrier, code: int | None) -> None: ...

    async def room(self) -> None:
        """Wait until more frames may be read (backpressure)."""


class SioTransport:
    """One Socket.IO WebSocket, written to: ``send`` frames each packet; ``close`` sends the
    close frame after what is already written; nothing here blocks."""

    __slots__ = ("_closing", "_transport", "close_code", "close_reason", "closer", "ws")

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
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
        if transport is not None and not self._closing and not transport.is_closing():
            transport.write(data)

    def buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def close(self, code: int, reason: str) -> None:
        """Start closing; never blocks (the close frame goes after what is written)."""
        if self._closing or self._transport is None:
            self._closing = True
            return
        self._closing = True
        self.close_code = code
        self.close_reason = reason
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
        """aiohttp has closed the socket itself (a message over ``max_payload``: 1009)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self._closing = True

    def peer_closed(self, code: int | None) -> None:
        """The client's close frame: answer it (or end our own close) and end the connection."""
        self._closing = True
        if self._transport is None:
            return
        if self.closer is None:
            self.closer = ServerClose(self._transport, CLOSE_TIMEOUT_S)
        self.closer.peer_closed(code)


async def read_frames(ws: web.WebSocketResponse, carrier: SioTransport, sink: Sink) -> int:
    """Read the socket into ``sink`` until it ends; the close code it ended with."""
    while True:
        msg = await ws.receive()
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if carrier.closing:
                continue  # closing: read on until the close handshake, but act on nothing
            sink.receive_from(carrier, msg.data)
            await sink.room()
        elif msg.type is WSMsgType.CLOSE:
            carrier.peer_closed(msg.data)
            break
        else:  # CLOSING, CLOSED or ERROR: aiohttp has ended the connection itself
            if isinstance(msg.data, WebSocketError):  # e.g. 1009, which aiohttp has sent
                carrier.closed_by_error(int(msg.data.code), str(msg.data))
            break
    return int(carrier.close_code or ws.close_code or ABNORMAL_CLOSURE)


def _response(options_max_payload: int) -> web.WebSocketResponse:
    return web.WebSocketResponse(
        # aiohttp refuses a message of exactly max_msg_size bytes; maxPayload is the largest
        # packet accepted, as in Engine.IO
        max_msg_size=options_max_payload + 1,
        compress=False,  # one frame per event, written to every member
        autoping=True,
        autoclose=False,  # we answer the client's close frame (wsframes.ServerClose)
        timeout=CLOSE_TIMEOUT_S,
    )


async def _accept(request: web.Request, ws: web.WebSocketResponse, carrier: SioTransport) -> None:
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None  # set for a request that was just upgraded
    carrier.bind(transport)


async def open_websocket(request: web.Request, server: Server, ip: str) -> web.StreamResponse:
    """A new session on a WebSocket (no ``sid``)."""
    refused = server.refuse(request)
    if refused is not None:
        return refused
    ws = _response(server.options.max_payload)
    carrier = SioTransport(ws)
    await _accept(request, ws, carrier)
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
    code = ABNORMAL_CLOSURE
    try:
        code = await read_frames(ws, carrier, engine)
    finally:
        engine.carrier_ended(carrier, code)
        if not ws.closed:
            await ws.close()
    return ws


async def upgrade(request: web.Request, server: Server, sid: str) -> web.StreamResponse:
    """The WebSocket upgrade of a long-polling session (``sid``), here or on its node."""
    refused = server.origin_refused(request)
    if refused is not None:
        return refused
    ws = _response(server.options.max_payload)
    carrier = SioTransport(ws)
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
    code = ABNORMAL_CLOSURE
    try:
        await _accept(request, ws, carrier)
        code = await read_frames(ws, carrier, sink)
    finally:
        sink.carrier_ended(carrier, code)
        if not ws.closed:
            await ws.close()
    return ws


async def _relay(server: Server, sid: str, carrier: SioTransport) -> Sink:
    owner = owner_of(sid)
    forwarder = server.forwarder
    if owner is None or forwarder is None or server.registry.is_local(sid):
        raise OwnerGone(sid)
    relay = forwarder.relay(owner, sid, carrier)
    await relay.attach()
    return relay
