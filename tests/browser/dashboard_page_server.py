"""Development server for the dashboard front end: the real static files, fake-but-moving data.

    python tests/browser/dashboard_page_server.py [--port 8765] [--token dev-token] [--no-feed]
    python tests/browser/dashboard_page_server.py --self-test [--screenshot /tmp/dashboard.png]

It serves ``gateway/static/`` at ``/static/`` and the page at ``GET /dashboard`` the way CONTRACT
section 4 describes the real node: HTTP Basic (any user, password = token) or Bearer for GET, Bearer
only for ``POST /dashboard/cleanup``, JSON for ``stats``, ``clients``, ``rooms``, ``events`` and
``api-status``, and the ``/dashboard/feed`` WebSocket pushing ``stats`` every 2 s and one ``event``
per published event. The data comes from ``FakeCluster``: three live nodes and one dead one, a few
hundred clients that connect and leave, and a steady trickle of events. ``--no-feed`` answers 404 on
the feed so the page's polling fallback can be watched.

``--self-test`` drives the page in headless Chromium (Python Playwright, ``/usr/bin/chromium``) and
exits non-zero when the page misbehaves; it leaves screenshots in /tmp for a human to look at.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import itertools
import json
import math
import random
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

STATIC_DIR = Path(__file__).resolve().parents[2] / "gateway" / "static"
PAGE = STATIC_DIR / "dashboard.html"
REALM = "gateway dashboard"
STATS_INTERVAL_S = 2.0
SIMULATION_TICK_S = 0.5
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
NODE_LEASE_MS = 15_000
# The same policy a production node should send with the page: the page needs nothing else.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

ROLES = ("cliente", "proveedor", "admin")
ROLE_WEIGHTS = (70, 25, 5)
EVENT_TYPES = (
    "reservation_created",
    "reservation_accepted",
    "payment_created",
    "comment_created",
    "order_shipped",
)
SOURCES = ("client", "publisher", "api", "ingest")
HOSTILE_TEXT = '<img src=x onerror="window.__xss=1">'


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class FakeNode:
    node: str
    started_ms: int
    rss_bytes: int
    last_seen_ms: int
    alive: bool = True
    frames_in: int = 0
    frames_out: int = 0


@dataclass
class FakeClient:
    connection_id: str
    user_id: str
    role: str
    node: str
    rooms: list[str]
    connected_at_ms: int


@dataclass
class FakeCluster:
    """A cluster's worth of state that changes a little every tick."""

    seed: int = 7
    hostile: bool = False
    feed_enabled: bool = True
    churn: bool = True
    nodes: dict[str, FakeNode] = field(default_factory=dict)
    clients: dict[str, FakeClient] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=1000))
    minute_counts: dict[int, int] = field(default_factory=dict)
    subscribers: set[asyncio.Queue[dict[str, Any]]] = field(default_factory=set)
    django: dict[str, Any] = field(default_factory=dict)
    cleanup_schemes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._ids = itertools.count(1)
        now = now_ms()
        for name, age_s in (
            ("gw-a-7f3c", 86_400 * 3 + 5_000),
            ("gw-b-19d2", 9_000),
            ("gw-c-4e81", 1_500),
        ):
            self.nodes[name] = FakeNode(name, now - age_s * 1000, self._rss(), now)
        dead = FakeNode("gw-d-0b77", now - 7_200_000, self._rss(), now - 47_000, alive=False)
        self.nodes[dead.node] = dead
        for _ in range(236):
            self.connect()
        for _ in range(9):
            self.connect(node=dead.node)
        if self.hostile:
            self.connect(user_id=HOSTILE_TEXT)
        self.django = {"reachable": True, "latencyMs": 23.4, "checkedAt": now - 4_000}
        current = now // 60_000
        for ago in range(1, 60):
            wave = 110 + 45 * math.sin(ago / 7) + 25 * math.sin(ago / 2.3)
            spike = 160 if ago in (17, 18) else 0
            self.minute_counts[current - ago] = max(
                0, int(wave + spike + self.rng.randint(-12, 12))
            )

    def _rss(self) -> int:
        return self.rng.randint(70, 140) * 1024 * 1024

    def _live_nodes(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.alive]

    def connect(self, node: str | None = None, user_id: str | None = None) -> FakeClient:
        role = self.rng.choices(ROLES, ROLE_WEIGHTS)[0]
        uid = user_id or str(self.rng.randint(1, 400))
        rooms = {"cliente": [f"cliente_{uid}", "all_clientes"]}.get(
            role,
            [f"proveedor_{uid}", "all_proveedores"] if role == "proveedor" else ["admin_dashboard"],
        )
        if self.rng.random() < 0.6:
            rooms.append(f"service_{self.rng.randint(1, 40)}")
        if self.rng.random() < 0.3:
            rooms.append(f"location_{self.rng.randint(1, 12)}")
        client = FakeClient(
            connection_id=f"c{next(self._ids):06d}-{self.rng.getrandbits(24):06x}",
            user_id=uid,
            role=role,
            node=node or self.rng.choice(self._live_nodes()),
            rooms=rooms,
            connected_at_ms=now_ms() - self.rng.randint(5, 3 * 3600) * 1000,
        )
        self.clients[client.connection_id] = client
        return client

    def publish(
        self,
        room: str,
        type_: str,
        source: str = "client",
        event_id: str | None = None,
        ts: int | None = None,
    ) -> dict[str, Any]:
        event = {
            "room": room,
            "type": type_,
            "id": event_id or f"evt-{next(self._ids):07d}",
            "ts": ts or now_ms(),
            "source": source,
        }
        self.events.appendleft(event)
        minute = event["ts"] // 60_000
        self.minute_counts[minute] = self.minute_counts.get(minute, 0) + 1
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)  # a slow feed loses events, as the real one is rate limited
        return event

    def step(self) -> None:
        """One simulation tick: heartbeats, memory drift, churn and a few events."""
        now = now_ms()
        for node in self.nodes.values():
            if node.alive:
                node.last_seen_ms = now
                node.rss_bytes = max(40 << 20, node.rss_bytes + self.rng.randint(-2, 2) * 262_144)
                node.frames_in += self.rng.randint(5, 40)
                node.frames_out += self.rng.randint(20, 120)
        if self.churn:
            for _ in range(self.rng.randint(0, 2)):
                self.connect()
            live = [c for c in self.clients.values() if self.nodes[c.node].alive]
            for client in self.rng.sample(live, k=min(len(live), self.rng.randint(0, 2))):
                if client.user_id != HOSTILE_TEXT:
                    del self.clients[client.connection_id]
            for _ in range(self.rng.choice((0, 1, 1, 1, 2))):
                client = self.rng.choice(list(self.clients.values()))
                self.publish(
                    self.rng.choice(client.rooms),
                    HOSTILE_TEXT
                    if self.hostile and self.rng.random() < 0.02
                    else self.rng.choice(EVENT_TYPES),
                    self.rng.choice(SOURCES),
                )
        if now - self.django["checkedAt"] >= 15_000:
            self.django = {
                **self.django,
                "latencyMs": round(self.rng.uniform(12, 60), 1)
                if self.django["reachable"]
                else None,
                "checkedAt": now,
            }

    # --- answers, shaped as in CONTRACT section 4 --------------------------------------------

    def room_members(self) -> dict[str, int]:
        members: dict[str, set[str]] = {}
        for client in self.clients.values():
            for room in client.rooms:
                members.setdefault(room, set()).add(client.user_id)
        return {room: len(users) for room, users in members.items()}

    def stats(self) -> dict[str, Any]:
        now = now_ms()
        by_role = dict.fromkeys(ROLES, 0)
        per_node: dict[str, list[FakeClient]] = {name: [] for name in self.nodes}
        for client in self.clients.values():
            by_role[client.role] = by_role.get(client.role, 0) + 1
            per_node.setdefault(client.node, []).append(client)
        current = now // 60_000
        series = [self.minute_counts.get(current - ago, 0) for ago in range(59, -1, -1)]
        ages = [(now - c.connected_at_ms) / 1000 for c in self.clients.values()]
        nodes = [
            {
                "node": node.node,
                "connections": len(per_node[node.node]),
                "rssBytes": node.rss_bytes,
                "uptimeSeconds": (now - node.started_ms) // 1000,
                "healthy": node.alive and now - node.last_seen_ms < NODE_LEASE_MS,
                "lastSeenMs": node.last_seen_ms,
                "framesIn": node.frames_in,
                "framesOut": node.frames_out,
                "rooms": len({room for c in per_node[node.node] for room in c.rooms}),
            }
            for node in self.nodes.values()
        ]
        return {
            "connections": {"total": len(self.clients), "byRole": by_role},
            "nodes": nodes,
            "rooms": len(self.room_members()),
            "eventsPerMinute": series[-2],
            "eventsPerMinuteSeries": series,
            "avgConnectionSeconds": round(sum(ages) / len(ages), 1) if ages else 0.0,
        }

    def api_status(self) -> dict[str, Any]:
        probes = {
            name: {
                **self.django,
                "latencyMs": None
                if self.django["latencyMs"] is None
                else round(self.django["latencyMs"] + i * 3.1, 1),
            }
            for i, name in enumerate(self._live_nodes())
        }
        return {"django": dict(self.django), "nodes": probes}

    def client_list(self) -> list[dict[str, Any]]:
        return [
            {
                "connectionId": c.connection_id,
                "userId": c.user_id,
                "role": c.role,
                "node": c.node,
                "rooms": list(c.rooms),
                "connectedAt": c.connected_at_ms,
            }
            for c in sorted(self.clients.values(), key=lambda c: c.connection_id)
        ]

    def room_list(self) -> list[dict[str, Any]]:
        return [{"room": room, "members": n} for room, n in sorted(self.room_members().items())]

    def cleanup(self) -> dict[str, Any]:
        dead = {name for name, node in self.nodes.items() if not node.alive}
        stale = [c for c in self.clients.values() if c.node in dead]
        for client in stale:
            del self.clients[client.connection_id]
        for name in dead:
            del self.nodes[name]
        return {
            "removed": {
                "nodes": len(dead),
                "connections": len(stale),
                "memberships": sum(len(c.rooms) for c in stale),
                "presence": len({c.user_id for c in stale}),
            }
        }


