"""Cluster-wide state in Redis: connections, memberships, presence, node leases, dashboard
indexes, and the janitor that removes what dead nodes left behind. Used by nodes and the worker.

Never KEYS or SCAN: every question is answered from named indexes of bounded size. A node's
memberships set is the truth about who is in which room: room counts change by what ``SADD`` /
``SREM`` on it changed. Broadcast rooms (``all_clientes``, ``all_proveedores``) keep a count
only, no presence hash: every cliente is in ``all_clientes``, and ``presence`` of it answers the
count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.backend import event_log, scripts
from gateway.backend.base import ConnectionInfo, NodeStats, Page, PresenceMember
from gateway.backend.batch import make_batcher
from gateway.backend.keys import Keys
from gateway.backend.leases import Lease, LeaseBusy, run_under_lease
from gateway.backend.redis_janitor import Sweeper
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

    # --- connections and memberships ---------------------------------------------------------
    def _client_json(self, conn: ConnectionInfo, rooms: Sequence[str]) -> bytes:
        return orjson.dumps(
            {
                "connectionId": conn.connection_id,
                "userId": conn.user_id,
                "role": conn.role,
                "node": conn.node,
                "rooms": sorted(rooms),
                "connectedAt": conn.connected_at_ms,
            }
        )

    # One round trip per connect, join, leave and disconnect on a single Redis: the membership
    # script keeps presence and the room index exact. Redis Cluster spreads these keys over
    # slots, so there the same steps run as separate calls (``_*_cluster``).

    def _membership(
        self, pipe: Any, conn: ConnectionInfo, delta: int, rooms: Sequence[str], info: bytes
    ) -> None:
        k = self.keys
        keys = [k.node_memberships(conn.node), k.client_info, k.room_members, k.rooms, k.nodes]
        keys += [k.room_presence(room) for room in rooms]
        value = SEP.join((conn.user_id, conn.role, conn.node))
        flags = "".join("0" if is_broadcast_room(room) else "1" for room in rooms)
        script = scripts.load(scripts.MEMBERSHIP)
        score = "" if conn.node in self._indexed else _now_ms()
        args = (delta, conn.connection_id, value, info, conn.node, score, flags)
        pipe.evalsha(script.sha, len(keys), *keys, *args, *rooms)

    def _queue_connection(self, pipe: Any, conn: ConnectionInfo, add: bool) -> None:
        k = self.keys
        if add:
            pipe.sadd(k.node_connections(conn.node), conn.connection_id)
            pipe.sadd(k.user_connections(conn.user_id), conn.connection_id)
            pipe.zadd(k.clients, {conn.connection_id: 0})
        else:
            pipe.srem(k.node_connections(conn.node), conn.connection_id)
            pipe.srem(k.user_connections(conn.user_id), conn.connection_id)
            pipe.zrem(k.clients, conn.connection_id)

    async def add_connection(self, conn: ConnectionInfo, rooms: Sequence[str] = ()) -> None:
        """Register a connection and join it to ``rooms``."""
        if self.cluster:
            await self._add_connection_cluster(conn, rooms)
            return
        info = self._client_json(conn, rooms)

        def queue(pipe: Any) -> None:
            self._queue_connection(pipe, conn, add=True)
            self._membership(pipe, conn, 1, rooms, info)

        await self.batch.run(queue)

    async def remove_connection(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        if self.cluster:
            await self._remove_connection_cluster(conn, rooms)
            return

        def queue(pipe: Any) -> None:
            self._queue_connection(pipe, conn, add=False)
            self._membership(pipe, conn, -1, rooms, b"")

        await self.batch.run(queue)

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
            await self._join_cluster(conn, rooms, all_rooms)
            return first
        info = self._client_json(conn, all_rooms)

        def queue(pipe: Any) -> None:
            if before is not None:
                script, keys, args = before
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            self._membership(pipe, conn, 1, rooms, info)

        results = await self.batch.run(queue)
        return results[0] if before is not None else None

    async def leave(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        if self.cluster:
            await self._leave_cluster(conn, rooms, all_rooms)
            return
        info = self._client_json(conn, all_rooms)
        await self.batch.run(lambda pipe: self._membership(pipe, conn, -1, rooms, info))

    # --- Redis Cluster: the same steps, one slot at a time -------------------------------------
    async def _add_connection_cluster(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._queue_connection(pipe, conn, add=True)
        if not rooms:  # else the join writes the client's info (one {g} write, not two)
            pipe.hset(self.keys.client_info, conn.connection_id, self._client_json(conn, rooms))
        await pipe.execute()
        if rooms:
            await self._join_cluster(conn, rooms, rooms)

    async def _remove_connection_cluster(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._queue_leave(pipe, conn, rooms)
        self._queue_connection(pipe, conn, add=False)
        pipe.hdel(self.keys.client_info, conn.connection_id)
        results = await pipe.execute()
        gone = [room for room, r in zip(rooms, results[1::2], strict=False) if int(r) == 1]
        if gone:
            await self._count(-1, gone)

    async def _join_cluster(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        k = self.keys
        value = SEP.join((conn.user_id, conn.role, conn.node))
        pipe = self.client.pipeline(transaction=False)
        for room in rooms:
            pipe.sadd(k.node_memberships(conn.node), f"{room}{SEP}{conn.connection_id}")
            if not is_broadcast_room(room):
                pipe.hset(k.room_presence(room), conn.connection_id, value)
        pipe.hset(k.client_info, conn.connection_id, self._client_json(conn, all_rooms))
        if conn.node not in self._indexed:
            pipe.zadd(k.nodes, {conn.node: _now_ms()}, nx=True)
        results = await pipe.execute()
        # count only memberships that are new (SADD answers 1 for a new member)
        added = iter(results)
        new_rooms = []
        for room in rooms:
            if int(next(added)) == 1:
                new_rooms.append(room)
            if not is_broadcast_room(room):
                next(added)
        if new_rooms:
            await self._count(1, new_rooms)

    async def _leave_cluster(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        self._queue_leave(pipe, conn, rooms)
        pipe.hset(self.keys.client_info, conn.connection_id, self._client_json(conn, all_rooms))
        results = await pipe.execute()
        gone = [room for room, r in zip(rooms, results[1::2], strict=False) if int(r) == 1]
        if gone:
            await self._count(-1, gone)

    def _queue_leave(self, pipe: Any, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        """HDEL, SREM per room: the SREM answers are what counts (results[1::2])."""
        for room in rooms:
            pipe.hdel(self.keys.room_presence(room), conn.connection_id)
            pipe.srem(self.keys.node_memberships(conn.node), f"{room}{SEP}{conn.connection_id}")

    async def _count(self, delta: int, rooms: Sequence[str]) -> None:
        await scripts.load(scripts.ROOM_COUNT).run(
            self.client, [self.keys.room_members, self.keys.rooms], [delta, *rooms]
        )

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
        return int(await self.client.hget(self.keys.room_members, room) or 0)

    async def user_connections(self, user_id: str) -> int:
        return int(await self.client.scard(self.keys.user_connections(user_id)))

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
    async def _lex_page(self, index: str, limit: int, cursor: str | None) -> tuple[list[str], int]:
        start = f"({cursor}" if cursor else "-"
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(index, start, "+", bylex=True, offset=0, num=limit + 1)
        pipe.zcard(index)
        names, total = await pipe.execute()
        return [_s(n) for n in names], int(total)

    async def list_clients(self, limit: int, cursor: str | None) -> Page:
        ids, total = await self._lex_page(self.keys.clients, limit, cursor)
        more = len(ids) > limit
        ids = ids[:limit]
        infos = await self.client.hmget(self.keys.client_info, ids) if ids else []
        items = [orjson.loads(info) for info in infos if info is not None]
        return Page(items=items, total=total, next_cursor=ids[-1] if more else None)

    async def list_rooms(self, limit: int, cursor: str | None) -> Page:
        rooms, total = await self._lex_page(self.keys.rooms, limit, cursor)
        more = len(rooms) > limit
        rooms = rooms[:limit]
        counts = await self.client.hmget(self.keys.room_members, rooms) if rooms else []
        items = [
            {"room": room, "members": int(c or 0)} for room, c in zip(rooms, counts, strict=True)
        ]
        return Page(items=items, total=total, next_cursor=rooms[-1] if more else None)

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
