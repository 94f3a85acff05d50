"""The Redis janitor: removes what dead nodes left behind, one dead node at a time.

A sweep costs O(what the dead nodes held), never O(rooms or members): it walks the nodes index,
and for each node whose lease expired it reads that node's own memberships set in chunks (and
the legacy clients hash, connectionId -> userId, and the users' legacy connection sets that a
node of an earlier release wrote: this release writes neither; a dead node's connection counts
are in ``user_online``, released by the nodes' accounting sweep). Each chunk is removed by a
script that checks the node's lease at the moment of deletion, so a node that re-registers
during a long sweep keeps its live state, and that counts each membership by what ``SREM``
removed, so sweeps that overlap (two workers, a worker and ``POST /dashboard/cleanup``, a retry
after a lost reply) never count anything twice. The connections reported are the distinct
connection ids of what one node's sweep removed.

On Redis Cluster a dead node's keys share its ``{node}`` slot but rooms and indexes live in other
slots: a script there claims the chunk (same lease check, same exactly-once removal), then the
room counts, presence and (legacy) the users' connection sets are updated slot by slot. Counts stay
exact; the one window left is a node that re-registers between a claim and the presence
``HDEL`` of that chunk (one round trip): its entries in those presence hashes are missing until
its next registration.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backend import scripts
from gateway.backend.keys import Keys
from gateway.backend.room_index import count_rooms

log = logging.getLogger("gateway.janitor")

SEP = "\x1f"
CHUNK = 500  # memberships or connections per script call: bounded work per Redis call

MEMBERSHIPS = "janitor_memberships"
CONNECTIONS = "janitor_connections"
CLIENTS = "janitor_clients"
CLAIM = "janitor_claim"
FORGET = "janitor_forget"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(slots=True)
class Removed:
    nodes: int = 0
    connections: int = 0  # distinct connections whose memberships or records this sweep removed
    memberships: int = 0
    presence: int = 0
    gone: set[str] = field(default_factory=set)  # their ids (one node's sweep)

    def add(self, other: Removed) -> None:
        self.nodes += other.nodes
        self.connections += other.connections
        self.memberships += other.memberships
        self.presence += other.presence

    def as_dict(self) -> dict[str, int]:
        return {
            "nodes": self.nodes,
            "connections": self.connections,
            "memberships": self.memberships,
            "presence": self.presence,
        }


class NodeAlive(Exception):
    """The node's lease is back: it re-registered while being swept; stop sweeping it."""


