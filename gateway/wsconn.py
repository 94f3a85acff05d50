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
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from gateway.app import NODE
from gateway.closecodes import CloseCode
from gateway.logs import QuietRequestHandler
from gateway.node import Node
from gateway.session import Session
from gateway.ws import WsTransport, client_ip_of, origin_ok, refuse_binary
from gateway.wsframes import OPCODE_PONG, ws_frame
from gateway.wsprotocol import PAUSE_INBOX, FrameProtocol
from gateway.wsupgrade import MAX_HEAD_BYTES, Upgrade, parse_upgrade, switching_protocols

log = logging.getLogger("gateway.ws")

INBOX_BYTES = 1 << 16  # frames read ahead of the node; reading pauses above (as aiohttp's queue)
ITEM_BYTES = 64  # what an inbox entry costs besides its text: empty frames count too
_NO_CODE = -1  # a close frame without a status code, in the inbox
BUSY_503 = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_IP_LIMIT_BODY = b'{"error": "ip_limit"}'
TOO_MANY_FROM_IP = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_IP_LIMIT_BODY), _IP_LIMIT_BODY)
)


class _TokenAuth:
    """The ``?token=`` authentication, first in a connection's inbox."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


_Item = str | bytes | int | _TokenAuth  # text frame, binary frame, close code, authentication


class WsConnection(FrameProtocol):
    __slots__ = (
        "_admitting",
        "_busy",
        "_eof",
        "_hand_over_to",
        "_handshake",
        "_head",
        "_inbox",
        "_inbox_bytes",
        "_loop",
        "_node",
        "session",
        "ws",
    )

    def __init__(
        self,
        node: Node,
        loop: asyncio.AbstractEventLoop,
        hand_over_to: Callable[[], RequestHandler] | None = None,
    ) -> None:
        settings = node.settings
        super().__init__(settings.max_message_bytes, settings.ws_heartbeat_s / 2)
        self._node = node
        self._loop = loop
        self._hand_over_to = hand_over_to  # aiohttp's protocol, for what is not a plain upgrade
        self._head: bytearray | None = None  # the request head so far, when it came in pieces
        self._handshake: asyncio.TimerHandle | None = None  # the head's deadline, while counted
        self.session: Session | None = None
        self.ws: WsTransport | None = None
        self._inbox: deque[_Item] | None = None
        self._inbox_bytes = 0
        self._busy = False  # a task is working through the inbox
        self._eof = False  # the client half-closed
        self._admitting: bytearray | None = None  # bytes read while Redis judges the upgrade

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.attach(transport)
        node = self._node
        if node.handshakes >= node.settings.max_connections:
            # unfinished handshakes are bounded too: a slow-loris flood costs at most this many
            node.metrics.rejected_upgrades.labels("handshakes_full").inc()
            transport.write(BUSY_503)  # type: ignore[attr-defined]
            transport.close()
            return
        node.handshakes += 1
        self._handshake = self._loop.call_later(
            node.settings.handshake_timeout_s, self._handshake_expired
        )

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.seen = True  # alive, whatever it sent, a pong included (ping_rounds)
            self.feed(data)
        elif self._admitting is not None:
            self._admitting += data
        else:
            self._request_head(data)

    def eof_received(self) -> bool | None:
        if self.ws is None:
            return None  # no upgrade yet: the transport closes
        return super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._handshake_done()
        super().connection_lost(exc)
        if self.session is not None and not self._busy:
            self._busy = True
            self._loop.create_task(self._finish())

    # --- the HTTP request -----------------------------------------------------------------
    def _handshake_done(self) -> None:
        """The request head is complete (or the connection ended): no longer counted."""
        timer = self._handshake
        if timer is not None:
            self._handshake = None
            timer.cancel()
            self._node.handshakes -= 1

    def _handshake_expired(self) -> None:
        self._handshake = None
        self._node.handshakes -= 1
        self._node.metrics.rejected_upgrades.labels("handshake_timeout").inc()
        log.debug("request head not complete in time: connection closed")
        self._transport.close()

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
        self._handshake_done()
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
        if node.accounting.gates_ips:  # Redis: the cluster-wide per-IP cap decides first
            self._admitting = bytearray(buf[end + 4 :])
            self._loop.create_task(self._admit(upgrade, ip))
            return
        self._upgrade(upgrade, ip, buf[end + 4 :])

    async def _admit(self, upgrade: Upgrade, ip: str) -> None:
        node = self._node
        admitted = await node.accounting.admit_ip(ip)
        rest, self._admitting = bytes(self._admitting or b""), None
        if self._transport.is_closing():  # the client left meanwhile
            if admitted:
                await node.accounting.release_ip(ip)
            return
        if not admitted:
            node.metrics.rejected_upgrades.labels("ip_limit").inc()
            self._transport.write(TOO_MANY_FROM_IP)
            self._transport.close()
            return
        self._upgrade(upgrade, ip, rest)

    def _upgrade(self, upgrade: Upgrade, ip: str, rest: bytes) -> None:
        answer = switching_protocols(upgrade.key)
        # Django may take a while: upgrade at once unless the token is cached, then the 101
        # goes with auth_success (or auth_error), one send instead of two
        hold = bool(upgrade.token) and self._node.auth.cached(upgrade.token or "")
        self.accept(answer, upgrade.token, ip, hold=hold)
        if rest:
            self.feed(rest)

    def accept(self, answer: bytes, token: str | None, ip: str, hold: bool = False) -> None:
        """Answer the upgrade (``answer``: the 101, or b"" when it was sent already) and open the
        session; frames are read from now on."""
        ws = self.ws = WsTransport(self._transport)
        if hold:
            ws.hold(answer)
        elif answer:
            self._transport.write(answer)
        self.session = self._node.open_session(ws, ip)
        if token:
            self._submit(_TokenAuth(token))

    def _hand_over(self, buf: bytes) -> None:
        """aiohttp serves this connection from its first byte on."""
        self._handshake_done()
        assert self._hand_over_to is not None
        handler = self._hand_over_to()
        transport = self._transport
        transport.set_write_buffer_limits()  # aiohttp's defaults again (see attach)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(buf)

    # --- frames (FrameReader callbacks) ---------------------------------------------------
    def on_text(self, text: str) -> None:
        self._submit(text)

    def on_binary(self, data: bytes) -> None:
        self._submit(data)

    def send_pong(self, payload: bytes) -> None:
        self.ws.write(ws_frame(payload, OPCODE_PONG))  # type: ignore[union-attr]

    def on_ping(self, payload: bytes) -> None:
        super().on_ping(payload)
        if self.pong_held:  # pinging without reading the pongs is no sign of life
            self.ws.seen = False  # type: ignore[union-attr]

    def on_close(self, code: int | None) -> None:
        self._submit(_NO_CODE if code is None else code)

    def on_violation(self, code: int, reason: str) -> None:
        session = self.session
        assert session is not None and self.ws is not None
        log.info("connection %s broke the protocol: %s", session.id, reason)
        session.close(code, reason)
        self.ws.fail()  # our close frame is the last thing sent: the write side ends now

    def on_eof(self) -> None:
        self._eof = True
        if not self._busy:
            self._end_after_eof()

    def _end_after_eof(self) -> None:
        """Everything the client sent before its FIN is answered: send it, then end TCP (no
        close frame can come any more, whether or not we started closing)."""
        assert self.session is not None and self.ws is not None
        self.session.flush()
        self.ws.peer_gone()

    # --- the inbox: frames handled one after the other, in order --------------------------
    def _submit(self, item: _Item) -> None:
        if self._busy:
            inbox = self._inbox
            if inbox is None:
                inbox = self._inbox = deque()
            inbox.append(item)
            self._inbox_bytes += _cost(item)
            if self._inbox_bytes > INBOX_BYTES:
                self.pause(PAUSE_INBOX)
            return
        if type(item) is str or type(item) is _TokenAuth:
            self._busy = True
            self._loop.create_task(self._work(item))
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
            self._inbox_bytes -= _cost(item)
            if self._inbox_bytes <= INBOX_BYTES // 4:
                self.resume(PAUSE_INBOX)
        if self._lost:
            await self._finish()
            return
        self._busy = False
        if self._eof:
            self._end_after_eof()

    async def _finish(self) -> None:
        session = self.session
        ws = self.ws
        assert session is not None and ws is not None
        code = ws.closer.peer_code if ws.closer is not None else None
        await self._node.close_session(session, code)


def _cost(item: _Item) -> int:
    """Inbox bytes of an entry: its text (or binary data) and a fixed overhead."""
    if type(item) is str or type(item) is bytes:
        return len(item) + ITEM_BYTES
    return ITEM_BYTES


class GatewayServer(web.Server):
    """aiohttp's Server, with ``WsConnection`` in front of every connection it accepts."""

    node: Node
    loop: asyncio.AbstractEventLoop

    def __call__(self) -> WsConnection:  # type: ignore[override]
        return WsConnection(self.node, self.loop, self.aiohttp_protocol)

    def aiohttp_protocol(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = QuietRequestHandler  # same slots: only handle_error differs
        return handler


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
