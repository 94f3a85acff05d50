"""The dashboard's event log on Redis (gateway/backend/event_log.py): each publishing process
writes its summaries once per interval in one call, not two writes per publish into the ``{g}``
slot; the list stays ordered by publish time across processes, a retried flush counts once, a
flush that failed is sent again as it was, and closing a publisher writes what it held."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway.backend import event_log, scripts
from gateway.backend.event_log import AsyncEventLog, Pending
from gateway.backend.keys import Keys
from gateway.backend.redis_state import RedisState
from gateway.events import now_ms
from gateway.publish import AsyncPublisher, Publisher
from tests.support import RedisServer
from tests.support.ports import eventually, free_port

KEYS = Keys("gateway")


def commands(admin: Any) -> dict[str, int]:
    stats = admin.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def listed(redis_server: RedisServer) -> tuple[list[dict[str, Any]], list[int]]:
    client = Redis.from_url(redis_server.url)
    try:
        state = RedisState(client, KEYS, node_lease_s=15.0, cluster=False)
        page = await state.recent_events(1000, None)
        series = await state.events_per_minute(now_ms())
        await state.batch.aclose()
        return page.items, series
    finally:
        await client.aclose()


async def test_publishes_write_no_summary_each_and_one_flush_per_interval(
    redis_server: RedisServer,
) -> None:
    publisher = AsyncPublisher.from_url(redis_server.url)
    admin = redis_server.admin()
    try:
        await publisher.publish("cliente_0", "warm", {})  # scripts loaded, connections made
        await publisher.event_log.flush()
        admin.config_resetstat()
        started = time.monotonic()
        results = await asyncio.gather(
            *(publisher.publish_many([f"cliente_{i}"], "t", {"n": i}) for i in range(300))
        )
        during = commands(admin)
        # the publishes wrote nothing into the {g} slot: one script call each, whose XADD and
        # HINCRBY are the room's history and offset (no events stream, no minute counter)
        assert during.get("evalsha") == 300
        assert during["xadd"] == 300 and during["hincrby"] == 300
        assert "zadd" not in during
        await eventually(
            lambda: sum(commands(admin).get(c, 0) for c in ("zadd",)) > 0,
            event_log.FLUSH_S + 3,
            "the event log's flush",
        )
        waited = time.monotonic() - started
        after = commands(admin)
        flushes = after["evalsha"] - 300
        assert 1 <= flushes <= 1 + int(waited / event_log.FLUSH_S)
        assert after["zadd"] == flushes  # one ZADD of all the summaries per flush
        items, series = await listed(redis_server)
        assert sum(series) == 301  # every event counted
        # listed: the warm-up event, then each flush's newest PER_FLUSH
        ids = [item["id"] for item in items]
        assert 1 + event_log.PER_FLUSH <= len(ids) <= min(301, 1 + flushes * event_log.PER_FLUSH)
        assert set(ids[:-1]) <= {r.event_id for r in results}
        assert ids[0] == results[-1].event_id
    finally:
        await publisher.aclose()


async def test_the_list_is_by_publish_time_whatever_order_processes_flush_in(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url)
    first, second = AsyncEventLog(client, KEYS), AsyncEventLog(client, KEYS)
    ts = now_ms()
    # two processes publish alternately; the second one flushes first
    for i in range(6):
        owner = first if i % 2 == 0 else second
        owner.pending.add(f"cliente_{i}", "t", f"ev{i}", ts + i, "api")
    try:
        await second.flush()
        await first.flush()
    finally:
        await client.aclose()
    items, series = await listed(redis_server)
    assert [item["id"] for item in items] == [f"ev{i}" for i in reversed(range(6))]
    assert [item["ts"] for item in items] == [ts + i for i in reversed(range(6))]
    assert items[0] == {
        "room": "cliente_5",
        "type": "t",
        "id": "ev5",
        "ts": ts + 5,
        "source": "api",
    }
    assert sum(series) == 6


async def test_same_millisecond_events_of_one_process_keep_their_order(
    redis_server: RedisServer,
) -> None:
    client = Redis.from_url(redis_server.url)
    log = AsyncEventLog(client, KEYS)
    ts = now_ms()
    for i in range(20):  # ids that sort the other way round
        log.pending.add("cliente_1", "t", f"{99 - i:02d}", ts, "api")
    try:
        await log.flush()
    finally:
        await client.aclose()
    items, _ = await listed(redis_server)
    assert [item["id"] for item in items] == [f"{99 - i:02d}" for i in reversed(range(20))]


async def test_a_retried_flush_counts_once_and_the_log_keeps_its_newest_entries(
    redis_server: RedisServer,
) -> None:
    script = scripts.load(scripts.EVENT_LOG)
    client = Redis.from_url(redis_server.url)
    ts = now_ms()
    flushes = event_log.LOG_SIZE // event_log.PER_FLUSH + 2
    per_flush = event_log.PER_FLUSH + 30  # more than a flush carries
    try:
        for f in range(flushes):
            pending = Pending()
            for i in range(f * per_flush, (f + 1) * per_flush):
                pending.add(f"cliente_{i % 7}", "a" if i % 2 else "b", f"ev{i}", ts + i, "api")
            flush = pending.take()
            assert flush is not None
            assert len(flush.members) == event_log.PER_FLUSH  # its newest
            assert flush.events == per_flush  # but counts all
            call_keys, args = flush.call(KEYS)
            assert await script.run(client, call_keys, args) == 1
            assert await script.run(client, call_keys, args) == 0  # the same flush again: no-op
        assert await client.ttl(KEYS.events_flush(flush.mark)) > 0
    finally:
        await client.aclose()
    items, series = await listed(redis_server)
    assert sum(series) == flushes * per_flush
    assert len(items) == event_log.LOG_SIZE
    newest = [
        i
        for f in reversed(range(flushes))
        for i in reversed(range((f + 1) * per_flush - event_log.PER_FLUSH, (f + 1) * per_flush))
    ]
    assert [item["id"] for item in items] == [f"ev{i}" for i in newest[: event_log.LOG_SIZE]]


async def test_a_failed_flush_is_sent_again_as_it_was(redis_server: RedisServer) -> None:
    away = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    log = AsyncEventLog(away, KEYS)
    ts = now_ms()
    log.pending.add("cliente_1", "t", "ev1", ts, "api")
    with pytest.raises(Exception):  # noqa: B017 - whatever redis-py raises for a closed port
        await log.flush()
    log.pending.add("cliente_2", "t", "ev2", ts + 1, "api")  # published while Redis was away
    client = Redis.from_url(redis_server.url)
    log.client = client
    try:
        await log.flush()
        await log.flush()  # nothing left: no second count
    finally:
        await client.aclose()
        await away.aclose()
    items, series = await listed(redis_server)
    assert [item["id"] for item in items] == ["ev2", "ev1"]
    assert sum(series) == 2


async def test_closing_an_async_publisher_writes_what_it_held(redis_server: RedisServer) -> None:
    publisher = AsyncPublisher.from_url(redis_server.url)
    result = await publisher.publish_many(["cliente_3", "cliente_4"], "closing", {"x": 1})
    await publisher.aclose()  # at once: before the interval is over
    items, series = await listed(redis_server)
    assert sorted((i["id"], i["room"]) for i in items) == [
        (result.event_id, "cliente_3"),
        (result.event_id, "cliente_4"),
    ]
    assert {i["source"] for i in items} == {"publisher"}
    assert sum(series) == 2


async def test_the_sync_publisher_flushes_on_its_own_and_on_close(
    redis_server: RedisServer,
) -> None:
    publisher = Publisher.from_url(redis_server.url)
    try:
        publisher.publish("cliente_5", "timer", {})
        # no close: the timer thread writes it within the interval
        waited = await eventually(
            lambda: redis_server.admin().zcard(KEYS.events_log) == 1,
            event_log.FLUSH_S + 3,
            "the timer's flush",
        )
        assert waited >= event_log.FLUSH_S * 0.5
        publisher.publish("cliente_6", "closing", {})
        publisher.publish("cliente_6", "closing", {}, event_id=None, idempotency_key="k1")
        publisher.publish("cliente_6", "closing", {}, idempotency_key="k1")  # a repeat: not counted
    finally:
        publisher.close()
    items, series = await listed(redis_server)
    assert [i["type"] for i in items] == ["closing", "closing", "timer"]
    assert sum(series) == 3


def test_a_django_process_that_exits_without_closing_writes_its_summaries(
    redis_server: RedisServer,
) -> None:
    code = (
        "import sys\n"
        "from gateway.publish import Publisher\n"
        "Publisher.from_url(sys.argv[1]).publish('cliente_9', 'at_exit', {})\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code, redis_server.url], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < event_log.FLUSH_S + 10
    entries = redis_server.admin().zrange(KEYS.events_log, 0, -1)
    assert [event_log.summary(e)["type"] for e in entries] == ["at_exit"]


async def test_a_publisher_closing_while_redis_is_away_says_what_it_could_not_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    away = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    log = AsyncEventLog(away, KEYS)
    ts = now_ms()
    log.pending.add("cliente_1", "t", "ev1", ts, "api")
    log.pending.add("cliente_2", "t", "ev2", ts, "api")
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.events"):
            await log.aclose()
    finally:
        await away.aclose()
    [warning] = [r for r in caplog.records if r.name == "gateway.events"]
    assert warning.levelno == logging.WARNING
    assert "dashboard summary of 2 events not written" in warning.getMessage()
