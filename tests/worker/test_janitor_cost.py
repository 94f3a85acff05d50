"""What the janitor and presence cost in Redis commands (issue 16, item 7): O(what changed),
never O(rooms) or O(nodes). Counted by the server itself (``INFO commandstats``), so any command
the code sends counts, pipelined or scripted."""

from __future__ import annotations

import time
from typing import Any

from gateway.backend.base import ConnectionInfo
from gateway.backend.keys import Keys
from gateway.backend.redis_state import RedisState
from tests.worker.test_janitor_races import stats

KEYS = Keys("gateway")


async def commands(client: Any) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (commands run inside scripts
    included; INFO and the reset itself excluded)."""
    info = await client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}
    calls.pop("info", None)
    calls.pop("config|resetstat", None)
    return calls


async def measure(client: Any, action: Any) -> dict[str, int]:
    await client.config_resetstat()
    await action()
    return await commands(client)


async def node_with_rooms(state: RedisState, node: str, rooms: int) -> None:
    await state.heartbeat(stats(node, rooms), int(time.time() * 1000))
    for i in range(rooms):
        conn = ConnectionInfo(f"{node}-c{i}", f"u{i}", "cliente", node, 0)
        await state.add_connection(conn, [f"service_{i}", "all_clientes"])


async def test_a_sweep_costs_what_the_dead_node_held_not_every_room(aredis: Any) -> None:
    state = RedisState(aredis, KEYS)
    await node_with_rooms(state, "live", 300)  # 300 rooms, all with live members
    quiet = await measure(aredis, state.cleanup)
    assert "hgetall" not in quiet
    assert sum(quiet.values()) <= 3, quiet  # the nodes index and the leases of its nodes

    await node_with_rooms(state, "dead", 4)
    await aredis.delete(KEYS.node_lease("dead"))
    removed: dict[str, int] = {}

    async def sweep() -> None:
        removed.update(await state.cleanup())

    swept = await measure(aredis, sweep)
    assert removed == {"nodes": 1, "connections": 4, "memberships": 8, "presence": 4}
    assert "hgetall" not in swept
    # commands inside scripts count too: 3 per membership (SREM, HDEL, HINCRBY), 2 per
    # connection (HDEL from the node's clients, SREM from the user's), about 20 per sweep;
    # none for the live node's rooms
    assert sum(swept.values()) <= 3 * 8 + 2 * 4 + 25, swept
    assert await aredis.hget(KEYS.room_members_of("all_clientes"), "all_clientes") == b"300"


async def test_presence_checks_the_leases_of_the_rooms_nodes_only(aredis: Any) -> None:
    state = RedisState(aredis, KEYS)
    for n in range(40):  # forty nodes, one of them in the room
        await state.heartbeat(stats(f"node-{n}", 0), int(time.time() * 1000))
    for i in range(3):
        conn = ConnectionInfo(f"c{i}", f"u{i}", "cliente", "node-7", 0)
        await state.add_connection(conn, ["service_1"])
    members: list[Any] = []

    async def ask() -> None:
        members.extend(await state.presence("service_1"))

    used = await measure(aredis, ask)
    assert [m.user_id for m in members] == ["u0", "u1", "u2"]
    assert used == {"hgetall": 1, "exists": 1}

    count = await measure(aredis, lambda: state.room_count("service_1"))
    assert count == {"hget": 1}
