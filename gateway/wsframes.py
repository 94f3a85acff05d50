"""Server-side WebSocket frames written straight to the socket, and our side of the closing
handshake; shared by the ``/ws`` and Socket.IO transports.

Frames are built once (``ws_frame``) and the same bytes written to every member of a room.

Closing (RFC 6455 section 7): aiohttp's ``WebSocketResponse.close()``, called from a task other
than the one reading, closes the TCP connection right after its close frame. The client's answer,
and any frame it was still sending (a flooding client is exactly the one we close), then meet a
closed socket; the kernel answers with RST, and the client may lose what was in flight to it: the
last replies (the ``rate_limited`` errors before a 4429) and the close frame, so it sees 1006
instead of our code and cannot tell whether to come back. ``ServerClose`` writes the close frame
behind the frames already written, keeps the connection open while the reader discards what the
client still sends, and closes it when the client's close frame arrives (``peer_closed``), or
aborts it when none comes in time. The WebSocketResponse is made with ``autoclose=False`` so that
aiohttp does not answer the client's close frame itself.
"""

from __future__ import annotations

import asyncio

OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA
CLOSE_TIMEOUT_S = 5.0  # for the client's close frame once ours is sent
MAX_REASON_BYTES = 123  # a control frame's payload is at most 125 bytes, the code takes 2
NORMAL_CLOSURE = 1000


def ws_frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """One unmasked, unfragmented server frame (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return header + payload


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame; the reason is cut to fit, never in the middle of a UTF-8 character."""
    data = reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()
    return ws_frame(code.to_bytes(2, "big") + data, OPCODE_CLOSE)


def _sendable(code: int) -> bool:
    """1005, 1006 and 1015 only report; they never go on the wire (RFC 6455 section 7.4.1)."""
    return 1000 <= code < 5000 and code not in (1005, 1006, 1015)


class ServerClose:
    """The closing handshake of one connection, whichever side starts it."""

    __slots__ = ("_done", "_timer", "_transport", "code", "peer_code", "timeout_s")

    def __init__(self, transport: asyncio.Transport, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None
        self._done = False  # a close frame has been sent, ours or our answer
        self.timeout_s = timeout_s
        self.code: int | None = None  # the code we closed with
        self.peer_code: int | None = None  # the code of the client's close frame

    @property
    def started(self) -> bool:
        """A close frame has gone out: nothing else may follow it."""
        return self._done

    def start(self, code: int, reason: str) -> bool:
        """Send our close frame after everything already written; False if already closing."""
        if self._done:
            return False
        self._done = True
        self.code = code
        if not self._transport.is_closing():
            self._transport.write(close_frame(code, reason))
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.timeout_s, self.abort)
        return True

    def peer_closed(self, code: int | None) -> None:
        """The client's close frame arrived: answer it if it started, then end the connection
        (the server closes TCP first, as RFC 6455 asks)."""
        self.peer_code = code
        if not self._done and not self._transport.is_closing():
            echo = code if code is not None and _sendable(code) else NORMAL_CLOSURE
            self._transport.write(close_frame(echo))
        self._done = True
        self._cancel_timer()
        if not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection without waiting (the client does not answer, or never reads)."""
        self._cancel_timer()
        self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
