"""Fixtures of the worker tests: in-process workers and an asyncio Redis client."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from gateway.config import load_settings
from tests.support import RedisServer
from tests.support.redis_server import RedisCluster
from worker.main import Worker

_seq = itertools.count(1)

StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker() -> AsyncIterator[StartWorker]:
    """``await start_worker(redis_url, **settings)`` -> a started ``Worker`` in this event loop
    (its /metrics on ``http://127.0.0.1:<worker.port>``); all are stopped at teardown."""
    started: list[Worker] = []

    async def make(redis_url: str, **overrides: Any) -> Worker:
        values: dict[str, Any] = {
            "redis_url": redis_url,
            "worker_host": "127.0.0.1",
            "worker_port": 0,
            "worker_id": f"inproc-worker-{next(_seq)}",
            "janitor_interval_s": 0.5,
        }
        values.update(overrides)
        worker = Worker(load_settings(**values))
        await worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await worker.stop(grace_s=3)


@pytest.fixture
async def aredis(redis_server: RedisServer) -> AsyncIterator[Any]:
    """An asyncio client on the test's redis-server (bytes replies, RESP2)."""
    client = aioredis.Redis.from_url(redis_server.url, protocol=2)
    yield client
    await client.aclose()


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Any, bool]]:
    """(client, cluster mode) on a fresh single Redis or the session's Redis Cluster."""
    client: Any
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client = aioredis.Redis.from_url(server.url, protocol=2)
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        client = AsyncRedisCluster(host="127.0.0.1", port=cluster.ports[0], protocol=2)
    yield client, request.param == "cluster"
    await client.aclose()


def worker_url(worker: Worker) -> str:
    return f"http://127.0.0.1:{worker.port}"
