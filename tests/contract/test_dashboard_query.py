"""``/dashboard/clients`` on Redis is answered by the nodes themselves (dashboard_query.py): three
real ``RedisBackend`` nodes on one redis-server, each holding its own connections, page through
one cluster-wide list; a node that stops is not waited for; a subscriber that never answers
delays one answer by the timeout and is named in a warning."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.backend.redis import RedisBackend
from tests.contract.harness import Harness
from tests.support.redis_server import RedisServer

_seq = itertools.count(1)


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[list[Harness]]:
    prefix = f"query{next(_seq)}"
    started = []
    for i in range(3):
        harness = Harness(RedisBackend(redis_server.url, prefix=prefix), node_id=f"{prefix}-n{i}")
        await harness.start()
        started.append(harness)
    yield started
    for harness in started:
        await harness.backend.close()


async def walk(backend: Any, limit: int) -> tuple[list[dict[str, Any]], set[int]]:
    items: list[dict[str, Any]] = []
    totals = set()
    cursor = None
    for _ in range(50):
        page = await backend.list_clients(limit, cursor)
        assert len(page.items) <= limit
        items += page.items
        totals.add(page.total)
        if page.next_cursor is None:
            return items, totals
        cursor = page.next_cursor
    raise AssertionError("the cursor does not advance")


async def test_every_node_answers_for_its_own_and_the_cursor_walks_them_once(
    nodes: list[Harness],
) -> None:
    conns = []
    for i in range(17):  # 6, 6 and 5 connections, ids interleaved between the nodes
        harness = nodes[i % 3]
        conn = harness.conn(f"u{i}", connection_id=f"c{i:02d}")
        await harness.backend.add_connection(conn, [f"cliente_u{i}", "all_clientes"])
        conns.append(conn)
    await nodes[1].backend.join(
        conns[1], ["service_9"], ["all_clientes", "cliente_u1", "service_9"]
    )

    for asker in nodes:
        items, totals = await walk(asker.backend, 4)
        assert totals == {17}
        assert [c["connectionId"] for c in items] == [f"c{i:02d}" for i in range(17)]
    by_id = {c["connectionId"]: c for c in items}
    assert by_id["c01"] == {
        "connectionId": "c01",
        "userId": "u1",
        "role": "cliente",
        "node": nodes[1].node_id,
        "rooms": ["all_clientes", "cliente_u1", "service_9"],
        "connectedAt": conns[1].connected_at_ms,
    }
    assert by_id["c05"]["node"] == nodes[2].node_id

    await nodes[2].backend.remove_connection(conns[5], ["cliente_u5", "all_clientes"])
    page = await nodes[0].backend.list_clients(100, None)
    assert page.total == 16 and "c05" not in {c["connectionId"] for c in page.items}


async def test_a_stopped_node_is_not_listed_and_not_waited_for(nodes: list[Harness]) -> None:
    for i, harness in enumerate(nodes):
        await harness.backend.add_connection(harness.conn(f"u{i}", connection_id=f"c{i}"))
    for harness in nodes:
        harness.backend.query.timeout_s = 30.0  # a wait for the stopped node would fail the test
    await nodes[2].backend.close()  # like a killed process: no answer, no subscription
    nodes.pop()
    async with asyncio.timeout(10):
        page = await nodes[0].backend.list_clients(10, None)
    assert [c["connectionId"] for c in page.items] == ["c0", "c1"]
    assert page.total == 2


async def test_a_silent_subscriber_costs_one_timeout_and_a_warning(
    nodes: list[Harness], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    backend = nodes[0].backend
    assert isinstance(backend, RedisBackend)
    await backend.add_connection(nodes[0].conn("u0", connection_id="c0"))
    await nodes[1].backend.add_connection(nodes[1].conn("u1", connection_id="c1"))
    silent = aioredis.Redis.from_url(redis_server.url)
    pubsub = silent.pubsub()
    await pubsub.subscribe(backend.keys.dashboard_channel)
    try:
        backend.query.timeout_s = 0.3
        with caplog.at_level(logging.WARNING, logger="gateway.dashboard"):
            page = await backend.list_clients(10, None)
        assert [c["connectionId"] for c in page.items] == ["c0", "c1"]
        assert "3 of 4 nodes answered" in caplog.text
        # a malformed request is ignored and the nodes keep answering
        await silent.publish(backend.keys.dashboard_channel, b"not json")
        await silent.publish(backend.keys.dashboard_channel, b'{"id": 1}')
    finally:
        await pubsub.aclose()
        await silent.aclose()
    page = await backend.list_clients(10, None)
    assert page.total == 2