# --- HTTP ----------------------------------------------------------------------------------------

CLUSTER = web.AppKey("cluster", FakeCluster)
TOKEN = web.AppKey("token", str)


def _auth_scheme(request: web.Request) -> str | None:
    """'bearer' or 'basic' when the request carries the dashboard token, else None."""
    token = request.app[TOKEN].encode()
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return "bearer" if hmac.compare_digest(value.strip().encode(), token) else None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
        password = decoded.partition(b":")[2]
        return "basic" if hmac.compare_digest(password, token) else None
    return None


def _unauthorised(challenge: str) -> web.Response:
    return web.json_response(
        {"error": "unauthorized", "message": "dashboard token required"},
        status=401,
        headers={"WWW-Authenticate": f'{challenge} realm="{REALM}"'},
    )


@web.middleware
async def dashboard_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    if not request.path.startswith("/dashboard"):
        return await handler(request)
    scheme = _auth_scheme(request)
    if request.method == "POST":
        # Basic is refused for POST so a cross-site form cannot ride on the browser's login;
        # the Bearer challenge keeps the browser from popping its Basic dialog.
        if scheme != "bearer":
            return _unauthorised("Bearer")
    elif scheme is None:
        return _unauthorised("Basic")
    return await handler(request)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "bad_request", "message": f"limit must be 1..{MAX_LIMIT}"}),
            content_type="application/json",
        )
    return limit


