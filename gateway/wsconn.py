"""The ``/ws`` fast path: WebSocket connections served on a bare asyncio Protocol.

Every accepted TCP connection starts in ``WsConnection``. It reads the first request head; a
plain WebSocket upgrade for ``/ws`` (gateway.wsupgrade) that the node admits is answered here,
and from then on the same object reads the client's frames (gateway.wsframes.FrameReader) and
hands them to the node. Anything else (another path, a refused or unusual upgrade, a second
request on a kept-alive connection) is handed with its bytes to aiohttp's own protocol and
served exactly as before, including aiohttp's ``/ws`` route (gateway.ws.handle_ws).

Why: aiohttp keeps, per WebSocket, a request handler task, the handler's task and coroutine
chain, a reader queue and a future per received message, ~70 objects in all. Here an idle
connection is this object, its ``WsTransport`` and its ``Session``; a task exists only while the
node is working on the connection's frames (authentication, a join, a business event), and
frames are handled in the order they came, as before. See docs/benchmarks.md for what it bought.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.app import NODE
from gateway.closecodes import CloseCode
from gateway.node import Node
from gateway.session import Session
from gateway.ws import WsTransport, client_ip_of, origin_ok, refuse_binary
from gateway.wsframes import OPCODE_PONG, FrameReader, ws_frame
from gateway.wsupgrade import MAX_HEAD_BYTES, parse_upgrade, switching_protocols

log = logging.getLogger("gateway.ws")

INBOX_BYTES = 1 << 16  # frames read ahead of the node; reading pauses above (as aiohttp's queue)
_NO_CODE = -1  # a close frame without a status code, in the inbox


class _TokenAuth:
    """The ``?token=`` authentication, first in a connection's inbox."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


_Item = str | bytes | int | _TokenAuth  # text frame, binary frame, close code, authentication


