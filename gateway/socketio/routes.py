"""Wiring of the Socket.IO transports to the node: ``add_routes(app, node)``.

``NodePort`` adapts a ``Node`` session to the ``SessionPort`` a Socket.IO session needs: client
events go through ``Node.handle`` exactly like ``/ws`` frames (same rate limit, validation,
error order and replies), so the two protocols cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from gateway.backend.base import Position
from gateway.closecodes import ErrorCode
from gateway.node import Node
from gateway.protocol import Frame, FrameId, ProtocolError
from gateway.session import Session
from gateway.socketio import polling, transport
from gateway.socketio.codec import RequestKind, classify_request
from gateway.socketio.engine import EngineSession, SocketIOOptions
from gateway.socketio.forwarding import Forwarder
from gateway.socketio.namespace import SocketLayer
from gateway.socketio.recovery import RecordStore, make_store
from gateway.socketio.sessions import Registry, Server, cors_headers, error_response
from gateway.ws import admit_ip, client_ip, refuse

log = logging.getLogger("gateway.socketio")

PATHS = ("/socket.io/", "/socket.io")  # socket.io-client asks for the first
SERVER = web.AppKey("socketio", Server)


class NodePort:
    __slots__ = ("node", "session")

    def __init__(self, node: Node, session: Session) -> None:
        self.node = node
        self.session = session

    @property
    def connection_id(self) -> str:
        return self.session.id

    @property
    def user_id(self) -> str | None:
        identity = self.session.identity
        return identity.user_id if identity is not None else None

    async def handle_event(self, name: str, data: Any, frame_id: FrameId | None) -> None:
        # Re-framed as a /ws frame: client frames are few and small (rate-limited), and this
        # keeps one code path for validation. The hot path, fan-out, never comes here.
        frame: dict[str, Any] = {"event": name, "data": data}
        if frame_id is not None:
            frame["id"] = frame_id
        await self.node.handle(self.session, orjson.dumps(frame))

    async def handle_invalid(self, message: str, ack_id: int | None) -> None:
        if not self.session.bucket.take():
            # like a /ws frame over the limit: a strike, `rate_limited`, 4429 if it goes on
            self.node.rate_limited(self.session)
            return
        self.node.reply_error(self.session, ProtocolError(ErrorCode.BAD_REQUEST, message), ack_id)

    async def join(self, room: str, since: Position | None, marker: str) -> None:
        """The node's own join (with ``since``: its race-free recovery), answered to
        ``marker``; not counted by the rate limit (the client did not ask for it)."""
        data: dict[str, Any] = {"room": room}
        if since is not None:
            data["since"] = {"offset": since.offset, "epoch": since.epoch}
        try:
            await self.node.dispatch(self.session, Frame(event="join_room", data=data, id=marker))
        except ProtocolError as exc:
            self.node.reply_error(self.session, exc, marker)

    def flush(self) -> None:
        session = self.session
        while session.queued_bytes and not session.closed:
            before = session.queued_bytes
            session.flush()
            if session.queued_bytes >= before:
                break

    async def closed(self, code: int) -> None:
        await self.node.close_session(self.session, code)


def _open(node: Node, store: RecordStore, request: web.Request, engine: EngineSession) -> None:
    session = node.open_session(engine, engine.ip)
    SocketLayer(engine, NodePort(node, session), store)


async def _refuse(
    node: Node, registry: Registry, request: web.Request
) -> web.StreamResponse | None:
    """A new session's refusals: those of /ws (Origin, draining, connection limits, the
    cluster-wide per-IP cap, which counts the address when it admits it), and a client address
    that met ``auth_unavailable`` while the node's circuit to Django is open (its
    authentication would fail at once): socket.io-client's reconnection then fails at the
    handshake, and its backoff grows."""
    return (
        refuse(node, request)
        or _auth_backoff(node, registry, request)
        or (await admit_ip(node, request))
    )


def _auth_backoff(node: Node, registry: Registry, request: web.Request) -> web.Response | None:
    ip = client_ip(request, node.settings.trusted_proxies)
    if registry.auth_unavailable_since(ip) is None:
        return None
    breaker = node.django.breaker
    opened = breaker.opened_at
    if opened is None or time.monotonic() - opened >= breaker.reset_s:
        return None  # Django may answer again: let the client try
    node.metrics.rejected_upgrades.labels("auth_unavailable").inc()
    return web.json_response(
        {"code": 3, "message": "authentication is unavailable: retry later"}, status=503
    )


async def _handle(server: Server, node: Node, request: web.Request) -> web.StreamResponse:
    if request.method == "OPTIONS":
        return polling.preflight(request, server)
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    kind = classify_request(request.query, method=request.method, websocket_upgrade=upgrade)
    if not isinstance(kind, RequestKind):
        return error_response(kind, cors_headers(request, server.origins))
    sid = request.query.get("sid", "")
    if kind in (RequestKind.POLL_GET, RequestKind.POLL_POST):
        refused = server.origin_refused(request)
        if refused is not None:
            return refused
    ip = client_ip(request, node.settings.trusted_proxies)
    if kind is RequestKind.POLL_OPEN:
        return await polling.open_session(request, server, ip)
    if kind is RequestKind.POLL_GET:
        return await polling.long_poll(request, server, sid)
    if kind is RequestKind.POLL_POST:
        return await polling.post(request, server, sid)
    if kind is RequestKind.WS_OPEN:
        return await transport.open_websocket(request, server, ip)
    return await transport.upgrade(request, server, sid)


def add_routes(app: web.Application, node: Node) -> None:
    settings = node.settings
    options = SocketIOOptions.from_settings(settings)
    registry = Registry(node.node_id, options)
    store = make_store(node.backend, settings.history_ttl_seconds)
    server = Server(
        registry,
        options,
        open_session=partial(_open, node, store),
        refuse=partial(_refuse, node, registry),
        origins=settings.allowed_origins,
        draining=lambda: node.draining,
    )
    if hasattr(node.backend, "listen"):  # Redis: sessions of other nodes are forwarded
        server.forwarder = Forwarder(
            node.backend,
            node.node_id,
            registry,
            options,
            probe_s=settings.pubsub_probe_s,
            draining=lambda: node.draining,
        )
    app[SERVER] = server
    handler = partial(_handle, server, node)
    for path in PATHS:
        app.router.add_route("*", path, handler)
    tasks: list[asyncio.Task[None]] = []

    async def start(app: web.Application) -> None:
        if server.forwarder is not None:
            await server.forwarder.start()
        tasks.append(asyncio.create_task(_keep_records(registry, store), name="socket.io records"))

    async def stop(app: web.Application) -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if server.forwarder is not None:
            await server.forwarder.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)


async def _keep_records(registry: Registry, store: RecordStore) -> None:
    """Live sessions' recovery records outlive them by the history window: refreshed here."""
    while True:
        await asyncio.sleep(store.ttl_s / 3)
        pids = [
            engine.delivery.tracker.pid
            for engine in list(registry.sessions.values())
            if engine.delivery.tracker is not None and not engine.closed
        ]
        try:
            await store.touch(pids)
        except Exception as exc:  # next round; a record outlives a missed round
            log.warning("socket.io recovery records not refreshed: %s", exc)
