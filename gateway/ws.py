"""The ``/ws`` transport: JSON text frames over a WebSocket. The only code that touches sockets
for the native protocol; everything it reads goes to ``Node.handle``."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import orjson
from aiohttp import WSMsgType, web

from gateway.backend.base import Publication
from gateway.closecodes import CloseCode, ErrorCode
from gateway.node import Node
from gateway.protocol import FrameId, ProtocolError

log = logging.getLogger("gateway.ws")

CLOSE_TIMEOUT_S = 5.0


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked, unfragmented server frame; built once and written to many sockets."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return header + payload


def encode_native(event: str, data_json: bytes, frame_id: FrameId | None) -> bytes:
    head = b'{"event":"%s","data":' % event.encode()
    if frame_id is None:
        return head + data_json + b"}"
    return head + data_json + b',"id":' + orjson.dumps(frame_id) + b"}"


class WsTransport:
    kind = "ws"
    __slots__ = ("_transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport) -> None:
        self.ws = ws
        self._transport = transport

    def encode(self, event: str, data_json: bytes, frame_id: FrameId | None) -> bytes:
        return ws_frame(encode_native(event, data_json, frame_id))

    def encode_publication(self, pub: Publication) -> bytes:
        return ws_frame(pub.frame())

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        try:
            await asyncio.wait_for(
                self.ws.close(code=code, message=reason.encode()), CLOSE_TIMEOUT_S
            )
        except (TimeoutError, ConnectionError, RuntimeError):
            pass
        if not self._transport.is_closing():
            self._transport.abort()  # a client that never reads must not pin the socket


def client_ip(request: web.Request, trusted_proxies: list[str]) -> str:
    """The peer address; ``X-Forwarded-For`` is believed only from a configured proxy."""
    peer = request.remote or "unknown"
    forwarded = request.headers.get("X-Forwarded-For")
    if not forwarded or not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    # walk from the nearest hop; the first untrusted address is the client
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def _is_trusted(address: str, trusted: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    for entry in trusted:
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def origin_allowed(request: web.Request, allowed: list[str]) -> bool:
    """No Origin header: not a browser, allowed. Otherwise it must be on the allow-list."""
    origin = request.headers.get("Origin")
    if not allowed or origin is None:
        return True
    return origin.rstrip("/") in {a.rstrip("/") for a in allowed} or "*" in allowed


def refuse(node: Node, request: web.Request) -> web.Response | None:
    """The HTTP answer for an upgrade we will not accept, or None."""
    settings = node.settings
    if not origin_allowed(request, settings.allowed_origins):
        node.metrics.rejected_upgrades.labels("origin").inc()
        return web.json_response({"error": "origin not allowed"}, status=403)
    reason = node.admit(client_ip(request, settings.trusted_proxies))
    if reason is not None:
        node.metrics.rejected_upgrades.labels(reason).inc()
        status = 429 if reason == "ip_limit" else 503
        return web.json_response({"error": reason}, status=status)
    return None


async def handle_ws(request: web.Request, node: Node) -> web.StreamResponse:
    refused = refuse(node, request)
    if refused is not None:
        return refused
    settings = node.settings
    ws = web.WebSocketResponse(
        max_msg_size=settings.max_message_bytes + 1,  # aiohttp refuses len == max_msg_size
        compress=False,
        heartbeat=settings.ws_heartbeat_s,
        autoping=True,
    )
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    session = node.open_session(
        WsTransport(ws, transport),
        client_ip(request, settings.trusted_proxies),
    )
    try:
        token = request.query.get("token")
        if token:
            await node.authenticate_with(session, token)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await node.handle(session, msg.data)
            elif msg.type is WSMsgType.BINARY:
                error = ProtocolError(ErrorCode.BAD_REQUEST, "binary frames are not supported")
                node.reply_error(session, error, None)
            elif msg.type is WSMsgType.ERROR:
                break
    finally:
        code = ws.close_code
        if ws.exception() is not None and code is None:
            code = CloseCode.MESSAGE_TOO_BIG
        await node.close_session(session, code)
    return ws
