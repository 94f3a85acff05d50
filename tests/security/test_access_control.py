"""Access control from an attacker's seat (CONTRACT sections 2-4): other users' rooms and presence,
business events on behalf of others, forged identities, replayed revoked tokens, and the secrets of
the dashboard and the server API. Real node on a real redis-server, the real Django test site."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import orjson
import pytest

from tests.security.helpers import api_publish
from tests.support import DjangoSite, RedisServer
from tests.support.nodes import API_KEY, DASHBOARD


@pytest.fixture
async def node(redis_server: RedisServer, make_node: Any) -> Any:
    return await make_node(redis_server.url)


# --- rooms and presence -------------------------------------------------------------------------
FORBIDDEN_ROOMS = {
    "cliente-1": ["cliente_2", "proveedor_1", "all_proveedores", "admin_dashboard"],
    "proveedor-1": ["proveedor_2", "cliente_1", "all_clientes", "admin_dashboard"],
}


@pytest.mark.parametrize("token", sorted(FORBIDDEN_ROOMS))
async def test_other_peoples_rooms_and_their_presence_are_forbidden(
    node: Any, http: Any, token: str
) -> None:
    victims = {}
    for victim_token in ("cliente-2", "proveedor-2", "admin-1"):  # members to spy on
        victims[victim_token] = await node.client(http)
        await victims[victim_token].authenticate(victim_token)
    attacker = await node.client(http)
    await attacker.authenticate(token)
    for room in FORBIDDEN_ROOMS[token]:
        for event in ("join_room", "presence"):
            reply = await attacker.request(event, {"room": room})
            assert reply["event"] == "error", (event, room, reply)
            assert (reply["data"]["code"], reply["data"]["field"]) == ("forbidden", "room")
            assert "members" not in reply["data"]
    # nothing published to those rooms reaches the attacker
    for room in FORBIDDEN_ROOMS[token]:
        await api_publish(http, node.http_url, room, {"secret": room})
    await api_publish(http, node.http_url, "service_1", {"public": True})
    await attacker.join("service_1")
    await api_publish(http, node.http_url, "service_1", {"marker": True})
    (event,) = await attacker.events(1)
    assert event["payload"] == {"marker": True}
    await asyncio.sleep(0.2)
    assert attacker.pending_events() == []
    room_of = {"cliente_2": "cliente-2", "proveedor_2": "proveedor-2", "admin_dashboard": "admin-1"}
    for room, victim_token in room_of.items():
        if room in FORBIDDEN_ROOMS[token]:
            (got,) = await victims[victim_token].events(1, room=room)
            assert got["payload"] == {"secret": room}  # the publication itself went out
    for client in [attacker, *victims.values()]:
        await client.close()


async def test_admin_may_join_and_list_any_room(node: Any, http: Any) -> None:
    admin = await node.client(http)
    await admin.authenticate("admin-1")
    for room in ("cliente_2", "proveedor_1", "all_proveedores", "all_clientes"):
        assert (await admin.join(room))["room"] == room
    presence = await admin.request("presence", {"room": "admin_dashboard"})
    assert presence["data"]["members"] == [{"userId": "1", "role": "admin", "connections": 1}]
    await admin.close()


# --- business events on behalf of others -----------------------------------------------------
IMPERSONATIONS = [
    (
        "cliente-1",
        "reservation_created",
        {"clienteId": "2", "proveedorId": "3", "servicioId": "4", "fecha": "2030-01-01"},
    ),
    ("cliente-1", "payment_created", {"clienteId": "2", "proveedorId": "3", "amount": "9.99"}),
    ("cliente-1", "reservation_accepted", {"clienteId": "1", "proveedorId": "3"}),
    ("proveedor-3", "reservation_accepted", {"clienteId": "1", "proveedorId": "4"}),
    (
        "proveedor-3",
        "reservation_created",
        {"clienteId": "1", "proveedorId": "3", "servicioId": "4", "fecha": "2030-01-01"},
    ),
    ("proveedor-3", "payment_created", {"clienteId": "1", "proveedorId": "3", "amount": "1.00"}),
    # comments in another user's name (issue 18 item 8): an author field names who acts
    ("proveedor-3", "comment_created", {"servicioId": "9", "text": "x", "clienteId": "43"}),
    ("cliente-1", "comment_created", {"servicioId": "9", "text": "x", "clienteId": "43"}),
    ("cliente-1", "comment_created", {"servicioId": "9", "text": "x", "proveedorId": "3"}),
    ("proveedor-3", "comment_created", {"servicioId": "9", "text": "x", "proveedorId": "4"}),
]


async def test_business_events_for_other_users_are_forbidden_before_django(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    victim = await node.client(http)
    await victim.authenticate("cliente-2")
    clients: dict[str, Any] = {}
    for token, event, payload in IMPERSONATIONS:
        if token not in clients:
            clients[token] = await node.client(http)
            await clients[token].authenticate(token)
        reply = await clients[token].request(event, payload)
        assert (reply["event"], reply["data"]["code"]) == ("error", "forbidden"), (token, event)
    calls = await django_site.acalls()
    assert calls["events"] == []  # Django was never asked
    await asyncio.sleep(0.2)
    assert victim.pending_events() == []
    for client in [victim, *clients.values()]:
        await client.close()


async def test_a_comment_is_attributed_only_to_its_sender(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    """Issue 18 item 8: a proveedor sent ``comment_created`` with ``clienteId`` 43 and service_9
    received a comment attributed to cliente 43. Now only cliente 43 may name cliente 43."""
    watcher = await node.client(http)
    await watcher.authenticate("admin-1")
    await watcher.join("service_9")
    forger = await node.client(http)
    await forger.authenticate("proveedor-3")
    forged = {"servicioId": "9", "text": "great", "clienteId": "43"}
    reply = await forger.request("comment_created", forged)
    assert (reply["data"]["code"], reply["data"]["field"]) == ("forbidden", "clienteId")
    author = await node.client(http)
    await author.authenticate("cliente-43")
    assert (await author.request("comment_created", forged))["event"] == "ack"
    own = {"servicioId": "9", "text": "thanks", "proveedorId": "3"}
    assert (await forger.request("comment_created", own))["event"] == "ack"
    in_room = [
        await watcher.wait_for(lambda f: f["event"] == "event" and f["data"]["room"] == "service_9")
        for _ in range(2)
    ]
    assert [e["data"]["payload"]["text"] for e in in_room] == ["great", "thanks"]
    assert len((await django_site.acalls())["events"]) == 2  # the forged one never reached it
    for client in (watcher, forger, author):
        await client.close()


async def test_a_comment_in_another_name_is_forbidden_over_socketio(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    from tests.socketio.conftest import EngineSocket, engine_url

    raw = await EngineSocket.connect(http, engine_url(node))
    await raw.send('40{"token":"proveedor-3"}')
    assert (await raw.receive_text()).startswith("40")
    assert '"auth_success"' in await raw.receive_text()
    await raw.send('427["comment_created",{"servicioId":"9","text":"x","clienteId":"43"}]')
    ack = await raw.receive_text()
    assert ack.startswith("437[")
    error = orjson.loads(ack[3:])[0]["error"]
    assert (error["code"], error["field"]) == ("forbidden", "clienteId"), error
    assert (await django_site.acalls())["events"] == []
    await raw.close()


# --- forged identity and revoked tokens --------------------------------------------------------
@pytest.mark.parametrize(
    "claims",
    [{"userId": "2"}, {"role": "admin"}, {"userId": "1", "role": "proveedor"}],
    ids=["other-user", "admin-role", "other-role"],
)
async def test_forged_identity_is_identity_mismatch_4401(
    node: Any, http: Any, claims: dict[str, str]
) -> None:
    client = await node.client(http)
    reply = await client.request("authenticate", {"token": "cliente-1", **claims})
    assert (reply["event"], reply["data"]["code"]) == ("auth_error", "identity_mismatch")
    assert await client.wait_closed() == 4401
    assert not any(s.identity for s in node.node.sessions.values())


async def test_revoked_token_works_only_within_the_cache_period(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await make_node(redis_server.url, auth_cache_s=1.0)
    first = await node.client(http)
    await first.authenticate("cliente-9")
    await django_site.acontrol(revoke=["cliente-9"])
    # within the cache period a new connection is still let in, without asking Django
    replay = await node.client(http)
    await replay.authenticate("cliente-9")
    assert (await django_site.acalls())["profile_calls_by_token"] == {"cliente-9": 1}
    await asyncio.sleep(1.1)
    late = await node.client(http)
    reply = await late.request("authenticate", {"token": "cliente-9"})
    assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
    assert await late.wait_closed() == 4401
    # connections opened before the revocation cannot act either: Django judges each event
    # with the user's own token
    reply = await first.request("comment_created", {"servicioId": "1", "text": "x"})
    assert (reply["event"], reply["data"]["code"]) == ("error", "rejected")
    await first.close()
    await replay.close()


@pytest.mark.parametrize(
    ("depth", "accepted"), [(240, True), (253, False), (300, False)], ids=["240", "253", "300"]
)
async def test_deeply_nested_business_payload_is_a_validation_error(
    node: Any, http: Any, django_site: DjangoSite, depth: int, accepted: bool
) -> None:
    """orjson reads 1024 levels but writes only 255: what cannot be forwarded to Django is
    refused up front instead of failing in the middle of the event."""
    client = await node.client(http)
    await client.authenticate("cliente-1")
    nested = "[" * depth + '"x"' + "]" * depth
    payload = '{"servicioId": "1", "text": "x", "extra": ' + nested + "}"
    await client.send_raw('{"event": "comment_created", "id": "deep", "data": ' + payload + "}")
    reply = await client.wait_for(lambda f: f.get("id") == "deep")
    events = (await django_site.acalls())["events"]
    if accepted:
        assert reply["event"] == "ack", reply
        assert len(events) == 1
    else:
        assert (reply["event"], reply["data"]["code"]) == ("error", "validation_error")
        assert events == []
    assert (await client.request("ping"))["event"] == "pong"
    await client.close()


# --- dashboard and server API secrets ---------------------------------------------------------
def basic(password: str, user: str = "admin") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def same_length_wrong(secret: str) -> str:
    return secret[:-1] + ("x" if secret[-1] != "x" else "y")


async def status_of(
    http: aiohttp.ClientSession, method: str, url: str, auth: str | None, **kw: Any
) -> int:
    headers = {} if auth is None else {"Authorization": auth}
    async with http.request(method, url, headers=headers, **kw) as resp:
        await resp.read()
        if resp.status == 401:
            assert "WWW-Authenticate" in resp.headers
        return resp.status


WRONG_DASHBOARD = [
    None,
    "Bearer",
    "Bearer ",
    f"Bearer {same_length_wrong(DASHBOARD)}",
    f"Bearer {DASHBOARD}x",
    f"Bearer {DASHBOARD[:-1]}",
    f"Bearer {DASHBOARD.upper()}",
    f"Bearer {API_KEY}",  # the other secret
    f"Token {DASHBOARD}",
    DASHBOARD,
    basic(same_length_wrong(DASHBOARD)),
    basic(""),
    "Basic !!!not-base64!!!",
    "Basic " + base64.b64encode(DASHBOARD.encode()).decode(),  # no "user:" part
]


@pytest.mark.parametrize(
    "path", ["/dashboard", "/dashboard/stats", "/dashboard/clients", "/dashboard/events"]
)
async def test_dashboard_get_needs_the_token(node: Any, http: Any, path: str) -> None:
    url = node.http_url + path
    for auth in WRONG_DASHBOARD:
        assert await status_of(http, "GET", url, auth) == 401, auth
    assert await status_of(http, "GET", url, f"Bearer {DASHBOARD}") == 200
    assert await status_of(http, "GET", url, basic(DASHBOARD)) == 200  # browser login


async def test_dashboard_post_needs_bearer_never_basic(node: Any, http: Any) -> None:
    url = f"{node.http_url}/dashboard/cleanup"
    for auth in [*WRONG_DASHBOARD, basic(DASHBOARD)]:  # a cross-site form rides on Basic
        assert await status_of(http, "POST", url, auth) == 401, auth
    assert await status_of(http, "POST", url, f"Bearer {DASHBOARD}") == 200


async def test_dashboard_feed_needs_the_token(node: Any, http: Any) -> None:
    url = node.http_url.replace("http://", "ws://") + "/dashboard/feed"
    for auth in [None, f"Bearer {same_length_wrong(DASHBOARD)}"]:
        headers = {} if auth is None else {"Authorization": auth}
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(url, headers=headers)
        assert info.value.status == 401
    ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {DASHBOARD}"})
    msg = await ws.receive_json(timeout=5)
    assert msg["type"] == "stats"
    await ws.close()


@pytest.mark.parametrize("path", ["/api/publish", "/api/disconnect"])
async def test_server_api_needs_the_key(
    node: Any, http: Any, path: str, django_site: DjangoSite
) -> None:
    url = node.http_url + path
    body = (
        {"room": "service_1", "type": "t", "payload": {}}
        if path.endswith("publish")
        else {"userId": "1"}
    )
    listener = await node.client(http)
    await listener.authenticate("cliente-1")
    await listener.join("service_1")
    wrong = [
        None,
        f"Bearer {same_length_wrong(API_KEY)}",
        f"Bearer {API_KEY[:-1]}",
        f"Bearer {DASHBOARD}",
        basic(API_KEY),
        API_KEY,
    ]
    for auth in wrong:
        assert await status_of(http, "POST", url, auth, json=body) == 401, auth
    await asyncio.sleep(0.2)
    assert listener.pending_events() == []  # nothing was published...
    assert listener.close_code is None  # ...and nobody was disconnected
    assert await status_of(http, "POST", url, f"Bearer {API_KEY}", json=body) == 200
    await listener.close()


async def test_server_api_is_404_without_a_key(
    redis_server: RedisServer, make_node: Any, http: Any
) -> None:
    node = await make_node(redis_server.url, publish_api_key=None)
    body = {"room": "service_1", "type": "t", "payload": {}}
    for auth in (None, "Bearer ", f"Bearer {API_KEY}"):
        assert await status_of(http, "POST", f"{node.http_url}/api/publish", auth, json=body) == 404
