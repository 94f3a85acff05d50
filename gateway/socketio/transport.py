"""The Socket.IO transport: ``/socket.io/?EIO=4&transport=websocket`` served by aiohttp.

This module owns the socket and the Engine.IO / Socket.IO state machine (handshake, CONNECT,
heartbeat, acks, refusals). It talks to the rest of the gateway through two small interfaces:

- ``SessionPort`` (below): what a connection hands to the gateway core — client events, invalid
  packets, and the end of the connection. One port per connection, made by a ``SessionOpener``.
- ``SioTransport``: what the core uses to write to this client. It has the same shape as the
  ``/ws`` transport (``kind``, ``encode``, ``encode_publication``, ``write``, ``buffer_size``,
  ``close``), so sessions, the hub and fan-out do not know which protocol a client speaks.

A client event ``42[name, data]`` reaches the core as ``handle_event(name, data, None)``, one
with an ack id ``42<n>[name, data]`` as ``handle_event(name, data, n)``; the core's reply with
that id becomes the acknowledgement ``43<n>[...]`` (see ``codec.encode_reply``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import WSMsgType, web

from gateway.closecodes import CloseCode
from gateway.socketio.codec import (
    DEFAULT_NAMESPACE,
    PING,
    Ack,
    BinaryNotSupported,
    Connect,
    ConnectError,
    Disconnect,
    EnginePacket,
    EngineType,
    Event,
    Handshake,
    PacketError,
    check_handshake,
    decode_frame,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_event,
    encode_reply,
)
from gateway.wsframes import ServerClose, ws_frame
from gateway.wstakeover import MessageStream, Upgraded, take_over

if TYPE_CHECKING:
    from gateway.config import Settings

log = logging.getLogger("gateway.socketio")

CLOSE_TIMEOUT_S = 5.0
ABNORMAL_CLOSURE = 1006  # reported, never sent: the connection was lost or abandoned
PROTOCOL_ERROR = 1002
INBOX_PACKETS = 32  # Socket.IO packets read ahead of the core before reading pauses


@dataclass(frozen=True, slots=True)
class SocketIOOptions:
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 20.0
    max_payload: int = 65536  # bytes of one Engine.IO packet (one WebSocket message)
    connect_timeout_s: float = 10.0  # from the upgrade to the Socket.IO CONNECT

    @classmethod
    def from_settings(cls, settings: Settings) -> SocketIOOptions:
        return cls(
            ping_interval_s=settings.socketio_ping_interval_s,
            ping_timeout_s=settings.socketio_ping_timeout_s,
            max_payload=settings.max_message_bytes,
            connect_timeout_s=settings.auth_timeout_s,
        )


class SessionPort(Protocol):
    """The gateway core as one Socket.IO connection sees it.

    Calls come one at a time, in the client's order, from the connection's worker task; a call
    may wait (on Django, say) while the read loop goes on answering the heartbeat, up to
    ``INBOX_PACKETS`` packets ahead. Replies go through ``SioTransport``.
    """

    @property
    def connection_id(self) -> str:
        """Sent as the Socket.IO socket id (``socket.id`` in the client)."""
        ...

    async def handle_event(self, name: str, data: Any, ack_id: int | None) -> None:
        """One client event, as if it were the ``/ws`` frame ``{"event", "data", "id"}``.

        ``data`` is the event's one argument (any JSON value; ``{}`` when there is none): the core
        validates it as it validates ``/ws`` frames. A reply encoded with ``ack_id`` as its frame
        id becomes the acknowledgement; ``None`` means the client asked for none.
        """
        ...

    async def handle_invalid(self, message: str, ack_id: int | None) -> None:
        """A packet after CONNECT that is not a usable event (malformed, binary, several
        arguments...): answer ``error`` ``bad_request`` with ``message``, like a malformed
        ``/ws`` frame; the connection stays open."""
        ...

    async def closed(self, code: int) -> None:
        """The connection has ended, whoever ended it; called exactly once, after the call in
        progress (if any) has returned. ``code`` is the WebSocket close code (1006 when the
        connection was lost or the client stopped answering pings)."""
        ...


class SessionOpener(Protocol):
    """Make the port of a connection that was just upgraded (before any packet is read)."""

    def __call__(self, request: web.Request, transport: SioTransport) -> SessionPort: ...


# may return an awaitable (the cluster-wide per-IP cap asks Redis)
Refuser = Callable[
    [web.Request], "web.StreamResponse | Awaitable[web.StreamResponse | None] | None"
]


class _Publication(Protocol):
    def event_data(self) -> bytes: ...


class SioTransport:
    """How the gateway core writes to one Socket.IO client (the ``/ws`` transport's shape).

    ``encode`` and ``encode_publication`` return complete WebSocket frames, so the same bytes can
    be written to every Socket.IO member of a room; ``write`` never blocks.
    """

    kind = "sio"
    __slots__ = ("_closing", "_transport", "close_code", "close_reason", "closer", "sid", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.ws = ws
        self._transport = transport
        self.closer: ServerClose | None = None  # made when the connection starts to close
        self.sid = ""  # the Socket.IO socket id, known once the namespace is connected
        self.close_code: int | None = None
        self.close_reason = ""
        self._closing = False

    # --- the core's side ------------------------------------------------------------------------
    def encode(self, event: str, data_json: bytes, frame_id: int | str | None) -> bytes:
        """A reply (``frame_id`` = the ack id the client event carried) or a push (``None``).
        Socket.IO ack ids are integers; any other id is sent as a plain event."""
        ack_id = frame_id if isinstance(frame_id, int) else None
        return ws_frame(encode_reply(ack_id, event, data_json))

    def encode_publication(self, pub: _Publication) -> bytes:
        return ws_frame(encode_event("event", pub.event_data()))

    def write(self, data: bytes) -> None:
        if self.closer is None and not self._transport.is_closing():
            self._transport.write(data)

    def buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        """Start closing; never blocks. For codes after which the client must not come back
        (``CloseCode.retry`` false: 4401, 4403) a Socket.IO DISCONNECT goes first, so that
        socket.io-client reports ``io server disconnect`` and does not reconnect by itself;
        for the others it sees ``transport close`` and reconnects."""
        if self._closing:
            return
        self._closing = True
        self.close_code = code
        self.close_reason = reason
        if not _may_retry(code):
            self.send_packet(encode_disconnect())
        self.closer = ServerClose(self._transport, CLOSE_TIMEOUT_S)
        self.closer.start(code, reason)  # after what is written; see gateway.wsframes

    @property
    def closing(self) -> bool:
        return self._closing

    # --- the transport's own packets ----------------------------------------------------------
    def send_packet(self, packet: bytes) -> None:
        self.write(ws_frame(packet))

    def abort(self, reason: str) -> None:
        """Drop the connection without a close handshake (the peer stopped answering)."""
        if self.close_code is None:
            self.close_code = ABNORMAL_CLOSURE
            self.close_reason = reason
        self._closing = True
        self._transport.abort()
        if self.closer is not None:
            self.closer.abort()  # and its timer

    def closed_by_error(self, code: int, reason: str) -> None:
        """The client broke the WebSocket protocol (gateway.wsframes.FrameReader: 1002, 1007,
        1008 for unread pongs, 1009): our close frame is the last thing sent and the write side
        ends at once (``ServerClose.end_writing``)."""
        log.info("socket.io connection %s broke the protocol: %s", self.sid or "-", reason)
        self.close(code, reason)
        assert self.closer is not None
        self.closer.end_writing()

    def end(self) -> None:
        """The connection is done on our side: end TCP after what is written (the client
        half-closed, or its close handshake is under way; ``ServerClose`` bounds the wait)."""
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
        if self.closer is None:
            self.closer = ServerClose(self._transport, CLOSE_TIMEOUT_S)
        self.closer.peer_closed(code)


def _may_retry(code: int) -> bool:
    try:
        return CloseCode(code).retry
    except ValueError:
        return True


Job = Callable[[], Awaitable[None]]


class _Connection:
    """One Engine.IO connection: a read loop, a heartbeat, and a worker for the port's calls.

    The read loop never waits for the gateway core: Engine.IO packets (pongs above all) are
    handled at once, while Socket.IO packets queue for the worker, which calls the port one at a
    time in the client's order. So a client whose event waits on a slow Django still answers
    pings in time. A full queue stops the reading (backpressure on the client's socket).
    """

    def __init__(
        self,
        ws: MessageStream,
        transport: SioTransport,
        port: SessionPort,
        options: SocketIOOptions,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.port = port
        self.options = options
        self.connected = False  # the default namespace is connected
        self._pong = asyncio.Event()
        self._binary_to_skip = 0
        self._inbox: asyncio.Queue[Job | None] = asyncio.Queue(INBOX_PACKETS)

    async def run(self) -> None:
        self.transport.send_packet(
            Handshake(
                sid=secrets.token_urlsafe(15),
                ping_interval_ms=round(self.options.ping_interval_s * 1000),
                ping_timeout_ms=round(self.options.ping_timeout_s * 1000),
                max_payload=self.options.max_payload,
            ).encode()
        )
        heartbeat = asyncio.create_task(self._heartbeat())
        worker = asyncio.create_task(self._work())
        half_closed = False
        try:
            half_closed = await self._read_loop()
        finally:
            heartbeat.cancel()
            if half_closed:  # the client still reads: answer everything it sent
                await self._inbox.put(None)
            else:
                # Drop what the core has not started; let the call in progress finish (a
                # business event Django has accepted must still be delivered to its rooms).
                while not self._inbox.empty():
                    self._inbox.get_nowait()
                self._inbox.put_nowait(None)
            await worker

    async def _work(self) -> None:
        while (job := await self._inbox.get()) is not None:
            try:
                await job()
            except Exception:
                log.exception("socket.io connection %s: packet handling failed", self.transport.sid)
                self.transport.close(1011, "internal error")

    async def _read_loop(self) -> bool:
        """Until the connection ends; True when the client half-closed (it still reads)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.connect_timeout_s
        while True:
            timeout = None
            if not self.connected and not self.transport.closing:
                # aiohttp treats a timeout of 0 as "none": keep it positive
                timeout = max(deadline - loop.time(), 0.001)
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                self.transport.close(CloseCode.AUTH_TIMEOUT, "no Socket.IO CONNECT in time")
                continue
            if self.transport.closing and msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue  # closing: read on until the close handshake, but act on nothing
            if msg.type is WSMsgType.TEXT:
                await self._on_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await self._on_binary()
            elif msg.type is WSMsgType.CLOSE:
                self.transport.peer_closed(msg.data)
                return False
            elif msg.type is WSMsgType.ERROR:  # a protocol violation: close, read on
                self.transport.closed_by_error(int(msg.data.code), str(msg.data))
            else:  # CLOSING: the client half-closed (HALF_CLOSED); CLOSED: the connection is gone
                return msg.type is WSMsgType.CLOSING and not self.transport.closing

    async def _heartbeat(self) -> None:
        """Engine.IO 4: the server pings every ``pingInterval`` and expects a pong within
        ``pingTimeout``; the client, which waits ``pingInterval + pingTimeout`` for each ping,
        draws the same conclusion on its side."""
        while True:
            await asyncio.sleep(self.options.ping_interval_s)
            self._pong.clear()
            self.transport.send_packet(PING)
            try:
                await asyncio.wait_for(self._pong.wait(), self.options.ping_timeout_s)
            except TimeoutError:
                log.info("socket.io connection %s: ping timeout", self.transport.sid or "-")
                self.transport.abort("ping timeout")
                return

    # --- packets --------------------------------------------------------------------------------
    async def _on_text(self, text: str) -> None:
        try:
            packet = decode_frame(text)
        except BinaryNotSupported as exc:
            self._binary_to_skip += exc.attachments
            await self._invalid(exc)
            return
        except PacketError as exc:
            await self._invalid(exc)
            return
        if isinstance(packet, EnginePacket):
            self._on_engine(packet)
        elif isinstance(packet, Event):
            await self._on_event(packet)
        elif isinstance(packet, Connect):
            await self._on_connect(packet)
        elif isinstance(packet, Disconnect):
            if packet.nsp == DEFAULT_NAMESPACE:
                self.transport.close(1000, "client disconnect")
        elif isinstance(packet, Ack):
            pass  # the server never asks the client for an acknowledgement
        elif isinstance(packet, ConnectError):
            await self._invalid(PacketError("clients do not send CONNECT_ERROR"))

    def _on_engine(self, packet: EnginePacket) -> None:
        if packet.type is EngineType.PONG:
            self._pong.set()
        elif packet.type is EngineType.PING:  # "2probe" belongs to upgrades; answer it anyway
            self.transport.send_packet(b"3" + packet.data.encode())
        elif packet.type is EngineType.CLOSE:
            self.transport.close(1000, "client close")
        elif packet.type is EngineType.OPEN:
            self.transport.close(PROTOCOL_ERROR, "clients do not send OPEN")
        # NOOP and UPGRADE mean nothing on a connection that started as a WebSocket

    async def _on_connect(self, packet: Connect) -> None:
        if packet.nsp != DEFAULT_NAMESPACE:
            message = f"Invalid namespace: this gateway serves only '{DEFAULT_NAMESPACE}'"
            self.transport.send_packet(encode_connect_error(message, packet.nsp))
            return
        if self.connected:
            return  # like Socket.IO: a second CONNECT of a connected namespace is ignored
        self.connected = True
        self.transport.sid = self.port.connection_id
        self.transport.send_packet(encode_connect(self.transport.sid))
        auth = packet.data
        if auth is not None and "token" in auth:
            # the `auth` option: authenticate as if the client had sent `authenticate`; the
            # answer (auth_success / auth_error) is the first event after the CONNECT
            await self._queue(partial(self.port.handle_event, "authenticate", auth, None))

    async def _on_event(self, packet: Event) -> None:
        if not self.connected:
            await self._invalid(PacketError("send CONNECT (40) before any event"))
        elif packet.nsp != DEFAULT_NAMESPACE:
            message = f"namespace '{packet.nsp}' is not connected"
            await self._queue(partial(self.port.handle_invalid, message, packet.ack_id))
        elif len(packet.args) > 1:
            message = f"an event takes one data argument (an object), got {len(packet.args)}"
            await self._queue(partial(self.port.handle_invalid, message, packet.ack_id))
        else:
            data = packet.args[0] if packet.args else {}
            await self._queue(partial(self.port.handle_event, packet.name, data, packet.ack_id))

    async def _on_binary(self) -> None:
        if self._binary_to_skip:
            self._binary_to_skip -= 1  # an attachment of a binary packet already refused
            return
        await self._invalid(BinaryNotSupported("binary frames are not supported: send JSON text"))

    async def _invalid(self, exc: PacketError) -> None:
        if self.connected:
            await self._queue(partial(self.port.handle_invalid, exc.message, exc.ack_id))
            return
        # Before CONNECT only a client that is not socket.io-client sends this: say why, then
        # close (socket.io-client would show the message as a connect_error).
        self.transport.send_packet(encode_connect_error(exc.message))
        self.transport.close(PROTOCOL_ERROR, "protocol error")

    async def _queue(self, job: Job) -> None:
        await self._inbox.put(job)


def socketio_handler(
    open_session: SessionOpener,
    options: SocketIOOptions,
    refuse: Refuser | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The aiohttp handler for ``/socket.io/`` (register it for every method: polling requests
    must get their explanatory 400). ``refuse`` runs after the handshake checks and before the
    upgrade (Origin allow-list, connection limits) and returns a response to refuse with."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            # aiohttp refuses a message of exactly max_msg_size bytes; maxPayload is the
            # largest packet accepted, as in Engine.IO
            max_msg_size=options.max_payload + 1,
            compress=False,  # one frame per event, written to every member
            autoping=True,
            autoclose=False,  # we answer the client's close frame (wsframes.ServerClose)
            timeout=CLOSE_TIMEOUT_S,
        )
        error = check_handshake(
            request.query,
            method=request.method,
            websocket_upgrade=ws.can_prepare(request).ok,
        )
        if error is not None:
            return web.Response(
                status=error.status, body=error.body(), content_type="application/json"
            )
        if refuse is not None:
            answer = refuse(request)
            refused = await answer if inspect.isawaitable(answer) else answer
            if refused is not None:
                return refused
        # the frames are read by the gateway's own reader, with the bounds of /ws
        stream = MessageStream(options.max_payload, options.ping_timeout_s / 2)
        early = take_over(request, stream)
        raw_transport = request.transport
        assert raw_transport is not None  # set for a request that was just upgraded
        transport = SioTransport(ws, raw_transport)
        stream.writer = transport
        if early:
            stream.data_received(early)
        port = open_session(request, transport)
        try:
            await _Connection(stream, transport, port, options).run()
        finally:
            code = transport.close_code or transport.peer_code or ABNORMAL_CLOSURE
            await port.closed(int(code))
            transport.end()
            await stream.wait_closed()
        return Upgraded()

    return handler