def _page(
    request: web.Request, items: list[dict[str, Any]], list_key: str, key: str
) -> web.Response:
    """Keyset pagination: the cursor is the last key returned, so walking never repeats."""
    limit = _limit(request)
    cursor = request.query.get("cursor")
    remaining = [item for item in items if cursor is None or str(item[key]) > cursor]
    page = remaining[:limit]
    body: dict[str, Any] = {list_key: page, "total": len(items)}
    if len(remaining) > limit:
        body["nextCursor"] = str(page[-1][key])
    return web.json_response(body)


async def page_or_json(request: web.Request) -> web.StreamResponse:
    cluster = request.app[CLUSTER]
    if "text/html" in request.headers.get("Accept", ""):
        return web.FileResponse(
            PAGE,
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "no-store",
                "Content-Security-Policy": PAGE_CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )
    return web.json_response({**cluster.stats(), "django": cluster.api_status()["django"]})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[CLUSTER].stats())


async def clients(request: web.Request) -> web.Response:
    return _page(request, request.app[CLUSTER].client_list(), "clients", "connectionId")


async def rooms(request: web.Request) -> web.Response:
    return _page(request, request.app[CLUSTER].room_list(), "rooms", "room")


async def events(request: web.Request) -> web.Response:
    limit = _limit(request)
    return web.json_response({"events": list(itertools.islice(request.app[CLUSTER].events, limit))})


