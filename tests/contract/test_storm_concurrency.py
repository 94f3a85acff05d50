"""A reconnect storm asks Redis for thousands of rooms' history at once. On a single Redis those
reads share the group commit instead of taking a pooled connection each: redis-py's asyncio pool
refuses callers past its size (100 by default: "Too many connections"), which failed joins in
``bench/storm.py``."""

from __future__ import annotations

import asyncio

from gateway.backend.base import Position
from gateway.backend.redis import RedisBackend
from tests.support import RedisServer


async def test_a_thousand_history_reads_at_once_all_answer(redis_server: RedisServer) -> None:
    backend = RedisBackend(redis_server.url)
    try:
        rooms = [f"cliente_{i}" for i in range(1000)]
        for room in rooms[:10]:
            await backend.publish([room], "t", b"{}", "test")
        recoveries = await asyncio.gather(
            *(backend.history_since(room, Position(0, "0")) for room in rooms)
        )
        assert [len(r.publications) for r in recoveries] == [1] * 10 + [0] * 990
        assert all(r.recovered for r in recoveries)
        pool = backend.client.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) <= 2
    finally:
        await backend.close()
