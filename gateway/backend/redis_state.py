"""Cluster-wide state in Redis: connections, memberships, presence, node leases, the sharded
room index, and the janitor that removes what dead nodes left behind. Used by nodes and the
worker.

Never KEYS or SCAN: every question is answered from named indexes of bounded size. A node's
memberships set is the truth about who is in which room: room counts change by what ``SADD`` /
``SREM`` on it changed. Broadcast rooms (``all_clientes``, ``all_proveedores``) keep a count
only, no presence hash: every cliente is in ``all_clientes``, and ``presence`` of it answers the
count. No connect, join or leave writes the global ``{g}`` slot: room counts and the rooms index
live in the room's index shard (``keys.shard_of``), and what the dashboard lists about a
connection only in its node's memory (``local``). A connection itself writes nothing here beyond
its rooms: how many connections a user has is counted by the accounting (``user_online``,
redis_online.py), which every authenticated connection goes through.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.backend import event_log, scripts
from gateway.backend.base import ConnectionInfo, NodeStats, Page, PresenceMember
from gateway.backend.batch import make_batcher
from gateway.backend.keys import INDEX_SHARDS, Keys
from gateway.backend.leases import Lease, LeaseBusy, run_under_lease
from gateway.backend.redis_janitor import Sweeper
from gateway.backend.room_index import count_rooms
from gateway.rooms import is_broadcast_room

log = logging.getLogger("gateway.redis")

SEP = "\x1f"
MAX_PAGE = 1000
CLEANUP_WAIT_S = 10.0  # a dashboard cleanup waits this long for the worker's sweep to end
CLEANUP_POLL_S = 0.1
CLEANUP_LEASE_TTL_S = 10.0  # renewed every third while the sweep runs


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisState:
    def __init__(
        self, client: Any, keys: Keys, *, node_lease_s: float = 15.0, cluster: bool = False
    ) -> None:
        self.client = client
        self.keys = keys
        self.cluster = cluster
        self.batch = make_batcher(client)
        self.node_lease_ms = int(node_lease_s * 1000)
        # Nodes whose heartbeat put them in the nodes index: their membership writes skip the
        # ``ZADD NX`` into the ``{g}`` slot (one write per connect and join on the hottest slot).
        # A node that writes before its first heartbeat still indexes itself, so the janitor
        # finds what it leaves behind.
        self._indexed: set[str] = set()
        # This node's connections and their rooms: the dashboard's list of clients is answered
        # from here (every node answers for its own), not from an index every connect writes.
        self.local: dict[str, tuple[ConnectionInfo, tuple[str, ...]]] = {}

    # --- connections and memberships ---------------------------------------------------------
    # One round trip per connect, join, leave and disconnect on a single Redis: the membership
    # script keeps presence and the sharded room index exact. Redis Cluster spreads these keys
    # over slots, so there the same steps run as separate calls (``_*_cluster``). Nothing here
    # writes a global slot: the dashboard's list of clients is answered by the nodes from
    # ``local`` (dashboard_query.py), and rooms are indexed in the shard of their name.

    def _room_keys(self, rooms: Sequence[str]) -> list[str]:
        k = self.keys
        keys: list[str] = []
        for room in rooms:
            keys += [k.room_presence(room), k.room_members_of(room), k.room_index_of(room)]
        return keys

    def _membership(
        self, pipe: Any, conn: ConnectionInfo, delta: int, rooms: Sequence[str]
    ) -> None:
        k = self.keys
        keys = [k.node_memberships(conn.node), k.nodes, *self._room_keys(rooms)]
        value = SEP.join((conn.user_id, conn.role, conn.node))
        flags = "".join("0" if is_broadcast_room(room) else "1" for room in rooms)
        script = scripts.load(scripts.MEMBERSHIP)
        score = "" if conn.node in self._indexed else _now_ms()
        args = (delta, conn.connection_id, value, conn.node, score, flags)
        pipe.evalsha(script.sha, len(keys), *keys, *args, *rooms)

    def _remember(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        """The connection's rooms after a join or leave, unless it closed meanwhile."""
        if conn.connection_id in self.local:
            self.local[conn.connection_id] = (conn, tuple(sorted(rooms)))

    async def add_connection(self, conn: ConnectionInfo, rooms: Sequence[str] = ()) -> None:
        """Register a connection and join it to ``rooms``."""
        # listed from now (a close racing this add pops it), unless the add fails
        self.local[conn.connection_id] = (conn, tuple(sorted(rooms)))
        if not rooms:
            return
        try:
            if self.cluster:
                await self._join_cluster(conn, rooms)
            else:
                await self.batch.run(lambda pipe: self._membership(pipe, conn, 1, rooms))
        except BaseException:
            self.local.pop(conn.connection_id, None)
            raise

    async def remove_connection(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        self.local.pop(conn.connection_id, None)
        if rooms:
            await self._leave(conn, rooms)

    async def join(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        await self.join_with(conn, rooms, all_rooms, None)

    async def join_with(
        self,
        conn: ConnectionInfo,
        rooms: Sequence[str],
        all_rooms: Sequence[str],
        before: tuple[scripts.LuaScript, list[str], list[Any]] | None,
    ) -> Any:
        """Join ``rooms``; ``before`` is a script call run first in the same round trip (the
        room's history read), whose result is returned."""
        if self.cluster:
            first = await before[0].run(self.client, before[1], before[2]) if before else None
            await self._join_cluster(conn, rooms)
            self._remember(conn, all_rooms)
            return first

        def queue(pipe: Any) -> None:
            if before is not None:
                script, keys, args = before
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            self._membership(pipe, conn, 1, rooms)

        results = await self.batch.run(queue)
        self._remember(conn, all_rooms)
        return results[0] if before is not None else None

    async def leave(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        await self._leave(conn, rooms)
        self._remember(conn, all_rooms)

    async def _leave(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        if self.cluster:
            await self._leave_cluster(conn, rooms)
        else:
            await self.batch.run(lambda pipe: self._membership(pipe, conn, -1, rooms))

    # --- Redis Cluster: the same steps, one slot at a time -------------------------------------
    async def _join_cluster(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        k = self.keys
        value = SEP.join((conn.user_id, conn.role, conn.node))
        pipe = self.client.pipeline(transaction=False)
        for room in rooms:
            pipe.sadd(k.node_memberships(conn.node), f"{room}{SEP}{conn.connection_id}")
        for room in rooms:
            if not is_broadcast_room(room):
                pipe.hset(k.room_presence(room), conn.connection_id, value)
        if conn.node not in self._indexed:
            pipe.zadd(k.nodes, {conn.node: _now_ms()}, nx=True)
        results = await pipe.execute()
        # count only memberships that are new (SADD answers 1 for a new member)
        new_rooms = [room for room, r in zip(rooms, results, strict=False) if int(r) == 1]
        if new_rooms:
            await self._count(1, new_rooms)

    async def _leave_cluster(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._queue_leave(pipe, conn, rooms)
        results = await pipe.execute()
        gone = [room for room, r in zip(rooms, results, strict=False) if int(r) == 1]
        if gone:
            await self._count(-1, gone)

    def _queue_leave(self, pipe: Any, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        """SREM per room (their answers are what counts: results[:len(rooms)]), then HDEL."""
        for room in rooms:
            pipe.srem(self.keys.node_memberships(conn.node), f"{room}{SEP}{conn.connection_id}")
        for room in rooms:
            if not is_broadcast_room(room):
                pipe.hdel(self.keys.room_presence(room), conn.connection_id)

    async def _count(self, delta: int, rooms: Sequence[str]) -> None:
        await count_rooms(self.client, self.keys, {room: delta for room in rooms})

    async def presence(self, room: str) -> list[PresenceMember]:
        """The room's members, without those of dead nodes the janitor has not swept yet: the
        leases of the nodes that appear in the room are checked, never every node's."""
        raw = await self.client.hgetall(self.keys.room_presence(room))
        entries = [_s(value).split(SEP) for value in raw.values()]
        nodes = sorted({node for _, _, node in entries})
        alive = await self._alive(nodes)
        counts: Counter[tuple[str, str]] = Counter(
            (user_id, role) for user_id, role, node in entries if node in alive
        )
        return [PresenceMember(u, r, n) for (u, r), n in sorted(counts.items())]

    async def _alive(self, nodes: Sequence[str]) -> set[str]:
        if not nodes:
            return set()
        pipe = self.client.pipeline(transaction=False)
        for node in nodes:
            pipe.exists(self.keys.node_lease(node))
        return {node for node, ok in zip(nodes, await pipe.execute(), strict=True) if ok}

    async def room_count(self, room: str) -> int:
        """Connections in the room, cluster-wide: one field read whatever the room's size."""
        return int(await self.client.hget(self.keys.room_members_of(room), room) or 0)

    # --- node registry ------------------------------------------------------------------------
    async def heartbeat(self, stats: NodeStats, now_ms: int) -> bool:
        """Refresh the node's lease; False when the lease had vanished (Redis lost its data, or
        the janitor removed the node after a partition): the node must register again."""
        pipe = self.client.pipeline(transaction=False)
        lease = self.keys.node_lease(stats.node)
        # the snapshot carries its own time: nodes() must not pair it with another beat's score
        snapshot = orjson.dumps({**stats.as_dict(), "lastSeenMs": now_ms})
        pipe.set(lease, snapshot, px=self.node_lease_ms, get=True)
        pipe.zadd(self.keys.nodes, {stats.node: now_ms})
        previous, _ = await pipe.execute()
        self._indexed.add(stats.node)
        return previous is not None

    async def nodes(self) -> list[dict[str, Any]]:
        entries = await self.client.zrange(self.keys.nodes, 0, -1, withscores=True)
        if not entries:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name, _ in entries:
            pipe.get(self.keys.node_lease(_s(name)))
        snapshots = await pipe.execute()
        out = []
        for (name, seen), snap in zip(entries, snapshots, strict=True):
            if snap is None:
                out.append({"node": _s(name), "alive": False, "lastSeenMs": int(seen)})
            else:
                out.append({"lastSeenMs": int(seen), **orjson.loads(snap), "alive": True})
        return out

    # --- dashboard lists ----------------------------------------------------------------------
    async def list_rooms(self, limit: int, cursor: str | None) -> Page:
        """The rooms with members, in name order, merged from the index shards: each shard's
        first ``limit + 1`` after the cursor, so the first ``limit`` of the merge are exact."""
        k = self.keys
        start = f"({cursor}" if cursor else "-"
        pipe = self.client.pipeline(transaction=False)
        for shard in range(INDEX_SHARDS):
            pipe.zrange(k.rooms_index(shard), start, "+", bylex=True, offset=0, num=limit + 1)
            pipe.zcard(k.rooms_index(shard))
        results = await pipe.execute()
        merged = sorted(_s(n) for names in results[0::2] for n in names)
        total = sum(int(n) for n in results[1::2])
        more = len(merged) > limit
        rooms = merged[:limit]
        pipe = self.client.pipeline(transaction=False)
        for room in rooms:
            pipe.hget(k.room_members_of(room), room)
        counts = await pipe.execute() if rooms else []
        items = [
            {"room": room, "members": int(c or 0)} for room, c in zip(rooms, counts, strict=True)
        ]
        return Page(items=items, total=total, next_cursor=rooms[-1] if more else None)

    def local_clients(self, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], int]:
        """This node's connections after ``cursor`` (the first ``limit + 1`` by id), and how
        many it has: its answer to a dashboard request."""
        after = (c for c in self.local if cursor is None or c > cursor)
        ids = heapq.nsmallest(limit + 1, after)  # O(n log limit) on a node of 50,000
        items = []
        for conn_id in ids:
            conn, rooms = self.local[conn_id]
            items.append(
                {
                    "connectionId": conn.connection_id,
                    "userId": conn.user_id,
                    "role": conn.role,
                    "node": conn.node,
                    "rooms": list(rooms),
                    "connectedAt": conn.connected_at_ms,
                }
            )
        return items, len(self.local)

    async def recent_events(self, limit: int, cursor: str | None) -> Page:
        """Newest first, from the event log the publishing processes flush (event_log.py); the
        cursor is the last entry given, URL-safe."""
        start: bytes | str = b"(" + event_log.decode_cursor(cursor) if cursor else "+"
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(
            self.keys.events_log, start, "-", desc=True, bylex=True, offset=0, num=limit + 1
        )
        pipe.zcard(self.keys.events_log)
        entries, total = await pipe.execute()
        more = len(entries) > limit
        entries = entries[:limit]
        items = [event_log.summary(entry) for entry in entries]
        next_cursor = event_log.encode_cursor(entries[-1]) if more else None
        return Page(items=items, total=int(total), next_cursor=next_cursor)

    async def events_per_minute(self, now_ms: int) -> list[int]:
        minute = now_ms // 60000
        pipe = self.client.pipeline(transaction=False)
        for m in range(minute - 59, minute + 1):
            pipe.hvals(self.keys.events_minute(m))
        return [sum(int(v) for v in values) for values in await pipe.execute()]

    # --- janitor ------------------------------------------------------------------------------
    async def remove_node(self, node: str) -> dict[str, int]:
        """A node's own deregistration (drain, shutdown): drop its lease, then its state."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(k.node_lease(node))
        pipe.zscore(k.nodes, node)
        _, score = await pipe.execute()
        sweeper = Sweeper(self.client, k, cluster=self.cluster)
        removed = await sweeper.sweep_node(node, None if score is None else float(score))
        return removed.as_dict()

    async def cleanup(self, exclude: set[str] | None = None) -> dict[str, int]:
        """Remove the state of every node whose lease expired (the caller holds the janitor's
        lease, or accepts overlapping a sweep: either way nothing is counted twice)."""
        sweeper = Sweeper(self.client, self.keys, cluster=self.cluster)
        return (await sweeper.sweep(exclude or set())).as_dict()

    async def cleanup_exclusive(
        self, owner: str, exclude: set[str] | None = None, wait_s: float = CLEANUP_WAIT_S
    ) -> dict[str, int]:
        """``cleanup`` under the worker janitor's lease (``POST /dashboard/cleanup``): waits up
        to ``wait_s`` for a sweep in progress to end; ``LeaseBusy`` if it does not."""
        lease = Lease(self.client, self.keys.lease("janitor"), owner, CLEANUP_LEASE_TTL_S)
        deadline = time.monotonic() + wait_s
        while True:
            ran, removed = await run_under_lease(lease, lambda: self.cleanup(exclude))
            if ran and removed is not None:
                return removed
            if time.monotonic() >= deadline:
                raise LeaseBusy("the janitor is sweeping; retry")
            await asyncio.sleep(CLEANUP_POLL_S)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
