"""Socket.IO and ``/ws`` clients share rooms across nodes: node A serves a socket.io-client,
node B a native ``/ws`` client, both on one Redis (docs/socketio.md, first paragraph)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.publish import Publisher
from tests.socketio.conftest import connected

pytestmark = pytest.mark.node


async def test_socketio_on_one_node_and_ws_on_another_share_a_room(
    redis_server: Any, make_node: Any, sio: Any, http: Any
) -> None:
    node_a, node_b = await asyncio.gather(make_node(redis_server.url), make_node(redis_server.url))
    client = await sio(node_a, token="cliente-7")
    await connected(client, token="cliente-7")
    ws = await node_b.client(http, token="proveedor-3")
    assert (await ws.expect("auth_success"))["data"]["node"] == node_b.settings.node_id
    assert (await client.request("join_room", {"room": "service_1"}))["offset"] == 0
    assert (await ws.join("service_1"))["offset"] == 0

    async def both() -> tuple[dict[str, Any], dict[str, Any]]:
        line = await client.expect("event", name="event")
        (by_ws,) = await ws.events(1, "service_1")
        return line["data"], by_ws

    # Django publishes to Redis: both transports, both nodes, the same event
    publisher = Publisher.from_url(redis_server.url, prefix=node_a.settings.redis_prefix)
    try:
        await asyncio.to_thread(publisher.publish, "service_1", "service_updated", {"id": "1"})
    finally:
        publisher.close()
    by_sio, by_ws = await both()
    assert by_sio == by_ws
    assert (by_sio["offset"], by_sio["source"], by_sio["payload"]) == (1, "publisher", {"id": "1"})

    # a business event from the Socket.IO side
    ack = await client.request("comment_created", {"servicioId": "1", "text": "from sio"})
    by_sio, by_ws = await both()
    assert by_sio == by_ws
    assert (by_sio["id"], by_sio["offset"], by_sio["source"]) == (ack["eventId"], 2, "client")
    assert by_sio["payload"]["text"] == "from sio"

    # and one from the /ws side
    reply = await ws.request("comment_created", {"servicioId": "1", "text": "from ws"})
    assert reply["event"] == "ack", reply
    by_sio, by_ws = await both()
    assert by_sio == by_ws
    assert (by_sio["id"], by_sio["offset"]) == (reply["data"]["eventId"], 3)
    assert by_sio["payload"]["text"] == "from ws"

    # presence is cluster-wide whichever transport asks
    presence = await client.request("presence", {"room": "service_1"})
    assert sorted((m["userId"], m["role"]) for m in presence["members"]) == [
        ("3", "proveedor"),
        ("7", "cliente"),
    ]
    await client.expect_nothing("event", 0.2)
    assert ws.pending_events() == []
    await ws.close()
