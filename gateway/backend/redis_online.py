"""Connection counts, caps and online status in Redis (the ``OnlineStore`` contract, online.py).

Per user a hash ``user_online`` holds ``n:<node>`` -> that node's connections, the announced state
and lastSeen; per client address a hash ``ip_connections``. Each node mirrors what it counted in
its own ``node_held`` record, so the sweep of a dead node reads that record and releases each of
its entries: O(that node), never a scan. On a single Redis one script call updates the counter,
the node's record and the presence stream (or due set) atomically; on a Redis Cluster those keys
live in different slots, so the node record and the stream are written by separate commands
(the record first on acquire and last on release, so it always covers the counters).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from gateway.backend import scripts
from gateway.backend.keys import INDEX_SHARDS, Keys
from gateway.backend.online import (
    IP,
    OFFLINE_TTL_S,
    USER,
    Admission,
    PresenceChange,
    UserStatus,
)
from gateway.events import now_ms as _now_ms

ACQUIRE = "conn_acquire"
RELEASE = "conn_release"
SETTLE = "online_settle"
ZREM_IF = "zrem_if"
SETTLE_BATCH = 200
SWEEP_CHUNK = 256


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Any) -> list[tuple[Any, float]]:
    """``[member, score, ...]`` (a raw WITHSCORES reply) or redis-py's pairs, as pairs."""
    items = list(flat or [])
    if items and isinstance(items[0], list | tuple):
        return [(m, float(s)) for m, s in items]
    return [(items[i], float(items[i + 1])) for i in range(0, len(items), 2)]


