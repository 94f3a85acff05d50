"""A rolling upgrade from the previous releases (docs/deployment.md): old nodes count rooms in the
``{g}`` index, list their connections in ``{g}:clients`` / ``{g}:clients:info`` and keep a
legacy connections set; new nodes count in the sharded index and keep a clients hash. The new
janitor tells an old node's state by its legacy set and sweeps it exactly from the legacy keys,
leaving the new nodes' counts alone. The old nodes' script is the previous release's
``membership.lua``, kept verbatim in ``tests/worker/legacy/``. Nodes of the release after that
also wrote a clients hash and the users' connection sets, which this release no longer writes:
the janitor still drains what a dead one of them left."""

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


async def previous_node_connects(
    client: Any, state: RedisState, conn: ConnectionInfo, rooms: list[str]
) -> None:
    """What a node of the release before this one (the sharded indexes, before connections were
    counted by ``user_online`` only) wrote per connect: its clients hash, the user's connection
    set, then the memberships (the same script and keys as now)."""
    await client.hset(KEYS.node_clients(conn.node), conn.connection_id, conn.user_id)
    await client.sadd(KEYS.user_connections(conn.user_id), conn.connection_id)
    await state.add_connection(conn, rooms)


async def test_the_janitor_drains_a_previous_nodes_clients_hash_and_user_sets(
    store: tuple[Any, bool],
) -> None:
    """A dead node of the previous release left ``node:{N}:clients`` and ``user:{id}:connections``
    entries (one of them shared with a live old node); the sweep removes the dead node's, keeps
    the live one's, and a node of this release adds nothing to either key."""
    aredis, cluster = store
    state = RedisState(aredis, KEYS, cluster=cluster)
    now = int(time.time() * 1000)
    for node in ("prev-dead", "prev-live", "this-node"):
        await state.heartbeat(stats(node, 1), now)
    dead = [ConnectionInfo(f"prev-dead-{i}", f"6{i}", "cliente", "prev-dead", now) for i in (0, 1)]
    for conn in dead:
        await previous_node_connects(
            aredis, state, conn, [f"cliente_{conn.user_id}", "all_clientes"]
        )
    live = ConnectionInfo("prev-live-0", "60", "cliente", "prev-live", now)
    await previous_node_connects(aredis, state, live, ["cliente_60", "all_clientes"])
    mine = ConnectionInfo("this-0", "60", "cliente", "this-node", now)
    await state.add_connection(mine, ["cliente_60", "all_clientes"])
    assert await aredis.exists(KEYS.node_clients("this-node")) == 0
    assert await aredis.smembers(KEYS.user_connections("60")) == {b"prev-dead-0", b"prev-live-0"}
    assert await state.room_count("all_clientes") == 4

    await aredis.delete(KEYS.node_lease("prev-dead"))
    removed = await state.cleanup()
    assert removed == {"nodes": 1, "connections": 2, "memberships": 4, "presence": 2}
    assert await aredis.exists(KEYS.node_clients("prev-dead"), KEYS.user_connections("61")) == 0
    assert await aredis.exists(KEYS.node_memberships("prev-dead")) == 0
    assert await aredis.smembers(KEYS.user_connections("60")) == {b"prev-live-0"}
    assert await aredis.hgetall(KEYS.node_clients("prev-live")) == {b"prev-live-0": b"60"}
    assert await state.room_count("all_clientes") == 2
    assert await state.room_count("cliente_60") == 2
    assert sorted(await aredis.zrange(KEYS.nodes, 0, -1)) == [b"prev-live", b"this-node"]

    # a previous-release node that dies with a connection in no room: the clients hash alone
    # is what the janitor finds, and it is drained and the node forgotten
    await aredis.hset(KEYS.node_clients("prev-live"), "prev-live-9", "69")
    await aredis.sadd(KEYS.user_connections("69"), "prev-live-9")
    await aredis.delete(KEYS.node_lease("prev-live"))
    removed = await state.cleanup()
    assert removed == {"nodes": 1, "connections": 2, "memberships": 2, "presence": 1}
    assert await aredis.exists(KEYS.node_clients("prev-live"), KEYS.user_connections("69")) == 0
    assert await aredis.exists(KEYS.user_connections("60")) == 0
    assert await aredis.zrange(KEYS.nodes, 0, -1) == [b"this-node"]