class WsConnection(FrameReader, asyncio.Protocol):
    __slots__ = (
        "_busy",
        "_head",
        "_inbox",
        "_inbox_bytes",
        "_lost",
        "_node",
        "_paused",
        "_server",
        "_transport",
        "session",
        "ws",
    )

    def __init__(self, server: GatewayServer, node: Node) -> None:
        super().__init__(node.settings.max_message_bytes)
        self._server = server
        self._node = node
        self._transport: Any = None
        self._head: bytearray | None = None  # the request head so far, when it came in pieces
        self.session: Session | None = None
        self.ws: WsTransport | None = None
        self._inbox: deque[_Item] | None = None
        self._inbox_bytes = 0
        self._busy = False  # a task is working through the inbox
        self._paused = False
        self._lost = False

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.seen = True  # alive, whatever it sent, a pong included (ping_rounds)
            self.feed(data)
        else:
            self._request_head(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        if self.session is not None and not self._busy:
            self._busy = True
            self._server.loop.create_task(self._finish())

    # --- the HTTP request -----------------------------------------------------------------
    def _request_head(self, data: bytes) -> None:
        head = self._head
        if head is None:
            buf, end = data, data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > MAX_HEAD_BYTES:
                    self._hand_over(data)  # aiohttp answers an oversized head
                else:
                    self._head = bytearray(data)
                return
        else:  # a head in several reads: appended in place, searched only where it grew
            start = max(0, len(head) - 3)
            head += data
            end = head.find(b"\r\n\r\n", start)
            if end < 0:
                if len(head) > MAX_HEAD_BYTES:
                    self._hand_over(bytes(head))
                return
            buf = bytes(head)
            self._head = None
        upgrade = parse_upgrade(buf[:end]) if end <= MAX_HEAD_BYTES else None
        if upgrade is None:  # not the plain case (a big head included): aiohttp judges it
            self._hand_over(buf)
            return
        node = self._node
        settings = node.settings
        peer = self._transport.get_extra_info("peername")
        ip = client_ip_of(
            peer[0] if peer else "unknown", upgrade.forwarded_for, settings.trusted_proxies
        )
        if not origin_ok(upgrade.origin, settings.allowed_origins) or node.admit(ip) is not None:
            self._hand_over(buf)  # aiohttp's route answers the refusal, as for every refusal
            return
        ws = self.ws = WsTransport(self._transport)
        answer = switching_protocols(upgrade.key)
        if upgrade.token and node.auth.cached(upgrade.token):
            ws.hold(answer)  # sent with auth_success (or auth_error): one send, not two
        else:
            self._transport.write(answer)  # Django may take a while: upgrade now
        self.session = node.open_session(ws, ip)
        if upgrade.token:
            self._submit(_TokenAuth(upgrade.token))
        rest = buf[end + 4 :]
        if rest:
            self.feed(rest)

    def _hand_over(self, buf: bytes) -> None:
        """aiohttp serves this connection from its first byte on."""
        handler = self._server.aiohttp_protocol()
        transport = self._transport
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(buf)

    # --- frames (FrameReader callbacks) ---------------------------------------------------
    def on_text(self, text: str) -> None:
        self._submit(text)

    def on_binary(self, data: bytes) -> None:
        self._submit(data)

    def on_ping(self, payload: bytes) -> None:
        self.ws.write(ws_frame(payload, OPCODE_PONG))  # type: ignore[union-attr]

    def on_close(self, code: int | None) -> None:
        self._submit(_NO_CODE if code is None else code)

    def on_violation(self, code: int, reason: str) -> None:
        log.info("connection %s broke the protocol: %s", self.session.id, reason)  # type: ignore[union-attr]
        self.session.close(code, reason)  # type: ignore[union-attr]

    # --- the inbox: frames handled one after the other, in order --------------------------
    def _submit(self, item: _Item) -> None:
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            inbox.append(item)
            if type(item) is str or type(item) is bytes:
                self._inbox_bytes += len(item)
                if self._inbox_bytes > INBOX_BYTES and not self._paused:
                    self._paused = True
                    self._transport.pause_reading()
            return
        if type(item) is str or type(item) is _TokenAuth:
            self._busy = True
            self._server.loop.create_task(self._work(item))
        else:
            self._handle_now(item)

    def _handle_now(self, item: _Item) -> None:
        """What needs no waiting: a binary frame's error, the client's close frame."""
        session = self.session
        assert session is not None and self.ws is not None
        if type(item) is bytes:
            refuse_binary(self._node, session)
        elif type(item) is int:
            session.flush()  # replies already queued go out before the answer to the close
            self.ws.peer_closed(None if item == _NO_CODE else item)

    async def _work(self, item: _Item) -> None:
        node = self._node
        session = self.session
        assert session is not None
        while True:
            try:
                if type(item) is str:
                    if not session.closed:  # closing: read on to the client's close frame
                        await node.handle(session, item)
                elif type(item) is _TokenAuth:
                    await node.authenticate_with(session, item.token)
                else:
                    self._handle_now(item)
            except Exception:  # a bug, not the client's doing: 1011, and on to its close frame
                log.exception("connection %s: handling a frame failed", session.id)
                session.flush()  # replies to the frames before it go out first
                session.close(CloseCode.INTERNAL_ERROR, "internal error")
            inbox = self._inbox
            if not inbox:
                break
            item = inbox.popleft()
            if type(item) is str or type(item) is bytes:
                self._inbox_bytes -= len(item)
            if self._paused and self._inbox_bytes <= INBOX_BYTES // 4:
                self._paused = False
                if not self._lost:
                    self._transport.resume_reading()
        if self._lost:
            await self._finish()
        else:
            self._busy = False

    async def _finish(self) -> None:
        session = self.session
        ws = self.ws
        assert session is not None and ws is not None
        code = ws.closer.peer_code if ws.closer is not None else None
        await self._node.close_session(session, code)


class GatewayServer(web.Server):
    """aiohttp's Server, with ``WsConnection`` in front of every connection it accepts."""

    node: Node
    loop: asyncio.AbstractEventLoop

    def __call__(self) -> WsConnection:  # type: ignore[override]
        return WsConnection(self, self.node)

    def aiohttp_protocol(self) -> RequestHandler:
        return super().__call__()


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` for the gateway app: serves ``/ws`` upgrades on the fast path."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The same object, with our protocol factory: aiohttp's shutdown and its connection
        # bookkeeping work on it unchanged (web.Server has no __slots__).
        server.__class__ = GatewayServer
        server.loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
        server.node = self.app[NODE]  # type: ignore[attr-defined]
        return server
