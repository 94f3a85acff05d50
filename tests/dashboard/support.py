"""Tools for the dashboard tests: a two-node cluster on one Redis reached through an ACL user
that may not run KEYS or SCAN, authenticated dashboard requests, and clients the test knows.

Every dashboard test runs on that restricted user, so a dashboard read or a cleanup that scans
the keyspace fails the test (the node answers 503 and Redis records the denial in ACL LOG).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from redis import asyncio as aioredis

from gateway.backend.base import ConnectionInfo, NodeStats
from gateway.backend.keys import Keys
from gateway.backend.redis_state import RedisState
from tests.support.nodes import API_KEY, DASHBOARD, RunningNode
from tests.support.redis_server import RedisServer
from tests.support.wsclient import WsClient

ACL_USER = "gw"
ACL_PASSWORD = "pw"
# everything, on every key and channel, except the commands that walk the keyspace
ACL_ARGS = (
    "--user", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*",
    "+@all", "-keys", "-scan", "-randomkey",
)  # fmt: skip

T = TypeVar("T")


def acl_url(server: RedisServer) -> str:
    return f"redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{server.port}/0"


def acl_denials(server: RedisServer) -> list[Any]:
    """What Redis refused the restricted user (``ACL LOG``), through the default user."""
    return list(server.admin().execute_command("ACL", "LOG"))


@dataclass
class Connected:
    """One authenticated WebSocket client and what the server told it."""

    client: WsClient
    connection_id: str
    user_id: str
    role: str
    node: str
    rooms: set[str]
    connected_after_ms: int


@dataclass
class Cluster:
    redis: RedisServer
    url: str
    nodes: list[RunningNode]
    connected: list[Connected] = field(default_factory=list)

    async def connect(
        self, http: aiohttp.ClientSession, node: int, token: str, join: tuple[str, ...] = ()
    ) -> Connected:
        """Connect to ``nodes[node]`` with ``?token=``, then join ``join``."""
        before_ms = int(time.time() * 1000)
        client = await self.nodes[node].client(http, token=token)
        data = (await client.expect("auth_success"))["data"]
        for room in join:
            await client.join(room)
        conn = Connected(
            client=client,
            connection_id=data["connectionId"],
            user_id=data["userId"],
            role=data["role"],
            node=data["node"],
            rooms={*data["rooms"], *join},
            connected_after_ms=before_ms,
        )
        assert conn.node == self.nodes[node].settings.node_id
        self.connected.append(conn)
        return conn

    async def disconnect(self, conn: Connected) -> None:
        await conn.client.close()
        self.connected.remove(conn)

    def by_role(self) -> dict[str, int]:
        return dict(Counter(c.role for c in self.connected))

    def by_node(self) -> dict[str, int]:
        return dict(Counter(c.node for c in self.connected))

    def room_members(self) -> dict[str, int]:
        return dict(Counter(room for c in self.connected for room in c.rooms))

    async def close_clients(self) -> None:
        for conn in self.connected:
            await conn.client.close()
        self.connected.clear()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(user: str, password: str) -> dict[str, str]:
    """The header a browser sends after an HTTP Basic login."""
    pair = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {pair}"}


async def dash_get(
    http: aiohttp.ClientSession,
    base_url: str,
    path: str,
    token: str = DASHBOARD,
    **params: Any,
) -> Any:
    """GET a dashboard JSON endpoint with the Bearer token; asserts 200 and returns the JSON."""
    query = {k: str(v) for k, v in params.items()}
    async with http.get(f"{base_url}{path}", headers=bearer(token), params=query) as resp:
        body = await resp.read()
        assert resp.status == 200, (path, resp.status, body[:300])
        assert resp.content_type == "application/json", resp.content_type
        return await resp.json()


async def walk(
    http: aiohttp.ClientSession, base_url: str, path: str, key: str, limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Follow ``nextCursor`` from the first page to the last: (all items, every page's body)."""
    items: list[dict[str, Any]] = []
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        page = await dash_get(http, base_url, path, **params)
        assert len(page[key]) <= limit, page
        pages.append(page)
        items.extend(page[key])
        if "nextCursor" not in page:
            return items, pages
        cursor = page["nextCursor"]
        assert isinstance(cursor, str) and cursor, page
        assert len(pages) < 100, "the cursor never ends"


