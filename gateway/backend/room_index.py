"""Room member counts and the index of rooms with members, sharded by room name.

Each shard (``keys.rooms_members(i)``, ``keys.rooms_index(i)``) shares one hash tag, so the
``room_count`` script keeps a shard's count and index together atomically, on a single Redis or
in the shard's slot on a Redis Cluster; the shards' tags spread over the cluster's masters."""

from __future__ import annotations

from typing import Any

from gateway.backend import scripts
from gateway.backend.keys import Keys, shard_of


async def count_rooms(client: Any, keys: Keys, deltas: dict[str, int]) -> None:
    """Add ``deltas`` (room -> +n/-n) to the sharded room counts and index: one script call per
    shard and distinct delta."""
    groups: dict[tuple[int, int], list[str]] = {}
    for room, delta in deltas.items():
        groups.setdefault((shard_of(room), delta), []).append(room)
    script = scripts.load(scripts.ROOM_COUNT)
    for (shard, delta), rooms in groups.items():
        shard_keys = [keys.rooms_members(shard), keys.rooms_index(shard)]
        await script.run(client, shard_keys, [delta, *rooms])
