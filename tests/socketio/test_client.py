"""The real ``socket.io-client`` against a real node (docs/socketio.md): authentication, rooms,
acknowledgements, business events, publications, recovery and presence, on both backends.

Each client is a Node process running socket.io-client 4.8 with ``transports: ["websocket"]``;
the node talks to the real Django test site.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.publish import Publisher
from tests.socketio.conftest import connected
from tests.support.nodes import API_KEY

pytestmark = pytest.mark.node

EVENT_FIELDS = {"room", "type", "payload", "id", "offset", "epoch", "ts", "source"}


async def api_publish(http: Any, node: Any, room: str, type_: str, payload: Any) -> int:
    """Publish as Django would over HTTP (``POST /api/publish``); the room's new offset."""
    async with http.post(
        f"{node.http_url}/api/publish",
        json={"room": room, "type": type_, "payload": payload},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    return int(body["offsets"][room])


async def event_in(client: Any, room: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The data of the next Socket.IO ``event`` for ``room``."""
    line = await client.expect("event", timeout_s, name="event")
    assert line["data"]["room"] == room, line
    return dict(line["data"])


# --- authentication ---------------------------------------------------------------------------
async def test_authenticate_by_emit_answers_the_ack_callback(
    node: Any, sio: Any, http: Any
) -> None:
    client, bad = await asyncio.gather(sio(node, reconnection=False), sio(node, reconnection=False))
    socket_id = (await connected(client))["id"]
    before = await client.request("join_room", {"room": "service_1"})
    assert before == {"error": {"code": "unauthenticated", "message": "authenticate first"}}

    me = await client.request("authenticate", {"token": "cliente-7"})
    assert me == {
        "userId": "7",
        "role": "cliente",
        "rooms": ["cliente_7", "all_clientes"],
        "connectionId": socket_id,  # socket.id is the gateway's connection id
        "node": node.settings.node_id,
    }
    session = node.node.sessions[socket_id]
    assert session.identity is not None and session.identity.user_id == "7"
    again = await client.request("authenticate", {"token": "cliente-7"})
    assert again["error"]["code"] == "already_authenticated", again

    # the automatic rooms are joined: a publication to each arrives as an `event`
    await api_publish(http, node, "cliente_7", "note", {"n": 1})
    await api_publish(http, node, "all_clientes", "note", {"n": 2})
    assert (await event_in(client, "cliente_7"))["payload"] == {"n": 1}
    assert (await event_in(client, "all_clientes"))["payload"] == {"n": 2}
    # the ack was the reply: no `auth_success` event came besides it
    assert [line["name"] for line in client.lines if line["kind"] == "event"] == ["event", "event"]

    # a bad token: the ack gets {error}, then the server ends the socket for good
    await connected(bad)
    refused = await bad.request("authenticate", {"token": "bogus"})
    assert refused == {"error": {"code": "invalid_token", "message": "invalid token"}}
    assert (await bad.expect("disconnect"))["reason"] == "io server disconnect"


async def test_auth_option_sends_auth_success_as_first_event(
    node: Any, sio: Any, http: Any
) -> None:
    client, liar = await asyncio.gather(
        sio(node, token="proveedor-3"),
        sio(node, auth={"token": "cliente-8", "userId": "9"}),
    )
    me = await connected(client, token="proveedor-3")
    assert me["userId"] == "3" and me["role"] == "proveedor"
    assert me["rooms"] == ["proveedor_3", "all_proveedores"]
    assert me["node"] == node.settings.node_id
    events = [line for line in client.lines if line["kind"] == "event"]
    assert events[0]["name"] == "auth_success"
    assert node.node.sessions[me["connectionId"]].identity.role == "proveedor"

    await api_publish(http, node, "proveedor_3", "note", {"to": "me"})
    await api_publish(http, node, "all_proveedores", "note", {"to": "all"})
    assert (await event_in(client, "proveedor_3"))["payload"] == {"to": "me"}
    assert (await event_in(client, "all_proveedores"))["payload"] == {"to": "all"}

    # `auth` may claim userId/role: a claim Django contradicts is identity_mismatch, refused
    # in the CONNECT itself (contract §7): connect_error with the code, `connect` never fires
    error = await liar.expect("connect_error")
    assert error["message"] == "identity_mismatch"
    assert error["data"] == {
        "code": "identity_mismatch",
        "message": "userId/role differ from the token's identity",
    }
    await liar.expect_nothing("connect", 1.5)
    assert not [line for line in liar.lines if line["kind"] == "event"]


# --- rooms ------------------------------------------------------------------------------------
async def test_join_and_leave_with_acks_and_errors_in_the_ack(
    node: Any, sio: Any, http: Any
) -> None:
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")

    joined = await client.request("join_room", {"room": "service_1"})
    assert set(joined) == {"room", "epoch", "offset"}
    # nothing published yet: offset 0 of the placeholder epoch; the first event brings the epoch
    assert (joined["room"], joined["offset"], joined["epoch"]) == ("service_1", 0, "0")
    await api_publish(http, node, "service_1", "offer", {"price": "10.00"})
    live = await event_in(client, "service_1")
    assert live["offset"] == 1 and live["epoch"] not in ("", "0")

    forbidden = await client.request("join_room", {"room": "proveedor_3"})
    assert forbidden["error"]["code"] == "forbidden"
    assert forbidden["error"]["field"] == "room"
    assert "proveedor_3" in forbidden["error"]["message"]
    invalid = await client.request("join_room", {"room": "zzz"})
    assert (invalid["error"]["code"], invalid["error"]["field"]) == ("invalid_room", "room")
    missing = await client.request("join_room")  # emit with no argument: data is {}
    assert (missing["error"]["code"], missing["error"]["field"]) == ("validation_error", "room")
    unknown = await client.request("no_such_event", {})
    assert unknown["error"]["code"] == "unknown_event"
    assert await client.request("ping") == {}

    left = await client.request("leave_room", {"room": "service_1"})
    assert left == {"room": "service_1"}
    assert "service_1" not in node.node.sessions[socket_id(client)].rooms
    await api_publish(http, node, "service_1", "offer", {"price": "11.00"})

    # without a callback the replies are events named as on /ws
    await client.emit("join_room", {"room": "location_4"})
    assert (await client.expect("event", name="room_joined"))["data"]["room"] == "location_4"
    await client.emit("join_room", {"room": "admin_dashboard"})
    assert (await client.expect("event", name="error"))["data"]["code"] == "forbidden"
    # left means left: the publication to service_1 after leaving never arrives, while one to
    # location_4, published after it, does
    await api_publish(http, node, "location_4", "offer", {"price": "12.00"})
    assert (await event_in(client, "location_4"))["payload"] == {"price": "12.00"}
    assert [line["data"]["room"] for line in client.lines if line.get("name") == "event"] == [
        "service_1",
        "location_4",
    ]


def socket_id(client: Any) -> str:
    """The client's socket.id from its last ``connect`` line."""
    return str([line for line in client.lines if line["kind"] == "connect"][-1]["id"])


# --- business events --------------------------------------------------------------------------
async def test_business_event_ack_carries_event_id_and_delivers_to_the_other_client(
    node: Any, sio: Any, django_site: Any
) -> None:
    cliente, proveedor = await asyncio.gather(
        sio(node, token="cliente-7"), sio(node, token="proveedor-3")
    )
    await connected(cliente, token="cliente-7")
    await connected(proveedor, token="proveedor-3")

    reservation = {"clienteId": "7", "proveedorId": "3", "servicioId": "1", "fecha": "2030-01-01"}
    ack = await cliente.request("reservation_created", reservation)
    assert set(ack) == {"event", "eventId"} and ack["event"] == "reservation_created"
    delivered = await event_in(proveedor, "proveedor_3")
    assert set(delivered) == EVENT_FIELDS
    assert delivered["id"] == ack["eventId"]
    assert delivered["type"] == "reservation_created" and delivered["source"] == "client"
    assert delivered["payload"]["estado"] == "pendiente"  # Django's canonical object
    assert delivered["payload"]["clienteId"] == "7"
    own = await event_in(cliente, "cliente_7")
    assert own["id"] == ack["eventId"] and own["payload"] == delivered["payload"]
    calls = (await django_site.acalls())["events"]
    assert [(c["token"], c["idempotency_key"]) for c in calls] == [("cliente-7", ack["eventId"])]

    # failures come to the callback as {error}, and nothing is delivered
    numeric = await cliente.request(
        "payment_created", {"clienteId": "7", "proveedorId": "3", "amount": 25}
    )
    assert (numeric["error"]["code"], numeric["error"]["field"]) == ("validation_error", "amount")
    other = await cliente.request("reservation_created", {**reservation, "clienteId": "8"})
    assert other["error"]["code"] == "forbidden"
    await django_site.acontrol(events_mode="reject")
    rejected = await cliente.request("reservation_created", reservation)
    assert rejected == {"error": {"code": "rejected", "message": "Rejected by test"}}
    await django_site.acontrol(events_mode="ok")

    # without a callback the confirmation is an `ack` event
    await proveedor.emit(
        "reservation_accepted", {"reservationId": "1", "clienteId": "7", "proveedorId": "3"}
    )
    accepted = (await proveedor.expect("event", name="ack"))["data"]
    assert accepted["event"] == "reservation_accepted"
    to_cliente = await event_in(cliente, "cliente_7")
    assert (to_cliente["id"], to_cliente["type"]) == (accepted["eventId"], "reservation_accepted")
    own_accept = await event_in(proveedor, "proveedor_3")
    assert own_accept["id"] == accepted["eventId"]
    # the refused events delivered nothing: the rooms' offsets went 1, 2
    assert (delivered["offset"], own_accept["offset"]) == (1, 2)
    assert (own["offset"], to_cliente["offset"]) == (1, 2)
    assert len((await django_site.acalls())["events"]) == 3  # created, rejected, accepted


# --- publications from Django -----------------------------------------------------------------
async def test_django_publications_arrive_as_event_with_the_ws_data(
    node: Any, sio: Any, http: Any, backend_kind: str
) -> None:
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")
    ws = await node.client(http, token="cliente-8")
    await ws.expect("auth_success")
    await client.request("join_room", {"room": "service_5"})
    await ws.join("service_5")

    payload = {"id": "41", "title": "Corte de pelo", "price": "12.50", "tags": ["a", "ñ"]}
    offset = await api_publish(http, node, "service_5", "service_updated", payload)
    by_sio = await event_in(client, "service_5")
    (by_ws,) = await ws.events(1, "service_5")
    assert by_sio == by_ws  # the same event data on both transports
    assert set(by_sio) == EVENT_FIELDS
    assert (by_sio["type"], by_sio["payload"], by_sio["source"]) == (
        "service_updated",
        payload,
        "api",
    )
    assert by_sio["offset"] == offset == 1

    if backend_kind == "redis":
        # Django's own publisher, straight to Redis (a sync call, as in a Django view)
        publisher = Publisher.from_url(node.settings.redis_url, prefix=node.settings.redis_prefix)
        try:
            offset = await asyncio.to_thread(
                publisher.publish, "service_5", "service_deleted", {"id": "41"}
            )
        finally:
            publisher.close()
        by_sio = await event_in(client, "service_5")
        (by_ws,) = await ws.events(1, "service_5")
        assert by_sio == by_ws
        assert (by_sio["source"], by_sio["offset"], offset) == ("publisher", 2, 2)
        assert by_sio["payload"] == {"id": "41"}
    await ws.close()


async def test_join_with_since_recovers_what_was_missed(node: Any, sio: Any, http: Any) -> None:
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")
    await client.request("join_room", {"room": "service_9"})
    for n in range(2):
        await api_publish(http, node, "service_9", "tick", {"n": n})
    seen = [await event_in(client, "service_9") for _ in range(2)]
    assert [e["offset"] for e in seen] == [1, 2]
    position = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}

    await client.send(op="disconnect")
    assert (await client.expect("disconnect"))["reason"] == "io client disconnect"
    for n in range(2, 5):
        await api_publish(http, node, "service_9", "tick", {"n": n})
    await client.send(op="connect")
    await connected(client, token="cliente-7")  # the `auth` option authenticates again

    rejoined = await client.request("join_room", {"room": "service_9", "since": position})
    assert rejoined["recovered"] is True
    assert (rejoined["offset"], rejoined["epoch"]) == (5, position["epoch"])
    missed = rejoined["missed"]
    assert [e["offset"] for e in missed] == [3, 4, 5]
    assert [e["payload"] for e in missed] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert all(set(e) == EVENT_FIELDS and e["room"] == "service_9" for e in missed)
    await api_publish(http, node, "service_9", "tick", {"n": 5})
    assert (await event_in(client, "service_9"))["offset"] == 6  # live again, no duplicate
    await client.expect_nothing("event", 0.2)

    stale = await client.request(
        "join_room", {"room": "service_9", "since": {"offset": 1, "epoch": "not-the-epoch"}}
    )
    assert stale["recovered"] is False and stale["missed"] == []


async def test_presence_lists_members_in_the_ack(node: Any, sio: Any) -> None:
    first, second = await asyncio.gather(
        sio(node, token="cliente-7"), sio(node, token="proveedor-3")
    )
    await connected(first, token="cliente-7")
    await connected(second, token="proveedor-3")
    for client in (first, second):
        await client.request("join_room", {"room": "service_3"})

    presence = await first.request("presence", {"room": "service_3"})
    assert presence["room"] == "service_3"
    assert sorted(presence["members"], key=lambda m: m["userId"]) == [
        {"userId": "3", "role": "proveedor", "connections": 1},
        {"userId": "7", "role": "cliente", "connections": 1},
    ]
    forbidden = await first.request("presence", {"room": "proveedor_3"})
    assert forbidden["error"]["code"] == "forbidden"

    await second.close()
    async with asyncio.timeout(5):
        while True:
            presence = await first.request("presence", {"room": "service_3"})
            if len(presence["members"]) == 1:
                break
            await asyncio.sleep(0.05)
    assert presence["members"] == [{"userId": "7", "role": "cliente", "connections": 1}]
