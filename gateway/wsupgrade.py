"""The first request of a connection, as the ``/ws`` fast path reads it (gateway.wsconn).

``parse_upgrade`` accepts only the plain case: ``GET /ws[?query] HTTP/1.1`` with a complete
WebSocket version 13 handshake and no body. It returns None for anything else (another path,
another method, a malformed or unusual head), and the connection then goes to aiohttp unchanged,
which answers it as it always did (routes, 4xx answers, its own ``/ws`` upgrade). So the fast
path never has to judge a request it does not fully understand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from urllib.parse import parse_qsl

PATH = "/ws"
MAX_HEAD_BYTES = 8190  # aiohttp's own limit for a request line and headers
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


@dataclass(slots=True)
class Upgrade:
    key: str  # Sec-WebSocket-Key
    token: str | None  # ?token=, the first one
    origin: str | None
    forwarded_for: str | None  # X-Forwarded-For, every occurrence joined


def parse_upgrade(head: bytes) -> Upgrade | None:
    """``head``: the request line and headers, without the blank line that ends them."""
    lines = head.decode("latin-1").split("\r\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or request_line[0] != "GET" or request_line[2] != "HTTP/1.1":
        return None
    path, _, query = request_line[1].partition("?")
    if path != PATH:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name[0] in " \t" or name[-1] in " \t":
            return None  # folded or malformed: aiohttp's parser decides what to answer
        key = name.lower()
        value = value.strip(" \t")
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "content-length" in headers or "transfer-encoding" in headers:
        return None
    if headers.get("upgrade", "").lower() != "websocket":
        return None
    if "upgrade" not in (t.strip().lower() for t in headers.get("connection", "").split(",")):
        return None
    if headers.get("sec-websocket-version") != "13":
        return None
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return None
    except (binascii.Error, ValueError):
        return None
    token = None
    if query:
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "token":
                token = value
                break
    return Upgrade(key, token, headers.get("origin"), headers.get("x-forwarded-for"))


def switching_protocols(key: str) -> bytes:
    """The 101 answer that completes the handshake."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
