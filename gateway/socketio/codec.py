"""Engine.IO v4 and Socket.IO v5 packets: decoding, validation, encoding. No I/O.

Every WebSocket text frame is one Engine.IO packet, and a long-polling body is several of them
joined by the record separator 0x1e (``encode_payload``/``decode_payload``). A packet is a
type digit, then its data (``2`` ping, ``3`` pong, ``4<socket.io packet>`` message...). A
Socket.IO packet is
``<type>[<attachments>-][<nsp>,][<ack id>][<json>]``, e.g. ``42["join_room",{"room":"x"}]`` or,
asking for an acknowledgement, ``4213["join_room",{...}]`` answered by ``4313[{...}]``.

Decoding is strict: anything the reference client (socket.io-client 4) would not send raises
``PacketError`` (and only that), so the transport can answer instead of crashing. Binary
packets (``45``/``46``, binary frames and long-polling's base64 ``b`` packets) raise its
subclass ``BinaryNotSupported``.

Encoding is built for fan-out: the ``encode_*`` helpers take a payload as already-serialized
JSON bytes and splice it in, so one event is serialized once whatever the number of recipients.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from functools import lru_cache
from typing import Any, Final

import orjson

DEFAULT_NAMESPACE: Final = "/"
ENGINE_PROTOCOL: Final = "4"
MAX_ACK_ID_DIGITS: Final = 15  # below 2**53: socket.io-client's ids are JavaScript numbers
MAX_ATTACHMENTS_DIGITS: Final = 6

# Names socket.io-client's parser refuses in an EVENT (it uses them for its own events).
RESERVED_EVENTS: Final = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
# Gateway replies that are failures: an acknowledgement wraps them as {"error": data}.
ERROR_REPLIES: Final = frozenset({"error", "auth_error"})


class EngineType(IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


class SocketType(IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


class PacketError(ValueError):
    """A frame that is not a valid Engine.IO / Socket.IO packet.

    ``ack_id`` is set when the packet got far enough to name one, so that the refusal can be
    sent to the sender's acknowledgement callback instead of as a loose ``error`` event.
    """

    def __init__(self, message: str, ack_id: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.ack_id = ack_id


class BinaryNotSupported(PacketError):
    """A binary packet: ``45``/``46`` announcing ``attachments`` binary frames, or a binary frame
    itself (``attachments`` 0). The gateway speaks JSON only."""

    def __init__(self, message: str, attachments: int = 0, ack_id: int | None = None) -> None:
        super().__init__(message, ack_id)
        self.attachments = attachments


# --- packets ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EnginePacket:
    """An Engine.IO packet other than a message: ping, pong, close, noop, upgrade, open."""

    type: EngineType
    data: str = ""

    def encode(self) -> bytes:
        return b"%d%s" % (self.type, self.data.encode())


@dataclass(frozen=True, slots=True)
class Handshake:
    """The Engine.IO open packet the server sends first. Durations are milliseconds on the wire."""

    sid: str
    ping_interval_ms: int
    ping_timeout_ms: int
    max_payload: int
    upgrades: tuple[str, ...] = ()  # ("websocket",) for a session opened by long-polling

    def encode(self) -> bytes:
        return b"0" + orjson.dumps(
            {
                "sid": self.sid,
                "upgrades": list(self.upgrades),
                "pingInterval": self.ping_interval_ms,
                "pingTimeout": self.ping_timeout_ms,
                "maxPayload": self.max_payload,
            }
        )


@dataclass(frozen=True, slots=True)
class Connect:
    """Client: ``40`` or ``40{auth}``; server: ``40{"sid": ...}``."""

    nsp: str = DEFAULT_NAMESPACE
    data: dict[str, Any] | None = None

    def encode(self) -> bytes:
        tail = b"" if self.data is None else orjson.dumps(self.data)
        return b"40" + _nsp_prefix(self.nsp) + tail


@dataclass(frozen=True, slots=True)
class Disconnect:
    nsp: str = DEFAULT_NAMESPACE

    def encode(self) -> bytes:
        return encode_disconnect(self.nsp)


@dataclass(frozen=True, slots=True)
class Event:
    """``42[name, *args]``; ``ack_id`` set when the sender waits for an acknowledgement."""

    name: str
    args: tuple[Any, ...] = ()
    ack_id: int | None = None
    nsp: str = DEFAULT_NAMESPACE

    def encode(self) -> bytes:
        head = b"42" + _nsp_prefix(self.nsp) + _ack_digits(self.ack_id)
        return head + orjson.dumps([self.name, *self.args])


@dataclass(frozen=True, slots=True)
class Ack:
    ack_id: int
    args: tuple[Any, ...] = ()
    nsp: str = DEFAULT_NAMESPACE

    def encode(self) -> bytes:
        head = b"43" + _nsp_prefix(self.nsp) + _ack_digits(self.ack_id)
        return head + orjson.dumps(list(self.args))


@dataclass(frozen=True, slots=True)
class ConnectError:
    message: str
    data: Any = None
    nsp: str = DEFAULT_NAMESPACE

    def encode(self) -> bytes:
        return encode_connect_error(self.message, self.nsp, self.data)


SocketPacket = Connect | Disconnect | Event | Ack | ConnectError
Packet = EnginePacket | SocketPacket


# --- decoding ---------------------------------------------------------------------------------

_ENGINE_TYPES: Final = {str(int(t)): t for t in EngineType if t is not EngineType.MESSAGE}
_SOCKET_TYPES: Final = {str(int(t)): t for t in SocketType}
_DIGITS = re.compile(r"[0-9]+")
_ATTACHMENTS = re.compile(r"([0-9]+)-")
_MISSING: Final[Any] = object()


def decode_frame(frame: str | bytes) -> Packet:
    """Decode one Engine.IO packet from a client: a WebSocket frame (``str`` for text,
    ``bytes`` for binary) or one packet of a long-polling body."""
    if not isinstance(frame, str):
        raise BinaryNotSupported("binary frames are not supported: send JSON text")
    if not frame:
        raise PacketError("empty frame: not an Engine.IO packet")
    head = frame[0]
    if head == "b":  # long-polling's base64 binary packet: an attachment, or a binary message
        raise BinaryNotSupported("binary packets are not supported: send JSON text")
    if head == "4":
        return decode_socket(frame[1:])
    engine_type = _ENGINE_TYPES.get(head)
    if engine_type is None:
        raise PacketError(f"unknown Engine.IO packet type {head!r}")
    return EnginePacket(engine_type, frame[1:])


def decode_socket(text: str) -> SocketPacket:
    """Decode the Socket.IO packet carried by an Engine.IO message (without its leading ``4``)."""
    if not text:
        raise PacketError("empty Socket.IO packet")
    packet_type = _SOCKET_TYPES.get(text[0])
    if packet_type is None:
        raise PacketError(f"unknown Socket.IO packet type {text[0]!r}")
    pos = 1
    attachments = 0
    if packet_type in (SocketType.BINARY_EVENT, SocketType.BINARY_ACK):
        match = _ATTACHMENTS.match(text, pos)
        if match is None or len(match[1]) > MAX_ATTACHMENTS_DIGITS or int(match[1]) < 1:
            raise PacketError("binary packet without a valid attachment count")
        attachments = int(match[1])
        pos = match.end()
    nsp, pos = _read_namespace(text, pos)
    ack_id, pos = _read_ack_id(text, pos)
    if attachments:
        raise BinaryNotSupported(
            "binary payloads are not supported: send JSON (encode bytes as base64 strings)",
            attachments,
            ack_id,
        )
    payload = _read_json(text, pos, ack_id)
    if packet_type is SocketType.EVENT:
        return _event(payload, ack_id, nsp)
    if packet_type is SocketType.ACK:
        return _ack(payload, ack_id, nsp)
    if ack_id is not None:
        raise PacketError(f"a {packet_type.name} packet takes no ack id")
    if packet_type is SocketType.CONNECT:
        return _connect(payload, nsp)
    if packet_type is SocketType.DISCONNECT:
        if payload is not _MISSING:
            raise PacketError("a DISCONNECT packet takes no payload")
        return Disconnect(nsp)
    return _connect_error(payload, nsp)


def _read_namespace(text: str, pos: int) -> tuple[str, int]:
    if not text.startswith("/", pos):
        return DEFAULT_NAMESPACE, pos
    comma = text.find(",", pos)
    if comma == -1:  # like the reference parser: a namespace may end the packet ("41/admin")
        return text[pos:], len(text)
    return text[pos:comma], comma + 1


def _read_ack_id(text: str, pos: int) -> tuple[int | None, int]:
    match = _DIGITS.match(text, pos)
    if match is None:
        return None, pos
    if len(match[0]) > MAX_ACK_ID_DIGITS:
        raise PacketError(f"ack id longer than {MAX_ACK_ID_DIGITS} digits")
    return int(match[0]), match.end()


def _read_json(text: str, pos: int, ack_id: int | None) -> Any:
    if pos >= len(text):
        return _MISSING
    try:
        return orjson.loads(text[pos:])
    except orjson.JSONDecodeError:
        raise PacketError("packet payload is not valid JSON", ack_id) from None


def _event(payload: Any, ack_id: int | None, nsp: str) -> Event:
    if not isinstance(payload, list) or not payload:
        raise PacketError("an EVENT payload must be a non-empty array [name, ...args]", ack_id)
    name = payload[0]
    if not isinstance(name, str):
        raise PacketError("an event name must be a string", ack_id)
    if name in RESERVED_EVENTS:
        raise PacketError(f"'{name}' is a reserved Socket.IO event name", ack_id)
    return Event(name, tuple(payload[1:]), ack_id, nsp)


def _ack(payload: Any, ack_id: int | None, nsp: str) -> Ack:
    if ack_id is None:
        raise PacketError("an ACK packet needs an ack id")
    if not isinstance(payload, list):
        raise PacketError("an ACK payload must be an array", ack_id)
    return Ack(ack_id, tuple(payload), nsp)


def _connect(payload: Any, nsp: str) -> Connect:
    if payload is _MISSING:
        return Connect(nsp)
    if not isinstance(payload, dict):
        raise PacketError("a CONNECT payload (the auth option) must be an object")
    return Connect(nsp, payload)


def _connect_error(payload: Any, nsp: str) -> ConnectError:
    if isinstance(payload, str):
        return ConnectError(payload, None, nsp)
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return ConnectError(payload["message"], payload.get("data"), nsp)
    raise PacketError("a CONNECT_ERROR payload must be a string or {message, data?}")


# --- encoding (server → client) ---------------------------------------------------------------

CLOSE: Final = b"1"
PING: Final = b"2"
PONG: Final = b"3"
NOOP: Final = b"6"


@lru_cache(maxsize=512)
def _name_json(name: str) -> bytes:
    return orjson.dumps(name)


def _nsp_prefix(nsp: str) -> bytes:
    return b"" if nsp == DEFAULT_NAMESPACE else nsp.encode() + b","


def _ack_digits(ack_id: int | None) -> bytes:
    return b"" if ack_id is None else b"%d" % ack_id


def encode_event(name: str, data_json: bytes | None = None, nsp: str = DEFAULT_NAMESPACE) -> bytes:
    """``42["name",<data_json>]``: a server push. ``data_json`` must be valid JSON; it is spliced
    in as is (serialize once, send to many)."""
    head = b"42" + _nsp_prefix(nsp) + b"[" + _name_json(name)
    if data_json is None:
        return head + b"]"
    return head + b"," + data_json + b"]"


def encode_ack(ack_id: int, data_json: bytes | None = None, nsp: str = DEFAULT_NAMESPACE) -> bytes:
    """``43<id>[<data_json>]``: the acknowledgement the client's callback receives."""
    head = b"43" + _nsp_prefix(nsp) + b"%d[" % ack_id
    return head + (data_json or b"") + b"]"