async def api_publish(
    http: aiohttp.ClientSession, base_url: str, room: str, type_: str, payload: Any
) -> str:
    """``POST /api/publish`` to one room with the test key; returns the event id."""
    body = {"room": room, "type": type_, "payload": payload}
    async with http.post(f"{base_url}/api/publish", json=body, headers=bearer(API_KEY)) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    assert room in answer["offsets"], answer
    return str(answer["eventId"])


async def poll(
    fetch: Callable[[], Awaitable[T]],
    done: Callable[[T], bool],
    what: str,
    timeout_s: float = 6.0,
) -> T:
    """Call ``fetch`` until ``done(value)``; the failure shows the last value seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await fetch()
        if done(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}: {value!r}")
        await asyncio.sleep(0.1)


async def summarised(http: aiohttp.ClientSession, base_url: str, events: int) -> None:
    """Wait until the dashboard lists and counts ``events`` events: each publishing process
    writes its summaries once a second (gateway/backend/event_log.py)."""

    async def fetch() -> tuple[int, int]:
        listed = await dash_get(http, base_url, "/dashboard/events")
        stats = await dash_get(http, base_url, "/dashboard/stats")
        return int(listed["total"]), sum(stats["eventsPerMinuteSeries"])

    await poll(fetch, lambda v: v[0] >= events and v[1] >= events, f"{events} events summarised")


async def start_of_a_quiet_minute(seconds_needed: float = 15.0) -> None:
    """Per-minute counters are compared with what the test did: make sure the next
    ``seconds_needed`` seconds fall in one calendar minute (the server's clock is ours)."""
    left = 60.0 - time.time() % 60.0
    if left < seconds_needed:
        await asyncio.sleep(left + 0.2)


def vm_rss_bytes() -> int:
    """This process's resident set size from ``/proc/self/status`` (``VmRSS``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line in /proc/self/status")


GHOST = "ghost-node"
GHOST_USERS = ("901", "902")
PHANTOM = "phantom-node"  # joined rooms but never sent a heartbeat (its first join indexed it)


def _now_ms() -> int:
    return int(time.time() * 1000)


async def register_ghost(url: str, lease_s: float) -> None:
    """A node that registered, held two cliente connections (users 901, 902) in
    ``cliente_<id>`` and ``all_clientes``, and is left to expire; plus a phantom node's
    presence in ``cliente_950`` and ``all_clientes``, never registered at all."""
    client = aioredis.Redis.from_url(url, protocol=2)
    state = RedisState(client, Keys("gateway"), node_lease_s=lease_s)
    try:
        stats = NodeStats(
            node=GHOST,
            connections=len(GHOST_USERS),
            by_role={"cliente": len(GHOST_USERS)},
            rooms=3,
            rss_bytes=64 * 1024 * 1024,
            uptime_s=5.0,
            started_at_ms=_now_ms() - 5000,
            frames_in=0,
            frames_out=0,
            connection_seconds_sum=4.0,
            django={},
        )
        assert await state.heartbeat(stats, _now_ms()) is False  # a new registration
        for i, user in enumerate(GHOST_USERS):
            conn = ConnectionInfo(f"ghost-conn-{i}", user, "cliente", GHOST, _now_ms())
            rooms = [f"cliente_{user}", "all_clientes"]
            await state.add_connection(conn)
            await state.join(conn, rooms, rooms)
        phantom = ConnectionInfo("phantom-conn", "950", "cliente", PHANTOM, _now_ms())
        await state.join(phantom, ["cliente_950", "all_clientes"], ["cliente_950", "all_clientes"])
    finally:
        await client.aclose()


async def cleanup(http: aiohttp.ClientSession, base_url: str) -> dict[str, int]:
    """``POST /dashboard/cleanup`` with the Bearer token; returns ``removed``."""
    async with http.post(f"{base_url}/dashboard/cleanup", headers=bearer(DASHBOARD)) as resp:
        body = await resp.read()
        assert resp.status == 200, body
    removed: dict[str, int] = json.loads(body)["removed"]
    return removed
