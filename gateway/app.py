"""The aiohttp application: routes, typed app state, startup and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import api, dashboard, public
from gateway.backend.base import Backend
from gateway.backend.factory import make_backend
from gateway.closecodes import CloseCode
from gateway.config import Settings
from gateway.djangoapi import DjangoClient
from gateway.metrics import Metrics
from gateway.node import Node
from gateway.presence_feed import embedded_feed
from gateway.ws import handle_ws, ping_rounds
from gateway.wsframes import CLOSE_TIMEOUT_S

log = logging.getLogger("gateway.app")

NODE = web.AppKey("node", Node)
SETTINGS = web.AppKey("settings", Settings)
DASHBOARD_TOKEN = web.AppKey("dashboard_token", str)  # "" = dashboard disabled

STATIC_DIR = Path(str(resources.files("gateway").joinpath("static")))


def resolve_dashboard_token(settings: Settings) -> str:
    if settings.dashboard_token is not None:
        return settings.dashboard_token.get_secret_value()
    if settings.embedded:
        token = secrets.token_urlsafe(24)
        # the one secret ever printed: a local, embedded node needs a way in
        log.warning("dashboard token: %s", token)
        return token
    log.warning(
        "GATEWAY_DASHBOARD_TOKEN is not set: the dashboard answers 404 "
        "(replicas on Redis must share one token; set it on every node)"
    )
    return ""


def create_app(settings: Settings, backend: Backend | None = None) -> web.Application:
    app = web.Application(client_max_size=max(settings.max_message_bytes, 1024 * 1024))
    metrics = Metrics()
    node = Node(
        settings, backend or make_backend(settings), DjangoClient(settings, metrics), metrics
    )
    app[NODE] = node
    app[SETTINGS] = settings
    app[DASHBOARD_TOKEN] = resolve_dashboard_token(settings)

    async def ws(request: web.Request) -> web.StreamResponse:
        return await handle_ws(request, node)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": node.node_id})

    async def readyz(request: web.Request) -> web.Response:
        ready = await node.ready()
        body = {"ready": ready, "draining": node.draining, "backend": node.backend.name}
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_view(request: web.Request) -> web.Response:
        node.metrics.pubsub_reconnects.set(getattr(node.backend, "pubsub_reconnects", 0))
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def publish(request: web.Request) -> web.Response:
        return await api.publish(request, node)

    async def disconnect(request: web.Request) -> web.Response:
        return await api.disconnect(request, node)

    async def online(request: web.Request) -> web.Response:
        return await api.online(request, node)

    async def receipts(request: web.Request) -> web.Response:
        return await api.receipts(request, node)

    app.router.add_get("/ws", ws)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_post("/api/publish", publish)
    app.router.add_post("/api/disconnect", disconnect)
    app.router.add_get("/api/online", online)
    app.router.add_get("/api/receipts/{event_id}", receipts)
    public.add_routes(app, STATIC_DIR)  # /client.js, /client.d.ts, /asyncapi.json (any origin)
    dashboard.add_routes(app, node, lambda: app[DASHBOARD_TOKEN])
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, append_version=False)
    _add_socketio(app, node)
    app.middlewares.append(cors_middleware(settings.cors_origins))
    app.cleanup_ctx.append(_lifecycle(node))
    app.cleanup_ctx.append(_ping_rounds(node))
    if settings.embedded:
        app.cleanup_ctx.append(_presence_feed(node))

    async def close_sockets(app: web.Application) -> None:
        # 1001 to every client, then a bounded wait for their answers (a client that does not
        # answer is cut off after CLOSE_TIMEOUT_S) so that each leaves Redis before the backend
        # closes. aiohttp waits for its own WebSocket handlers; the /ws fast path has none.
        node.close_all(CloseCode.GOING_AWAY, "server shutting down")
        await node.wait_closed(CLOSE_TIMEOUT_S + 1)

    app.on_shutdown.append(close_sockets)
    return app


def _add_socketio(app: web.Application, node: Node) -> None:
    try:
        from gateway.socketio.routes import add_routes
    except ImportError:  # transport not installed in this build
        return
    add_routes(app, node)


def _ping_rounds(node: Node):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(ping_rounds(node, node.settings.ws_heartbeat_s), name="pings")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def _presence_feed(node: Node):  # type: ignore[no-untyped-def]
    """Embedded mode: the node posts online/offline changes to Django itself (no worker)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        feed = embedded_feed(node.settings, node.accounting.store)
        task = asyncio.create_task(feed, name="presence feed") if feed is not None else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx


def _lifecycle(node: Node):  # type: ignore[no-untyped-def]
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        log.log(
            logging.INFO if node.backend_ok else logging.WARNING,
            "node %s %s (backend %s, Django %s)",
            node.node_id,
            "ready"
            if node.backend_ok
            else "started, NOT ready: /readyz answers 503 until its backend answers",
            node.backend.name,
            node.settings.django_base_url,
        )
        yield
        await node.stop()

    return ctx


def cors_middleware(origins: list[str]):  # type: ignore[no-untyped-def]
    """CORS for the HTTP API (publish, dashboard JSON) from configured origins only."""
    allowed = {o.rstrip("/") for o in origins}

    @web.middleware
    async def middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
        origin = request.headers.get("Origin", "").rstrip("/")
        ok = bool(origin) and (origin in allowed or "*" in allowed)
        is_api = request.path.startswith(("/api/", "/dashboard/"))
        if request.method == "OPTIONS" and ok and is_api:
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": "Authorization, Content-Type",
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                },
            )
        response = await handler(request)
        if ok and is_api:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        return response

    return middleware
