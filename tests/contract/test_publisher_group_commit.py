"""``AsyncPublisher`` on a single Redis sends concurrent publishes through the nodes' group commit
(one round trip for what is queued in one loop turn): every event still gets exactly one offset in
its room, retries by event id are answered from the first publish, and a Redis that lost its
scripts is handled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.backend.batch import RespBatcher
from gateway.publish import AsyncPublisher
from tests.support import RedisServer


@pytest.fixture
async def publisher(redis_server: RedisServer) -> AsyncIterator[AsyncPublisher]:
    p = AsyncPublisher.from_url(redis_server.url, history_size=100)
    yield p
    await p.aclose()


async def test_concurrent_publishes_get_one_offset_each(publisher: AsyncPublisher) -> None:
    rooms = [f"cliente_{i}" for i in range(20)]
    results = await asyncio.gather(
        *(publisher.publish(rooms[i % 20], "t", {"n": i}) for i in range(200))
    )
    assert isinstance(publisher._batcher, RespBatcher)  # the group commit, not a pipeline each
    by_room: dict[str, list[int]] = {}
    for i, offset in enumerate(results):
        by_room.setdefault(rooms[i % 20], []).append(offset)
    assert {room: sorted(offsets) for room, offsets in by_room.items()} == {
        room: list(range(1, 11)) for room in rooms
    }


async def test_a_repeated_event_id_is_answered_by_the_first_publish(
    publisher: AsyncPublisher,
) -> None:
    first, again = await asyncio.gather(
        publisher.publish_many(["service_1"], "t", {"a": 1}, event_id="evt-1"),
        publisher.publish_many(["service_1"], "t", {"a": 1}, event_id="evt-1"),
    )
    assert first.offsets == again.offsets == {"service_1": 1}
    assert first.duplicate != again.duplicate  # exactly one of the two was the first
    assert await publisher.publish("service_1", "t", {}) == 2


async def test_scripts_lost_by_redis_are_loaded_again(
    publisher: AsyncPublisher, redis_server: RedisServer
) -> None:
    assert await publisher.publish("service_2", "t", {}) == 1
    redis_server.admin().script_flush()
    offsets: list[Any] = await asyncio.gather(
        *(publisher.publish("service_2", "t", {"n": i}) for i in range(10))
    )
    assert sorted(offsets) == list(range(2, 12))
