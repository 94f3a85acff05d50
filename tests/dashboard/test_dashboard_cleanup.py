"""POST /dashboard/cleanup removes what dead nodes left in Redis, and nothing of live nodes.

A "ghost" node is registered through ``RedisState`` (the code nodes use) with a tiny lease and
two connections, then left to expire, as a crashed node would.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.backend.keys import Keys
from tests.dashboard.support import (
    GHOST,
    PHANTOM,
    Cluster,
    cleanup,
    dash_get,
    poll,
    register_ghost,
    walk,
)


async def _client_ids(http: aiohttp.ClientSession, base_url: str) -> set[str]:
    items, _ = await walk(http, base_url, "/dashboard/clients", "clients", limit=3)
    return {item["connectionId"] for item in items}


async def _rooms(http: aiohttp.ClientSession, base_url: str) -> dict[str, int]:
    items, _ = await walk(http, base_url, "/dashboard/rooms", "rooms", limit=3)
    return {item["room"]: item["members"] for item in items}


async def test_cleanup_removes_a_dead_nodes_state(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    await cluster.connect(http, 0, "cliente-101")
    await cluster.connect(http, 1, "proveedor-201", join=("service_3",))
    live_ids = {c.connection_id for c in cluster.connected}
    a, b = (n.http_url for n in cluster.nodes)

    await register_ghost(cluster.url, lease_s=2.0)
    # while its lease holds, the ghost is a node like any other
    stats = await poll(
        lambda: dash_get(http, a, "/dashboard/stats"),
        lambda s: s["connections"]["total"] == 4,
        "the heartbeats of both live nodes and the ghost",
    )
    assert {n["node"]: n["connections"] for n in stats["nodes"]} == {
        cluster.nodes[0].settings.node_id: 1,
        cluster.nodes[1].settings.node_id: 1,
        GHOST: 2,
    }
    # the dashboard's clients are the answers of running nodes: the ghost has no process
    assert await _client_ids(http, b) == live_ids
    assert (await _rooms(http, a))["all_clientes"] == 4  # one live, two ghosts, one phantom
    admin = cluster.redis.admin()
    keys = Keys("gateway")
    assert admin.scard(keys.node_memberships(GHOST)) == 4  # 2 connections x 2 rooms

    def ghost_gone(s: dict[str, Any]) -> bool:
        return GHOST not in {n["node"] for n in s["nodes"]}

    stats = await poll(lambda: dash_get(http, a, "/dashboard/stats"), ghost_gone, "lease expiry")
    assert stats["connections"]["total"] == 2
    # its state is still in Redis and in the room counts: that is what a cleanup is for
    assert admin.scard(keys.node_memberships(GHOST)) == 4
    assert (await _rooms(http, a))["all_clientes"] == 4

    removed = await cleanup(http, b)
    # the ghost: 2 connections in 2 rooms each; the phantom (indexed by its first join): 1
    # connection in 2 rooms (connections are counted by their memberships, so it counts too).
    # all_clientes keeps a count, no presence entries.
    assert removed == {"nodes": 2, "connections": 3, "memberships": 6, "presence": 3}

    assert await _client_ids(http, a) == live_ids
    rooms = await _rooms(http, a)
    assert rooms == cluster.room_members()
    assert "cliente_901" not in rooms and "cliente_950" not in rooms
    assert admin.zscore(keys.nodes, GHOST) is None
    assert admin.zscore(keys.nodes, PHANTOM) is None
    assert admin.exists(keys.node_memberships(GHOST), keys.node_memberships(PHANTOM)) == 0
    assert admin.hlen(keys.room_presence("cliente_950")) == 0

    # the live nodes were not touched, and a second cleanup finds nothing
    stats = await dash_get(http, b, "/dashboard/stats")
    assert sorted(n["node"] for n in stats["nodes"]) == sorted(
        n.settings.node_id for n in cluster.nodes
    )
    assert await cleanup(http, a) == {"nodes": 0, "connections": 0, "memberships": 0, "presence": 0}
    presence = await cluster.connected[0].client.request("presence", {"room": "all_clientes"})
    assert presence["data"] == {"room": "all_clientes", "count": 1}
