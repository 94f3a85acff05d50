"""Rooms, presence, offsets and recovery over ``/ws`` (CONTRACT section 2, "Rooms" and
"History, recovery and the delivery guarantee"), on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from gateway.events import UNPUBLISHED_EPOCH


async def publish(node: Any, room: str, n: int) -> list[str]:
    """Publish ``n`` events to ``room`` through the node's backend; their ids in order."""
    ids = []
    for i in range(n):
        result = await node.node.backend.publish([room], "test", orjson.dumps({"n": i}), "api")
        ids.append(result.event_id)
    return ids


async def error_code(client: Any, event: str, room: Any) -> str | None:
    reply = await client.request(event, {"room": room})
    if reply["event"] == "error":
        assert reply["data"].get("field") == "room", reply
        return str(reply["data"]["code"])
    return None


# --- automatic rooms ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("token", "rooms"),
    [
        ("cliente-5", ["cliente_5", "all_clientes"]),
        ("proveedor-6", ["proveedor_6", "all_proveedores"]),
        ("admin-7", ["admin_dashboard"]),
    ],
)
async def test_automatic_rooms_are_joined_and_receive_events(
    node: Any, http: Any, token: str, rooms: list[str]
) -> None:
    client = await node.client(http)
    data = await client.authenticate(token)
    assert data["rooms"] == rooms
    for room in rooms:
        [event_id] = await publish(node, room, 1)
        [event] = await client.events(1)
        assert (event["room"], event["id"], event["offset"]) == (room, event_id, 1)
    await client.close()


# --- join_room rules ----------------------------------------------------------------------------
ACCESS = {
    "cliente-5": {
        "service_1": None,
        "location_madrid": None,
        "cliente_5": None,
        "cliente_6": "forbidden",
        "proveedor_5": "forbidden",
        "all_clientes": None,
        "all_proveedores": "forbidden",
        "admin_dashboard": "forbidden",
    },
    "proveedor-5": {
        "service_x-Y_9": None,
        "location_1": None,
        "proveedor_5": None,
        "proveedor_6": "forbidden",
        "cliente_5": "forbidden",
        "all_proveedores": None,
        "all_clientes": "forbidden",
        "admin_dashboard": "forbidden",
    },
    "admin-1": {
        "service_1": None,
        "cliente_99": None,
        "proveedor_99": None,
        "all_clientes": None,
        "all_proveedores": None,
        "admin_dashboard": None,
    },
}
INVALID_ROOMS = [
    "lobby",
    "service_",
    "service",
    "service_a b",
    "service_a/b",
    "location_é",
    "cliente_" + "1" * 65,
    "admin_dashboard_2",
    "all_admins",
    "Service_1",
    "service_1\n",
]


@pytest.mark.parametrize("token", sorted(ACCESS))
async def test_join_and_presence_follow_the_access_rules(node: Any, http: Any, token: str) -> None:
    client = await node.client(http)
    await client.authenticate(token)
    for room, expected in ACCESS[token].items():
        assert await error_code(client, "join_room", room) == expected, (token, room)
        assert await error_code(client, "presence", room) == expected, (token, room)
    for room in INVALID_ROOMS:
        assert await error_code(client, "join_room", room) == "invalid_room", room
        assert await error_code(client, "presence", room) == "invalid_room", room
    await client.close()


async def test_room_ids_up_to_64_characters(node: Any, http: Any) -> None:
    client = await node.client(http)
    await client.authenticate("cliente-1")
    assert await error_code(client, "join_room", "service_" + "a" * 64) is None
    assert await error_code(client, "join_room", "service_" + "a" * 65) == "invalid_room"
    assert await error_code(client, "join_room", "location_" + "-_" * 32) is None
    reply = await client.request("join_room", {"room": 5})
    assert reply["data"]["code"] == "validation_error"
    assert reply["data"]["field"] == "room"
    await client.close()


async def test_forbidden_join_delivers_nothing(node: Any, http: Any) -> None:
    """A refused join must not subscribe the connection to the room."""
    client = await node.client(http)
    await client.authenticate("cliente-5")
    assert await error_code(client, "join_room", "cliente_6") == "forbidden"
    await publish(node, "cliente_6", 1)
    await publish(node, "cliente_5", 1)  # a later event of a room it is in
    [event] = await client.events(1)
    assert event["room"] == "cliente_5"
    assert client.pending_events() == []
    await client.close()


