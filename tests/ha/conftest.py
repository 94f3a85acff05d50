"""Redis deployments with failover for the topology tests: a Redis Cluster of 3 masters with
one replica each, and Redis Sentinel (1 master, 1 replica, 3 sentinels). Each is started once
per module (building a cluster takes seconds) and healed before every test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.support import GatewayProcess, ProcessFactory, RedisCluster, RedisSentinels
from tests.support.nodes import API_KEY


@pytest.fixture(scope="module")
def ha_cluster_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("ha-cluster"), masters=3, replicas=1)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def ha_cluster(ha_cluster_module: RedisCluster) -> RedisCluster:
    """3 masters + 3 replicas, every node alive, replicas in sync, masters empty. Roles and
    slots may differ from the last test's: ask ``masters()`` and ``keyslot_node()``."""
    ha_cluster_module.flush()
    return ha_cluster_module


@pytest.fixture(scope="module")
def sentinels_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinels]:
    deployment = RedisSentinels(tmp_path_factory.mktemp("sentinel"))
    deployment.start()
    yield deployment
    deployment.stop()


@pytest.fixture
def sentinels(sentinels_module: RedisSentinels) -> RedisSentinels:
    """Sentinel with its master and replica alive and agreed on, the master empty."""
    sentinels_module.heal()
    sentinels_module.master().admin().flushall()
    return sentinels_module


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def start_nodes(gateway_process: ProcessFactory[GatewayProcess]) -> Any:
    """``await start_nodes(redis_url, n=3, **env)``: ``n`` gateway processes on that Redis,
    started together, with the publish API enabled."""

    async def start(redis_url: str, n: int = 3, **env: str) -> list[GatewayProcess]:
        base = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_PUBLISH_API_KEY": API_KEY, **env}
        return list(await asyncio.gather(*(gateway_process.astart(base) for _ in range(n))))

    return start


def node_logs_clean(nodes: list[GatewayProcess]) -> None:
    """No traceback in any node's output."""
    for node in nodes:
        assert "Traceback" not in node.logs(), node.logs()[-3000:]