def encode_reply(reply_id: int | None, event: str, data_json: bytes) -> bytes:
    """A gateway reply to a client event, on the default namespace.

    Without an ack id the reply is an event of the same name as on ``/ws``
    (``42["room_joined",{...}]``). With one, the ack callback receives the reply's data
    (``43<id>[{...}]``), except for failures (``error``, ``auth_error``), which it receives as
    ``{"error": {code, message, field?}}`` so that ``if (res.error)`` tells them apart.
    """
    if reply_id is None:
        return encode_event(event, data_json)
    if event in ERROR_REPLIES:
        return b'43%d[{"error":%s}]' % (reply_id, data_json)
    return b"43%d[%s]" % (reply_id, data_json)


def encode_connect(sid: str, nsp: str = DEFAULT_NAMESPACE, pid: str | None = None) -> bytes:
    """``40{"sid":...}``: the namespace is connected. ``pid``: the private session id of
    Socket.IO's connection state recovery; the client sends it back, with the offset of the last
    event it received, when it reconnects (and sets ``socket.recovered`` when it comes back)."""
    body = {"sid": sid} if pid is None else {"sid": sid, "pid": pid}
    return b"40" + _nsp_prefix(nsp) + orjson.dumps(body)


def encode_connect_error(message: str, nsp: str = DEFAULT_NAMESPACE, data: Any = None) -> bytes:
    """``44{"message":...}``: socket.io-client emits ``connect_error`` with ``err.message`` (and
    ``err.data``) and does not retry that namespace by itself."""
    body: dict[str, Any] = {"message": message}
    if data is not None:
        body["data"] = data
    return b"44" + _nsp_prefix(nsp) + orjson.dumps(body)


