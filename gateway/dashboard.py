"""The cluster-wide dashboard: JSON endpoints, the HTML page and a live WebSocket feed.

Every answer comes from the backend (Redis: node snapshots, bounded indexes, and for the list of
clients the nodes' own answers over pub/sub; never a scan), so any node shows the whole cluster.
Access needs the dashboard token: Bearer, or HTTP Basic with the token as password for GET only
(a browser can log in; another site cannot make it POST).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import WSMsgType, web

from gateway import dashboard_presence as presence
from gateway.backend.base import Page
from gateway.backend.leases import LeaseBusy
from gateway.events import now_ms
from gateway.httpauth import basic_password, bearer, matches, unauthorized
from gateway.node import BACKEND_ERRORS, Node
from gateway.ws import from_trusted_proxy

log = logging.getLogger("gateway.dashboard")

REALM = "gateway dashboard"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
FEED_STATS_S = 2.0
FEED_EVENTS_S = 1.0
FEED_REMEMBERED = 1000  # events the feed remembers having sent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text="limit must be an integer") from None
    return max(1, min(value, MAX_LIMIT))


def _page(key: str, page: Page) -> dict[str, Any]:
    out: dict[str, Any] = {key: page.items, "total": page.total}
    if page.next_cursor is not None:
        out["nextCursor"] = page.next_cursor
    return out


async def cluster_stats(node: Node) -> dict[str, Any]:
    now = now_ms()
    nodes = await node.backend.nodes()
    own = node.stats().as_dict()  # this node's numbers are fresher than its last heartbeat
    live = [n for n in nodes if n.get("alive") and n.get("node") != node.node_id]
    live.append({**own, "alive": True, "lastSeenMs": now})
    by_role: dict[str, int] = {}
    total = 0
    age_sum = 0.0
    for snap in live:
        total += int(snap["connections"])
        for role, count in snap.get("byRole", {}).items():
            by_role[role] = by_role.get(role, 0) + int(count)
        elapsed = max(0.0, (now - int(snap["lastSeenMs"])) / 1000)
        age_sum += float(snap.get("connectionSecondsSum", 0)) + elapsed * int(snap["connections"])
    series = await node.backend.events_per_minute(now)
    fraction = (now % 60000) / 60000
    per_minute = series[-1] + math.ceil(series[-2] * (1 - fraction))
    online_users = await presence.online_count(node)
    rooms = await node.backend.list_rooms(1, None)
    return {
        "connections": {"total": total, "byRole": by_role},
        "nodes": [
            {
                "node": s["node"],
                "connections": s["connections"],
                "rssBytes": s["rssBytes"],
                "uptimeSeconds": s["uptimeSeconds"],
                "rooms": s.get("rooms", 0),
                "framesIn": s.get("framesIn", 0),
                "framesOut": s.get("framesOut", 0),
                "healthy": bool(s.get("ready", True)),
                "lastSeenMs": s["lastSeenMs"],
            }
            for s in sorted(live, key=lambda s: str(s["node"]))
        ],
        "rooms": rooms.total,
        "eventsPerMinute": per_minute,
        "eventsPerMinuteSeries": series,
        "avgConnectionSeconds": round(age_sum / total, 2) if total else 0.0,
        "onlineUsers": online_users,
    }


async def api_status(node: Node) -> dict[str, Any]:
    nodes = await node.backend.nodes()
    per_node = {n["node"]: n.get("django", {}) for n in nodes if n.get("alive")}
    per_node[node.node_id] = node.django.probe.as_dict()
    return {"django": node.django.probe.as_dict(), "nodes": per_node}


def feed_origin_allowed(request: web.Request, allowed: list[str], trusted: list[str]) -> bool:
    """The feed rides on the browser's Basic login, which a foreign page's WebSocket would carry
    too (cross-site WebSocket hijacking): only the dashboard's own origin (scheme, host and
    port, as the request reached us) or an allowed origin may open it. No Origin header: not a
    browser. Another scheme or port on the same host is another origin (another application)."""
    origin = request.headers.get("Origin")
    if origin is None or origin.rstrip("/") in {a.rstrip("/") for a in allowed}:
        return True
    own = _origin_key(f"{_scheme_of(request, trusted)}://{request.host}")
    return own is not None and _origin_key(origin) == own


def _scheme_of(request: web.Request, trusted: list[str]) -> str:
    """``http``, or what a trusted proxy that terminates TLS says in X-Forwarded-Proto."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    if forwarded in ("http", "https") and from_trusted_proxy(request, trusted):
        return forwarded
    return request.scheme


def _origin_key(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, the default port filled in; None if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme]


_DEFAULT_PORTS = {"http": 80, "https": 443}


