"""Business events over ``/ws`` (CONTRACT section 2, "Business events: Django decides, the
gateway delivers", and section 5): sender rules, validation, Django's verdict, routing."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from tests.support import DjangoSite

RESERVATION = {"clienteId": "5", "proveedorId": "7", "servicioId": "3", "fecha": "2031-05-04"}
ACCEPTED = {"reservationId": "11", "clienteId": "5", "proveedorId": "7", "servicioId": "3"}
PAYMENT = {"clienteId": "5", "proveedorId": "7", "amount": "25.00", "currency": "EUR"}
COMMENT = {"servicioId": "3", "text": "Muy bien", "rating": 5}


async def connect(node: Any, http: Any, token: str) -> Any:
    client = await node.client(http)
    await client.authenticate(token)
    return client


async def assert_no_more_events(node: Any, client: Any, room: str) -> None:
    """Nothing else reached ``client``: a marker published to ``room`` (one of its rooms) after
    everything else arrives, and no other event is waiting. Delivery is in order per node."""
    marker = await node.node.backend.publish([room], "marker", b"{}", "api")
    [event] = await client.events(1, room=room)
    assert event["id"] == marker.event_id, event
    assert client.pending_events() == []


async def assert_room_untouched(node: Any, client: Any, room: str) -> None:
    """Nothing was ever published to ``room``: the first event ``client`` sees there is a
    marker with offset 1."""
    marker = await node.node.backend.publish([room], "marker", b"{}", "api")
    [event] = await client.events(1, room=room)
    assert (event["id"], event["offset"]) == (marker.event_id, 1), event
    assert client.pending_events() == []


async def event_calls(site: DjangoSite) -> list[dict[str, Any]]:
    return list((await site.acalls())["events"])


# --- sender rules -------------------------------------------------------------------------------
async def test_sender_rules_forbid_and_nothing_reaches_django(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    cliente = await connect(node, http, "cliente-5")
    proveedor = await connect(node, http, "proveedor-7")
    admin = await connect(node, http, "admin-1")
    forbidden = [
        (cliente, "reservation_created", {**RESERVATION, "clienteId": "6"}, "clienteId"),
        (cliente, "payment_created", {**PAYMENT, "clienteId": "6"}, "clienteId"),
        (cliente, "reservation_accepted", ACCEPTED, None),  # a cliente may not accept
        (proveedor, "reservation_created", {**RESERVATION, "clienteId": "7"}, None),
        (proveedor, "payment_created", {**PAYMENT, "clienteId": "7"}, None),
        (proveedor, "reservation_accepted", {**ACCEPTED, "proveedorId": "8"}, "proveedorId"),
    ]
    for client, event, data, field in forbidden:
        reply = await client.request(event, data)
        assert reply["event"] == "error", (event, reply)
        assert reply["data"]["code"] == "forbidden", (event, reply)
        assert reply["data"].get("field") == field, (event, reply)
    assert await event_calls(django_site) == []
    # what each role may send (Django's user id for each sender)
    allowed = [
        (cliente, 5, "reservation_created", RESERVATION),
        (cliente, 5, "payment_created", PAYMENT),
        (cliente, 5, "comment_created", COMMENT),
        (proveedor, 7, "reservation_accepted", ACCEPTED),
        (proveedor, 7, "comment_created", COMMENT),
        (admin, 1, "reservation_created", {**RESERVATION, "clienteId": "99"}),
        (admin, 1, "reservation_accepted", {**ACCEPTED, "proveedorId": "98"}),
        (admin, 1, "payment_created", {**PAYMENT, "clienteId": "97"}),
        (admin, 1, "comment_created", COMMENT),
    ]
    for client, _, event, data in allowed:
        reply = await client.request(event, data)
        assert reply["event"] == "ack", (event, reply)
    calls = await event_calls(django_site)
    assert [(c["body"]["type"], c["user_id"]) for c in calls] == [
        (event, user_id) for _, user_id, event, _ in allowed
    ]
    for client in (cliente, proveedor, admin):
        await client.close()


# --- validation ---------------------------------------------------------------------------------
INVALID = [
    ("reservation_created", {k: v for k, v in RESERVATION.items() if k != "fecha"}, "fecha"),
    ("reservation_created", {**RESERVATION, "clienteId": 5}, "clienteId"),
    ("reservation_created", {**RESERVATION, "fecha": "mañana"}, "fecha"),
    ("reservation_created", {**RESERVATION, "servicioId": "a b"}, "servicioId"),
    ("reservation_created", {**RESERVATION, "estado": 3}, "estado"),
    ("payment_created", {**PAYMENT, "amount": 25.0}, "amount"),
    ("payment_created", {**PAYMENT, "amount": 25}, "amount"),
    ("payment_created", {**PAYMENT, "amount": "veinte"}, "amount"),
    ("payment_created", {k: v for k, v in PAYMENT.items() if k != "proveedorId"}, "proveedorId"),
    ("comment_created", {"servicioId": "3"}, "text"),
    ("comment_created", {**COMMENT, "rating": "5"}, "rating"),
    ("comment_created", {**COMMENT, "text": ["x"]}, "text"),
]


async def test_invalid_payloads_are_validation_errors_naming_the_field(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    client = await connect(node, http, "cliente-5")
    for event, data, field in INVALID:
        reply = await client.request(event, data)
        assert reply["event"] == "error", (event, data, reply)
        assert reply["data"]["code"] == "validation_error", (event, data, reply)
        assert reply["data"]["field"] == field, (event, data, reply)
        assert field in reply["data"]["message"], reply
    assert await event_calls(django_site) == []
    await client.close()


# --- Django's verdict ---------------------------------------------------------------------------
async def test_django_4xx_is_rejected_and_nothing_is_delivered(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    cliente = await connect(node, http, "cliente-5")
    proveedor = await connect(node, http, "proveedor-7")
    # DRF field errors come back as `fields`
    reply = await cliente.request("reservation_created", {**RESERVATION, "fecha": "1999-05-04"})
    assert reply["event"] == "error"
    assert reply["data"]["code"] == "rejected"
    assert reply["data"]["fields"] == {"fecha": ["La fecha no puede estar en el pasado."]}
    assert reply["data"]["message"]
    # Django's `detail` is the message
    await django_site.acontrol(events_mode="reject")
    reply = await cliente.request("reservation_created", RESERVATION)
    assert reply["event"] == "error"
    assert reply["data"]["code"] == "rejected"
    assert reply["data"]["message"] == "Rejected by test"
    assert "fields" not in reply["data"]
    assert [c["status"] for c in await event_calls(django_site)] == [400, 400]
    await assert_room_untouched(node, proveedor, "proveedor_7")
    await assert_room_untouched(node, cliente, "cliente_5")
    await cliente.close()
    await proveedor.close()


async def test_django_5xx_or_timeout_is_django_unavailable_and_nothing_is_delivered(
    node_with: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await node_with(django_timeout=0.5)
    cliente = await connect(node, http, "cliente-5")
    proveedor = await connect(node, http, "proveedor-7")
    await django_site.acontrol(events_mode="fail")
    reply = await cliente.request("reservation_created", RESERVATION)
    assert reply["event"] == "error"
    assert reply["data"]["code"] == "django_unavailable"
    await django_site.acontrol(events_mode="slow", slow_seconds=0.9)
    reply = await cliente.request("payment_created", PAYMENT)
    assert reply["event"] == "error"
    assert reply["data"]["code"] == "django_unavailable"
    await assert_room_untouched(node, proveedor, "proveedor_7")
    await assert_room_untouched(node, cliente, "cliente_5")
    # let the slow call finish here, so it is not recorded during the next test
    async with asyncio.timeout(5):
        while len(await event_calls(django_site)) < 2:
            await asyncio.sleep(0.05)
    await cliente.close()
    await proveedor.close()


# --- routing ------------------------------------------------------------------------------------
ROUTES = {
    # event: (sender token, data, default rooms)
    "reservation_created": (
        "cliente-5",
        RESERVATION,
        ["proveedor_7", "cliente_5", "admin_dashboard"],
    ),
    "reservation_accepted": (
        "proveedor-7",
        ACCEPTED,
        ["cliente_5", "proveedor_7", "admin_dashboard"],
    ),
    "payment_created": ("cliente-5", PAYMENT, ["proveedor_7", "cliente_5", "admin_dashboard"]),
    "comment_created": ("cliente-5", COMMENT, ["service_3", "admin_dashboard"]),
}


@pytest.mark.parametrize("event", sorted(ROUTES))
async def test_confirmed_event_is_delivered_to_its_default_rooms(
    node: Any, http: Any, django_site: DjangoSite, event: str
) -> None:
    sender_token, data, rooms = ROUTES[event]
    # one member per candidate room, each in no other candidate room
    members = {
        "cliente_5": await connect(node, http, "cliente-5"),
        "proveedor_7": await connect(node, http, "proveedor-7"),
        "admin_dashboard": await connect(node, http, "admin-1"),
        "service_3": await connect(node, http, "proveedor-9"),
    }
    await members["service_3"].join("service_3")
    outsiders = {
        "cliente_6": await connect(node, http, "cliente-6"),
        "proveedor_8": await connect(node, http, "proveedor-8"),
    }
    sender = members["cliente_5" if sender_token == "cliente-5" else "proveedor_7"]
    await sender.send(event, data, frame_id="req-1")
    ack = await sender.wait_for(lambda f: f.get("id") == "req-1")
    assert ack["event"] == "ack", ack
    event_id = ack["data"]["eventId"]
    assert ack["data"] == {"event": event, "eventId": event_id}
    [call] = await event_calls(django_site)
    assert call["idempotency_key"] == event_id
    assert (call["auth_scheme"], call["token"]) == ("Token", sender_token)
    assert call["body"] == {"eventId": event_id, "type": event, "payload": data}
    for room, client in members.items():
        if room in rooms:
            [got] = await client.events(1, room=room)
            assert (got["id"], got["type"], got["room"]) == (event_id, event, room)
            assert got["source"] == "client"
            assert got["offset"] == 1
            assert got["payload"] == call["response"]  # Django's canonical object
        await assert_no_more_events(node, client, room)
    for room, client in outsiders.items():
        await assert_no_more_events(node, client, room)
    for client in [*members.values(), *outsiders.values()]:
        await client.close()


async def test_estado_is_djangos_not_the_clients(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    cliente = await connect(node, http, "cliente-5")
    proveedor = await connect(node, http, "proveedor-7")
    ack = await cliente.request("reservation_created", {**RESERVATION, "estado": "confirmada"})
    assert ack["event"] == "ack"
    [event] = await proveedor.events(1)
    assert event["payload"]["estado"] == "pendiente"
    assert event["payload"]["id"] == 1  # Django's id for the new reservation
    [call] = await event_calls(django_site)
    assert call["body"]["payload"]["estado"] == "confirmada"  # forwarded, then overruled
    await cliente.close()
    await proveedor.close()


async def test_django_rooms_list_overrides_routing(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    await django_site.acontrol(events_mode="rooms", rooms=["service_9", "location_3"])
    cliente = await connect(node, http, "cliente-5")
    proveedor = await connect(node, http, "proveedor-7")
    admin = await connect(node, http, "admin-1")
    watcher = await connect(node, http, "proveedor-8")
    await watcher.join("service_9")
    await watcher.join("location_3")
    ack = await cliente.request("reservation_created", RESERVATION)
    assert ack["event"] == "ack"
    got = await watcher.events(2)
    assert sorted(e["room"] for e in got) == ["location_3", "service_9"]
    [call] = await event_calls(django_site)
    expected = {k: v for k, v in call["response"].items() if k != "rooms"}
    for event in got:
        assert event["id"] == ack["data"]["eventId"]
        assert "rooms" not in event["payload"]
        assert event["payload"] == expected
        assert event["payload"]["estado"] == "pendiente"
    # the default rooms got nothing
    await assert_room_untouched(node, proveedor, "proveedor_7")
    await assert_room_untouched(node, cliente, "cliente_5")
    await assert_room_untouched(node, admin, "admin_dashboard")
    for client in (cliente, proveedor, admin, watcher):
        await client.close()


async def test_empty_answer_delivers_the_validated_payload_with_bearer(
    node_with: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await node_with(django_auth_scheme="Bearer")
    await django_site.acontrol(events_mode="empty")
    cliente = await connect(node, http, "cliente-5")
    proveedor = await connect(node, http, "proveedor-7")
    sent = {**RESERVATION, "estado": "solicitada", "nota": "extra fields go through"}
    ack = await cliente.request("reservation_created", sent)
    assert ack["event"] == "ack"
    [event] = await proveedor.events(1)
    assert event["id"] == ack["data"]["eventId"]
    assert event["payload"] == sent
    [call] = await event_calls(django_site)
    assert (call["status"], call["auth_scheme"], call["token"]) == (204, "Bearer", "cliente-5")
    assert call["idempotency_key"] == ack["data"]["eventId"]
    await cliente.close()
    await proveedor.close()


async def test_event_ids_differ_and_offsets_grow_per_room(node: Any, http: Any) -> None:
    cliente = await connect(node, http, "cliente-5")
    proveedor = await connect(node, http, "proveedor-7")
    acks = [await cliente.request("payment_created", PAYMENT) for _ in range(3)]
    ids = [a["data"]["eventId"] for a in acks]
    assert len(set(ids)) == 3
    got = await proveedor.events(3)
    assert [e["id"] for e in got] == ids
    assert [e["offset"] for e in got] == [1, 2, 3]
    payload = orjson.loads(orjson.dumps(got[0]["payload"]))
    assert payload["amount"] == "25.00"  # money stays a decimal string
    await cliente.close()
    await proveedor.close()