async def api_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[CLUSTER].api_status())


async def cleanup(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    cluster.cleanup_schemes.append(_auth_scheme(request) or "none")
    return web.json_response(cluster.cleanup())


async def feed(request: web.Request) -> web.StreamResponse:
    cluster = request.app[CLUSTER]
    if not cluster.feed_enabled:
        raise web.HTTPNotFound()
    ws = web.WebSocketResponse(heartbeat=20)
    await ws.prepare(request)
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=2000)
    cluster.subscribers.add(queue)
    pump = asyncio.create_task(_pump(ws, cluster, queue))
    try:
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
    finally:
        cluster.subscribers.discard(queue)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    return ws


async def _pump(
    ws: web.WebSocketResponse, cluster: FakeCluster, queue: asyncio.Queue[dict[str, Any]]
) -> None:
    loop = asyncio.get_running_loop()
    next_stats = loop.time()
    with contextlib.suppress(ConnectionError):
        while not ws.closed:
            try:
                event = await asyncio.wait_for(queue.get(), max(0.0, next_stats - loop.time()))
            except TimeoutError:
                await ws.send_str(json.dumps({"type": "stats", "data": cluster.stats()}))
                next_stats = loop.time() + STATS_INTERVAL_S
            else:
                await ws.send_str(json.dumps({"type": "event", "data": event}))


async def _simulate(app: web.Application) -> AsyncIterator[None]:
    cluster = app[CLUSTER]

    async def run() -> None:
        while True:
            cluster.step()
            await asyncio.sleep(SIMULATION_TICK_S)

    task = asyncio.create_task(run())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_app(token: str, cluster: FakeCluster | None = None) -> web.Application:
    app = web.Application(middlewares=[dashboard_auth])
    app[TOKEN] = token
    app[CLUSTER] = cluster or FakeCluster()
    app.cleanup_ctx.append(_simulate)
    app.router.add_get("/dashboard", page_or_json)
    app.router.add_get("/dashboard/stats", stats)
    app.router.add_get("/dashboard/clients", clients)
    app.router.add_get("/dashboard/rooms", rooms)
    app.router.add_get("/dashboard/events", events)
    app.router.add_get("/dashboard/api-status", api_status)
    app.router.add_post("/dashboard/cleanup", cleanup)
    app.router.add_get("/dashboard/feed", feed)
    app.router.add_static("/static", STATIC_DIR, show_index=False)
    return app


# --- self-test in headless Chromium --------------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[tuple[str, web.AppRunner]]:
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", runner
    finally:
        if runner.server is not None:  # a scenario may have stopped it already
            await runner.cleanup()


class Check:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
        if not ok:
            self.failures.append(what)


async def self_test(screenshot: str) -> int:
    from playwright.async_api import async_playwright

    token = "self-test-token"
    check = Check()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            await _live_scenario(browser, token, check, screenshot)
            await _fallback_scenario(browser, token, check)
        finally:
            await browser.close()
    print(f"{len(check.failures)} failure(s); screenshots: {screenshot} and its -suffixed siblings")
    return 1 if check.failures else 0


def _sibling(path: str, suffix: str) -> str:
    p = Path(path)
    return str(p.with_name(f"{p.stem}-{suffix}{p.suffix}"))


