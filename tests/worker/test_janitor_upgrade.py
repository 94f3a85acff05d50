"""A rolling upgrade from the previous releases (docs/deployment.md): old nodes count rooms in the
``{g}`` index, list their connections in ``{g}:clients`` / ``{g}:clients:info`` and keep a
legacy connections set; new nodes count in the sharded index and keep a clients hash. The new
janitor tells an old node's state by its legacy set and sweeps it exactly from the legacy keys,
leaving the new nodes' counts alone. The old nodes' script is the previous release's
``membership.lua``, kept verbatim in ``tests/worker/legacy/``."""

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
    # while old and new nodes are mixed each release counts its own nodes' members
    assert await state.room_count("all_clientes") == 1
    assert await aredis.hget(KEYS.room_members, "all_clientes") == b"2"
    assert await aredis.hlen(KEYS.room_presence("all_clientes")) == 2  # the old nodes' entries

    await aredis.delete(KEYS.node_lease("old-node"))
    removed = await state.cleanup()
    assert removed == {"nodes": 1, "connections": 2, "memberships": 4, "presence": 4}
    assert await state.room_count("all_clientes") == 1
    assert await aredis.exists(KEYS.room_presence("all_clientes")) == 0
    legacy = [KEYS.rooms, KEYS.room_members, KEYS.clients, KEYS.client_info]
    legacy += [KEYS.node_connections("old-node"), KEYS.node_memberships("old-node")]
    legacy += [KEYS.user_connections("0"), KEYS.user_connections("1")]
    assert await aredis.exists(*legacy) == 0
    assert await aredis.zrange(KEYS.nodes, 0, -1) == [b"new-node"]
    assert (await state.list_rooms(10, None)).items == [
        {"room": "all_clientes", "members": 1},
        {"room": "cliente_7", "members": 1},
    ]
    await state.remove_connection(new, ["cliente_7", "all_clientes"])
    assert (await state.list_rooms(10, None)).total == 0
