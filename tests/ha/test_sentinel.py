"""Redis Sentinel (1 master, 1 replica, 3 sentinels): nodes, the worker and both publishers
reach Redis through ``redis+sentinel://`` and follow the master when it is killed while events
are being published; clients recover, or are told by a new epoch; no (epoch, offset) is given to
two events."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import orjson
import pytest
import redis
from redis.sentinel import Sentinel

from gateway.backend.keys import Keys
from gateway.publish import AsyncPublisher, Publisher
from tests.ha.conftest import node_logs_clean
from tests.ha.helpers import (
    Follower,
    SteadyPublisher,
    all_ready,
    check_exactly_once,
)
from tests.support.ports import eventually

KEYS = Keys("gateway")
RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError)


class ThreadPublisher:
    """Django's way: a sync ``Publisher`` in a thread, one event per ``seq`` (retried with the
    same idempotency key through the failover). ``published`` is seq -> offset."""

    def __init__(self, url: str, room: str) -> None:
        self.publisher = Publisher.from_url(url)
        self.room = room
        self.published: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.publisher.close()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            while True:
                try:
                    offset = self.publisher.publish(
                        self.room, "tick", {"seq": seq}, idempotency_key=f"sync-{seq}"
                    )
                    break
                except RETRYABLE:
                    time.sleep(0.1)
            self.published[seq] = offset
            seq += 1
            time.sleep(0.05)


class IngestFeeder:
    """Any back end's way: ``XADD gateway:ingest`` through a Sentinel-aware client (retried
    with the same idempotency key), published by the worker."""

    def __init__(self, sentinel_ports: list[int], service: str, room: str) -> None:
        self.sentinel = Sentinel([("127.0.0.1", p) for p in sentinel_ports], socket_timeout=2)
        self.client = self.sentinel.master_for(service, socket_timeout=2)
        self.room = room
        self.added = 0

    def add(self, seq: int) -> None:
        fields = {
            "room": self.room,
            "type": "tick",
            "payload": orjson.dumps({"seq": seq}),
            "idempotency_key": f"ingest-{seq}",
        }
        while True:
            try:
                self.client.xadd(KEYS.ingest, fields)
                self.added = seq + 1
                return
            except RETRYABLE:
                time.sleep(0.1)

    def close(self) -> None:
        self.client.close()
        for conn in self.sentinel.sentinels:
            conn.close()


def pairs_are_unique(followers: list[Follower], rooms: list[str]) -> list[str]:
    """Across every client: one (epoch, offset) of a room is one event (one seq)."""
    problems = []
    for room in rooms:
        seen: dict[tuple[str, int], int] = {}
        for follower in followers:
            for d in follower.rooms[room].deliveries:
                first = seen.setdefault((d.epoch, d.offset), d.seq)
                if first != d.seq:
                    problems.append(f"{room} ({d.epoch}, {d.offset}): seq {first} and {d.seq}")
    return problems


@pytest.mark.slow
async def test_sentinel_failover_is_followed_by_nodes_worker_and_publishers(
    sentinels: Any, start_nodes: Any, worker_process: Any, session: Any
) -> None:
    rooms = ["service_1", "service_2", "service_3"]  # API, sync Publisher, ingest
    nodes = await start_nodes(sentinels.url)
    worker = await worker_process.astart({"GATEWAY_REDIS_URL": sentinels.url})
    urls = [n.http_url for n in nodes]
    followers = [Follower(session, n.ws_url, f"cliente-{i + 1}") for i, n in enumerate(nodes)]
    await asyncio.gather(*(f.start(rooms) for f in followers))

    api = SteadyPublisher(session, urls, rooms[:1])
    sync = ThreadPublisher(sentinels.url, rooms[1])
    feeder = IngestFeeder([s.port for s in sentinels.sentinels], sentinels.SERVICE, rooms[2])
    stop_feeding = threading.Event()

    def feed() -> None:
        seq = 0
        while not stop_feeding.is_set():
            feeder.add(seq)
            seq += 1
            time.sleep(0.05)

    feeding = threading.Thread(target=feed, daemon=True)
    api.start()
    sync.start()
    feeding.start()
    try:
        await eventually(
            lambda: api.count(rooms[0]) >= 10 and len(sync.published) >= 10, 10, "publishing"
        )
        old = sentinels.master()
        fault_at = time.monotonic()
        old.kill()
        await eventually(
            lambda: sentinels.master().port != old.port, 30, "the sentinels to promote the replica"
        )
        promoted = time.monotonic() - fault_at
        marks = (api.count(rooms[0]), len(sync.published), feeder.added)
        await eventually(
            lambda: (
                api.count(rooms[0]) > marks[0] + 5
                and len(sync.published) > marks[1] + 5
                and feeder.added > marks[2] + 5
            ),
            30,
            "every publisher to publish on the new master",
        )
        await eventually(lambda: all_ready(session, urls), 30, "/readyz 200 on every node")
        ready = time.monotonic() - fault_at
    finally:
        stop_feeding.set()
        await api.stop()
        await asyncio.to_thread(sync.stop)
        await asyncio.to_thread(feeding.join, 60)
        feeder.close()

    # the async publisher follows too (a fresh one, after the failover)
    async_pub = AsyncPublisher.from_url(sentinels.url)
    try:
        assert await async_pub.publish(rooms[1], "tick", {"seq": len(sync.published)}) >= 1
    finally:
        await async_pub.aclose()
    sync.published[len(sync.published)] = 0

    # the worker published what was added after the failover: the last entry reaches clients
    ingest_published = {seq: 0 for seq in range(feeder.added)}
    published = {
        rooms[0]: api.published[rooms[0]],
        rooms[1]: sync.published,
        rooms[2]: ingest_published,
    }

    async def all_delivered() -> bool:
        return all(max(published[r]) in set(f.seqs(r)) for f in followers for r in rooms)

    await eventually(all_delivered, 30, "the last event of every room on every client")
    problems = pairs_are_unique(followers, rooms)
    for follower in followers:
        for room in rooms:
            problems += check_exactly_once(follower, room, published[room], new_epoch_allowed=True)
    assert problems == [], [f.describe(room) for f in followers for room in rooms]
    assert worker.alive
    for follower in followers:
        await follower.close()
    node_logs_clean(nodes)
    assert "Traceback" not in worker.logs()
    print(
        f"\nsentinel: replica promoted after {promoted:.1f}s, every node ready after {ready:.1f}s"
    )