async def _wait(page: Any, expression: str, arg: Any = None, timeout_ms: int = 8000) -> bool:
    """Wait until `expression` (which may use `arg`) is truthy in the page.

    It is sent as a function: a bare expression string would be evaluated with eval(), which the
    page's Content-Security-Policy rightly forbids.
    """
    try:
        await page.wait_for_function(f"(arg) => ({expression})", arg=arg, timeout=timeout_ms)
    except Exception:  # playwright's TimeoutError; the check reports it
        return False
    return True


async def _live_scenario(browser: Any, token: str, check: Check, screenshot: str) -> None:
    cluster = FakeCluster(hostile=True)
    async with serving(create_app(token, cluster)) as (base, _runner):
        print(f"live feed scenario on {base}")
        context = await browser.new_context(
            http_credentials={"username": "ops", "password": token},
            viewport={"width": 1440, "height": 900},
            color_scheme="light",
        )
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
        page.on(
            "console",
            lambda msg: (
                errors.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
            ),
        )
        response = await page.goto(f"{base}/dashboard")
        check(
            response is not None and response.status == 200,
            "GET /dashboard with Basic login is 200",
        )
        check(
            await _wait(page, "document.querySelector('#live-status').dataset.state === 'live'"),
            "#live-status turns 'live' over the feed",
        )

        cluster.churn = False  # freeze the numbers so the page can be compared with the server
        expected = cluster.stats()
        total = f"{expected['connections']['total']:,}"
        check(
            await _wait(
                page, "document.querySelector('#total-connections').textContent === arg", total
            ),
            f"#total-connections shows {total}",
        )
        node_ids = [n["node"] for n in expected["nodes"]]
        shown = await page.eval_on_selector_all(
            "#nodes tbody tr[data-node]", "rs => rs.map(r => r.dataset.node)"
        )
        check(sorted(shown) == sorted(node_ids), f"#nodes lists every node {sorted(node_ids)}")
        dead = await page.get_attribute("#nodes tr[data-node='gw-d-0b77']", "data-health")
        check(dead == "down", "the dead node's row is marked down")
        health = await page.get_attribute("#cluster-health", "data-state")
        check(health == "degraded", f"cluster health is 'degraded' with a dead node (got {health})")
        check(
            await _wait(page, "document.querySelector('#django-status').dataset.state === 'up'"),
            "#django-status is up",
        )
        checked = await page.text_content("#django-checked")
        check(
            bool(checked and checked.startswith("checked ") and "ago" in checked),
            f"django check age shown: {checked!r}",
        )

        # events: a published event shows up on top, with its id
        cluster.publish("service_selftest", "comment_created", "api", event_id="selftest-1")
        check(
            await _wait(
                page,
                "document.querySelector('#event-log tr')?.dataset.eventId === 'selftest-1'",
            ),
            "a published event appears at the top of #event-log",
        )

        # filter by room/type/source
        cluster.publish("cliente_77", "payment_created", "publisher", event_id="selftest-2")
        await _wait(page, "!!document.querySelector('#event-log tr[data-event-id=\"selftest-2\"]')")
        await page.fill("#event-filter", "service_selftest")
        visible = await page.eval_on_selector_all(
            "#event-log tr:not([hidden])", "rs => rs.map(r => r.dataset.eventId)"
        )
        check(visible == ["selftest-1"], f"the filter keeps only matching rows (got {visible[:5]})")
        await page.fill("#event-filter", "PUBLISHER payment")
        visible = await page.eval_on_selector_all(
            "#event-log tr:not([hidden])", "rs => rs.map(r => r.textContent)"
        )
        check(
            bool(visible) and all("publisher" in v and "payment" in v for v in visible),
            "a filter of several words matches source and type, case-insensitively",
        )
        await page.fill("#event-filter", "")

        # pause holds new events back, resume shows them
        await page.click("#event-pause")
        cluster.publish(
            "admin_dashboard", "reservation_created", "client", event_id="selftest-paused"
        )
        await asyncio.sleep(1.0)
        held = await page.query_selector("#event-log tr[data-event-id='selftest-paused']")
        pause_label = await page.text_content("#event-pause")
        check(held is None, "while paused, new events are not inserted")
        check(
            bool(pause_label and pause_label.startswith("Resume (")),
            f"pause button counts waiting events: {pause_label!r}",
        )
        await page.click("#event-pause")
        check(
            await _wait(
                page, "!!document.querySelector('#event-log tr[data-event-id=\"selftest-paused\"]')"
            ),
            "resume inserts the held event",
        )

        # the log is capped at 500 rows
        base_ts = now_ms()
        for i in range(650):
            cluster.publish(
                "all_clientes", "order_shipped", "ingest", event_id=f"bulk-{i}", ts=base_ts + i
            )
        check(
            await _wait(
                page, "document.querySelector('#event-log tr')?.dataset.eventId === 'bulk-649'"
            ),
            "a burst of events arrives, newest on top",
        )
        rows = await page.eval_on_selector_all("#event-log tr", "rs => rs.length")
        check(rows == 500, f"#event-log is capped at 500 rows (got {rows})")

        # hostile text is shown as text, never parsed
        cluster.publish("service_1", HOSTILE_TEXT, "api", event_id="selftest-hostile")
        await _wait(
            page, "!!document.querySelector('#event-log tr[data-event-id=\"selftest-hostile\"]')"
        )
        shown_type = await page.text_content(
            "#event-log tr[data-event-id='selftest-hostile'] td:nth-child(3)"
        )
        check(
            shown_type == HOSTILE_TEXT,
            f"an HTML-looking event type is shown literally: {shown_type!r}",
        )
        xss = await page.evaluate("window.__xss")
        check(xss is None, "hostile strings are not executed")
        await page.click("#clients-refresh")
        await _wait(page, "document.querySelector('#clients-summary').textContent.includes('of')")
        raw_imgs = await page.eval_on_selector_all("main img", "els => els.length")
        check(raw_imgs == 0, "no <img> element was created from data")

        # rooms and clients tables paginate with "more"
        rooms_total = len(cluster.room_list())
        first = await page.eval_on_selector_all(
            "#rooms-table tbody tr[data-room]", "rs => rs.length"
        )
        await page.click("#rooms-more")
        await _wait(
            page,
            "document.querySelectorAll('#rooms-table tbody tr[data-room]').length > arg",
            first,
        )
        second = await page.eval_on_selector_all(
            "#rooms-table tbody tr[data-room]", "rs => rs.map(r => r.dataset.room)"
        )
        check(
            first == 50 and len(second) == min(100, rooms_total),
            f"rooms 'more' loads the next page ({first} -> {len(second)})",
        )
        check(len(set(second)) == len(second), "paging never repeats a room")
        summary = await page.text_content("#rooms-summary")
        check(summary == f"{len(second)} of {rooms_total} shown", f"rooms summary: {summary!r}")

        # chart: drawn, with a hover tooltip
        painted = await page.evaluate(
            """() => {
                const c = document.querySelector('#epm-chart');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
                return n;
            }"""
        )
        check(painted > 2000, f"#epm-chart has been drawn ({painted} painted pixels)")
        chart = page.locator("#epm-chart")
        box = await chart.bounding_box()
        assert box is not None
        await chart.hover(position={"x": box["width"] * 0.7, "y": box["height"] / 2})
        await _wait(page, "!document.querySelector('#epm-tooltip').hidden", timeout_ms=2000)
        tip = await page.text_content("#epm-tooltip")
        tip_hidden = await page.get_attribute("#epm-tooltip", "hidden")
        check(
            tip_hidden is None and bool(tip and "events" in tip and "min ago" in tip),
            f"hovering the chart shows a value: {tip!r}",
        )
        await page.mouse.move(0, 0)

        await page.screenshot(path=screenshot, full_page=True)

        # Django goes down: red state after the next api-status poll
        cluster.django = {"reachable": False, "latencyMs": None, "checkedAt": now_ms()}
        check(
            await _wait(
                page,
                "document.querySelector('#django-status').dataset.state === 'down'",
                timeout_ms=15000,
            ),
            "#django-status turns down when Django is unreachable",
        )

        check(not errors, f"no console or page errors ({errors[:3]})")
        errors.clear()

        # cleanup: a wrong token is refused without a browser prompt, the right one works
        await page.click("#cleanup-button")
        check(await page.is_visible("#cleanup-dialog"), "#cleanup-button opens the dialog")
        await page.fill("#cleanup-token", "wrong-token")
        await page.click("#cleanup-confirm")
        check(
            await _wait(page, "!document.querySelector('#cleanup-error').hidden"),
            "a wrong token shows an error in the dialog",
        )
        await page.fill("#cleanup-token", token)
        await page.click("#cleanup-confirm")
        check(
            await _wait(page, "!document.querySelector('#cleanup-result').hidden"),
            "cleanup shows its result",
        )
        removed_nodes = await page.text_content("#cleanup-result [data-removed='nodes']")
        removed_conns = await page.text_content("#cleanup-result [data-removed='connections']")
        check(
            removed_nodes == "1" and removed_conns == "9",
            f"result lists what was removed ({removed_nodes}, {removed_conns})",
        )
        check(
            cluster.cleanup_schemes == ["bearer"],
            f"cleanup authorised by Bearer only ({cluster.cleanup_schemes})",
        )
        await page.screenshot(path=_sibling(screenshot, "cleanup"))
        await page.click("#cleanup-cancel")
        check(
            await _wait(page, "!document.querySelector(\"#nodes tr[data-node='gw-d-0b77']\")"),
            "the dead node leaves #nodes after cleanup",
        )

        unexpected = [e for e in errors if "status of 401" not in e]
        check(not unexpected, f"only the refused token logged an error ({errors[:3]})")
        await context.close()

        for scheme, size, suffix in (
            ("dark", (1440, 900), "dark"),
            ("light", (390, 844), "mobile"),
        ):
            ctx = await browser.new_context(
                http_credentials={"username": "ops", "password": token},
                viewport={"width": size[0], "height": size[1]},
                color_scheme=scheme,
            )
            extra = await ctx.new_page()
            await extra.goto(f"{base}/dashboard")
            await _wait(extra, "document.querySelectorAll('#event-log tr').length > 3")
            await extra.screenshot(path=_sibling(screenshot, suffix), full_page=True)
            width = await extra.evaluate("document.documentElement.scrollWidth")
            if suffix == "mobile":
                check(width <= size[0], f"no horizontal page scroll on a phone ({width}px)")
            await ctx.close()