def add_routes(app: web.Application, node: Node, token_of: Callable[[], str]) -> None:
    def guarded(handler: Handler, *, post: bool = False) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            token = token_of()
            if not token:
                raise web.HTTPNotFound(text="dashboard disabled: set GATEWAY_DASHBOARD_TOKEN")
            if matches(bearer(request), token):
                return await handler(request)
            if not post and matches(basic_password(request), token):
                return await handler(request)
            if post:
                return unauthorized("POST needs 'Authorization: Bearer <dashboard token>'")
            return unauthorized("dashboard token required", basic_realm=REALM)

        return wrapper

    async def backend_call(coro: Awaitable[Any]) -> Any:
        try:
            return await coro
        except BACKEND_ERRORS as exc:
            log.warning("dashboard query failed: %s", exc)
            raise web.HTTPServiceUnavailable(
                text='{"error":"unavailable","message":"backend unavailable"}',
                content_type="application/json",
            ) from None

    async def index(request: web.Request) -> web.StreamResponse:
        if "text/html" in request.headers.get("Accept", ""):
            from gateway.app import STATIC_DIR

            return web.FileResponse(
                STATIC_DIR / "dashboard.html",
                headers={
                    "Cache-Control": "no-store",
                    "Content-Type": "text/html; charset=utf-8",
                    "Content-Security-Policy": CSP,
                    "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer",
                },
            )
        stats = await backend_call(cluster_stats(node))
        return _json({**stats, "django": node.django.probe.as_dict()})

    async def stats(request: web.Request) -> web.StreamResponse:
        return _json(await backend_call(cluster_stats(node)))

    async def clients(request: web.Request) -> web.StreamResponse:
        page = await backend_call(
            node.backend.list_clients(_limit(request), request.query.get("cursor"))
        )
        return _json(_page("clients", page))

    async def rooms(request: web.Request) -> web.StreamResponse:
        page = await backend_call(
            node.backend.list_rooms(_limit(request), request.query.get("cursor"))
        )
        return _json(_page("rooms", page))

    async def events(request: web.Request) -> web.StreamResponse:
        page = await backend_call(
            node.backend.recent_events(_limit(request), request.query.get("cursor"))
        )
        items = await backend_call(presence.with_receipts(node, page.items))
        return _json(_page("events", Page(items, page.total, page.next_cursor)))

    async def online(request: web.Request) -> web.StreamResponse:
        cursor = request.query.get("cursor")
        return _json(await backend_call(presence.online_page(node, _limit(request), cursor)))

    async def status(request: web.Request) -> web.StreamResponse:
        return _json(await backend_call(api_status(node)))

    async def cleanup(request: web.Request) -> web.StreamResponse:
        try:
            removed = await backend_call(node.backend.cleanup())
        except LeaseBusy:  # the worker's janitor is sweeping, for longer than we wait
            return _json({"error": "busy", "message": "the janitor is sweeping; retry"}, 503)
        log.info("dashboard cleanup removed %s", removed)
        return _json({"removed": removed})

    async def feed(request: web.Request) -> web.StreamResponse:
        settings = node.settings
        if not feed_origin_allowed(request, settings.allowed_origins, settings.trusted_proxies):
            return _json({"error": "origin not allowed"}, status=403)
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=4096)
        await ws.prepare(request)
        pusher = asyncio.create_task(_push_feed(ws, node))
        try:
            async for msg in ws:
                if msg.type is WSMsgType.ERROR:
                    break
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher
        return ws

    app.router.add_get("/dashboard", guarded(index))
    app.router.add_get("/dashboard/", guarded(index))
    app.router.add_get("/dashboard/stats", guarded(stats))
    app.router.add_get("/dashboard/clients", guarded(clients))
    app.router.add_get("/dashboard/rooms", guarded(rooms))
    app.router.add_get("/dashboard/events", guarded(events))
    app.router.add_get("/dashboard/api-status", guarded(status))
    app.router.add_get("/dashboard/online", guarded(online))
    app.router.add_get("/dashboard/feed", guarded(feed))
    app.router.add_post("/dashboard/cleanup", guarded(cleanup, post=True))


async def _push_feed(ws: web.WebSocketResponse, node: Node) -> None:
    """Stats every 2 s and each new event of the cluster's event log, newest last."""
    sent: dict[tuple[str, str], None] = {}  # (id, room) of the events sent lately, oldest first
    next_stats = 0.0
    tracker = presence.ReceiptTracker()
    while not ws.closed:
        try:
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + FEED_STATS_S
                stats = await cluster_stats(node)
                await ws.send_str(orjson.dumps({"type": "stats", "data": stats}).decode())
            page = await node.backend.recent_events(100, None)
            # Newest first, by publish time; each process flushes its summaries once a second
            # (backend/event_log.py), so an event can land below one sent already: what is new
            # is what was not sent, not what is newer than the last one sent.
            fresh = [i for i in page.items if (str(i["id"]), str(i["room"])) not in sent]
            for item in reversed(fresh):
                sent[(str(item["id"]), str(item["room"]))] = None
            for key in list(itertools.islice(sent, max(0, len(sent) - FEED_REMEMBERED))):
                del sent[key]
            fresh = await presence.with_receipts(node, fresh)
            for update in await tracker.changes(node):  # receipts of events already sent
                await ws.send_str(orjson.dumps({"type": "receipts", "data": update}).decode())
            tracker.track(list(reversed(fresh)))
            for item in reversed(fresh):
                await ws.send_str(orjson.dumps({"type": "event", "data": item}).decode())
        except BACKEND_ERRORS as exc:
            log.debug("dashboard feed: backend error %s", exc)
        except (ConnectionError, RuntimeError):
            return
        await asyncio.sleep(FEED_EVENTS_S)
