"""The janitor under concurrency (issue 16, item 5), on a real Redis.

A sweep that overlaps another sweep, or a dead node that comes back while it is being swept, must
leave exact counts and every live connection's state. The overlap is made deterministic with
``Interleave``: the second actor runs right after the sweep has read the dead node's memberships,
the moment the review's scripts showed the damage ("members 5 -> room key deleted, not in the
index, 2 live presence entries left behind"). Each runs on a single Redis (one script per chunk)
and on a Redis Cluster (claim in the node's slot, then the rooms' slots).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.backend.base import ConnectionInfo, NodeStats
from gateway.backend.keys import Keys
from gateway.backend.leases import Lease
from gateway.backend.redis_state import SEP, RedisState
from tests.support import RedisServer

KEYS = Keys("gateway")
ROOM = "service_5"
LIVE, DEAD = "live-node", "dead-node"
READS = frozenset({"smembers", "srandmember", "sscan"})


class Interleave:
    """A Redis client that runs ``action`` once, right after the first command reading ``key``
    returned: another actor (a second sweep, a node coming back) acts at exactly that point."""

    def __init__(self, client: Any, key: str, action: Callable[[], Awaitable[Any]]) -> None:
        self._client = client
        self._key = key
        self._action = action
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in READS:
            return attr

        async def read(*args: Any, **kw: Any) -> Any:
            result = await attr(*args, **kw)
            if not self.fired and args and args[0] == self._key:
                self.fired = True
                await self._action()
            return result

        return read


def stats(node: str, connections: int) -> NodeStats:
    return NodeStats(
        node=node,
        connections=connections,
        by_role={"cliente": connections},
        rooms=1,
        rss_bytes=1,
        uptime_s=1.0,
        started_at_ms=0,
        frames_in=0,
        frames_out=0,
        connection_seconds_sum=0.0,
        django={},
    )


def conns(node: str, n: int) -> list[ConnectionInfo]:
    return [ConnectionInfo(f"{node}-c{i}", f"{node}-u{i}", "cliente", node, 0) for i in range(n)]


async def register(state: RedisState, node: str, n: int) -> list[ConnectionInfo]:
    """A node with ``n`` connections, each in its own personal room and in ``ROOM``."""
    await state.heartbeat(stats(node, n), int(time.time() * 1000))
    mine = conns(node, n)
    for conn in mine:
        await state.add_connection(conn, [f"cliente_{conn.user_id}", ROOM])
    return mine


async def room_state(client: Any) -> tuple[int, bool, int]:
    """(member count, listed in the rooms index, presence entries) of ``ROOM``."""
    count = await client.hget(KEYS.room_members_of(ROOM), ROOM)
    listed = await client.zscore(KEYS.room_index_of(ROOM), ROOM) is not None
    return int(count or 0), listed, int(await client.hlen(KEYS.room_presence(ROOM)))


async def five_members_three_on_a_dead_node(aredis: Any, cluster: bool = False) -> RedisState:
    state = RedisState(aredis, KEYS, cluster=cluster)
    await register(state, LIVE, 2)
    await register(state, DEAD, 3)
    await aredis.delete(KEYS.node_lease(DEAD))  # its lease expired: the node is dead
    assert await room_state(aredis) == (5, True, 5)
    return state


async def test_two_sweeps_at_once_decrement_each_membership_once(
    store: tuple[Any, bool],
) -> None:
    aredis, cluster = store
    other = await five_members_three_on_a_dead_node(aredis, cluster)
    reports: list[dict[str, int]] = []

    async def second_sweep() -> None:
        reports.append(await other.cleanup())

    interleaved = Interleave(aredis, KEYS.node_memberships(DEAD), second_sweep)
    first = RedisState(interleaved, KEYS, cluster=cluster)
    reports.append(await first.cleanup())
    assert interleaved.fired

    # the two live members keep their count, their index entry and their presence
    assert await room_state(aredis) == (2, True, 2)
    assert sum(r["memberships"] for r in reports) == 6  # 3 connections x 2 rooms, once
    assert sum(r["connections"] for r in reports) == 3
    assert sum(r["nodes"] for r in reports) == 1
    for conn in conns(DEAD, 3):
        room = f"cliente_{conn.user_id}"
        assert await aredis.hget(KEYS.room_members_of(room), room) is None
    assert await aredis.zrange(KEYS.nodes, 0, -1) == [LIVE.encode()]


async def test_a_node_that_comes_back_during_its_sweep_keeps_its_live_state(
    store: tuple[Any, bool],
) -> None:
    aredis, cluster = store
    await five_members_three_on_a_dead_node(aredis, cluster)
    back = RedisState(aredis, KEYS, cluster=cluster)

    async def node_comes_back() -> None:
        # what Node._heartbeat_once does when its lease had vanished: register everything again
        assert await back.heartbeat(stats(DEAD, 3), int(time.time() * 1000)) is False
        for conn in conns(DEAD, 3):
            await back.add_connection(conn, [f"cliente_{conn.user_id}", ROOM])

    interleaved = Interleave(aredis, KEYS.node_memberships(DEAD), node_comes_back)
    await RedisState(interleaved, KEYS, cluster=cluster).cleanup()
    assert interleaved.fired

    assert await room_state(aredis) == (5, True, 5)
    assert await aredis.scard(KEYS.node_memberships(DEAD)) == 6
    assert await aredis.exists(KEYS.node_lease(DEAD)) == 1
    assert await aredis.zscore(KEYS.nodes, DEAD) is not None
    assert await aredis.scard(KEYS.node_memberships(LIVE)) == 4
    for conn in conns(DEAD, 3):
        found = await aredis.hget(KEYS.room_presence(ROOM), conn.connection_id)
        assert found == f"{conn.user_id}\x1fcliente\x1f{DEAD}".encode()
        room = f"cliente_{conn.user_id}"
        assert await aredis.hget(KEYS.room_members_of(room), room) == b"1"
    # and once it dies for real, one sweep removes it all
    await aredis.delete(KEYS.node_lease(DEAD))
    removed = await RedisState(aredis, KEYS, cluster=cluster).cleanup()
    assert removed == {"nodes": 1, "connections": 3, "memberships": 6, "presence": 6}
    assert await room_state(aredis) == (2, True, 2)


async def test_a_sweep_repeated_finds_nothing_and_changes_nothing(
    store: tuple[Any, bool],
) -> None:
    aredis, cluster = store
    state = await five_members_three_on_a_dead_node(aredis, cluster)
    first = await state.cleanup()
    assert first == {"nodes": 1, "connections": 3, "memberships": 6, "presence": 6}
    assert await state.cleanup() == {"nodes": 0, "connections": 0, "memberships": 0, "presence": 0}
    assert await room_state(aredis) == (2, True, 2)


async def test_a_node_dead_before_its_first_heartbeat_is_found_and_swept(
    store: tuple[Any, bool],
) -> None:
    """A connection registered before the node's first heartbeat indexes the node (its rooms'
    memberships do), so the janitor finds its memberships; a connection writes nothing else."""
    aredis, cluster = store
    node = f"early-{time.time_ns()}"
    state = RedisState(aredis, KEYS, cluster=cluster)
    conn = ConnectionInfo(f"{node}-c", "44", "cliente", node, int(time.time() * 1000))
    room = f"service_{time.time_ns() % 1000}"
    await state.add_connection(conn, [room])
    assert await aredis.zscore(KEYS.nodes, node) is not None
    assert await aredis.smembers(KEYS.node_memberships(node)) == {
        f"{room}{SEP}{conn.connection_id}".encode()
    }
    assert await aredis.exists(KEYS.node_clients(node), KEYS.user_connections("44")) == 0
    removed = await RedisState(aredis, KEYS, cluster=cluster).cleanup()
    assert removed["connections"] >= 1 and removed["nodes"] >= 1
    assert await aredis.exists(KEYS.node_memberships(node)) == 0
    assert await aredis.hget(KEYS.room_presence(room), conn.connection_id) is None
    assert await aredis.zscore(KEYS.nodes, node) is None


async def test_dashboard_cleanup_waits_while_the_worker_janitor_sweeps(
    redis_server: RedisServer, make_node: Any, http: Any, aredis: Any
) -> None:
    """``POST /dashboard/cleanup`` and the worker's janitor share the lease
    ``gateway:lease:janitor``: while a worker holds it, the dashboard's cleanup does not touch
    the dead node's state; it runs once the worker is done."""
    observer = await make_node(redis_server.url)
    await five_members_three_on_a_dead_node(aredis)
    worker = Lease(aredis, KEYS.lease("janitor"), "worker-1", ttl_s=30)
    assert await worker.acquire()
    url = f"{observer.http_url}/dashboard/cleanup"
    headers = {"Authorization": f"Bearer {observer.dashboard_token}"}

    async def post() -> dict[str, Any]:
        async with http.post(url, headers=headers) as response:
            assert response.status == 200
            return dict(await response.json())

    request = asyncio.create_task(post())
    await asyncio.sleep(1.0)  # the dashboard asked; the worker's sweep is still running
    assert not request.done()
    assert await aredis.scard(KEYS.node_memberships(DEAD)) == 6
    assert await worker.release()
    answer = await asyncio.wait_for(request, 10)
    assert answer["removed"] == {"nodes": 1, "connections": 3, "memberships": 6, "presence": 6}
    assert await room_state(aredis) == (2, True, 2)
