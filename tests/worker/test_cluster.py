"""The worker on a Redis Cluster: the ingest stream is one key, publishing is sharded."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tests.support import RedisCluster
from tests.support.ports import eventually
from tests.worker.conftest import StartWorker, worker_url
from tests.worker.helpers import KEYS, scrape, value

pytestmark = pytest.mark.cluster


async def test_ingest_on_a_cluster_reaches_members_and_is_rolled_up(
    redis_cluster: RedisCluster, make_node: Any, start_worker: StartWorker, http: Any
) -> None:
    node = await make_node(redis_cluster.url, redis_cluster=True)
    member = await node.client(http, token="cliente-3")
    await member.expect("auth_success")
    rooms = ["service_1", "service_2", "location_3"]  # rooms on different slots
    for room in rooms:
        await member.join(room)
    worker = await start_worker(redis_cluster.url, redis_cluster=True, janitor_interval_s=0.3)
    client = AsyncRedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], protocol=2)
    try:
        await client.xadd(KEYS.ingest, {"room": "nope", "type": "t", "payload": "1"})
        for i, room in enumerate(rooms):
            await client.xadd(KEYS.ingest, {"room": room, "type": "t", "payload": str(i)})
        await client.xadd(
            KEYS.ingest, {"rooms": '["service_1", "location_3"]', "type": "t.many", "payload": "9"}
        )
        got = await member.events(5, timeout=10)
        assert sorted((e["room"], e["payload"]) for e in got) == [
            ("location_3", 2),
            ("location_3", 9),
            ("service_1", 0),
            ("service_1", 9),
            ("service_2", 1),
        ]
        assert {e["source"] for e in got} == {"ingest"}

        async def dead_lettered() -> bool:
            return int(await client.xlen(KEYS.ingest_dead)) == 1

        await eventually(dead_lettered, 5, "the malformed entry dead-lettered")
        [(_, dead)] = await client.xrange(KEYS.ingest_dead, "-", "+")
        assert dead[b"reason"] == b"'nope' is not a valid room"

        async def rolled_up() -> bool:
            types = await client.hgetall(KEYS.events_series_by_type)
            return {k.decode(): int(v) for k, v in types.items()} == {"t": 3, "t.many": 2}

        await eventually(rolled_up, 10, "the sharded publishes counted and rolled up")

        async def swept() -> bool:
            metrics = await scrape(http, worker_url(worker))
            return value(metrics, "gateway_worker_janitor_sweeps_total") >= 1

        await eventually(swept, 5, "a janitor sweep on the cluster")
        metrics = await scrape(http, worker_url(worker))
        assert value(metrics, "gateway_worker_ingested_total") == 4
        for op in ("ingest", "janitor", "rollup", "publish"):
            assert value(metrics, "gateway_worker_errors_total", op=op) == 0
    finally:
        await client.aclose()
        await member.close()