async def test_leave_room_stops_delivery(node: Any, http: Any) -> None:
    client = await node.client(http)
    await client.authenticate("cliente-5")
    await client.join("service_3")
    await publish(node, "service_3", 1)
    assert [e["offset"] for e in await client.events(1, room="service_3")] == [1]
    reply = await client.request("leave_room", {"room": "service_3"})
    assert reply["event"] == "room_left"
    assert reply["data"] == {"room": "service_3"}
    await publish(node, "service_3", 1)
    await publish(node, "cliente_5", 1)
    [event] = await client.events(1)
    assert event["room"] == "cliente_5"
    assert client.pending_events() == []
    # leaving an automatic room works the same way
    reply = await client.request("leave_room", {"room": "cliente_5"})
    assert reply["event"] == "room_left"
    await publish(node, "cliente_5", 1)
    await publish(node, "all_clientes", 1)
    [event] = await client.events(1)
    assert event["room"] == "all_clientes"
    assert client.pending_events() == []
    # leave follows the access rules too
    assert await error_code(client, "leave_room", "cliente_6") == "forbidden"
    assert await error_code(client, "leave_room", "lobby") == "invalid_room"
    await client.close()


# --- presence -----------------------------------------------------------------------------------
async def presence_members(client: Any, room: str) -> list[dict[str, Any]]:
    reply = await client.request("presence", {"room": room})
    assert reply["event"] == "presence", reply
    assert reply["data"]["room"] == room
    return sorted(reply["data"]["members"], key=lambda m: m["userId"])


async def presence_count(client: Any, room: str) -> int:
    """``presence`` of a broadcast room: ``{"room", "count"}`` and nothing else."""
    reply = await client.request("presence", {"room": room})
    assert reply["event"] == "presence", reply
    assert set(reply["data"]) == {"room", "count"}, reply
    assert reply["data"]["room"] == room
    return int(reply["data"]["count"])


async def wait_presence(client: Any, room: str, expected: list[dict[str, Any]]) -> None:
    """Presence after a close is updated when the node sees the socket go: poll briefly."""
    members: list[dict[str, Any]] = []
    for _ in range(100):
        members = await presence_members(client, room)
        if members == expected:
            return
        await asyncio.sleep(0.02)
    assert members == expected


async def test_presence_aggregates_connections_per_user(node: Any, http: Any) -> None:
    a1 = await node.client(http)
    await a1.authenticate("cliente-5")
    a2 = await node.client(http)
    await a2.authenticate("cliente-5")
    b = await node.client(http)
    await b.authenticate("proveedor-6")
    admin = await node.client(http)
    await admin.authenticate("admin-1")
    for client in (a1, a2, b):
        await client.join("service_7")
    members = await presence_members(b, "service_7")
    assert members == [
        {"userId": "5", "role": "cliente", "connections": 2},
        {"userId": "6", "role": "proveedor", "connections": 1},
    ]
    # automatic rooms count as joined; admins may look at any room
    assert await presence_members(admin, "cliente_5") == [
        {"userId": "5", "role": "cliente", "connections": 2}
    ]
    # broadcast rooms answer a count only (privacy, and size)
    assert await presence_count(admin, "all_proveedores") == 1
    assert await presence_count(a1, "all_clientes") == 2
    # a room nobody is in
    assert await presence_members(b, "service_8") == []
    # leaving and closing are reflected
    await a2.request("leave_room", {"room": "service_7"})
    await wait_presence(
        b,
        "service_7",
        [
            {"userId": "5", "role": "cliente", "connections": 1},
            {"userId": "6", "role": "proveedor", "connections": 1},
        ],
    )
    await a1.close()
    await wait_presence(b, "service_7", [{"userId": "6", "role": "proveedor", "connections": 1}])
    await wait_presence(admin, "cliente_5", [{"userId": "5", "role": "cliente", "connections": 1}])
    assert await presence_count(a2, "all_clientes") == 1
    for client in (a2, b, admin):
        await client.close()


