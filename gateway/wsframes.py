"""WebSocket frames: server frames written straight to the socket and our side of the closing
handshake (shared by the ``/ws`` and Socket.IO transports), and the reader of client frames
used by the ``/ws`` fast path (``FrameReader``, gateway.wsconn).

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

    def end_writing(self) -> None:
        """After a protocol violation (RFC 6455 section 7.1.7, "fail the connection"): our close
        frame is the last thing written, so the write side ends at once (FIN after it) instead of
        waiting for the client's close frame; the client, which may have sent its own close
        already (an invalid one), sees the TCP connection end promptly. Reading goes on (the
        client may still be sending: unread data would make the kernel answer RST and lose our
        close frame) until the client closes its side, or the timer aborts."""
        transport = self._transport
        if not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()

    def peer_gone(self) -> None:
        """The client half-closed without a close frame (it sends nothing more, but may still
        read): what is written goes out, then TCP closes; aborted if it is not read in time."""
        self._done = True
        if not self._transport.is_closing():
            self._transport.close()
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.timeout_s, self.abort)

    def abort(self) -> None:
        """Drop the connection without waiting (the client does not answer, or never reads)."""
        self._cancel_timer()
        self._transport.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


# --- reading client frames (the /ws fast path, gateway.wsconn) --------------------------------

OPCODE_CONTINUATION = 0x0
OPCODE_BINARY = 0x2
PROTOCOL_ERROR = 1002
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
MAX_FRAGMENTS = 1000  # frames of one message (CONTRACT section 2): close 1009 beyond
# Close codes a client may send (RFC 6455 section 7.4; 1012-1014 registered since), and 3000-4999.
_PEER_CLOSE_CODES = frozenset(
    (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014)
)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, done by int arithmetic in C (no Python loop per byte)."""
    n = len(payload)
    if not n:
        return payload
    key = (mask * ((n + 3) >> 2))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Client frames of one connection (RFC 6455 section 5), fed as bytes arrive.

    Calls ``on_text(str)``, ``on_binary(bytes)`` with whole messages (fragments joined),
    ``on_ping(bytes)``, ``on_close(code or None)``, and ``on_violation(code, reason)`` once
    when the client breaks the protocol: 1002 (unmasked frame, reserved bits, bad opcode,
    bad fragmentation, bad control frame or close code), 1007 (text or close reason not UTF-8),
    1009 (a message over ``max_size`` or in more than ``MAX_FRAGMENTS`` frames).
    Opcode, fragmentation and size are judged from the header, in that order, before any
    payload is kept: a frame that would be refused is never buffered, and a large frame with a
    reserved opcode is a protocol error (1002), not a big message (1009).
    After a violation the reader keeps its place in the stream and reports only the close
    frame, so the closing handshake can still complete; payloads are skipped, not buffered.
    Memory per connection: one frame being read (at most ``max_size`` plus its header) and one
    message's fragments (at most ``max_size`` bytes in at most ``MAX_FRAGMENTS`` frames).
    """

    __slots__ = (
        "_chunks",
        "_have",
        "_msg_frames",
        "_msg_op",
        "_msg_size",
        "_need",
        "_parts",
        "_skip",
        "failed",
        "max_size",
    )

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.failed = False
        self._chunks: list[bytes] = []  # bytes of an incomplete frame
        self._have = 0  # their total length
        self._need = 0  # bytes needed before parsing again (0: unknown, try at once)
        self._msg_op = 0  # opcode of a fragmented message in progress
        self._parts: list[bytes] = []
        self._msg_size = 0
        self._msg_frames = 0  # frames of the fragmented message so far
        self._skip = 0  # payload bytes still to drop (a frame refused or read after a violation)

    # the callbacks -----------------------------------------------------------------------
    def on_text(self, text: str) -> None: ...
    def on_binary(self, data: bytes) -> None: ...
    def on_ping(self, payload: bytes) -> None: ...
    def on_close(self, code: int | None) -> None: ...
    def on_violation(self, code: int, reason: str) -> None: ...

    # parsing -----------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            data = b"".join(self._chunks)
            self._chunks = []
            self._have = self._need = 0
        rest = self._parse(data)
        if rest is not None:
            self._chunks.append(rest)
            self._have = len(rest)

    def _parse(self, buf: bytes) -> bytes | None:
        """Every whole frame of ``buf``; returns the bytes of an incomplete last one."""
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
                if length >> 63:  # the stream cannot be followed any further
                    self._violate(PROTOCOL_ERROR, "invalid frame length")
                    self._skip = 1 << 62
                    return None
            masked = b1 & 0x80
            if masked:
                head += 4
            opcode = b0 & 0x0F
            size = head + length
            if self._refused(b0, opcode, length):  # judged before any payload is kept
                if end - pos < size:  # drop the rest of it as it arrives, never buffer it
                    self._skip = size - (end - pos)
                    return None
                pos += size
                continue
            if end - pos < size:
                self._need = size
                break
            payload = buf[pos + head : pos + size]
            if masked:
                payload = unmask(payload, buf[pos + head - 4 : pos + head])
            pos += size
            self._frame(b0, masked, opcode, payload)
        if pos == end:
            return None
        return buf[pos:]

    def _refused(self, b0: int, opcode: int, length: int) -> bool:
        """Whether a frame is refused from its header alone (its payload is then skipped):
        after a violation everything but a close frame; otherwise a reserved opcode, a bad
        control frame (RFC 6455 section 5.5), a frame out of fragmentation order, a message in
        too many fragments, and (last) one over the size limit."""
        if self.failed:
            return opcode != OPCODE_CLOSE
        if opcode >= 8:
            if opcode > OPCODE_PONG:
                self._violate(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            elif length > 125:
                self._violate(PROTOCOL_ERROR, "control frames are at most 125 bytes")
            elif not b0 & 0x80:
                self._violate(PROTOCOL_ERROR, "control frames must not be fragmented")
            else:
                return False
            return True
        if opcode > OPCODE_BINARY:
            self._violate(PROTOCOL_ERROR, f"unknown opcode {opcode}")
        elif opcode == OPCODE_CONTINUATION:
            if not self._msg_op:
                self._violate(PROTOCOL_ERROR, "continuation frame without a message")
            elif self._msg_frames >= MAX_FRAGMENTS:
                self._violate(MESSAGE_TOO_BIG, f"message in more than {MAX_FRAGMENTS} fragments")
            elif self._msg_size + length > self.max_size:
                self._violate(MESSAGE_TOO_BIG, "message too big")
            else:
                return False
        elif self._msg_op:
            self._violate(PROTOCOL_ERROR, "new message inside a fragmented one")
        elif length > self.max_size:
            self._violate(MESSAGE_TOO_BIG, "message too big")
        else:
            return False
        return True

    def _frame(self, b0: int, masked: int, opcode: int, payload: bytes) -> None:
        if self.failed:  # only the close frame still matters
            if opcode == OPCODE_CLOSE:
                self.on_close(_close_code(payload))
            return
        if b0 & 0x70:
            self._violate(PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
            return
        if not masked:
            self._violate(PROTOCOL_ERROR, "client frames must be masked")
            return
        # opcode, fragmentation order and sizes were judged from the header (_refused)
        fin = b0 & 0x80
        if opcode >= 8:
            if opcode == OPCODE_CLOSE:
                self._close(payload)
            elif opcode == OPCODE_PING:
                self.on_ping(payload)
            return
        if opcode == OPCODE_CONTINUATION:
            self._parts.append(payload)
            self._msg_size += len(payload)
            self._msg_frames += 1
            if not fin:
                return
            opcode, payload = self._msg_op, b"".join(self._parts)
            self._msg_op, self._parts, self._msg_size, self._msg_frames = 0, [], 0, 0
        elif not fin:
            self._msg_op, self._parts, self._msg_size = opcode, [payload], len(payload)
            self._msg_frames = 1
            return
        if opcode == OPCODE_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                self._violate(INVALID_PAYLOAD, "text frame is not valid UTF-8")
                return
            self.on_text(text)
        else:
            self.on_binary(payload)

    def _close(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._violate(PROTOCOL_ERROR, "close frame with a 1-byte payload")
            return
        code = _close_code(payload)
        if code is not None and code not in _PEER_CLOSE_CODES and not 3000 <= code < 5000:
            self._violate(PROTOCOL_ERROR, f"invalid close code {code}")
            return
        try:
            payload[2:].decode()
        except UnicodeDecodeError:
            self._violate(INVALID_PAYLOAD, "close reason is not valid UTF-8")
            return
        self.failed = True  # nothing may follow a close frame; a second one is still reported
        self.on_close(code)

    def _violate(self, code: int, reason: str) -> None:
        self.failed = True
        self._msg_op, self._parts, self._msg_size, self._msg_frames = 0, [], 0, 0
        self.on_violation(code, reason)


def _close_code(payload: bytes) -> int | None:
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