class RedisOnline:
    def __init__(
        self,
        client: Any,
        keys: Keys,
        *,
        batch: Any = None,
        cluster: bool = False,
        grace_ms: int = 5000,
        stream_maxlen: int = 100_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.batch = None if cluster else batch  # group commit (single Redis only)
        self.cluster = cluster
        self.grace_ms = grace_ms
        self.stream_maxlen = stream_maxlen

    async def _run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        script = scripts.load(name)
        if self.batch is None:
            return await script.run(self.client, keys, args)
        results = await self.batch.run(
            lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args)
        )
        result = results[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def _exec(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Plain commands; on a single Redis through the group commit (the node's one command
        connection: the periodic work here opens no connection of its own)."""
        if self.batch is None:
            pipe = self.client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return list(await pipe.execute())
        results = await self.batch.run(lambda pipe: [pipe.execute_command(*c) for c in commands])
        for result in results:
            if isinstance(result, Exception):
                raise result
        return list(results)

    def _counter(self, kind: str, key: str) -> str:
        return self.keys.user_online(key) if kind == USER else self.keys.ip_connections(key)

    # --- the node's record --------------------------------------------------------------------
    async def register(self, node: str) -> None:
        await self.sweep_node(node)
        await self._exec(
            ("HSET", self.keys.node_held(node), "_", 1), ("SADD", self.keys.held_nodes, node)
        )

    async def registered(self, node: str) -> bool:
        [found] = await self._exec(("HEXISTS", self.keys.node_held(node), "_"))
        return bool(int(found))

    # --- counting -----------------------------------------------------------------------------
    async def acquire(
        self,
        node: str,
        kind: str,
        key: str,
        *,
        cap: int = 0,
        role: str = "",
        set_count: int | None = None,
    ) -> Admission:
        field = f"{kind}:{key}"
        keys = [self._counter(kind, key)]
        if self.cluster:  # the record first: it must cover the counter (sweep)
            held = self.keys.node_held(node)
            if set_count is None:
                await self.client.hincrby(held, field, 1)
            else:
                await self.client.hset(held, field, set_count)
        else:
            keys.append(self.keys.node_held(node))
            if kind == USER:
                keys += [self.keys.presence_stream, self.keys.online_index_of(key)]
        now = _now_ms()
        args: list[Any] = [
            node,
            field,
            now,
            cap,
            "" if set_count is None else set_count,
            key if kind == USER else "",
            role,
            self.stream_maxlen,
        ]
        admitted, count, came_online, index = await self._run(ACQUIRE, keys, args)
        if self.cluster:
            if not admitted:
                await self.client.hincrby(self.keys.node_held(node), field, -1)
            else:
                if came_online:
                    await self._append(key, role, True, now)
                if int(index):
                    await self.client.zadd(self.keys.online_index_of(key), {key: 0})
        return Admission(bool(admitted), int(count), bool(came_online))

    async def release(self, node: str, kind: str, key: str, count: int | None = 1) -> int:
        field = f"{kind}:{key}"
        keys = [self._counter(kind, key)]
        if not self.cluster:
            keys.append(self.keys.node_held(node))
            if kind == USER:
                keys.append(self.keys.due_index_of(key))
        grace = self.grace_ms if count is not None else 0  # a dead node's users: due now
        args = [node, field, _now_ms(), "" if count is None else count, key if kind == USER else ""]
        total, due = await self._run(RELEASE, keys, [*args, grace])
        if self.cluster:
            if int(due):
                await self.client.zadd(self.keys.due_index_of(key), {key: int(due)})
            await self._unheld(node, field, count)
        return int(total)

    async def _unheld(self, node: str, field: str, count: int | None) -> None:
        held = self.keys.node_held(node)
        if count is None or int(await self.client.hincrby(held, field, -count)) <= 0:
            await self.client.hdel(held, field)

    async def sweep_node(self, node: str) -> int:
        held = self.keys.node_held(node)
        [names] = await self._exec(("HKEYS", held))
        fields = [_s(f).partition(":") for f in names]
        entries = [(kind, key) for kind, _, key in fields if kind in (USER, IP) and key]
        for i in range(0, len(entries), SWEEP_CHUNK):  # concurrent calls share round trips
            chunk = entries[i : i + SWEEP_CHUNK]
            await asyncio.gather(*(self.release(node, kind, key, None) for kind, key in chunk))
        swept = len(entries)
        await self._exec(("DEL", held), ("SREM", self.keys.held_nodes, node))
        return swept

    async def dead_nodes(self) -> list[str]:
        [members] = await self._exec(("SMEMBERS", self.keys.held_nodes))
        names = sorted(_s(n) for n in members)
        if not names:
            return []
        alive = await self._exec(*(("EXISTS", self.keys.node_lease(name)) for name in names))
        return [name for name, ok in zip(names, alive, strict=True) if not int(ok)]

    # --- online status ------------------------------------------------------------------------
    async def settle_due(self, now_ms: int) -> list[PresenceChange]:
        """Users whose grace period ended, from every due shard (and the legacy ``{g}`` set an
        earlier release wrote, so its users still go offline after an upgrade)."""
        due_keys = [self.keys.due_index(shard) for shard in range(INDEX_SHARDS)]
        due_keys.append(self.keys.presence_due)
        found = await self._exec(
            *(
                ("ZRANGEBYSCORE", key, "-inf", now_ms, "WITHSCORES", "LIMIT", 0, SETTLE_BATCH)
                for key in due_keys
            )
        )
        due = sorted(  # in the order the grace periods ended, as from one set
            (score, _s(raw_user), due_key)
            for due_key, flat in zip(due_keys, found, strict=True)
            for raw_user, score in _pairs(flat)
        )
        changes = []
        for score, user_id, due_key in due:
            change = await self._settle(user_id, due_key, score, now_ms)
            if change is not None:
                changes.append(change)
        return changes

    async def _settle(
        self, user_id: str, due_key: str, score: float, now_ms: int
    ) -> PresenceChange | None:
        keys = [self.keys.user_online(user_id)]
        if not self.cluster:
            keys += [self.keys.presence_stream, due_key, self.keys.online_index_of(user_id)]
        args = [user_id, now_ms, self.stream_maxlen, OFFLINE_TTL_S, int(score)]
        status, role, ts = await self._run(SETTLE, keys, args)
        change = None
        if int(status) == 1:
            change_id = ""
            if self.cluster:
                change_id = await self._append(user_id, _s(role), False, int(ts))
                await self.client.zrem(self.keys.online_index_of(user_id), user_id)
            change = PresenceChange(change_id, user_id, _s(role), False, int(ts))
        if self.cluster and int(status) != 0:
            await scripts.load(ZREM_IF).run(self.client, [due_key], [user_id, int(score)])
        return change

    async def _append(self, user_id: str, role: str, online: bool, ts: int) -> str:
        fields = {"userId": user_id, "role": role, "online": "1" if online else "0", "ts": ts}
        change_id = await self.client.xadd(
            self.keys.presence_stream, fields, maxlen=self.stream_maxlen, approximate=True
        )
        return _s(change_id)

    async def online(self, user_ids: Sequence[str], now_ms: int) -> dict[str, UserStatus]:
        return await online_status(self.client, self.keys, user_ids, now_ms)

    async def online_users(self, limit: int, cursor: str | None) -> tuple[list[str], int]:
        """Merged from the index shards: each shard's first ``limit + 1`` after the cursor."""
        start = f"({cursor}" if cursor else "-"
        commands: list[tuple[Any, ...]] = []
        for shard in range(INDEX_SHARDS):
            key = self.keys.online_index(shard)
            commands.append(("ZRANGE", key, start, "+", "BYLEX", "LIMIT", 0, limit + 1))
            commands.append(("ZCARD", key))
        results = await self._exec(*commands)
        names = sorted(_s(n) for found in results[0::2] for n in found)
        return names[: limit + 1], sum(int(n) for n in results[1::2])

    async def close(self) -> None:
        pass


async def online_status(
    client: Any, keys: Keys, user_ids: Sequence[str], now_ms: int
) -> dict[str, UserStatus]:
    """``online(users)`` for the node and the async publisher (one pipelined round trip)."""
    pipe = client.pipeline(transaction=False)
    for user_id in user_ids:
        pipe.hgetall(keys.user_online(user_id))
    return {u: status_of(h, now_ms) for u, h in zip(user_ids, await pipe.execute(), strict=True)}


async def connection_count(client: Any, keys: Keys, user_id: str) -> int:
    """How many connections the user has open, cluster-wide (``disconnect``): the sum of the
    ``n:<node>`` fields of ``user_online`` that every node's accounting keeps, in one read."""
    return connections_of(await client.hgetall(keys.user_online(user_id)))


def connections_of(raw: dict[Any, Any]) -> int:
    """The sum of the ``n:<node>`` fields of a ``user_online`` hash (``HGETALL`` reply)."""
    return sum(int(v) for k, v in raw.items() if _s(k).startswith("n:"))


def status_of(raw: dict[Any, Any], now_ms: int) -> UserStatus:
    fields = {_s(k): _s(v) for k, v in raw.items()}
    connections = connections_of(fields)
    online = fields.get("on") == "1"
    seen = fields.get("seen")
    if connections > 0:
        return UserStatus(True, connections, now_ms)
    return UserStatus(online, 0, int(seen) if seen else None)