def encode_disconnect(nsp: str = DEFAULT_NAMESPACE) -> bytes:
    """``41``: the server ends the namespace; the client reports ``io server disconnect`` and
    does not reconnect by itself."""
    return b"41" + _nsp_prefix(nsp)


# --- the HTTP requests ------------------------------------------------------------------------


class EngineErrorCode(IntEnum):
    """Engine.IO's HTTP error codes (the ``code`` of its JSON error body)."""

    TRANSPORT_UNKNOWN = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5


@dataclass(frozen=True, slots=True)
class HandshakeError:
    """An HTTP refusal in Engine.IO's format: ``status`` and the body ``{"code","message"}``."""

    status: int
    code: EngineErrorCode
    message: str

    def body(self) -> bytes:
        return orjson.dumps({"code": int(self.code), "message": self.message})


UNKNOWN_SID: Final = HandshakeError(400, EngineErrorCode.UNKNOWN_SID, "Session ID unknown")


class RequestKind(IntEnum):
    """What a valid ``/socket.io/`` request asks for."""

    POLL_OPEN = 0  # GET transport=polling, no sid: a new session, long-polling first
    POLL_GET = 1  # GET transport=polling&sid=: a long-poll
    POLL_POST = 2  # POST transport=polling&sid=: packets from the client
    WS_OPEN = 3  # a WebSocket upgrade without sid: a new session on a WebSocket
    WS_UPGRADE = 4  # a WebSocket upgrade with sid: the upgrade of a polling session