class Sweeper:
    def __init__(self, client: Any, keys: Keys, *, cluster: bool = False) -> None:
        self.client = client
        self.keys = keys
        self.cluster = cluster

    async def dead_nodes(self, exclude: set[str]) -> list[tuple[str, float]]:
        """(node, index score) of every indexed node whose lease has expired."""
        entries = await self.client.zrange(self.keys.nodes, 0, -1, withscores=True)
        nodes = [(_s(name), float(score)) for name, score in entries]
        nodes = [(name, score) for name, score in nodes if name not in exclude]
        if not nodes:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name, _ in nodes:
            pipe.exists(self.keys.node_lease(name))
        alive = await pipe.execute()
        return [node for node, ok in zip(nodes, alive, strict=True) if not ok]

    async def sweep(self, exclude: set[str]) -> Removed:
        removed = Removed()
        for node, score in await self.dead_nodes(exclude):
            log.info("removing state of dead node %s", node)
            removed.add(await self.sweep_node(node, score))
        return removed

    async def sweep_node(self, node: str, score: float | None) -> Removed:
        """Remove a dead node's memberships, connections and index entry, chunk by chunk, as
        long as its lease stays expired. ``score``: its index score when the sweep began.

        A node of a release before the sharded indexes (a rolling upgrade) is told by its
        legacy connections set: its memberships were counted in the legacy ``{g}`` room index,
        and its connections' users are in the legacy client info."""
        removed = Removed()
        legacy = bool(await self.client.exists(self.keys.node_connections(node)))

        async def memberships(node: str, chunk: list[str], removed: Removed) -> None:
            await self._memberships(node, chunk, removed, legacy)

        try:
            await self._drain(self.keys.node_memberships(node), node, removed, memberships)
            await self._drain_clients(node, removed)
            if legacy:
                await self._drain(
                    self.keys.node_connections(node), node, removed, self._legacy_connections
                )
        except NodeAlive:
            log.info("node %s is alive again: its state stays", node)
            return removed
        finally:
            removed.connections = len(removed.gone)
            removed.gone = set()
        if score is not None:
            removed.nodes = await self._forget(node, score)
        return removed

    async def _drain(self, key: str, node: str, removed: Removed, step: Any) -> None:
        while chunk := [_s(m) for m in await self.client.srandmember(key, CHUNK)]:
            await step(node, chunk, removed)

    async def _drain_clients(self, node: str, removed: Removed) -> None:
        key = self.keys.node_clients(node)
        while flat := await self.client.hrandfield(key, CHUNK, withvalues=True):
            pairs = [(_s(flat[i]), _s(flat[i + 1])) for i in range(0, len(flat), 2)]
            await self._clients(node, pairs, removed)

    # --- memberships --------------------------------------------------------------------------
    def _count_keys(self, room: str, legacy: bool) -> tuple[str, str]:
        k = self.keys
        if legacy:
            return k.room_members, k.rooms
        return k.room_members_of(room), k.room_index_of(room)

    async def _memberships(
        self, node: str, chunk: list[str], removed: Removed, legacy: bool
    ) -> None:
        if self.cluster:
            await self._memberships_cluster(node, chunk, removed, legacy)
            return
        k = self.keys
        keys = [k.node_lease(node), k.node_memberships(node)]
        for member in chunk:
            room = member.split(SEP, 1)[0]
            keys += [k.room_presence(room), *self._count_keys(room, legacy)]
        gone, presence, *conns = await scripts.load(MEMBERSHIPS).run(self.client, keys, chunk)
        if int(gone) < 0:
            raise NodeAlive(node)
        removed.memberships += int(gone)
        removed.presence += int(presence)
        removed.gone.update(_s(conn) for conn in conns)

    async def _memberships_cluster(
        self, node: str, chunk: list[str], removed: Removed, legacy: bool
    ) -> None:
        claimed = await self._claim(self.keys.node_memberships(node), node, chunk)
        by_room: dict[str, list[str]] = {}
        for member in claimed:
            room, conn = member.split(SEP, 1)
            by_room.setdefault(room, []).append(conn)
            removed.gone.add(conn)
        pipe = self.client.pipeline(transaction=False)
        for room, conns in by_room.items():
            pipe.hdel(self.keys.room_presence(room), *conns)
        results = await pipe.execute() if by_room else []
        deltas = {room: -len(conns) for room, conns in by_room.items()}
        if legacy:
            by_delta: dict[int, list[str]] = {}  # one count update per distinct decrement
            for room, delta in deltas.items():
                by_delta.setdefault(delta, []).append(room)
            for delta, rooms in by_delta.items():
                await scripts.load(scripts.ROOM_COUNT).run(
                    self.client, [self.keys.room_members, self.keys.rooms], [delta, *rooms]
                )
        elif deltas:
            await count_rooms(self.client, self.keys, deltas)
        removed.memberships += len(claimed)
        removed.presence += sum(int(r) for r in results)

    # --- connections --------------------------------------------------------------------------
    async def _clients(self, node: str, pairs: list[tuple[str, str]], removed: Removed) -> None:
        """Connections of the legacy clients hash (connectionId -> userId) of a node of an
        earlier release, and their entries in the users' legacy connection sets."""
        k = self.keys
        if self.cluster:
            users = dict(pairs)
            claimed = await self._claim(k.node_clients(node), node, list(users))
            pipe = self.client.pipeline(transaction=False)
            for conn in claimed:
                pipe.srem(k.user_connections(users[conn]), conn)
            if claimed:
                await pipe.execute()
            removed.gone.update(claimed)
            return
        keys = [k.node_lease(node), k.node_clients(node)]
        keys += [k.user_connections(user) for _, user in pairs]
        args = [conn for conn, _ in pairs]
        await self._remove_records(CLIENTS, node, keys, args, removed)

    async def _legacy_connections(self, node: str, chunk: list[str], removed: Removed) -> None:
        """Connections of a node of an earlier release (legacy set and client info)."""
        k = self.keys
        infos = await self.client.hmget(k.client_info, chunk)
        users = [_user_of(info) for info in infos]
        if self.cluster:
            claimed = set(await self._claim(k.node_connections(node), node, chunk))
            pipe = self.client.pipeline(transaction=False)
            for conn, user in zip(chunk, users, strict=True):
                if conn in claimed:
                    pipe.zrem(k.clients, conn)
                    pipe.hdel(k.client_info, conn)
                    pipe.srem(k.user_connections(user), conn)
            if claimed:
                await pipe.execute()
            removed.gone.update(claimed)
            return
        keys = [k.node_lease(node), k.node_connections(node), k.clients, k.client_info]
        keys += [k.user_connections(user) for user in users]
        await self._remove_records(CONNECTIONS, node, keys, chunk, removed)

    async def _remove_records(
        self, name: str, node: str, keys: list[str], args: list[str], removed: Removed
    ) -> None:
        """One legacy script call (single Redis): the connection ids it removed, or nil when
        the node is alive."""
        gone = await scripts.load(name).run(self.client, keys, args)
        if gone is None:
            raise NodeAlive(node)
        removed.gone.update(_s(conn) for conn in gone)

    async def _claim(self, key: str, node: str, chunk: Sequence[str]) -> list[str]:
        script = scripts.load(CLAIM)
        claimed = await script.run(self.client, [self.keys.node_lease(node), key], list(chunk))
        if claimed is None:
            raise NodeAlive(node)
        return [_s(m) for m in claimed]

    # --- the index ----------------------------------------------------------------------------
    async def _forget(self, node: str, score: float) -> int:
        k = self.keys
        keys = [k.nodes]
        if not self.cluster:
            keys += [k.node_lease(node), k.node_memberships(node), k.node_connections(node)]
            keys.append(k.node_clients(node))
        elif await self._holds_anything(node):
            return 0
        return int(await scripts.load(FORGET).run(self.client, keys, [node, int(score)]))

    async def _holds_anything(self, node: str) -> bool:
        pipe = self.client.pipeline(transaction=False)
        pipe.exists(self.keys.node_lease(node))
        pipe.scard(self.keys.node_memberships(node))
        pipe.scard(self.keys.node_connections(node))
        pipe.hlen(self.keys.node_clients(node))
        return any(int(r) for r in await pipe.execute())


def _user_of(info: bytes | None) -> str:
    """The user of a connection from its client info; "" (an empty set) when it has none."""
    if info is None:
        return ""
    return str(orjson.loads(info).get("userId", ""))
