"""A rolling upgrade from the previous release (docs/deployment.md): old nodes still write a
presence hash for the broadcast rooms and count by it; the new janitor sweeps their state
exactly, and new nodes' counts add up with theirs. The old nodes' script is the previous
release's ``membership.lua``, kept verbatim in ``tests/worker/legacy/``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from gateway.backend.base import ConnectionInfo
from gateway.backend.keys import Keys
from gateway.backend.redis_state import SEP, RedisState
from tests.worker.test_janitor_races import stats

KEYS = Keys("gateway")
LEGACY = (Path(__file__).parent / "legacy" / "membership_2c5b7dd.lua").read_text()


async def old_node_joins(client: Any, conn: ConnectionInfo, rooms: list[str]) -> None:
    """What a node of the previous release sends for a connect with ``rooms``."""
    k = KEYS
    keys = [k.node_memberships(conn.node), k.client_info, k.room_members, k.rooms]
    keys += [k.room_presence(room) for room in rooms]
    value = SEP.join((conn.user_id, conn.role, conn.node))
    info = orjson.dumps({"connectionId": conn.connection_id, "userId": conn.user_id})
    await client.sadd(k.node_connections(conn.node), conn.connection_id)
    await client.sadd(k.user_connections(conn.user_id), conn.connection_id)
    await client.zadd(k.clients, {conn.connection_id: 0})
    await client.eval(LEGACY, len(keys), *keys, 1, conn.connection_id, value, info, *rooms)


async def test_the_new_janitor_sweeps_an_old_nodes_state_exactly(aredis: Any) -> None:
    state = RedisState(aredis, KEYS)
    now = int(time.time() * 1000)
    await state.heartbeat(stats("old-node", 2), now)
    await state.heartbeat(stats("new-node", 1), now)
    for i in range(2):
        conn = ConnectionInfo(f"old-{i}", f"{i}", "cliente", "old-node", now)
        await old_node_joins(aredis, conn, [f"cliente_{i}", "all_clientes"])
    new = ConnectionInfo("new-0", "7", "cliente", "new-node", now)
    await state.add_connection(new, ["cliente_7", "all_clientes"])
    assert await state.room_count("all_clientes") == 3
    assert await aredis.hlen(KEYS.room_presence("all_clientes")) == 2  # the old nodes' entries

    await aredis.delete(KEYS.node_lease("old-node"))
    removed = await state.cleanup()
    assert removed == {"nodes": 1, "connections": 2, "memberships": 4, "presence": 4}
    assert await state.room_count("all_clientes") == 1
    assert await aredis.exists(KEYS.room_presence("all_clientes")) == 0
    assert await aredis.zrange(KEYS.rooms, 0, -1) == [b"all_clientes", b"cliente_7"]
    await state.remove_connection(new, ["cliente_7", "all_clientes"])
    assert await aredis.zcard(KEYS.rooms) == 0
