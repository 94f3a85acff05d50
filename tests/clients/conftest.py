"""Fixtures and helpers for the end-to-end tests of the shipped clients (CONTRACT section 6):
a two-node cluster of real ``gateway`` processes on a real redis-server, a steady publisher, and
a collector that records what a client's handlers were given, in order.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import GatewayProcess, RedisServer
from tests.support.nodes import API_KEY, DASHBOARD
from tests.support.ports import eventually

DRAIN_SECONDS = "0.5"


def cluster_env(redis_url: str, **extra: str) -> dict[str, str | None]:
    """Environment of a cluster node: shared Redis, a short drain, the server API and the
    dashboard enabled (their tokens are the in-process nodes' ones)."""
    return {
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_DRAIN_SECONDS": DRAIN_SECONDS,
        "GATEWAY_PUBLISH_API_KEY": API_KEY,
        "GATEWAY_DASHBOARD_TOKEN": DASHBOARD,
        **extra,
    }


@dataclass
class Cluster:
    redis: RedisServer
    nodes: list[GatewayProcess]

    @property
    def ws_urls(self) -> list[str]:
        return [node.ws_url for node in self.nodes]

    def by_id(self, node_id: str | None) -> GatewayProcess:
        [node] = [n for n in self.nodes if n.node_id == node_id]
        return node


@pytest.fixture
def start_cluster(gateway_process: Any, redis_server: RedisServer) -> Any:
    """``await start_cluster(n=2, **env)``: ``n`` gateway processes on the test's redis-server,
    started side by side (``Cluster.nodes``, ``.ws_urls``, ``.redis``)."""

    async def start(n: int = 2, **extra_env: str) -> Cluster:
        env = cluster_env(redis_server.url, **extra_env)
        nodes = await asyncio.gather(*(gateway_process.astart(env) for _ in range(n)))
        return Cluster(redis_server, list(nodes))

    return start


@dataclass
class Collector:
    """A handler for ``client.on("*", ...)`` that keeps every event it is given, in order."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def in_room(self, room: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("room") == room]

    async def wait_for(self, room: str, count: int, timeout_s: float = 10.0) -> None:
        await eventually(
            lambda: len(self.in_room(room)) >= count, timeout_s, f"{count} events in {room}"
        )


class PinnedJitter(random.Random):
    """Jitter that always waits the whole backoff window (0.25 s for the first reconnect), so
    the client is away long enough for events to be published while it is gone."""

    def uniform(self, a: float, b: float) -> float:
        return b


def offsets(events: list[dict[str, Any]]) -> list[int]:
    return [int(e["offset"]) for e in events]


def seqs(events: list[dict[str, Any]]) -> list[Any]:
    return [e["payload"]["seq"] for e in events]
