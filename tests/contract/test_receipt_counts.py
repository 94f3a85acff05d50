"""Receipts' "n of m" on Redis as the dashboard's live log reads it (``RedisReceipts.counts``):
``m`` is the room's member count when the event was published, kept in the room's index shard;
an event read between its publish and its publisher's index write (the live log polls every
second) shows the room's count then, not 0."""

from __future__ import annotations

import orjson

from gateway.backend.redis import RedisBackend
from gateway.backend.redis_receipts import RedisReceipts
from tests.contract.harness import Harness
from tests.support.redis_server import RedisServer


async def test_members_at_publish_before_and_after_the_index_is_written(
    redis_server: RedisServer,
) -> None:
    backend = RedisBackend(redis_server.url, prefix="rcptcounts")
    node = Harness(backend, node_id="rcpt-node")
    await node.start()
    try:
        room = "service_1"
        for user in ("1", "2"):
            conn = node.conn(user)
            await backend.add_connection(conn)
            await backend.join(conn, [room], [room])
        result = await backend.publish([room], "notice", orjson.dumps({}), "api", receipts=True)
        store = RedisReceipts(backend.client, backend.keys, ttl_s=600)
        pair = (room, result.event_id)
        assert await store.counts([pair]) == {pair: (0, 2)}  # not indexed yet
        await store.opened(result.event_id, result.offsets, {room: 2})
        late = node.conn("3")
        await backend.add_connection(late)
        await backend.join(late, [room], [room])
        assert await backend.room_count(room) == 3
        assert await store.counts([pair]) == {pair: (0, 2)}  # the count at publish, recorded
        assert await store.counts([(room, "no-such-event")]) == {}
    finally:
        await backend.close()
