"""No dashboard read and no cleanup scans the keyspace (STYLE: never KEYS/SCAN outside tests).

The nodes reach Redis as a user that may not run KEYS, SCAN or RANDOMKEY; every endpoint, the
feed and a cleanup of a dead node must work, and Redis must have refused that user nothing.
"""

from __future__ import annotations

import aiohttp
import pytest
from redis import asyncio as aioredis
from redis.exceptions import NoPermissionError

from tests.dashboard.support import (
    GHOST,
    Cluster,
    acl_denials,
    api_publish,
    bearer,
    cleanup,
    dash_get,
    poll,
    register_ghost,
    summarised,
    walk,
)
from tests.support.nodes import DASHBOARD


async def test_the_restricted_user_really_cannot_scan(cluster: Cluster) -> None:
    client = aioredis.Redis.from_url(cluster.url, protocol=2)
    try:
        assert await client.ping()
        with pytest.raises(NoPermissionError):
            await client.keys("*")
        with pytest.raises(NoPermissionError):
            await client.scan(0)
        with pytest.raises(NoPermissionError):
            await client.randomkey()
    finally:
        await client.aclose()
    assert len(acl_denials(cluster.redis)) == 3


async def test_every_endpoint_and_cleanup_work_without_scanning(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.connect(http, 0, "cliente-11", join=("service_1",))
    await cluster.connect(http, 1, "proveedor-12", join=("service_1",))
    await cluster.connect(http, 1, "admin-13")
    for i in range(3):
        await api_publish(http, cluster.nodes[i % 2].http_url, "service_1", "tick", {"i": i})
    await register_ghost(cluster.url, lease_s=0.3)
    await summarised(http, cluster.nodes[0].http_url, 3)

    for node in cluster.nodes:
        base = node.http_url
        stats = await dash_get(http, base, "/dashboard/stats")
        assert stats["eventsPerMinuteSeries"][-1] + stats["eventsPerMinuteSeries"][-2] == 3
        page = await dash_get(http, base, "/dashboard")
        assert "django" in page
        clients, _ = await walk(http, base, "/dashboard/clients", "clients", limit=1)
        assert len(clients) == 3  # the live nodes answer for their own; the ghost has no process
        rooms, _ = await walk(http, base, "/dashboard/rooms", "rooms", limit=1)
        assert {"room": "service_1", "members": 2} in rooms
        events, _ = await walk(http, base, "/dashboard/events", "events", limit=1)
        assert len(events) == 3
        status = await dash_get(http, base, "/dashboard/api-status")
        assert node.settings.node_id in status["nodes"]
        async with http.ws_connect(f"{base}/dashboard/feed", headers=bearer(DASHBOARD)) as ws:
            frames = [await ws.receive_json(timeout=5) for _ in range(4)]
        assert {f["type"] for f in frames} == {"stats", "event"}

    await poll(
        lambda: dash_get(http, cluster.nodes[0].http_url, "/dashboard/stats"),
        lambda s: GHOST not in {n["node"] for n in s["nodes"]},
        "the ghost's lease to expire",
    )
    removed = await cleanup(http, cluster.nodes[0].http_url)
    # the ghost and the phantom (indexed by its first join); the ghost's two connections and
    # the phantom's one (connections are counted by the memberships a sweep removes)
    assert removed["nodes"] == 2 and removed["connections"] == 3, removed
    stats = await poll(
        lambda: dash_get(http, cluster.nodes[1].http_url, "/dashboard/stats"),
        lambda s: s["connections"]["total"] == 3,  # the live three, once both heartbeats show
        "the live connections after the cleanup",
    )
    assert sorted(n["node"] for n in stats["nodes"]) == sorted(
        n.settings.node_id for n in cluster.nodes
    )
    assert acl_denials(cluster.redis) == []
