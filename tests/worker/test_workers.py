"""Several worker processes on one stream: exactly-once publishing across workers, a worker
killed with SIGKILL mid-burst, a graceful SIGTERM, and a Redis outage."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from tests.support import ProcessFactory, RedisServer, WorkerProcess
from tests.support.ports import eventually
from tests.worker.helpers import (
    KEYS,
    add_entries,
    history_numbers,
    pending_by_consumer,
    pending_total,
    room_offset,
    scrape,
    until_holding,
    value,
)

pytestmark = pytest.mark.slow


def worker_env(redis_url: str, **extra: str) -> dict[str, str | None]:
    return {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_JANITOR_INTERVAL_S": "1", **extra}


async def _all_done(client: Any, room: str, n: int) -> bool:
    return await room_offset(client, room) >= n and await pending_total(client) == 0


async def test_two_workers_publish_each_of_1000_entries_exactly_once(
    redis_server: RedisServer,
    make_node: Any,
    worker_process: ProcessFactory[WorkerProcess],
    aredis: Any,
    http: Any,
) -> None:
    node = await make_node(redis_server.url)
    member = await node.client(http, token="proveedor-2")
    await member.expect("auth_success")
    await member.join("service_1")
    env = worker_env(redis_server.url, GATEWAY_INGEST_BATCH="50")
    workers = [await worker_process.astart(env), await worker_process.astart(env)]

    await add_entries(aredis, "service_1", range(1, 1001))
    events = await member.events(1000, room="service_1", timeout=20)
    assert sorted(e["payload"]["n"] for e in events) == list(range(1, 1001))
    assert [e["offset"] for e in events] == list(range(1, 1001))  # live order = offset order
    assert len({e["id"] for e in events}) == 1000
    await eventually(lambda: _all_done(aredis, "service_1", 1000), 10, "all acknowledged")
    assert await room_offset(aredis, "service_1") == 1000
    await asyncio.sleep(0.3)
    assert member.pending_events("service_1") == []  # nothing arrived a second time

    ingested = [
        value(await scrape(http, w.http_url), "gateway_worker_ingested_total") for w in workers
    ]
    assert sum(ingested) == 1000
    consumers = await aredis.xinfo_consumers(KEYS.ingest, KEYS.ingest_group)
    assert {c["name"].decode() for c in consumers} == {w.worker_id for w in workers}
    await member.close()


async def test_a_worker_killed_mid_burst_loses_nothing_and_duplicates_nothing(
    redis_server: RedisServer, worker_process: ProcessFactory[WorkerProcess], aredis: Any, http: Any
) -> None:
    env = worker_env(
        redis_server.url,
        GATEWAY_INGEST_BATCH="20",
        GATEWAY_INGEST_CLAIM_IDLE_S="1",
        GATEWAY_HISTORY_SIZE="30000",
    )
    # big batches keep the victim's entries unacknowledged long enough to be caught holding some;
    # alone, it is the one that reads the burst
    victim = await worker_process.astart({**env, "GATEWAY_INGEST_BATCH": "200"})
    total = 30000
    await add_entries(aredis, "service_5", range(1, total + 1))

    # freeze the victim at a moment it holds entries it read but has not acknowledged, start the
    # survivor, then kill the victim: no chance for it to finish what it held
    deadline = time.monotonic() + 10
    while True:
        await until_holding(aredis, victim.worker_id)
        os.kill(victim.pid, signal.SIGSTOP)
        left = (await pending_by_consumer(aredis)).get(victim.worker_id, 0)
        if left > 0:
            break  # frozen while holding entries
        os.kill(victim.pid, signal.SIGCONT)  # it acknowledged them just before: once more
        assert time.monotonic() < deadline, "the victim was never frozen holding entries"
    offset_at_kill = await room_offset(aredis, "service_5")
    assert offset_at_kill < total, "the burst was over before the kill"
    survivor = await worker_process.astart(env)
    victim.kill()

    await eventually(lambda: _all_done(aredis, "service_5", total), 30, "the burst published")
    assert await room_offset(aredis, "service_5") == total
    numbers = await history_numbers(aredis, "service_5")
    assert len(numbers) == total
    assert sorted(numbers) == list(range(1, total + 1))  # each entry exactly once
    assert (await pending_by_consumer(aredis)).get(victim.worker_id, 0) == 0
    # what the victim held was claimed by the survivor
    claimed = value(await scrape(http, survivor.http_url), "gateway_worker_claimed_total")
    assert claimed >= left


async def test_sigterm_finishes_the_batch_in_hand_and_exits_0(
    redis_server: RedisServer, worker_process: ProcessFactory[WorkerProcess], aredis: Any
) -> None:
    env = worker_env(
        redis_server.url,
        GATEWAY_INGEST_BATCH="20",
        GATEWAY_INGEST_CLAIM_IDLE_S="1",
        GATEWAY_HISTORY_SIZE="20000",
    )
    first = await worker_process.astart(env)
    # enough that the worker is still busy when we look (2,000 could all be done by then)
    total = 20000
    await add_entries(aredis, "service_6", range(1, total + 1))
    await until_holding(aredis, first.worker_id)
    first.term()
    assert await asyncio.to_thread(first.wait, 10) == 0
    logs = first.logs()
    assert "SIGTERM: finishing the batch in hand" in logs
    assert "Traceback" not in logs
    # what it read, it published and acknowledged: nothing is left pending
    assert await pending_total(aredis) == 0
    [group] = await aredis.xinfo_groups(KEYS.ingest)
    published = await room_offset(aredis, "service_6")
    assert published == group["entries-read"] < total

    await worker_process.astart(env)
    await eventually(lambda: _all_done(aredis, "service_6", total), 20, "the rest published")
    numbers = await history_numbers(aredis, "service_6")
    assert sorted(numbers) == list(range(1, total + 1))


async def test_a_redis_outage_is_logged_retried_with_backoff_and_survived(
    redis_server: RedisServer, worker_process: ProcessFactory[WorkerProcess], http: Any
) -> None:
    worker = await worker_process.astart(worker_env(redis_server.url))
    redis_server.stop()
    await asyncio.sleep(4)
    assert worker.alive
    async with http.get(f"{worker.http_url}/healthz") as response:
        assert response.status == 200
    metrics = await scrape(http, worker.http_url)
    failures = value(metrics, "gateway_worker_errors_total", op="ingest")
    assert 1 <= failures <= 30  # backoff, not a busy loop
    await eventually(lambda: "Redis unavailable for ingest" in worker.logs(), 5, "outage logged")

    redis_server.start()  # empty: the consumer group must be created again
    client = redis_server.client()
    started = time.monotonic()
    client.xadd(KEYS.ingest, {"room": "service_8", "type": "t", "payload": '{"n": 1}'})

    async def published() -> bool:
        return client.hget(KEYS.room_meta("service_8"), "offset") == b"1"

    await eventually(published, 10, "an entry published after the outage")
    assert time.monotonic() - started < 8
    # a running process's log lines may trail its actions by a few ms (burst buffering)
    await eventually(
        lambda: "Redis reachable again for ingest" in worker.logs(), 5, "the recovery logged"
    )
    assert "Traceback" not in worker.logs()