# --- offsets, epochs and recovery ---------------------------------------------------------------
async def test_offsets_are_consecutive_per_room_and_join_reports_the_latest(
    node: Any, http: Any
) -> None:
    client = await node.client(http)
    await client.authenticate("cliente-5")
    joined = await client.join("service_1")
    # a room nothing was published to: offset 0 of the placeholder epoch (no key was created)
    assert (joined["offset"], joined["epoch"]) == (0, UNPUBLISHED_EPOCH)
    assert "recovered" not in joined and "missed" not in joined
    await client.join("service_2")
    ids = await publish(node, "service_1", 3)
    await publish(node, "service_2", 2)
    ids += await publish(node, "service_1", 1)
    got = await client.events(4, room="service_1")
    assert [e["offset"] for e in got] == [1, 2, 3, 4]
    assert [e["id"] for e in got] == ids
    epoch = got[0]["epoch"]  # the first publish gave the room its epoch
    assert {e["epoch"] for e in got} == {epoch} and epoch != UNPUBLISHED_EPOCH
    assert [e["offset"] for e in await client.events(2, room="service_2")] == [1, 2]
    for e in got:
        assert e["type"] == "test" and e["source"] == "api" and isinstance(e["ts"], int)
    # a later joiner is told the latest offset and the same epoch
    other = await node.client(http)
    await other.authenticate("proveedor-1")
    later = await other.join("service_1")
    assert (later["offset"], later["epoch"]) == (4, epoch)
    # joining a room again answers its position without duplicating membership
    again = await client.join("service_1")
    assert (again["offset"], again["epoch"]) == (4, epoch)
    await publish(node, "service_1", 1)
    [event] = await client.events(1, room="service_1")
    assert event["offset"] == 5
    await publish(node, "cliente_5", 1)
    await client.events(1, room="cliente_5")
    assert client.pending_events() == []
    await client.close()
    await other.close()


async def test_join_with_since_recovers_exactly_the_missed_events(node: Any, http: Any) -> None:
    client = await node.client(http)
    await client.authenticate("cliente-5")
    await client.join("service_1")
    await publish(node, "service_1", 2)
    seen = await client.events(2)
    joined = {"epoch": seen[-1]["epoch"]}
    await client.close()
    missed_ids = await publish(node, "service_1", 3)  # offsets 3, 4, 5 while away
    back = await node.client(http)
    await back.authenticate("cliente-5")
    since = {"offset": seen[-1]["offset"], "epoch": joined["epoch"]}
    rejoined = await back.join("service_1", since=since)
    assert rejoined["recovered"] is True
    assert (rejoined["offset"], rejoined["epoch"]) == (5, joined["epoch"])
    missed = rejoined["missed"]
    assert [e["offset"] for e in missed] == [3, 4, 5]
    assert [e["id"] for e in missed] == missed_ids
    assert [e["payload"] for e in missed] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert all(e["room"] == "service_1" and e["epoch"] == joined["epoch"] for e in missed)
    # live delivery continues after the recovered ones, with nothing repeated
    await publish(node, "service_1", 1)
    [live] = await back.events(1, room="service_1")
    assert live["offset"] == 6
    assert back.pending_events("service_1") == []
    # since == the current position: recovered, nothing missed
    third = await node.client(http)
    await third.authenticate("proveedor-2")
    current = await third.join("service_1", since={"offset": 6, "epoch": joined["epoch"]})
    assert (current["recovered"], current["missed"]) == (True, [])
    await back.close()
    await third.close()


async def test_recovery_is_refused_outside_the_window(node_with: Any, http: Any) -> None:
    node = await node_with(history_size=3)
    client = await node.client(http)
    await client.authenticate("cliente-5")
    await client.join("service_1")
    await publish(node, "service_1", 5)  # history keeps offsets 3, 4, 5
    epoch = (await client.events(5))[0]["epoch"]

    async def join_since(offset: int, epoch: str) -> dict[str, Any]:
        fresh = await node.client(http)
        await fresh.authenticate("cliente-5")
        data = await fresh.join("service_1", since={"offset": offset, "epoch": epoch})
        await fresh.close()
        return data

    inside = await join_since(2, epoch)
    assert inside["recovered"] is True
    assert [e["offset"] for e in inside["missed"]] == [3, 4, 5]
    too_old = await join_since(1, epoch)
    assert (too_old["recovered"], too_old["missed"]) == (False, [])
    assert (too_old["offset"], too_old["epoch"]) == (5, epoch)
    wrong_epoch = await join_since(4, "not-the-epoch")
    assert (wrong_epoch["recovered"], wrong_epoch["missed"]) == (False, [])
    assert (wrong_epoch["offset"], wrong_epoch["epoch"]) == (5, epoch)
    ahead = await join_since(9, epoch)  # a position the room never reached
    assert ahead["recovered"] is False
    await client.close()
