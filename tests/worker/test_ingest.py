"""The ingest stream end to end: XADD from any program -> the worker -> connected members."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from prometheus_client import generate_latest

from gateway.publish import AsyncPublisher
from tests.support import RedisServer
from tests.support.ports import eventually
from tests.worker.conftest import StartWorker, worker_url
from tests.worker.helpers import (
    KEYS,
    add_entries,
    history_numbers,
    parse_metrics,
    pending_by_consumer,
    pending_total,
    room_offset,
    scrape,
    value,
)
from worker.ingest import IngestStats
from worker.metrics import WorkerMetrics


async def test_xadd_reaches_a_member_and_a_malformed_entry_goes_to_the_dead_letters(
    redis_server: RedisServer, make_node: Any, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    member = await node.client(http, token="cliente-4")
    await member.expect("auth_success")
    await member.join("service_9")
    await start_worker(redis_server.url)

    # the contract's literal command, from a plain Redis client
    bad = {"room": "kitchen", "type": "order.updated", "payload": '{"n": 0}', "reason": "mine"}
    await aredis.xadd("gateway:ingest", bad)
    await aredis.xadd(
        "gateway:ingest", {"room": "service_9", "type": "order.updated", "payload": '{"n": 1}'}
    )
    [event] = await member.events(1, room="service_9")
    assert event["source"] == "ingest"
    assert event["type"] == "order.updated"
    assert event["payload"] == {"n": 1}
    assert event["offset"] == 1
    assert event["room"] == "service_9"

    await eventually(lambda: _dead_count(aredis, 1), 5, "the malformed entry dead-lettered")
    [(_, fields)] = await aredis.xrange("gateway:ingest:dead", "-", "+")
    dead = {k.decode(): v.decode() for k, v in fields.items()}
    assert dead == {
        "room": "kitchen",
        "type": "order.updated",
        "payload": '{"n": 0}',
        "reason": (
            "unknown field 'reason' "
            "(allowed: event_id, idempotency_key, payload, receipts, room, rooms, type)"
        ),
        "reason.original": "mine",  # the entry's own field is kept, under another name
    }
    await eventually(lambda: _no_pending(aredis), 5, "every entry acknowledged")
    await member.close()


async def _no_pending(client: Any) -> bool:
    return await pending_total(client) == 0


async def test_each_kind_of_malformed_entry_is_dead_lettered_and_valid_ones_keep_flowing(
    redis_server: RedisServer, make_node: Any, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    admin = await node.client(http, token="admin-1")
    await admin.expect("auth_success")
    await admin.join("service_1")
    await admin.join("location_5")
    entries: list[dict[str, Any]] = [
        {"room": "service_1", "type": "t", "payload": '{"n": 1}'},
        {"room": "not_a_room", "type": "t", "payload": "{}"},
        {"room": "service_1", "type": "bad type!", "payload": "{}"},
        {"room": "service_1", "type": "t", "payload": "{broken"},
        {"rooms": "service_1", "type": "t", "payload": "{}"},
        {"room": "service_1", "type": "t"},
        {"room": "service_1", "rooms": '["service_1"]', "type": "t", "payload": "{}"},
        {"room": "service_1", "type": b"\xff", "payload": "{}"},
        {"rooms": '["service_1", "location_5"]', "type": "t", "payload": '{"n": 2}'},
    ]
    for fields in entries:
        await aredis.xadd(KEYS.ingest, fields)
    worker = await start_worker(redis_server.url)

    first, second = await admin.events(2, room="service_1")
    [other] = await admin.events(1, room="location_5")
    assert [first["payload"]["n"], second["payload"]["n"]] == [1, 2]
    assert [first["offset"], second["offset"]] == [1, 2]
    # one event to two rooms: one id, one offset sequence per room
    assert other["id"] == second["id"] and other["offset"] == 1
    await eventually(lambda: _dead_count(aredis, 7), 5, "7 entries dead-lettered")
    dead = await aredis.xrange(KEYS.ingest_dead, "-", "+")
    reasons = [fields[b"reason"].decode() for _, fields in dead]
    assert len(reasons) == 7
    for expected, reason in zip(
        [
            "'not_a_room' is not a valid room",
            "field 'type' must match",
            "field 'payload' is not valid JSON",
            "field 'rooms' is not a JSON list",
            "missing field 'payload'",
            "give exactly one of the fields 'room' or 'rooms'",
            "field 'type' is not UTF-8 text",
        ],
        reasons,
        strict=True,
    ):
        assert expected in reason
    assert dead[-1][1][b"type"] == b"\xff"  # original bytes kept as they were
    metrics = await scrape(http, worker_url(worker))
    assert value(metrics, "gateway_worker_dead_letters_total") == 7
    assert value(metrics, "gateway_worker_ingested_total") == 2
    await admin.close()


async def test_entries_added_before_any_worker_existed_are_processed(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any
) -> None:
    await add_entries(aredis, "service_2", range(1, 31))
    await start_worker(redis_server.url, ingest_batch=7)  # several batches
    await eventually(lambda: _offset_is(aredis, "service_2", 30), 10, "30 events published")
    assert await history_numbers(aredis, "service_2") == list(range(1, 31))  # stream order


async def _offset_is(client: Any, room: str, n: int) -> bool:
    return await room_offset(client, room) == n


async def test_pending_entries_of_a_dead_consumer_are_claimed_and_not_delivered_twice(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    """A worker that read entries and died: its entries stay pending until a live worker
    claims them. Entry 7 carries an idempotency key and was already published by the dead
    worker before it could acknowledge: the claim must not deliver it a second time."""
    await aredis.xgroup_create(KEYS.ingest, KEYS.ingest_group, id="0", mkstream=True)
    pipe = aredis.pipeline(transaction=False)
    for n in range(1, 21):
        fields = {"room": "service_3", "type": "t", "payload": orjson.dumps({"n": n})}
        if n == 7:
            fields["idempotency_key"] = "order-7"
        pipe.xadd(KEYS.ingest, fields)
    await pipe.execute()
    # the dead worker: read everything as its consumer, published entry 7, died before XACK
    read = await aredis.xreadgroup(KEYS.ingest_group, "dead-worker", {KEYS.ingest: ">"}, count=100)
    assert len(read[0][1]) == 20
    publisher = AsyncPublisher.from_url(redis_server.url)
    assert await publisher.publish("service_3", "t", {"n": 7}, idempotency_key="order-7") == 1
    await publisher.aclose()
    assert await pending_by_consumer(aredis) == {"dead-worker": 20}

    worker = await start_worker(redis_server.url, ingest_claim_idle_s=0.3)
    await eventually(lambda: _no_pending(aredis), 10, "the dead consumer's entries claimed")
    assert await room_offset(aredis, "service_3") == 20  # 20 events, not 21
    numbers = await history_numbers(aredis, "service_3")
    assert numbers == [7, *[n for n in range(1, 21) if n != 7]]
    metrics = await scrape(http, worker_url(worker))
    assert value(metrics, "gateway_worker_claimed_total") == 20
    assert value(metrics, "gateway_worker_ingested_total") == 19
    assert value(metrics, "gateway_worker_ingest_duplicates_total") == 1


async def test_a_publish_redis_refuses_stays_pending_then_goes_to_the_dead_letters(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    """A room whose meta key holds the wrong type makes the publish script fail: the entry is
    retried on each claim, and after 5 deliveries it is dead-lettered with Redis's error.
    Entries of other rooms in the same batches are published meanwhile."""
    await aredis.set(KEYS.room_meta("service_66"), "not a hash")
    await aredis.xadd(KEYS.ingest, {"room": "service_66", "type": "t", "payload": '{"n": 1}'})
    await aredis.xadd(KEYS.ingest, {"room": "service_67", "type": "t", "payload": '{"n": 2}'})
    worker = await start_worker(redis_server.url, ingest_claim_idle_s=0.1)
    await eventually(lambda: _offset_is(aredis, "service_67", 1), 5, "the healthy entry")
    await eventually(lambda: _dead_count(aredis, 1), 15, "the failing entry dead-lettered")
    [(_, fields)] = await aredis.xrange(KEYS.ingest_dead, "-", "+")
    assert fields[b"room"] == b"service_66"
    assert fields[b"reason"].startswith(b"publish failed 5 times: ")
    assert b"WRONGTYPE" in fields[b"reason"]
    assert await pending_total(aredis) == 0
    metrics = await scrape(http, worker_url(worker))
    assert value(metrics, "gateway_worker_errors_total", op="publish") == 5


async def _dead_count(client: Any, n: int) -> bool:
    return int(await client.xlen(KEYS.ingest_dead)) == n


async def test_processed_entries_are_trimmed_and_gauges_follow_the_group(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    worker = await start_worker(redis_server.url)
    await add_entries(aredis, "service_4", range(1, 251))
    await eventually(lambda: _offset_is(aredis, "service_4", 250), 10, "250 events")
    await worker.stop()
    metrics = WorkerMetrics()
    stats = IngestStats(aredis, worker.settings, metrics, asyncio.Event())
    # a second group that has read nothing holds the stream back: nothing may be trimmed
    await aredis.xgroup_create(KEYS.ingest, "analytics", id="0")
    await stats.update()
    assert await aredis.xlen(KEYS.ingest) == 250
    await aredis.xgroup_destroy(KEYS.ingest, "analytics")
    await stats.update()
    assert await aredis.xlen(KEYS.ingest) == 0  # every group read and acknowledged them all
    assert _gauges(metrics) == (0, 0, 0)
    # one entry read by a consumer that then died, one not read yet: both kept and counted
    await add_entries(aredis, "service_4", range(251, 253))
    await aredis.xreadgroup(KEYS.ingest_group, "dead-worker", {KEYS.ingest: ">"}, count=1)
    await asyncio.sleep(0.2)
    await stats.update()
    assert await aredis.xlen(KEYS.ingest) == 2
    pending, lag, lag_s = _gauges(metrics)
    assert (pending, lag) == (1, 1)
    assert 0.2 <= lag_s < 5


def _gauges(metrics: WorkerMetrics) -> tuple[float, float, float]:
    found = parse_metrics(generate_latest(metrics.registry).decode())
    return (
        value(found, "gateway_worker_ingest_pending"),
        value(found, "gateway_worker_ingest_lag"),
        value(found, "gateway_worker_ingest_lag_seconds"),
    )


async def test_a_redis_refusing_writes_delays_entries_but_never_dead_letters_them(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any, http: Any
) -> None:
    """OOM is "not now", not "never": with a tiny claim idle time the entries would be
    re-delivered many times over, yet none is dead-lettered and all are published once."""
    await aredis.xgroup_create(KEYS.ingest, KEYS.ingest_group, id="0", mkstream=True)
    await add_entries(aredis, "service_12", range(1, 11))
    await aredis.config_set("maxmemory", "1")
    worker = await start_worker(redis_server.url, ingest_claim_idle_s=0.05)
    await asyncio.sleep(1.5)
    assert await room_offset(aredis, "service_12") == 0
    await aredis.config_set("maxmemory", "0")
    await eventually(lambda: _offset_is(aredis, "service_12", 10), 10, "published after OOM")
    await eventually(lambda: _no_pending(aredis), 5, "all acknowledged")
    assert await history_numbers(aredis, "service_12") == list(range(1, 11))
    assert await aredis.xlen(KEYS.ingest_dead) == 0
    metrics = await scrape(http, worker_url(worker))
    assert value(metrics, "gateway_worker_errors_total", op="ingest") >= 1
    assert value(metrics, "gateway_worker_dead_letters_total") == 0