async def _fallback_scenario(browser: Any, token: str, check: Check) -> None:
    cluster = FakeCluster(feed_enabled=False)
    async with serving(create_app(token, cluster)) as (base, runner):
        print(f"polling fallback scenario on {base}")
        context = await browser.new_context(http_credentials={"username": "ops", "password": token})
        page = await context.new_page()
        await page.goto(f"{base}/dashboard")
        check(
            await _wait(page, "document.querySelector('#live-status').dataset.state === 'polling'"),
            "#live-status says 'polling' when the feed is unavailable",
        )
        cluster.publish("service_9", "comment_created", "api", event_id="polled-1")
        check(
            await _wait(
                page, "!!document.querySelector('#event-log tr[data-event-id=\"polled-1\"]')"
            ),
            "polling still brings new events",
        )
        await runner.cleanup()  # the gateway goes away: feed and HTTP both fail now
        check(
            await _wait(
                page,
                "document.querySelector('#live-status').dataset.state === 'offline'",
                timeout_ms=15000,
            ),
            "#live-status says 'offline' when the gateway is gone",
        )
        await context.close()


# --- command line --------------------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default="dev-token", help="the dashboard token (Basic password)")
    parser.add_argument("--no-feed", action="store_true", help="answer 404 on /dashboard/feed")
    parser.add_argument(
        "--hostile", action="store_true", help="mix HTML-looking strings into the data"
    )
    parser.add_argument(
        "--self-test", action="store_true", help="check the page in headless Chromium"
    )
    parser.add_argument("--screenshot", default="/tmp/dashboard.png")
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.self_test:
        return asyncio.run(self_test(args.screenshot))
    cluster = FakeCluster(feed_enabled=not args.no_feed, hostile=args.hostile)
    print(
        f"dashboard: http://{args.host}:{args.port}/dashboard  (any user, password {args.token!r})"
    )
    web.run_app(create_app(args.token, cluster), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
