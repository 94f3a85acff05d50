"""The dashboard's lists on a 3-master Redis Cluster: clients answered by the nodes over sharded
pub/sub (SPUBLISH's receiver count), rooms merged from the index shards, which spread over the
masters; and nothing a connect writes lands in the ``{g}`` slot."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from gateway.backend.keys import INDEX_SHARDS, Keys
from gateway.backend.redis import RedisBackend
from tests.contract.harness import Harness

_seq = itertools.count(1)


@pytest.fixture
async def two_nodes(redis_cluster: Any) -> AsyncIterator[list[Harness]]:
    prefix = f"lists{next(_seq)}"
    started = []
    for i in range(2):
        backend = RedisBackend(redis_cluster.url, prefix=prefix, cluster=True)
        harness = Harness(backend, node_id=f"{prefix}-n{i}")
        await harness.start()
        started.append(harness)
    yield started
    for harness in started:
        await harness.backend.close()


def test_the_index_shards_spread_over_the_three_masters() -> None:
    keys = Keys("gateway")
    for index in (keys.rooms_index, keys.online_index):
        per_master = [0, 0, 0]
        for shard in range(INDEX_SHARDS):
            per_master[key_slot(index(shard).encode()) * 3 // 16384] += 1
        assert max(per_master) <= 6, per_master  # 16 shards: 5 or 6 each


async def test_clients_and_rooms_pages_are_cluster_wide(
    two_nodes: list[Harness], redis_cluster: Any
) -> None:
    conns = []
    for i in range(9):
        harness = two_nodes[i % 2]
        conn = harness.conn(f"{i}", connection_id=f"c{i}")
        await harness.backend.add_connection(conn, [f"cliente_{i}", "all_clientes"])
        conns.append(conn)
    a, b = (h.backend for h in two_nodes)
    assert isinstance(a, RedisBackend)

    seen: list[str] = []
    cursor = None
    while True:
        page = await b.list_clients(2, cursor)
        assert page.total == 9
        seen += [c["connectionId"] for c in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [f"c{i}" for i in range(9)]

    rooms: dict[str, int] = {}
    cursor = None
    while True:
        page = await a.list_rooms(3, cursor)
        assert page.total == 10
        rooms.update({r["room"]: r["members"] for r in page.items})
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert rooms == {"all_clientes": 9, **{f"cliente_{i}": 1 for i in range(9)}}
    assert await b.room_count("all_clientes") == 9

    # no key of the global slot was written by the connects
    client = AsyncRedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], protocol=2)
    try:
        legacy = [a.keys.clients, a.keys.client_info, a.keys.rooms, a.keys.room_members]
        assert await client.exists(*legacy) == 0
    finally:
        await client.aclose()

    for conn in conns[:4]:
        harness = two_nodes[int(conn.user_id) % 2]
        await harness.backend.remove_connection(conn, [f"cliente_{conn.user_id}", "all_clientes"])
    assert (await a.list_clients(100, None)).total == 5
    assert (await b.list_rooms(100, None)).total == 6
    assert await a.room_count("all_clientes") == 5
