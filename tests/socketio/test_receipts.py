"""Socket.IO clients acknowledge events that ask for receipts with the same ``received`` event
as ``/ws`` (contract §8), with the same checks."""

from __future__ import annotations

from typing import Any

import pytest

from tests.socketio.conftest import connected
from tests.support.nodes import API_KEY

pytestmark = pytest.mark.node
AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_a_socketio_client_acknowledges_with_received(node: Any, sio: Any, http: Any) -> None:
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")
    await client.request("join_room", {"room": "service_5"})
    body = {"room": "service_5", "type": "t", "payload": {}, "receipts": True}
    async with http.post(f"{node.http_url}/api/publish", json=body, headers=AUTH) as response:
        event_id = (await response.json())["eventId"]
    line = await client.expect("event", name="event")
    event = line["data"]
    assert (event["id"], event["receipts"]) == (event_id, True)
    await client.emit("received", {"room": "service_5", "offset": 99, "epoch": event["epoch"]})
    await client.emit(
        "received", {"room": "service_5", "offset": event["offset"], "epoch": event["epoch"]}
    )
    await client.request("presence", {"room": "service_5"})  # the emits before it were handled
    async with http.get(f"{node.http_url}/api/receipts/{event_id}", headers=AUTH) as response:
        room = (await response.json())["rooms"]["service_5"]
    assert (set(room["users"]), room["connections"]) == ({"7"}, 1)
