"""The ``/ws`` transport: JSON text frames over a WebSocket; everything read goes to
``Node.handle``. ``WsTransport`` (what a session writes through) and the pings are shared by
both ways in: the fast path (gateway.wsconn, a connection whose first request is the upgrade)
and aiohttp's route here (``handle_ws``, an upgrade after other requests on a kept-alive
connection)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import orjson
from aiohttp import web

from gateway.backend.base import Publication
from gateway.closecodes import ErrorCode
from gateway.node import Node
from gateway.protocol import FrameId, ProtocolError
from gateway.session import Session
from gateway.wsframes import OPCODE_PING, ServerClose, ws_frame
from gateway.wstakeover import Upgraded, take_over

log = logging.getLogger("gateway.ws")


def encode_native(event: str, data_json: bytes, frame_id: FrameId | None) -> bytes:
    head = b'{"event":"%s","data":' % event.encode()
    if frame_id is None:
        return head + data_json + b"}"
    return head + data_json + b',"id":' + orjson.dumps(frame_id) + b"}"


PING_FRAME = ws_frame(b"", OPCODE_PING)


class WsTransport:
    kind = "ws"
    __slots__ = ("_held", "_ping_due", "_transport", "closer", "pinged", "seen")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None  # written with the first frame (hold)
        self._ping_due = False  # a ping rides on the next write (ping)
        self.closer: ServerClose | None = None  # made when the connection starts to close
        self.seen = True  # a frame came from the client since the last ping round
        self.pinged = False  # a ping went out and nothing came back yet

    def encode(self, event: str, data_json: bytes, frame_id: FrameId | None) -> bytes:
        return ws_frame(encode_native(event, data_json, frame_id))

    def encode_publication(self, pub: Publication) -> bytes:
        return ws_frame(pub.frame())

    def hold(self, data: bytes) -> None:
        """``data`` goes out with the next write: the upgrade's 101 and a ``?token=`` answer
        share one send (the fast path does so when the token is cached, so the wait is short)."""
        self._held = data

    def write(self, data: bytes) -> None:
        if self.closer is None and not self._transport.is_closing():
            if self._held is not None:
                data = self._held + data
                self._held = None
            if self._ping_due:
                data += PING_FRAME
                self._ping_due = False
            self._transport.write(data)

    def ping(self) -> None:
        """Ping the client: with the next frame written to it (no send of its own for a client
        that receives events), or alone by ``send_due_ping``."""
        self.pinged = True
        self._ping_due = True

    def send_due_ping(self) -> None:
        if self._ping_due:
            self._ping_due = False
            if self.closer is None and not self._transport.is_closing():
                self._transport.write(PING_FRAME)

    def _release(self) -> None:
        if self._held is not None:
            if not self._transport.is_closing():
                self._transport.write(self._held)
            self._held = None

    def buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def close(self, code: int, reason: str) -> None:
        """Never blocks: the close frame goes after what is already written (see wsframes)."""
        if self.closer is None:
            self._release()
            self.closer = ServerClose(self._transport)
            self.closer.start(code, reason)

    def abort(self) -> None:
        """Drop the connection without a close handshake (the peer stopped answering)."""
        self._transport.abort()

    def peer_closed(self, code: int | None) -> None:
        self._closer().peer_closed(code)

    def fail(self) -> None:
        """After a protocol violation: nothing follows our close frame, the write side ends."""
        self._closer().end_writing()

    def peer_gone(self) -> None:
        """The client half-closed without a close frame: end TCP after what is written."""
        self._closer().peer_gone()

    def _closer(self) -> ServerClose:
        if self.closer is None:
            self._release()
            self.closer = ServerClose(self._transport)
        return self.closer


async def ping_rounds(node: Node, interval_s: float) -> None:
    """WebSocket pings for every ``/ws`` connection of the node, from one task (Socket.IO has its
    own heartbeat). Every ``interval_s / 2`` a round looks at each connection once: one that
    sent anything since the last round (a pong included) is alive; a silent one gets a ping (the
    same prebuilt frame for all); one still silent a round after its ping is dropped. So an idle
    client is pinged every ``interval_s`` and a dead one dropped ``interval_s`` to 1.5 times
    ``interval_s`` after its last frame, with no timer per connection (aiohttp's own heartbeat
    keeps two and a task per ping). A ping goes out with the next frame the client is sent, or
    alone ``interval_s / 4`` (at most 1 s) after the round: a client that receives events costs
    no send of its own for it."""
    half = interval_s / 2
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(half)
        dropped = 0
        pinged: list[WsTransport] = []
        for session in list(node.sessions.values()):
            transport = session.transport
            if not isinstance(transport, WsTransport) or session.closed:
                continue
            if transport.seen:
                transport.seen = transport.pinged = False
            elif transport.pinged:
                transport.abort()
                dropped += 1
            else:
                transport.ping()
                pinged.append(transport)
        if pinged:
            loop.call_later(min(1.0, half / 2), _send_due_pings, pinged)
        if dropped:
            log.info("dropped %d connections that did not answer pings", dropped)


def _send_due_pings(transports: list[WsTransport]) -> None:
    for transport in transports:
        transport.send_due_ping()


def client_ip(request: web.Request, trusted_proxies: list[str]) -> str:
    """The peer address; ``X-Forwarded-For`` is believed only from a configured proxy."""
    forwarded = request.headers.get("X-Forwarded-For")
    return client_ip_of(request.remote or "unknown", forwarded, trusted_proxies)


def client_ip_of(peer: str, forwarded: str | None, trusted_proxies: list[str]) -> str:
    if not forwarded or not trusted_proxies or not _is_trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    # walk from the nearest hop; the first untrusted address is the client
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def from_trusted_proxy(request: web.Request, trusted_proxies: list[str]) -> bool:
    """Whether the TCP peer is a configured proxy (whose X-Forwarded-* headers are believed)."""
    return bool(trusted_proxies) and _is_trusted(request.remote or "", trusted_proxies)


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
    return origin_ok(request.headers.get("Origin"), allowed)


def origin_ok(origin: str | None, allowed: list[str]) -> bool:
    """No Origin header: not a browser, allowed. Otherwise it must be on the allow-list."""
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


def refuse_binary(node: Node, session: Session) -> None:
    """A binary frame: ``bad_request``; the connection stays open (both ways into /ws)."""
    if not session.closed:
        error = ProtocolError(ErrorCode.BAD_REQUEST, "binary frames are not supported")
        node.reply_error(session, error, None)


async def admit_ip(node: Node, request: web.Request) -> web.Response | None:
    """The cluster-wide per-IP cap (Redis): 429, or None with the connection counted (the
    caller then opens a session, or calls ``accounting.release_ip`` if it cannot)."""
    ip = client_ip(request, node.settings.trusted_proxies)
    if await node.accounting.admit_ip(ip):
        return None
    node.metrics.rejected_upgrades.labels("ip_limit").inc()
    return web.json_response({"error": "ip_limit"}, status=429)


async def handle_ws(request: web.Request, node: Node) -> web.StreamResponse:
    """``/ws`` upgraded by aiohttp's route (after other requests on a kept-alive connection, or
    handed over by the fast path to be refused): once accepted, the connection is served by the
    fast path's ``WsConnection`` from the 101 on (gateway.wstakeover), frames and all."""
    from gateway.wsconn import WsConnection  # (gateway.wsconn imports this module)

    refused = refuse(node, request) or await admit_ip(node, request)
    if refused is not None:
        return refused
    if not web.WebSocketResponse().can_prepare(request).ok:
        await web.WebSocketResponse().prepare(request)  # raises aiohttp's 400, which says why
    conn = WsConnection(node, asyncio.get_running_loop())
    early = take_over(request, conn)
    ip = client_ip(request, node.settings.trusted_proxies)
    conn.accept(b"", request.query.get("token"), ip)
    if early:
        conn.data_received(early)
    await conn.wait_closed()
    return Upgraded()
