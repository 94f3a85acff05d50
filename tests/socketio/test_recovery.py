"""Socket.IO's own connection state recovery (contract §7, "Recovery for unchanged clients"),
with the real socket.io-client: ``pid`` and ``offset`` mapped onto room offsets. Across nodes
(a node killed or drained) see test_cluster.py; here one node, both backends, both transports.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.socketio.conftest import EngineSocket, connected, engine_url
from tests.socketio.test_client import api_publish

pytestmark = pytest.mark.node

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"]}


async def offsets(client: Any, room: str, count: int) -> list[int]:
    got = []
    while len(got) < count:
        line = await client.expect("event", name="event")
        assert line["data"]["room"] == room
        assert isinstance(line["args"][1], str)  # the offset rides as a last argument
        got.append(line["data"]["offset"])
    return got


async def publish(http: Any, node: Any, room: str, numbers: range) -> None:
    for n in numbers:
        await api_publish(http, node, room, "tick", {"n": n})


async def drop_and_return(client: Any, token: str) -> dict[str, Any]:
    """Cut the Engine.IO connection (as a lost network would) and wait for the reconnection;
    the new ``connect`` line."""
    await client.send(op="drop")
    assert (await client.expect("disconnect"))["reason"] in ("transport close", "forced close")
    line = await client.expect("connect")
    await client.expect("event", name="auth_success")
    return line


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_a_dropped_client_recovers_rooms_and_every_missed_event(
    backend_url: str | None, make_node: Any, sio: Any, http: Any, transport: str
) -> None:
    node = await make_node(backend_url)
    client = await sio(node, token="cliente-7", transports=TRANSPORTS[transport])
    first = await client.expect("connect")
    assert first["recovered"] is False
    await client.expect("event", name="auth_success")
    for room in ("service_1", "location_2"):
        await client.request("join_room", {"room": room})
    await publish(http, node, "service_1", range(3))
    assert await offsets(client, "service_1", 3) == [1, 2, 3]

    await client.send(op="drop")
    await client.expect("disconnect")
    await publish(http, node, "service_1", range(3, 6))  # while it is away
    await publish(http, node, "location_2", range(2))
    await api_publish(http, node, "cliente_7", "note", {"to": "me"})
    again = await client.expect("connect")
    assert again["recovered"] is True and again["id"] != first["id"]
    await client.expect("event", name="auth_success")
    # each missed event once, in order in its room (the rooms one after the other)
    restored = [(await client.expect("event", name="event"))["data"] for _ in range(6)]
    by_room: dict[str, list[int]] = {}
    for data in restored:
        by_room.setdefault(data["room"], []).append(data["offset"])
    assert by_room == {"cliente_7": [1], "service_1": [4, 5, 6], "location_2": [1, 2]}
    await publish(http, node, "service_1", range(6, 7))  # live: the rooms are joined again
    assert await offsets(client, "service_1", 1) == [7]

    # a second recovery works from the offsets the first one sent
    await client.send(op="drop")
    await client.expect("disconnect")
    await publish(http, node, "location_2", range(2, 3))
    assert (await client.expect("connect"))["recovered"] is True
    assert await offsets(client, "location_2", 1) == [3]
    await asyncio.sleep(0.2)
    assert not [e for e in client.unread() if e.get("name") == "event"]


async def test_left_rooms_stay_left_and_a_client_disconnect_is_not_recovered(
    make_node: Any, sio: Any, http: Any, redis_server: Any
) -> None:
    node = await make_node(redis_server.url)
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")
    await client.request("join_room", {"room": "service_1"})
    await client.request("join_room", {"room": "service_2"})
    await client.request("leave_room", {"room": "service_1"})
    await publish(http, node, "service_2", range(1))
    assert await offsets(client, "service_2", 1) == [1]
    assert (await drop_and_return(client, "cliente-7"))["recovered"] is True
    await publish(http, node, "service_1", range(1))  # left before: never delivered
    await publish(http, node, "service_2", range(1, 2))
    assert await offsets(client, "service_2", 1) == [2]

    # socket.disconnect() ends the session for good (as with Socket.IO): no recovery
    await client.send(op="disconnect")
    await client.expect("disconnect")
    await client.send(op="connect")
    assert (await client.expect("connect"))["recovered"] is False
    await publish(http, node, "service_2", range(2, 3))
    await asyncio.sleep(0.3)
    assert not [e for e in client.unread() if e.get("data", {}).get("room") == "service_1"]


async def test_outside_the_history_window_recovered_is_false(
    make_node: Any, sio: Any, http: Any, redis_server: Any
) -> None:
    node = await make_node(redis_server.url, history_size=3)
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")
    await client.request("join_room", {"room": "service_1"})
    await client.request("join_room", {"room": "service_2"})
    await publish(http, node, "service_1", range(1))
    assert await offsets(client, "service_1", 1) == [1]

    await client.send(op="drop")
    await client.expect("disconnect")
    await publish(http, node, "service_1", range(1, 8))  # more than history keeps
    await publish(http, node, "service_2", range(1))  # this one history still has
    again = await client.expect("connect")
    assert again["recovered"] is False  # refetch from Django: nothing restored is replayed
    await client.expect("event", name="auth_success")
    await asyncio.sleep(0.3)
    assert not [e for e in client.unread() if e.get("name") == "event"]
    # the rooms are joined again at their current positions: live events flow
    await publish(http, node, "service_1", range(8, 9))
    assert await offsets(client, "service_1", 1) == [9]
    # and a later recovery works (the new pid, the same offsets)
    assert (await drop_and_return(client, "cliente-7"))["recovered"] is True


async def test_a_pid_of_another_user_restores_nothing(
    make_node: Any, http: Any, redis_server: Any
) -> None:
    node = await make_node(redis_server.url)
    victim = await EngineSocket.connect(http, engine_url(node))
    await victim.send("40" + orjson.dumps({"token": "cliente-7"}).decode())
    pid = orjson.loads((await victim.receive_text())[2:])["pid"]
    assert '"auth_success"' in await victim.receive_text()
    await victim.send('421["join_room",{"room":"service_9"}]')
    assert (await victim.receive_text()).startswith("431[")
    await victim.close()  # a lost connection: recoverable, by its own user

    thief = await EngineSocket.connect(http, engine_url(node))
    await thief.send("40" + orjson.dumps({"token": "cliente-8", "pid": pid}).decode())
    ack = orjson.loads((await thief.receive_text())[2:])
    assert ack["pid"] != pid  # not recovered: a fresh session
    assert '"auth_success"' in await thief.receive_text()
    await publish(http, node, "service_9", range(1))
    with pytest.raises(TimeoutError):
        await thief.receive_text(timeout_s=0.5)  # service_9 was never cliente-8's
    await thief.close()

    owner = await EngineSocket.connect(http, engine_url(node))
    await owner.send("40" + orjson.dumps({"token": "cliente-7", "pid": pid}).decode())
    assert orjson.loads((await owner.receive_text())[2:])["pid"] == pid  # recovered
    assert '"auth_success"' in await owner.receive_text()
    name, data, _offset = orjson.loads((await owner.receive_text())[2:])
    assert (name, data["room"], data["offset"]) == ("event", "service_9", 1)
    await owner.close()


async def test_a_gap_in_the_live_stream_is_filled_from_history(
    make_node: Any, sio: Any, http: Any
) -> None:
    """A publication this node never received (a lost pub/sub message): the next one shows the
    gap; the node asks its clients to ``rejoin``, and for a Socket.IO client with recovery the
    gateway does it itself: the client gets the missing event, in order, once."""
    node = await make_node()
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")
    await client.request("join_room", {"room": "service_1"})
    await publish(http, node, "service_1", range(2))
    assert await offsets(client, "service_1", 2) == [1, 2]

    hub = node.node.hub
    deliver = hub.deliver

    def lose_offset_3(pub: Any) -> bool:
        if pub.room == "service_1" and pub.offset == 3:
            return True  # lost on the way: never delivered
        return bool(deliver(pub))

    hub.deliver = lose_offset_3
    try:
        await publish(http, node, "service_1", range(2, 5))
    finally:
        hub.deliver = deliver
    assert await offsets(client, "service_1", 3) == [3, 4, 5]
    await publish(http, node, "service_1", range(5, 6))
    assert await offsets(client, "service_1", 1) == [6]
    await asyncio.sleep(0.2)
    assert not [e for e in client.unread() if e.get("name") == "event"]
    assert not [e for e in client.lines if e.get("name") == "rejoin"]