def classify_request(
    query: Mapping[str, str], *, method: str, websocket_upgrade: bool
) -> RequestKind | HandshakeError:
    """Judge ``/socket.io/?EIO=4&transport=...[&sid=...]`` as Engine.IO 4 servers do."""
    version = query.get("EIO")
    if version != ENGINE_PROTOCOL:
        shown = f"EIO={version}" if version else "no EIO parameter"
        return HandshakeError(
            400,
            EngineErrorCode.UNSUPPORTED_PROTOCOL_VERSION,
            f"Unsupported protocol version ({shown}): this server speaks Engine.IO 4; "
            "use socket.io-client 3.x or 4.x",
        )
    transport = query.get("transport")
    sid = query.get("sid")
    if transport == "polling":
        if method == "GET":
            return RequestKind.POLL_GET if sid else RequestKind.POLL_OPEN
        if method == "POST" and sid:
            return RequestKind.POLL_POST
        return HandshakeError(400, EngineErrorCode.BAD_HANDSHAKE_METHOD, "Bad handshake method")
    if transport != "websocket":
        return HandshakeError(400, EngineErrorCode.TRANSPORT_UNKNOWN, "Transport unknown")
    if method != "GET":
        return HandshakeError(400, EngineErrorCode.BAD_HANDSHAKE_METHOD, "Bad handshake method")
    if not websocket_upgrade:
        return HandshakeError(
            400,
            EngineErrorCode.BAD_REQUEST,
            "Bad request: transport=websocket needs a WebSocket upgrade request",
        )
    return RequestKind.WS_UPGRADE if sid else RequestKind.WS_OPEN


# --- long-polling payloads --------------------------------------------------------------------

RECORD_SEPARATOR: Final = "\x1e"  # between the packets of one HTTP body (engine.io-parser v4)


def encode_payload(packets: list[bytes]) -> bytes:
    """The body of a long-poll answer: the packets joined by the record separator. A packet is
    JSON text or an Engine.IO control packet, neither of which contains a raw 0x1e."""
    return b"\x1e".join(packets)


def decode_payload(body: str) -> list[str]:
    """The packets of a POST body; an empty packet is the caller's to refuse."""
    return body.split(RECORD_SEPARATOR)
