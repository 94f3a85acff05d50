"""The backend under test: a started ``MemoryBackend`` or ``RedisBackend`` (a fresh
redis-server each), with callbacks that collect what the backend delivers."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.backend.base import Backend
from gateway.backend.memory import MemoryBackend
from gateway.backend.redis import RedisBackend
from gateway.backend.redis_publish import HistoryPolicy
from tests.contract.harness import UNSUBSCRIBE_DELAY_S, Harness

_seq = itertools.count(1)


@pytest.fixture
def redis_url(backend_kind: str, request: pytest.FixtureRequest) -> str | None:
    """A fresh redis-server for the redis param (set up first, so it stops last)."""
    return request.getfixturevalue("redis_server").url if backend_kind == "redis" else None


@pytest.fixture
async def make_backend(backend_kind: str, redis_url: str | None) -> AsyncIterator[Any]:
    """``await make_backend(history_size=100, history_ttl_s=600, meta_ttl_s=86400)`` -> a
    started ``Harness``; every backend is closed at teardown."""
    started: list[Harness] = []

    async def make(
        history_size: int = 100, history_ttl_s: int = 600, meta_ttl_s: int = 86400
    ) -> Harness:
        backend: Backend
        if redis_url is None:
            backend = MemoryBackend(history_size, history_ttl_s, meta_ttl_s)
        else:
            backend = RedisBackend(
                redis_url,
                prefix=f"contract{next(_seq)}",
                history=HistoryPolicy(history_size, history_ttl_s, meta_ttl_s),
                node_lease_s=15.0,
                probe_s=1.0,
                unsubscribe_delay_s=UNSUBSCRIBE_DELAY_S,
            )
        harness = Harness(backend, node_id=f"contract-node-{next(_seq)}")
        await harness.start()
        started.append(harness)
        return harness

    yield make
    for harness in started:
        await harness.backend.close()


@pytest.fixture
async def backend(make_backend: Any) -> Harness:
    """A started backend with default history settings."""
    harness: Harness = await make_backend()
    return harness
