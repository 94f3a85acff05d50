"""Events-per-minute rollups: the test's events appear in the series once, with two workers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from gateway.publish import AsyncPublisher
from tests.support import RedisServer
from tests.support.ports import eventually
from tests.worker.conftest import StartWorker, worker_url
from tests.worker.helpers import KEYS, scrape, value
from worker.metrics import WorkerMetrics
from worker.rollups import Rollups


def _decode(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


async def test_two_workers_roll_the_events_up_once(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    minute = time.time_ns() // 60_000_000_000
    # 30 minutes ago: counted; an old series minute and a stale type: trimmed away
    await aredis.hset(KEYS.events_minute(minute - 30), mapping={"seed.type": 4})
    await aredis.hset(KEYS.events_series, mapping={str(minute - 120): 99})
    await aredis.hset(KEYS.events_series_by_type, mapping={"stale.type": 1})
    publisher = AsyncPublisher.from_url(redis_server.url)
    for type_ in ("t.a", "t.a", "t.b", "t.a", "t.b"):
        await publisher.publish("service_1", type_, {"x": 1})
    await publisher.aclose()
    workers = [
        await start_worker(redis_server.url, janitor_interval_s=0.2),
        await start_worker(redis_server.url, janitor_interval_s=0.2),
    ]

    async def rolled_up() -> bool:
        types = _decode(await aredis.hgetall(KEYS.events_series_by_type))
        return types == {"seed.type": 4, "t.a": 3, "t.b": 2}

    await eventually(rolled_up, 5, "the per-type totals")
    for _ in range(2):  # more rounds, on both workers: the values stay exact
        await _rounds(http, workers, 4)
        series = _decode(await aredis.hgetall(KEYS.events_series))
        now = time.time_ns() // 60_000_000_000
        assert set(series) == {str(m) for m in range(now - 59, now + 1)}  # 60 minutes, trimmed
        assert series[str(minute - 30)] == 4
        assert sum(series.values()) == 9  # 5 published + 4 seeded, each counted once
        types = _decode(await aredis.hgetall(KEYS.events_series_by_type))
        assert types == {"seed.type": 4, "t.a": 3, "t.b": 2}
    assert 0 < await aredis.ttl(KEYS.events_series) <= 7200


async def _rounds(http: Any, workers: list[Any], n: int) -> None:
    async def total() -> float:
        found = [await scrape(http, worker_url(w)) for w in workers]
        return sum(value(m, "gateway_worker_rollups_total") for m in found)

    start = await total()

    async def more() -> bool:
        return await total() >= start + n

    await eventually(more, 10, f"{n} more rollups", interval_s=0.1)


async def test_concurrent_rollups_write_absolute_values(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any
) -> None:
    """Without the lease (two workers racing): still no double counting."""
    worker = await start_worker(redis_server.url, janitor_interval_s=60)
    now_ms = time.time_ns() // 1_000_000
    minute = now_ms // 60000
    await aredis.hset(KEYS.events_minute(minute), mapping={"a": 5, "b": 1})
    await aredis.hset(KEYS.events_minute(minute - 59), mapping={"a": 2})
    await aredis.hset(KEYS.events_minute(minute - 60), mapping={"a": 1000})  # outside
    rollups = [Rollups(aredis, worker.settings, WorkerMetrics(), asyncio.Event()) for _ in range(4)]
    totals = await asyncio.gather(*(r.rollup(now_ms) for r in rollups))
    assert totals == [8, 8, 8, 8]
    series = _decode(await aredis.hgetall(KEYS.events_series))
    assert series[str(minute)] == 6 and series[str(minute - 59)] == 2
    assert str(minute - 60) not in series and len(series) == 60
    assert _decode(await aredis.hgetall(KEYS.events_series_by_type)) == {"a": 7, "b": 1}


async def test_the_node_dashboard_series_and_the_rollup_agree(
    redis_server: RedisServer, make_node: Any, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    """Events ingested by the worker are counted where the node's dashboard reads them."""
    node = await make_node(redis_server.url)
    worker = await start_worker(redis_server.url, janitor_interval_s=0.2)
    for n in range(3):
        await aredis.xadd(KEYS.ingest, {"room": "service_2", "type": "t", "payload": str(n)})

    async def counted() -> bool:
        series = _decode(await aredis.hgetall(KEYS.events_series))
        return sum(series.values()) == 3

    await eventually(counted, 5, "the ingested events rolled up")
    async with http.get(
        f"{node.http_url}/dashboard/stats",
        headers={"Authorization": "Bearer test-dashboard-token"},
    ) as response:
        stats = await response.json()
    assert sum(stats["eventsPerMinuteSeries"]) == 3
    metrics = await scrape(http, worker_url(worker))
    assert value(metrics, "gateway_worker_rollups_total") >= 1
