"""The Socket.IO sessions a node owns, and what its transports (``polling``, ``transport``)
share: making a session, finding the node that owns a session id, CORS for long-polling.

No sticky sessions: a session lives on the node that answered its handshake, and its Engine.IO
sid names that node (``<random>.<base64url(node id)>``), so any node that receives a request of
the session knows where to forward it (``forwarding``) without asking Redis.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.socketio.codec import HandshakeError
from gateway.socketio.engine import Carrier, EngineSession, SocketIOOptions

if TYPE_CHECKING:
    from gateway.socketio.forwarding import Forwarder

log = logging.getLogger("gateway.socketio")

AUTH_BACKOFF_S = 30.0  # how long a client address that met auth_unavailable is turned away
AUTH_BACKOFF_MAX = 10_000  # addresses remembered at most
TRY_AGAIN_LATER = 1013

Opener = Callable[[web.Request, EngineSession], None]
# a new session's refusal, or None: the client's address is then counted (the cluster-wide
# per-IP cap asks Redis), and the caller opens the session
Refuser = Callable[[web.Request], Awaitable["web.StreamResponse | None"]]


def node_tag(node_id: str) -> str:
    return base64.urlsafe_b64encode(node_id.encode()).decode().rstrip("=")


def owner_of(sid: str) -> str | None:
    """The node id a session id names, or None for a malformed one."""
    _, dot, tag = sid.rpartition(".")
    if not dot or not tag or len(sid) > 400:
        return None
    try:
        return base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


class Registry:
    """The node's Engine.IO sessions by sid. A long-polling session that has closed stays a
    little longer (``tombstone_s``), so that the next long-poll still takes its last packets
    (the CLOSE, a DISCONNECT, a CONNECT_ERROR)."""

    def __init__(self, node_id: str, options: SocketIOOptions) -> None:
        self.node_id = node_id
        self.options = options
        self._suffix = "." + node_tag(node_id)
        self.sessions: dict[str, EngineSession] = {}
        self._unavailable: dict[str, float] = {}  # client address -> when auth_unavailable was met

    def new_sid(self) -> str:
        return secrets.token_urlsafe(15) + self._suffix

    def is_local(self, sid: str) -> bool:
        return sid.endswith(self._suffix)

    def get(self, sid: str) -> EngineSession | None:
        return self.sessions.get(sid)

    def add(self, engine: EngineSession) -> None:
        self.sessions[engine.sid] = engine

    def ended(self, engine: EngineSession, code: int) -> None:
        if engine.carrier is None:  # long-polling: its last packets wait for the next poll
            asyncio.get_running_loop().call_later(self.options.tombstone_s, self._forget, engine)
        else:
            self._forget(engine)

    def _forget(self, engine: EngineSession) -> None:
        if self.sessions.get(engine.sid) is engine:
            del self.sessions[engine.sid]

    # --- backoff after auth_unavailable ---------------------------------------------------------
    def note_auth_unavailable(self, ip: str) -> None:
        if len(self._unavailable) >= AUTH_BACKOFF_MAX:
            self._unavailable.pop(next(iter(self._unavailable)))
        self._unavailable.pop(ip, None)
        self._unavailable[ip] = time.monotonic()

    def auth_unavailable_since(self, ip: str) -> float | None:
        """When ``ip`` last met auth_unavailable (monotonic), if within ``AUTH_BACKOFF_S``."""
        noted = self._unavailable.get(ip)
        if noted is None:
            return None
        if time.monotonic() - noted > AUTH_BACKOFF_S:
            del self._unavailable[ip]
            return None
        return noted


@dataclass(slots=True)
class Server:
    """What the Socket.IO transports of one node share."""

    registry: Registry
    options: SocketIOOptions
    open_session: Opener  # makes the core session and the SocketLayer of a new engine
    refuse: Refuser  # for a new session: Origin, connection limits, draining...
    origins: list[str]
    draining: Callable[[], bool] = lambda: False
    forwarder: Forwarder | None = None

    def new_engine(self, request: web.Request, ip: str, carrier: Carrier | None = None) -> Any:
        engine = EngineSession(self.registry.new_sid(), self.options, self._ended, carrier)
        engine.ip = ip
        self.registry.add(engine)
        self.open_session(request, engine)
        return engine

    def _ended(self, engine: EngineSession, code: int) -> None:
        self.registry.ended(engine, code)
        socket = engine.socket
        if socket is None:
            return
        if code == TRY_AGAIN_LATER and not socket.connected:
            self.registry.note_auth_unavailable(engine.ip)
        socket.ended(code)

    def origin_refused(self, request: web.Request) -> web.Response | None:
        origin = request.headers.get("Origin")
        if origin is None or origin_allowed(origin, self.origins):
            return None
        return web.json_response({"error": "origin not allowed"}, status=403)


def origin_allowed(origin: str, allowed: list[str]) -> bool:
    if not allowed:
        return True
    return origin.rstrip("/") in {a.rstrip("/") for a in allowed} or "*" in allowed


def cors_headers(request: web.Request, allowed: list[str]) -> dict[str, str]:
    """Long-polling from a page of another origin is XHR/fetch: the browser needs these on
    every answer (WebSockets need none). Only for an Origin on the allow-list (or any, when
    ``GATEWAY_ALLOWED_ORIGINS`` is unset); credentials are allowed, as with Socket.IO's cors."""
    origin = request.headers.get("Origin")
    if origin is None or not origin_allowed(origin, allowed):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def error_response(error: HandshakeError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=error.status,
        body=error.body(),
        content_type="application/json",
        headers=headers,
    )
