"""What a connect and a close cost Redis on a single Redis, counted by the server itself
(``INFO commandstats`` on a private redis-server, commands run inside scripts included): the
steps a node takes per authenticated connection (the address and the user counted by the
accounting, then the registration with the automatic rooms), each through the code the node
runs. No per-connection set or hash besides the counts: a user's connections are counted in
``user_online`` alone, and an online user's next connection writes it once."""

from __future__ import annotations

import time
from typing import Any

from gateway.backend.base import ConnectionInfo
from gateway.backend.keys import Keys
from gateway.backend.online import IP, USER
from gateway.backend.redis_online import RedisOnline, connection_count
from gateway.backend.redis_state import RedisState
from tests.worker.test_janitor_cost import measure
from tests.worker.test_janitor_races import stats

KEYS = Keys("gateway")
NODE = "cost-node"
USERS = 20


class Node:
    """A node's Redis side: its backend state and its accounting store, one group commit."""

    def __init__(self, client: Any) -> None:
        self.state = RedisState(client, KEYS)
        self.online = RedisOnline(client, KEYS, batch=self.state.batch, grace_ms=5000)
        self.seq = 0

    async def start(self) -> None:
        await self.state.heartbeat(stats(NODE, 0), int(time.time() * 1000))
        await self.online.register(NODE)

    async def connect(self, user_id: str) -> ConnectionInfo:
        self.seq += 1
        conn = ConnectionInfo(f"c{self.seq}", user_id, "cliente", NODE, 0)
        await self.online.acquire(NODE, IP, "10.0.0.1")  # admit_ip
        await self.online.acquire(NODE, USER, user_id, role="cliente")  # admit_user
        await self.state.add_connection(conn, [f"cliente_{user_id}", "all_clientes"])
        return conn

    async def close(self, conn: ConnectionInfo) -> None:
        await self.state.remove_connection(conn, [f"cliente_{conn.user_id}", "all_clientes"])
        await self.online.release(NODE, USER, conn.user_id)  # accounting.closed
        await self.online.release(NODE, IP, "10.0.0.1")


def per_op(calls: dict[str, int], ops: int) -> dict[str, float]:
    return {name: n / ops for name, n in sorted(calls.items())}


async def test_a_connect_writes_the_counts_and_the_rooms_only(aredis: Any) -> None:
    node = Node(aredis)
    await node.start()
    await node.connect("warm-up")  # stays: all_clientes keeps a member
    await node.close(await node.connect("warm-up-2"))  # the scripts are loaded (SCRIPT LOAD)
    first: list[ConnectionInfo] = []

    async def first_connects() -> None:
        for i in range(USERS):
            first.append(await node.connect(f"{i}"))

    # three scripts: the address's count, the user's count, the memberships. Inside them: each
    # counter's HGETALL, the node record's HINCRBY and ONE HSET of the counter (the node's count
    # folded with role/seen/on); the user coming online (XADD, online index ZADD); the rooms
    # (memberships SADD, counts HINCRBY, the personal room's presence HSET and index ZADD).
    # The previous release: 20 (a clients-hash HSET, a user-set SADD, each counter's HINCRBY
    # apart from the user's HSET).
    assert per_op(await measure(aredis, first_connects), USERS) == {
        "evalsha": 3,
        "hgetall": 2,
        "hincrby": 4,
        "hset": 3,
        "sadd": 2,
        "xadd": 1,
        "zadd": 2,
    }

    async def second_connects() -> None:  # an online user's next connection
        for i in range(USERS):
            await node.connect(f"{i}")

    assert per_op(await measure(aredis, second_connects), USERS) == {
        "evalsha": 3,
        "hgetall": 2,
        "hincrby": 4,
        "hset": 3,
        "sadd": 2,
    }
    for i in range(USERS):
        assert await connection_count(aredis, KEYS, f"{i}") == 2
    # nothing else per connection: no user set, no clients hash
    assert await aredis.exists(KEYS.user_connections("0"), KEYS.node_clients(NODE)) == 0

    async def closes() -> None:
        for conn in first:
            await node.close(conn)

    assert per_op(await measure(aredis, closes), USERS) == {
        "evalsha": 3,
        "hdel": 1,
        "hget": 2,
        "hgetall": 2,
        "hincrby": 6,
        "srem": 2,
    }
    for i in range(USERS):
        assert await connection_count(aredis, KEYS, f"{i}") == 1
