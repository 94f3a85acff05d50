"""Limits hold against a hostile client (CONTRACT section 2, "Limits and close codes"): frame
rate, connection caps per node / IP / user, rooms per connection, frame size, the authentication
deadline and the WebSocket heartbeat. Real nodes on a real redis-server, real clients."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from tests.security.helpers import metric
from tests.support import DjangoSite, RedisServer
from tests.support.ports import eventually
from tests.support.wsclient import WsClient


@pytest.fixture
def node_with(redis_server: RedisServer, make_node: Any) -> Any:
    """``await node_with(**settings)``: a node on this test's redis-server."""

    async def start(**overrides: Any) -> Any:
        return await make_node(redis_server.url, **overrides)

    return start


async def refused_status(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    """The HTTP status of a refused upgrade (fails if the upgrade is accepted)."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        ws = await http.ws_connect(url, **kw)
        await ws.close()
    return info.value.status


async def connect_with_token(http: aiohttp.ClientSession, ws_url: str, token: str) -> WsClient:
    """``?token=`` percent-encoded, whatever its characters."""
    return WsClient(await http.ws_connect(URL(ws_url).with_query({"token": token})))


async def assert_served(node: Any, http: Any, token: str = "cliente-90", **kw: Any) -> None:
    client = await node.client(http, **kw)
    await client.authenticate(token)
    assert (await client.request("ping"))["event"] == "pong"
    await client.close()


# --- frame rate -------------------------------------------------------------------------------
async def test_flooding_business_events_is_rate_limited_then_4429_and_django_is_spared(
    node_with: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await node_with(rate_limit=5, rate_burst=5, rate_limit_strikes=5)
    flooder = await node.client(http)
    await flooder.authenticate("cliente-1")
    frame = {"servicioId": "1", "text": "spam"}
    for i in range(60):
        await flooder.send("comment_created", frame, frame_id=i)
    assert await flooder.wait_closed() == 4429
    limited = [f for f in flooder.inbox if f["event"] == "error"]
    assert {f["data"]["code"] for f in limited} == {"rate_limited"}
    assert len(limited) == 4  # strikes 1-4 answer, strike 5 closes
    acks = [f for f in flooder.inbox if f["event"] == "ack"]
    # only frames within the bucket reached Django: the burst minus the authenticate frame,
    # plus what refilled while Django answered
    events = (await django_site.acalls())["events"]
    assert len(events) == len(acks)
    assert 4 <= len(acks) <= 7
    assert await metric(http, node.http_url, "gateway_rate_limited_frames_total") >= 5
    await assert_served(node, http)


# --- connection caps ----------------------------------------------------------------------------
async def test_max_connections_refuses_the_upgrade_with_503(node_with: Any, http: Any) -> None:
    node = await node_with(max_connections=3)
    held = [await node.client(http) for _ in range(3)]  # anonymous sockets count too
    assert await refused_status(http, node.ws_url) == 503
    assert (
        await metric(http, node.http_url, "gateway_rejected_upgrades_total", reason="node_full")
        == 1
    )
    await held[0].close()
    await asyncio.sleep(0.1)
    await assert_served(node, http)  # a freed slot is reusable
    for client in held[1:]:
        await client.close()


async def test_per_ip_cap_answers_429_and_spoofed_forwarded_for_does_not_evade_it(
    node_with: Any, http: Any
) -> None:
    node = await node_with(max_connections_per_ip=2)  # no trusted proxy configured
    held = [await node.client(http) for _ in range(2)]
    assert await refused_status(http, node.ws_url) == 429
    for spoofed in ("203.0.113.7", "198.51.100.1, 203.0.113.8", "127.0.0.2"):
        headers = {"X-Forwarded-For": spoofed}
        assert await refused_status(http, node.ws_url, headers=headers) == 429, spoofed
    reason = {"reason": "ip_limit"}
    assert await metric(http, node.http_url, "gateway_rejected_upgrades_total", **reason) == 4
    for client in held:
        await client.close()


async def test_forwarded_for_from_a_trusted_proxy_counts_each_client_ip(
    node_with: Any, http: Any
) -> None:
    node = await node_with(max_connections_per_ip=2, trusted_proxies=["127.0.0.0/8"])

    def via_proxy(client_ip: str) -> dict[str, str]:
        # a client-supplied spoofed first hop, then what the trusted proxy appended
        return {"headers": {"X-Forwarded-For": f"10.9.9.9, {client_ip}"}}

    alice = [await node.client(http, **via_proxy("203.0.113.10")) for _ in range(2)]
    assert await refused_status(http, node.ws_url, **via_proxy("203.0.113.10")) == 429
    # another client behind the same proxy has its own quota...
    bob = [await node.client(http, **via_proxy("203.0.113.11")) for _ in range(2)]
    # ...and the spoofed first hop, shared by all four, was never what was counted
    assert await refused_status(http, node.ws_url, **via_proxy("203.0.113.11")) == 429
    ips = sorted(s.ip for s in node.node.sessions.values())
    assert ips == ["203.0.113.10"] * 2 + ["203.0.113.11"] * 2
    for client in alice + bob:
        await client.close()


async def test_per_user_cap_is_too_many_connections(node_with: Any, http: Any) -> None:
    node = await node_with(max_connections_per_user=2)
    first = [await node.client(http) for _ in range(2)]
    for client in first:
        await client.authenticate("cliente-5")
    extra = await node.client(http)
    reply = await extra.request("authenticate", {"token": "cliente-5"})
    assert (reply["event"], reply["data"]["code"]) == ("auth_error", "too_many_connections")
    assert await extra.wait_closed() == 4429
    # other users are not affected, and a closed connection frees the user's slot
    await assert_served(node, http, "cliente-6")
    await first[0].close()
    await asyncio.sleep(0.1)
    await assert_served(node, http, "cliente-5")
    await first[1].close()


async def test_rooms_per_connection_cap_is_too_many_rooms(node_with: Any, http: Any) -> None:
    node = await node_with(max_rooms_per_connection=4)
    client = await node.client(http)
    auth = await client.authenticate("cliente-1")
    assert len(auth["rooms"]) == 2  # automatic rooms count
    await client.join("service_1")
    await client.join("service_2")
    reply = await client.request("join_room", {"room": "service_3"})
    assert (reply["event"], reply["data"]["code"]) == ("error", "too_many_rooms")
    assert await client.join("service_2")  # joining a room it is in is not a new room
    assert (await client.request("leave_room", {"room": "service_1"}))["event"] == "room_left"
    assert (await client.join("service_3"))["room"] == "service_3"
    assert set(node.node.sessions[auth["connectionId"]].rooms) == {
        "cliente_1",
        "all_clientes",
        "service_2",
        "service_3",
    }
    await client.close()


# --- frame size -------------------------------------------------------------------------------
@pytest.mark.parametrize("authenticated", [False, True], ids=["anon", "authed"])
@pytest.mark.parametrize("kind", ["text", "binary"])
async def test_oversize_frame_closes_1009(
    node_with: Any, http: Any, authenticated: bool, kind: str
) -> None:
    node = await node_with(max_message_bytes=4096)
    client = await node.client(http)
    if authenticated:
        await client.authenticate("cliente-1")
    big = orjson.dumps({"event": "ping", "data": {"pad": "x" * 5000}})
    if kind == "text":
        await client.ws.send_str(big.decode())
    else:
        await client.ws.send_bytes(big)
    assert await client.wait_closed() == 1009
    await asyncio.sleep(0.1)
    assert node.node.sessions == {}
    await assert_served(node, http)


# --- authentication deadline and heartbeat ------------------------------------------------------
async def test_silent_and_pinging_connections_are_closed_4408(node_with: Any, http: Any) -> None:
    node = await node_with(auth_timeout_s=0.5)
    silent = await node.client(http)
    pinger = await node.client(http)
    for _ in range(4):  # ping keeps nothing alive: only authentication does
        assert (await pinger.request("ping"))["event"] == "pong"
        await asyncio.sleep(0.1)
    assert await silent.wait_closed(timeout=3) == 4408
    assert await pinger.wait_closed(timeout=3) == 4408
    # forgotten once the client has answered the close frame (the closing handshake)
    await eventually(lambda: node.node.sessions == {}, 3, "both sessions forgotten")


async def test_client_that_stops_answering_pings_is_dropped(node_with: Any, http: Any) -> None:
    node = await node_with(ws_heartbeat_s=0.5)
    alive = await node.client(http)  # aiohttp answers pings itself
    await alive.authenticate("cliente-1")
    mute = await http.ws_connect(node.ws_url, autoping=False)
    auth = {"event": "authenticate", "data": {"token": "cliente-2"}}
    await mute.send_str(orjson.dumps(auth).decode())
    pings = 0
    async with asyncio.timeout(5):
        async for msg in mute:  # read, but never answer a ping
            if msg.type is aiohttp.WSMsgType.PING:
                pings += 1
    assert pings >= 1
    assert mute.closed
    await asyncio.sleep(0.2)
    users = {s.identity.user_id for s in node.node.sessions.values() if s.identity}
    assert users == {"1"}
    assert (await alive.request("ping"))["event"] == "pong"
    assert alive.close_code is None
    await alive.close()


async def test_pings_are_answered_and_an_idle_client_that_answers_stays(
    node_with: Any, http: Any
) -> None:
    node = await node_with(ws_heartbeat_s=0.4)
    ws = await http.ws_connect(node.ws_url, autoping=False)
    await ws.send_str(
        orjson.dumps({"event": "authenticate", "data": {"token": "cliente-3"}}).decode()
    )
    assert orjson.loads((await ws.receive(timeout=5)).data)["event"] == "auth_success"
    await ws.ping(b"are you there")
    pongs, pings = [], 0
    async with asyncio.timeout(5):
        while pings < 3:  # three rounds of silence, each ping answered by hand
            msg = await ws.receive()
            if msg.type is aiohttp.WSMsgType.PONG:
                pongs.append(msg.data)
            elif msg.type is aiohttp.WSMsgType.PING:
                pings += 1
                await ws.pong(msg.data)
    assert pongs == [b"are you there"]  # the client's ping, answered with its payload
    assert not ws.closed and len(node.node.sessions) == 1
    await ws.close()


# --- hostile tokens -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "token",
    ["cliente-1\r\nX-Injected: 1", "cliente-1\x00", "\n", "x" * 5000],
    ids=["crlf", "nul", "newline", "too-long"],
)
async def test_hostile_token_is_invalid_token_by_frame_and_by_url(
    node_with: Any, http: Any, django_site: DjangoSite, token: str
) -> None:
    node = await node_with()
    client = await node.client(http)
    reply = await client.request("authenticate", {"token": token})
    if len(token) > 4096:  # beyond the frame's field limit: the frame is refused, not closed
        assert (reply["event"], reply["data"]["code"]) == ("error", "validation_error")
        await client.close()
    else:
        assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
        assert await client.wait_closed() == 4401
    by_url = await connect_with_token(http, node.ws_url, token)
    frame = await by_url.wait_for(lambda f: True)
    assert (frame["event"], frame["data"]["code"]) == ("auth_error", "invalid_token")
    assert await by_url.wait_closed() == 4401
    calls = await django_site.acalls()
    assert calls["profile_calls"] == 0  # nothing that cannot be a token reaches Django
    await assert_served(node, http)
