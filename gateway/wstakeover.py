"""WebSocket upgrades answered in aiohttp's routes (Socket.IO, and ``/ws`` after other requests on
a kept-alive connection), read by our own frame reader from the 101 on.

aiohttp's reader accepts what RFC 6455 forbids (unmasked client frames, close codes 1006 or
5000), answers pings without bound, and closes the socket when the client half-closes, losing
the replies to its last frames. So after aiohttp has parsed the request and the route has
accepted it, ``take_over`` answers 101 itself and makes a ``FrameProtocol`` the connection's
protocol (gateway.wsprotocol): every WebSocket of the node is read the same way, with the same
bounds. aiohttp's request handler keeps the connection in its bookkeeping (graceful shutdown
waits for it) and is told when it ends; the route's handler waits for that end
(``FrameProtocol.wait_closed``) and returns ``Upgraded()``, which writes nothing.

``MessageStream`` is the ``FrameProtocol`` for code written against aiohttp's
``WebSocketResponse.receive()`` (gateway.socketio): ``await receive(timeout)`` returns the same
``WSMessage`` values, from a bounded queue (reading pauses while it is full).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

from aiohttp import WebSocketError, WSMessage, WSMsgType, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from gateway.wsframes import OPCODE_PONG, ws_frame
from gateway.wsprotocol import PAUSE_INBOX, FrameProtocol
from gateway.wsupgrade import switching_protocols

QUEUE_BYTES = 1 << 16  # messages read ahead of their consumer; reading pauses above
QUEUE_MESSAGES = 64
MESSAGE_BYTES = 64  # what a queued message costs besides its data: empty messages count too
# The client half-closed: it sends nothing more, but still reads what it is answered.
HALF_CLOSED = WSMessage(WSMsgType.CLOSING, None, "half-closed")
_LOST = WSMessage(WSMsgType.CLOSED, None, None)


class _Tail:
    """Takes the bytes aiohttp read past the upgrade request (frames sent right behind it)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass


def take_over(request: web.Request, protocol: FrameProtocol) -> bytes:
    """Answer the upgrade ``request`` with 101 and read the connection with ``protocol`` from
    now on. Returns what the client sent after the request (early frames): feed it to
    ``protocol`` once the caller is ready for frames. The handshake headers must have been
    checked (``WebSocketResponse.can_prepare``)."""
    handler = request.protocol
    transport = request.transport
    assert transport is not None
    tail = _Tail()
    handler.keep_alive(False)
    handler.set_parser(cast(Any, tail))  # everything aiohttp has read or will read past the head
    transport.write(switching_protocols(request.headers["Sec-WebSocket-Key"]))
    transport.set_protocol(protocol)
    protocol.attach(transport)
    protocol._on_lost = handler.connection_lost  # aiohttp forgets the connection with us
    return bytes(tail.data)


class Upgraded(web.StreamResponse):
    """What a taken-over route returns: the 101 went out already; aiohttp writes nothing more
    (and its access log, gateway.logs.AccessLogger, leaves 101s out)."""

    def __init__(self) -> None:
        super().__init__(status=101)

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class MessageStream(FrameProtocol):
    """Client messages as ``WSMessage`` values: TEXT, BINARY, CLOSE (``data``: the code or
    None), ERROR (``data``: a ``WebSocketError`` with the close code for the client's protocol
    violation: the consumer closes with it, and reads on to the client's close frame),
    ``HALF_CLOSED`` (a CLOSING message) and CLOSED (the connection is gone). ``send_pong`` writes
    through ``writer`` (set by the consumer: it knows when a close frame has gone out)."""

    __slots__ = ("_bytes", "_messages", "_waiter", "writer")

    def __init__(self, max_size: int, pong_stall_s: float) -> None:
        super().__init__(max_size, pong_stall_s)
        self._messages: deque[WSMessage] = deque()
        self._bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self.writer: Any = None  # has write(bytes); pongs go through it

    # --- FrameReader / FrameProtocol callbacks --------------------------------------------------
    def on_text(self, text: str) -> None:
        self._push(WSMessage(WSMsgType.TEXT, text, None), len(text))

    def on_binary(self, data: bytes) -> None:
        self._push(WSMessage(WSMsgType.BINARY, data, None), len(data))

    def on_close(self, code: int | None) -> None:
        self._push(WSMessage(WSMsgType.CLOSE, code, ""), 0)

    def on_violation(self, code: int, reason: str) -> None:
        self._push(WSMessage(WSMsgType.ERROR, WebSocketError(code, reason), None), 0)

    def on_eof(self) -> None:
        self._push(HALF_CLOSED, 0)

    def send_pong(self, payload: bytes) -> None:
        self.writer.write(ws_frame(payload, OPCODE_PONG))

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._push(_LOST, 0)

    # --- the consumer's side --------------------------------------------------------------------
    async def receive(self, timeout: float | None = None) -> WSMessage:  # noqa: ASYNC109 - as aiohttp
        """The next message; ``TimeoutError`` when none comes within ``timeout`` seconds."""
        if not self._messages:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            finally:
                self._waiter = None
        msg = self._messages.popleft()
        self._bytes -= _size(msg)
        if self._bytes <= QUEUE_BYTES // 4 and len(self._messages) <= QUEUE_MESSAGES // 4:
            self.resume(PAUSE_INBOX)
        return msg

    def _push(self, msg: WSMessage, size: int) -> None:
        self._messages.append(msg)
        self._bytes += size + MESSAGE_BYTES
        if self._bytes > QUEUE_BYTES or len(self._messages) > QUEUE_MESSAGES:
            self.pause(PAUSE_INBOX)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _size(msg: WSMessage) -> int:
    data = msg.data
    return (len(data) if isinstance(data, str | bytes) else 0) + MESSAGE_BYTES
