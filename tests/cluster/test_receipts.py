"""Delivery receipts (contract §8): publishes that ask for them, clients that acknowledge by
themselves, cluster-wide aggregation in Redis, and a receipt accepted only from a connection that
is a member and was sent that event."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.client import GatewayClient
from gateway.publish import Publisher
from tests.support.nodes import API_KEY
from tests.support.ports import eventually
from tests.support.wsclient import WsClient

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def receipts_api(http: aiohttp.ClientSession, node: Any, event_id: str) -> tuple[int, Any]:
    async with http.get(f"{node.http_url}/api/receipts/{event_id}", headers=AUTH) as response:
        return response.status, await response.json()


async def api_publish(http: aiohttp.ClientSession, node: Any, **body: Any) -> dict[str, Any]:
    async with http.post(f"{node.http_url}/api/publish", json=body, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
        return result


def users_of(answer: dict[str, Any] | None, room: str) -> Any:
    return None if answer is None else answer["rooms"][room]["users"]


async def authed(http: aiohttp.ClientSession, node: Any, token: str, *rooms: str) -> WsClient:
    client = await WsClient.connect(http, node.ws_url)
    await client.authenticate(token)
    for room in rooms:
        await client.join(room)
    return client


async def ack(client: WsClient, event: dict[str, Any], **override: Any) -> None:
    data = {"room": event["room"], "offset": event["offset"], "epoch": event["epoch"], **override}
    await client.send("received", data)


async def settled(client: WsClient) -> None:
    """Every frame sent before was handled (frames of a connection are handled in order)."""
    assert (await client.request("ping"))["event"] == "pong"


async def test_three_users_on_three_nodes_are_exactly_the_receipts(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    nodes = [await make_node(redis_server.url) for _ in range(3)]
    got: list[dict[str, Any]] = []
    clients = []
    for node, token in zip(nodes, ("cliente-1", "proveedor-2", "cliente-3"), strict=True):
        client = GatewayClient(node.ws_url, token=token, session=http)  # the shipped client
        client.on("reminder", got.append)
        await client.connect()
        await client.join("service_7")
        clients.append(client)
    outsider = GatewayClient(nodes[0].ws_url, token="cliente-4", session=http)
    await outsider.connect()  # connected, not in the room
    publisher = Publisher.from_url(redis_server.url)
    try:
        result = await asyncio.to_thread(
            publisher.publish_many, ["service_7"], "reminder", {"n": 1}, receipts=True
        )

        def three() -> bool:
            return set(users_of(publisher.receipts(result.event_id), "service_7")) == {
                "1",
                "2",
                "3",
            }

        await eventually(three, 10, "the three users' receipts")
        await asyncio.sleep(0.2)  # and nothing more comes
        answer = publisher.receipts(result.event_id)
        assert answer is not None
        room = answer["rooms"]["service_7"]
        assert (room["offset"], room["connections"], room["members"]) == (1, 3, 3)
        assert set(room["users"]) == {"1", "2", "3"}
        assert all(isinstance(ts, int) and ts >= got[0]["ts"] for ts in room["users"].values())
        assert [e["receipts"] for e in got] == [True, True, True]
        status, body = await receipts_api(http, nodes[2], result.event_id)
        assert (status, body) == (200, answer)

        # a publish that does not ask: no marker on the event, nothing to look up
        plain = await asyncio.to_thread(publisher.publish_many, ["service_7"], "plain", {})
        await eventually(
            lambda: len(got) == 3 and all(c.stats.events_delivered == 2 for c in clients),
            5,
            "the plain event",
        )
        assert (await receipts_api(http, nodes[0], plain.event_id))[0] == 404
        assert publisher.receipts(plain.event_id) is None
    finally:
        publisher.close()
        for client in [*clients, outsider]:
            await client.close()


async def test_a_user_offline_at_publish_time_is_reported_once_recovered(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a = await make_node(redis_server.url)
    b = await make_node(redis_server.url)
    room = "service_8"
    online = await authed(http, a, "cliente-2", room)
    later = await authed(http, a, "cliente-1", room)
    first = await api_publish(http, a, room=room, type="news", payload={})
    [seen] = await later.events(1, room)
    await online.events(1, room)
    await later.close()  # cliente 1 goes offline

    published = await api_publish(http, a, room=room, type="news", payload={"n": 2}, receipts=True)
    event_id = published["eventId"]
    [live] = await online.events(1, room)
    assert live["receipts"] is True and first["eventId"] != event_id
    await ack(online, live)
    await settled(online)
    status, body = await receipts_api(http, b, event_id)
    assert status == 200 and set(body["rooms"][room]["users"]) == {"2"}

    back = await authed(http, b, "cliente-1")  # another node
    since = {"offset": seen["offset"], "epoch": seen["epoch"]}
    joined = await back.join(room, since=since)
    [missed] = joined["missed"]
    assert (missed["id"], missed["receipts"]) == (event_id, True)
    await ack(back, missed)
    await settled(back)
    body = (await receipts_api(http, a, event_id))[1]
    assert set(body["rooms"][room]["users"]) == {"1", "2"}
    assert body["rooms"][room]["connections"] == 2
    for client in (online, back):
        await client.close()


async def test_forged_repeated_and_foreign_receipts_change_nothing(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    room = "service_9"
    before_join = await api_publish(http, node, room=room, type="t", payload={}, receipts=True)
    forger = await authed(http, node, "cliente-1", room, "service_10")
    victim = await authed(http, node, "cliente-2")
    mine = await api_publish(http, node, room=room, type="t", payload={}, receipts=True)
    theirs = await api_publish(http, node, room="cliente_2", type="t", payload={}, receipts=True)
    [event] = await forger.events(1, room)
    [their_event] = await victim.events(1, "cliente_2")

    forgeries = [
        {"room": "service_10", "offset": event["offset"], "epoch": event["epoch"]},  # wrong room
        {"room": room, "offset": event["offset"] - 1, "epoch": event["epoch"]},  # before it joined
        {"room": room, "offset": event["offset"] + 1, "epoch": event["epoch"]},  # not sent yet
        {"room": room, "offset": event["offset"], "epoch": "other"},
        {"room": "cliente_2", "offset": their_event["offset"], "epoch": their_event["epoch"]},
        {"room": room, "offset": str(event["offset"]), "epoch": event["epoch"]},
        {"room": room},
    ]
    for data in forgeries:
        await forger.send("received", data)
    await settled(forger)
    for published in (before_join, mine, theirs):
        body = (await receipts_api(http, node, published["eventId"]))[1]
        assert all(r["connections"] == 0 and r["users"] == {} for r in body["rooms"].values())

    await ack(forger, event)
    await ack(forger, event)  # a repeat
    await ack(victim, their_event)
    await settled(forger)
    await settled(victim)
    body = (await receipts_api(http, node, mine["eventId"]))[1]["rooms"][room]
    assert (set(body["users"]), body["connections"]) == ({"1"}, 1)
    body = (await receipts_api(http, node, theirs["eventId"]))[1]["rooms"]["cliente_2"]
    assert (set(body["users"]), body["connections"]) == ({"2"}, 1)
    body = (await receipts_api(http, node, before_join["eventId"]))[1]["rooms"][room]
    assert body["connections"] == 0
    assert forger.pending_events() == [] and not [f for f in forger.inbox if f["event"] == "error"]
    for client in (forger, victim):
        await client.close()


async def test_receipts_are_outside_the_rate_limit_but_bogus_ones_are_not(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    node = await make_node(redis_server.url, rate_limit=1.0, rate_burst=3, rate_limit_strikes=100)
    client = await authed(http, node, "cliente-1", "service_3")
    ids = [
        (await api_publish(http, node, room="service_3", type="t", payload={}, receipts=True))[
            "eventId"
        ]
        for _ in range(8)
    ]
    events = await client.events(8, "service_3")
    for event in events:
        await ack(client, event)
    await settled(client)
    assert not [f for f in client.inbox if f["event"] == "error"]
    for event_id in ids:
        body = (await receipts_api(http, node, event_id))[1]["rooms"]["service_3"]
        assert body["connections"] == 1
    for _ in range(10):  # receipts for nothing that was sent: throttled like other frames
        await client.send("received", {"room": "service_3", "offset": 99, "epoch": "x"})
    error = await client.wait_for(lambda f: f["event"] == "error")
    assert error["data"]["code"] == "rate_limited"
    await client.close()


async def test_a_broadcast_room_counts_its_receivers(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    clientes = [await authed(http, node, f"cliente-{i}") for i in (1, 2)]
    second_tab = await authed(http, node, "cliente-1")
    published = await api_publish(
        http, node, room="all_clientes", type="notice", payload={}, receipts=True
    )
    for client in [*clientes, second_tab]:
        [event] = await client.events(1, "all_clientes")
        await ack(client, event)
        await settled(client)
    body = (await receipts_api(http, node, published["eventId"]))[1]["rooms"]["all_clientes"]
    assert (body["users"], body["connections"]) == (2, 3)  # counted, not listed
    for client in [*clientes, second_tab]:
        await client.close()


@pytest.mark.parametrize("redis", [False, True], ids=["embedded", "redis"])
async def test_business_events_ask_for_receipts_when_django_says_so(
    redis: bool, request: Any, make_node: Any, http: Any, django_site: Any
) -> None:
    url = request.getfixturevalue("redis_server").url if redis else None
    node = await make_node(url)
    django_site.control(events_mode="receipts")
    proveedor = await authed(http, node, "proveedor-2")
    cliente = await authed(http, node, "cliente-1")
    reply = await cliente.request(
        "reservation_created",
        {"clienteId": "1", "proveedorId": "2", "servicioId": "5", "fecha": "2031-01-01T10:00:00Z"},
    )
    assert reply["event"] == "ack", reply
    event_id = reply["data"]["eventId"]
    [event] = await proveedor.events(1, "proveedor_2")
    assert event["receipts"] is True and "receipts" not in event["payload"]
    await ack(proveedor, event)
    await settled(proveedor)
    status, body = await receipts_api(http, node, event_id)
    assert status == 200
    assert set(body["rooms"]) == {"proveedor_2", "cliente_1", "admin_dashboard"}
    assert set(body["rooms"]["proveedor_2"]["users"]) == {"2"}
    assert body["rooms"]["cliente_1"]["users"] == {}  # the cliente has not acknowledged
    for client in (proveedor, cliente):
        await client.close()


@pytest.mark.cluster
async def test_on_a_redis_cluster_caps_online_status_and_receipts_work_across_slots(
    redis_cluster: Any, make_node: Any, http: Any
) -> None:
    settings = {"redis_cluster": True, "max_connections_per_user": 2, "presence_grace_s": 0.3}
    a = await make_node(redis_cluster.url, **settings)
    b = await make_node(redis_cluster.url, **settings)
    first = await authed(http, a, "cliente-5", "service_12")
    second = await authed(http, b, "cliente-5")
    third = await WsClient.connect(http, a.ws_url)
    refused = await third.request("authenticate", {"token": "cliente-5"})
    assert refused["data"]["code"] == "too_many_connections"
    async with http.get(f"{b.http_url}/api/online?users=5", headers=AUTH) as response:
        assert (await response.json())["5"]["connections"] == 2

    published = await api_publish(http, b, room="service_12", type="t", payload={}, receipts=True)
    [event] = await first.events(1, "service_12")
    await ack(first, event)
    await settled(first)
    body = (await receipts_api(http, b, published["eventId"]))[1]["rooms"]["service_12"]
    assert (set(body["users"]), body["connections"], body["members"]) == ({"5"}, 1, 1)

    for client in (first, second):
        await client.close()

    async def offline() -> bool:
        async with http.get(f"{a.http_url}/api/online?users=5", headers=AUTH) as response:
            return (await response.json())["5"]["online"] is False

    await eventually(offline, 10, "cliente 5 to go offline on the cluster")
    stream = redis_cluster.client().xrange("gateway:presence")
    assert [f[b"online"] for _, f in stream] == [b"1", b"0"]
