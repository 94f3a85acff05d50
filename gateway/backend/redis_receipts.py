"""Delivery receipts in Redis (the ``ReceiptStore`` contract, receipts.py).

Per room and event a hash ``receipts(room, eventId)`` in the room's slot: written by the publish
script itself (``o`` offset, ``e`` epoch, with the history TTL) only when the publish asked for
receipts, so other publishes pay nothing; then ``c`` and ``u:<userId>`` by ``receipt.lua`` (a
HyperLogLog beside it counts the users of a broadcast room). Right after the publish, the event's
rooms are indexed in ``receipts_event(eventId)`` (another slot) and each record gets ``m``, the
room's members then (from the cluster-wide member counts, in yet another slot).
Sync and asyncio clients share the command builders, for the node, the worker and ``Publisher``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.backend import scripts
from gateway.backend.keys import Keys
from gateway.backend.receipts import Counts, RoomReceipts, is_broadcast

RECEIPT = "receipt"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def queue_index(
    pipe: Any,
    keys: Keys,
    event_id: str,
    offsets: Mapping[str, int],
    ttl_s: int,
    members: Sequence[Any],
) -> None:
    """The event's index of rooms -> offsets, and each room's members when it was published
    (``members``: the rooms' counts, in the order of ``offsets``). The per-room records exist
    already (the publish wrote them): ``EXPIRE NX`` only guards against recreating one that
    expired in between without a TTL."""
    key = keys.receipts_event(event_id)
    pipe.hset(key, mapping=dict(offsets))
    pipe.expire(key, ttl_s)
    for room, count in zip(offsets, members, strict=True):
        record = keys.receipts(room, event_id)
        pipe.hset(record, "m", int(count or 0))
        pipe.expire(record, ttl_s, nx=True)


def receipt_call(
    keys: Keys, room: str, event_id: str, user_id: str, ts: int
) -> tuple[list[str], list[Any]]:
    broadcast = is_broadcast(room)
    return (
        [keys.receipts(room, event_id), keys.receipts_users(room, event_id)],
        [user_id, ts, "1" if broadcast else "0"],
    )


def queue_rooms(pipe: Any, keys: Keys, event_id: str, rooms: list[str]) -> None:
    for room in rooms:
        pipe.hgetall(keys.receipts(room, event_id))


def parse_rooms(
    offsets: Mapping[str, int], rooms: list[str], replies: list[Any]
) -> dict[str, RoomReceipts]:
    out = {}
    for i, room in enumerate(rooms):
        fields = {_s(k): _s(v) for k, v in (replies[i] or {}).items()}
        record = RoomReceipts(
            offset=int(fields.get("o", offsets[room])),
            members=int(fields.get("m", 0)),
            connections=int(fields.get("c", 0)),
            users={k[2:]: int(v) for k, v in fields.items() if k.startswith("u:")},
            user_count=int(fields.get("n", 0)),
        )
        if not is_broadcast(room):
            record.user_count = len(record.users)
        out[room] = record
    return out


def parse_index(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {_s(room): int(offset) for room, offset in raw.items()}


def read_sync(client: Any, keys: Keys, event_id: str) -> dict[str, RoomReceipts] | None:
    offsets = parse_index(client.hgetall(keys.receipts_event(event_id)))
    if not offsets:
        return None
    rooms = sorted(offsets)
    pipe = client.pipeline(transaction=False)
    queue_rooms(pipe, keys, event_id, rooms)
    return parse_rooms(offsets, rooms, pipe.execute())


async def read_async(client: Any, keys: Keys, event_id: str) -> dict[str, RoomReceipts] | None:
    offsets = parse_index(await client.hgetall(keys.receipts_event(event_id)))
    if not offsets:
        return None
    rooms = sorted(offsets)
    pipe = client.pipeline(transaction=False)
    queue_rooms(pipe, keys, event_id, rooms)
    return parse_rooms(offsets, rooms, await pipe.execute())


def _queue_members(pipe: Any, keys: Keys, rooms: Iterable[str]) -> Any:
    """The rooms' member counts (each in its index shard: one round trip per shard's server)."""
    for room in rooms:
        pipe.hget(keys.room_members_of(room), room)
    return pipe


def write_index_sync(
    client: Any, keys: Keys, event_id: str, offsets: Mapping[str, int], ttl_s: int
) -> None:
    if len(offsets) == 1:  # the usual case: one command, no pipeline
        [room] = offsets
        members = [client.hget(keys.room_members_of(room), room)]
    else:
        members = _queue_members(client.pipeline(transaction=False), keys, offsets).execute()
    pipe = client.pipeline(transaction=False)
    queue_index(pipe, keys, event_id, offsets, ttl_s, members)
    pipe.execute()


async def write_index_async(
    client: Any, keys: Keys, event_id: str, offsets: Mapping[str, int], ttl_s: int
) -> None:
    if len(offsets) == 1:  # the usual case: one command, no pipeline
        [room] = offsets
        members = [await client.hget(keys.room_members_of(room), room)]
    else:
        pipe = _queue_members(client.pipeline(transaction=False), keys, offsets)
        members = await pipe.execute()
    pipe = client.pipeline(transaction=False)
    queue_index(pipe, keys, event_id, offsets, ttl_s, members)
    await pipe.execute()


class RedisReceipts:
    def __init__(
        self, client: Any, keys: Keys, *, ttl_s: int, batch: Any = None, cluster: bool = False
    ) -> None:
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.batch = None if cluster else batch

    async def opened(
        self, event_id: str, offsets: Mapping[str, int], members: Mapping[str, int]
    ) -> None:
        await write_index_async(self.client, self.keys, event_id, offsets, self.ttl_s)

    async def record(self, room: str, event_id: str, user_id: str, ts: int) -> bool:
        keys, args = receipt_call(self.keys, room, event_id, user_id, ts)
        script = scripts.load(RECEIPT)
        if self.batch is None:
            return bool(int(await script.run(self.client, keys, args)))
        results = await self.batch.run(lambda pipe: pipe.evalsha(script.sha, 2, *keys, *args))
        if isinstance(results[0], Exception):
            raise results[0]
        return bool(int(results[0]))

    async def receipts(self, event_id: str) -> dict[str, RoomReceipts] | None:
        return await read_async(self.client, self.keys, event_id)

    async def counts(self, items: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Counts]:
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for room, event_id in items:
            pipe.hmget(self.keys.receipts(room, event_id), ["o", "c", "m"])
        out = {}
        unindexed = []
        for item, (offset, acked, members) in zip(items, await pipe.execute(), strict=True):
            if offset is not None:  # the event asked for receipts, and they are still kept
                out[item] = (int(acked or 0), int(members or 0))
                if members is None:
                    unindexed.append(item)
        if unindexed:
            # published a moment ago, its publisher's index not written yet: the room's count
            # now is what that index is about to record (members at publish)
            rooms = [room for room, _ in unindexed]
            pipe = _queue_members(self.client.pipeline(transaction=False), self.keys, rooms)
            for item, members in zip(unindexed, await pipe.execute(), strict=True):
                out[item] = (out[item][0], int(members or 0))
        return out
