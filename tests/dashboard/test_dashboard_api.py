"""The dashboard's JSON endpoints answer for the whole cluster (CONTRACT section 4).

Two nodes share one Redis; the test connects clients on both and asks each node: the numbers
must be what the test did, wherever it asks.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import aiohttp
from redis import asyncio as aioredis

from gateway.backend.base import NodeStats
from gateway.backend.keys import Keys
from gateway.backend.redis_state import RedisState
from gateway.publish import AsyncPublisher
from tests.dashboard.support import (
    Cluster,
    acl_url,
    api_publish,
    bearer,
    dash_get,
    poll,
    start_of_a_quiet_minute,
    summarised,
    vm_rss_bytes,
    walk,
)
from tests.support.nodes import DASHBOARD
from tests.support.redis_server import RedisServer

MB = 1024 * 1024


async def _connect_mixed(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """Three roles on node 0, two roles on node 1 (six connections, five users)."""
    await cluster.connect(http, 0, "cliente-101", join=("service_7",))
    await cluster.connect(http, 0, "proveedor-201", join=("service_7", "location_3"))
    await cluster.connect(http, 0, "admin-301")
    await cluster.connect(http, 1, "cliente-102", join=("service_7",))
    await cluster.connect(http, 1, "cliente-103")
    await cluster.connect(http, 1, "cliente-101")  # the same user again, on the other node


def _settled(cluster: Cluster) -> Any:
    """True once a stats answer matches every node's heartbeat of the test's connections."""
    expected_nodes = cluster.by_node()

    def done(stats: dict[str, Any]) -> bool:
        shown = {n["node"]: n["connections"] for n in stats["nodes"]}
        return stats["connections"]["total"] == len(cluster.connected) and shown == expected_nodes

    return done


async def test_stats_are_cluster_wide_on_every_node(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    first_connect = time.time()
    await _connect_mixed(cluster, http)
    for node in cluster.nodes:
        stats = await poll(
            lambda node=node: dash_get(http, node.http_url, "/dashboard/stats"),
            _settled(cluster),
            f"{node.settings.node_id} to see both nodes' connections",
        )
        assert stats["connections"] == {
            "total": 6,
            "byRole": {"cliente": 4, "proveedor": 1, "admin": 1},
        }
        assert cluster.by_role() == stats["connections"]["byRole"]
        ids = sorted(n.settings.node_id for n in cluster.nodes)
        assert [n["node"] for n in stats["nodes"]] == ids
        assert {n["node"]: n["connections"] for n in stats["nodes"]} == {ids[0]: 3, ids[1]: 3}
        assert stats["rooms"] == len(cluster.room_members())
        elapsed = time.time() - first_connect
        assert 0 < stats["avgConnectionSeconds"] <= elapsed + 0.05, (stats, elapsed)
        for entry in stats["nodes"]:
            assert 0 < entry["uptimeSeconds"] < elapsed + 30, entry


async def test_average_connection_time_grows_with_time(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await _connect_mixed(cluster, http)
    base = cluster.nodes[1].http_url
    await poll(lambda: dash_get(http, base, "/dashboard/stats"), _settled(cluster), "heartbeats")
    t1 = time.time()
    first = (await dash_get(http, base, "/dashboard/stats"))["avgConnectionSeconds"]
    t1 = (t1 + time.time()) / 2
    await asyncio.sleep(1.5)
    t2 = time.time()
    second = (await dash_get(http, base, "/dashboard/stats"))["avgConnectionSeconds"]
    t2 = (t2 + time.time()) / 2
    # every connection aged by the time between the two answers, on both nodes
    assert abs((second - first) - (t2 - t1)) < 0.3, (first, second, t2 - t1)

    # a connection that closes leaves the average (the other five keep theirs)
    oldest = cluster.connected[0]
    await cluster.disconnect(oldest)
    stats = await poll(
        lambda: dash_get(http, base, "/dashboard/stats"),
        lambda s: s["connections"]["total"] == 5,
        "the closed connection to leave the stats",
    )
    now_ms = time.time() * 1000
    ages = [(now_ms - c.connected_after_ms) / 1000 for c in cluster.connected]
    assert 0 < stats["avgConnectionSeconds"] <= sum(ages) / len(ages) + 0.05


async def test_memory_figures_are_this_process_rss(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    # both in-process nodes live in the test process: their RSS is ours
    stats = await poll(
        lambda: dash_get(http, cluster.nodes[0].http_url, "/dashboard/stats"),
        lambda s: len(s["nodes"]) == 2,
        "both nodes to report",
    )
    ours = vm_rss_bytes()
    for entry in stats["nodes"]:
        rss = entry["rssBytes"]
        assert isinstance(rss, int)
        assert 10 * MB < rss < 2048 * MB, entry
        assert abs(rss - ours) <= max(0.2 * ours, 32 * MB), (rss, ours)


async def test_published_events_are_counted_this_minute(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await start_of_a_quiet_minute(10.0)
    a, b = cluster.nodes
    for i in range(4):
        await api_publish(http, a.http_url, f"service_{i}", "order_shipped", {"n": i})
    for i in range(3):
        await api_publish(http, b.http_url, "location_9", "comment_created", {"n": i})
    await summarised(http, a.http_url, 7)
    for node in cluster.nodes:
        stats = await dash_get(http, node.http_url, "/dashboard/stats")
        series = stats["eventsPerMinuteSeries"]
        assert len(series) == 60
        assert all(isinstance(v, int) and v >= 0 for v in series)
        assert series[-1] == 7, series[-5:]
        assert sum(series) == 7
        assert stats["eventsPerMinute"] == 7

    # one more event: both figures move by exactly one
    await api_publish(http, b.http_url, "service_0", "order_shipped", {"n": 99})
    await summarised(http, a.http_url, 8)
    stats = await dash_get(http, a.http_url, "/dashboard/stats")
    assert stats["eventsPerMinuteSeries"][-1] == 8
    assert stats["eventsPerMinute"] == 8


async def test_clients_pages_walk_every_connection_once(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await _connect_mixed(cluster, http)
    expected = {c.connection_id: c for c in cluster.connected}
    for node in cluster.nodes:
        items, pages = await walk(http, node.http_url, "/dashboard/clients", "clients", limit=2)
        ids = [item["connectionId"] for item in items]
        assert len(ids) == len(set(ids)), f"a connection was repeated: {ids}"
        assert set(ids) == set(expected)
        assert len(pages) == 3
        assert all(page["total"] == 6 for page in pages)
        assert all("nextCursor" in page for page in pages[:-1])
        now_ms = time.time() * 1000
        for item in items:
            conn = expected[item["connectionId"]]
            assert item["userId"] == conn.user_id
            assert item["role"] == conn.role
            assert item["node"] == conn.node
            assert item["rooms"] == sorted(conn.rooms)
            assert conn.connected_after_ms - 1000 <= item["connectedAt"] <= now_ms, item

    # one page with the default limit has everyone, and no cursor
    page = await dash_get(http, cluster.nodes[0].http_url, "/dashboard/clients")
    assert len(page["clients"]) == 6 and page["total"] == 6 and "nextCursor" not in page

    # a client that leaves is gone from the list at once (not at the next heartbeat)
    gone = cluster.connected[2]
    await cluster.disconnect(gone)
    page = await poll(
        lambda: dash_get(http, cluster.nodes[1].http_url, "/dashboard/clients"),
        lambda p: p["total"] == 5,
        "the closed connection to leave the list",
        timeout_s=3,
    )
    assert gone.connection_id not in {c["connectionId"] for c in page["clients"]}


async def test_clients_page_limit_is_checked(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    base = cluster.nodes[0].http_url
    async with http.get(
        f"{base}/dashboard/clients", params={"limit": "ten"}, headers=bearer(DASHBOARD)
    ) as resp:
        assert resp.status == 400
        assert "limit" in await resp.text()


async def test_rooms_pages_carry_member_counts(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await _connect_mixed(cluster, http)
    expected = cluster.room_members()
    assert expected["service_7"] == 3 and expected["all_clientes"] == 4
    for node in cluster.nodes:
        items, pages = await walk(http, node.http_url, "/dashboard/rooms", "rooms", limit=2)
        names = [item["room"] for item in items]
        assert len(names) == len(set(names)), f"a room was repeated: {names}"
        assert {item["room"]: item["members"] for item in items} == expected
        assert all(page["total"] == len(expected) for page in pages)
        assert len(pages) == math.ceil(len(expected) / 2)

    # leaving a room lowers its count; the last member leaving removes the room
    proveedor = next(c for c in cluster.connected if c.role == "proveedor")
    reply = await proveedor.client.request("leave_room", {"room": "location_3"})
    assert reply["event"] == "room_left"
    proveedor.rooms.discard("location_3")
    reply = await proveedor.client.request("leave_room", {"room": "service_7"})
    assert reply["event"] == "room_left"
    proveedor.rooms.discard("service_7")
    items, _ = await walk(http, cluster.nodes[1].http_url, "/dashboard/rooms", "rooms", limit=3)
    rooms = {item["room"]: item["members"] for item in items}
    assert rooms == cluster.room_members()
    assert "location_3" not in rooms and rooms["service_7"] == 2


async def test_events_newest_first_with_their_fields(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = cluster.nodes
    before_ms = int(time.time() * 1000)
    published: list[tuple[str, str, str, str]] = []  # (id, room, type, source)
    for i in range(3):
        room = f"service_{i}"
        event_id = await api_publish(http, (a, b)[i % 2].http_url, room, f"kind_{i}", {"i": i})
        published.append((event_id, room, f"kind_{i}", "api"))
    publisher = AsyncPublisher.from_url(cluster.url)
    try:
        result = await publisher.publish_many(["location_4"], "from_django", {"ok": True})
    finally:
        await publisher.aclose()
    published.append((result.event_id, "location_4", "from_django", "publisher"))
    after_ms = int(time.time() * 1000)
    await summarised(http, a.http_url, 4)

    for node in cluster.nodes:
        page = await dash_get(http, node.http_url, "/dashboard/events")
        events = page["events"]
        assert [(e["id"], e["room"], e["type"], e["source"]) for e in events] == list(
            reversed(published)
        )
        for event in events:
            assert {"room", "type", "id", "ts", "source"} <= set(event)
            assert isinstance(event["ts"], int) and before_ms <= event["ts"] <= after_ms
        assert [e["ts"] for e in events] == sorted((e["ts"] for e in events), reverse=True)

    # the event log pages too, newest first, without repeats
    items, pages = await walk(http, a.http_url, "/dashboard/events", "events", limit=3)
    assert [e["id"] for e in items] == [p[0] for p in reversed(published)]
    assert len(pages) == 2


async def test_api_status_reports_django_from_every_node(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    ids = {n.settings.node_id for n in cluster.nodes}

    def probed(status: dict[str, Any]) -> bool:
        return set(status["nodes"]) == ids and all(
            p.get("reachable") is True for p in status["nodes"].values()
        )

    status = await poll(
        lambda: dash_get(http, cluster.nodes[0].http_url, "/dashboard/api-status"),
        probed,
        "both nodes' Django probes to be reported",
    )
    django = status["django"]
    assert set(django) == {"reachable", "latencyMs", "checkedAt"}
    assert django["reachable"] is True
    assert isinstance(django["latencyMs"], int | float) and 0 <= django["latencyMs"] < 5000
    now_ms = time.time() * 1000
    assert now_ms - 60_000 < django["checkedAt"] <= now_ms
    for probe in status["nodes"].values():
        assert probe["reachable"] is True and probe["latencyMs"] >= 0


async def test_dashboard_index_json_or_page(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    await _connect_mixed(cluster, http)
    base = cluster.nodes[0].http_url
    await poll(lambda: dash_get(http, base, "/dashboard/stats"), _settled(cluster), "heartbeats")
    headers = {**bearer(DASHBOARD), "Accept": "application/json"}
    async with http.get(f"{base}/dashboard", headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        body = await resp.json()
    assert body["connections"]["total"] == 6
    assert {"nodes", "rooms", "eventsPerMinute", "eventsPerMinuteSeries"} <= set(body)
    assert set(body["django"]) == {"reachable", "latencyMs", "checkedAt"}

    headers = {**bearer(DASHBOARD), "Accept": "text/html,application/xhtml+xml"}
    async with http.get(f"{base}/dashboard", headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        csp = resp.headers["Content-Security-Policy"]
        page = await resp.text()
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert 'id="total-connections"' in page and 'id="event-log"' in page
    # the page's own assets are served and allowed by that policy (same origin)
    for asset in ("/static/dashboard.js", "/static/dashboard.css"):
        async with http.get(f"{base}{asset}") as resp:
            assert resp.status == 200, asset
            assert len(await resp.read()) > 1000


async def test_feed_pushes_stats_and_new_events(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.connect(http, 1, "proveedor-55")
    base = cluster.nodes[0].http_url
    url = f"{base}/dashboard/feed"
    async with http.ws_connect(url, headers=bearer(DASHBOARD)) as ws:
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "stats"
        assert {n["node"] for n in first["data"]["nodes"]} == {
            n.settings.node_id for n in cluster.nodes
        }
        event_id = await api_publish(http, cluster.nodes[1].http_url, "service_5", "kind_x", {})
        async with asyncio.timeout(6):
            while True:
                frame = await ws.receive_json()
                if frame["type"] == "event":
                    break
        assert frame["data"]["id"] == event_id
        assert frame["data"]["room"] == "service_5" and frame["data"]["source"] == "api"


async def test_a_node_snapshot_keeps_its_own_time(acl_redis: RedisServer) -> None:
    """``avgConnectionSeconds`` ages a snapshot by ``now - lastSeenMs``: the time must be the
    snapshot's own, even when the node index was read before a newer heartbeat landed."""
    client = aioredis.Redis.from_url(acl_url(acl_redis), protocol=2)
    state = RedisState(client, Keys("gateway"))
    try:
        stats = NodeStats("n1", 3, {"cliente": 3}, 1, 1, 9.0, 0, 0, 0, 27.0, {})
        await state.heartbeat(stats, 1_000_500)
        # the index still holds the previous beat's time (the race nodes() must not fall into)
        await client.zadd(Keys("gateway").nodes, {"n1": 1_000_000})
        [node] = await state.nodes()
    finally:
        await client.aclose()
    assert node["lastSeenMs"] == 1_000_500
    assert node["alive"] is True and node["connectionSecondsSum"] == 27.0
