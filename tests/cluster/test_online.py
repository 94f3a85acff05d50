"""Online status (contract §8): cluster-wide counts and lastSeen from ``GET /api/online`` and
``Publisher.online``; the ``gateway:presence`` stream announces each change once, with a grace
period that hides reconnects; a killed node's users go offline within lease + grace."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from gateway.backend.keys import Keys
from gateway.publish import AsyncPublisher, Publisher
from tests.support.nodes import API_KEY
from tests.support.ports import eventually
from tests.support.wsclient import WsClient

KEYS = Keys("gateway")


async def online(http: aiohttp.ClientSession, base_url: str, *users: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{base_url}/api/online?users={','.join(users)}"
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


def stream(redis_server: Any) -> list[tuple[str, str, str]]:
    entries = redis_server.admin().xrange(KEYS.presence_stream)
    return [(f[b"userId"].decode(), f[b"role"].decode(), f[b"online"].decode()) for _, f in entries]


async def authed(http: aiohttp.ClientSession, ws_url: str, token: str) -> WsClient:
    client = await WsClient.connect(http, ws_url)
    await client.authenticate(token)
    return client


async def test_online_until_the_last_connection_on_any_node_closes_plus_the_grace_period(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a = await make_node(redis_server.url, presence_grace_s=0.6)
    b = await make_node(redis_server.url, presence_grace_s=0.6)
    on_a = await authed(http, a.ws_url, "proveedor-5")
    on_b = await authed(http, b.ws_url, "proveedor-5")
    status = await online(http, a.http_url, "5", "6")
    assert status["5"]["online"] is True and status["5"]["connections"] == 2
    assert status["6"] == {"online": False, "connections": 0, "lastSeen": None}
    publisher = Publisher.from_url(redis_server.url)
    try:
        assert publisher.online(["5"])["5"]["connections"] == 2
    finally:
        publisher.close()

    await on_a.close()
    await eventually(
        lambda: _connections(redis_server, "5") == 1, 5, "A's connection to be released"
    )
    assert (await online(http, b.http_url, "5"))["5"]["online"] is True
    await on_b.close()
    closed_at = time.time() * 1000
    await eventually(
        lambda: _connections(redis_server, "5") == 0, 5, "B's connection to be released"
    )
    during_grace = (await online(http, a.http_url, "5"))["5"]
    assert (during_grace["online"], during_grace["connections"]) == (True, 0)

    async def offline() -> bool:
        return (await online(http, a.http_url, "5"))["5"]["online"] is False

    await eventually(offline, 10, "user 5 to go offline after the grace period")
    last_seen = (await online(http, b.http_url, "5"))["5"]["lastSeen"]
    assert abs(last_seen - closed_at) < 2000
    assert stream(redis_server) == [("5", "proveedor", "1"), ("5", "proveedor", "0")]


async def test_a_reconnect_within_the_grace_period_announces_nothing(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a = await make_node(redis_server.url, presence_grace_s=1.5)
    b = await make_node(redis_server.url, presence_grace_s=1.5)
    client = await authed(http, a.ws_url, "cliente-8")
    for node in (b, a, b):  # three reconnects, each to another node
        await client.close()
        client = await authed(http, node.ws_url, "cliente-8")
    await asyncio.sleep(2.0)  # longer than the grace period after every close
    assert stream(redis_server) == [("8", "cliente", "1")]
    assert (await online(http, a.http_url, "8"))["8"]["online"] is True
    await client.close()
    await eventually(
        lambda: stream(redis_server)[-1] == ("8", "cliente", "0"), 10, "the offline entry"
    )
    assert len(stream(redis_server)) == 2


async def test_the_online_api_needs_the_key_and_valid_user_ids(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    url = f"{node.http_url}/api/online?users=1"
    async with http.get(url) as response:
        assert response.status == 401
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for query in ("", "users=", "users=a%20b", "users=" + ",".join(map(str, range(1001)))):
        async with http.get(f"{node.http_url}/api/online?{query}", headers=headers) as response:
            assert response.status == 400, query
            assert (await response.json())["error"] == "bad_request"


async def test_async_publisher_answers_the_same(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    client = await authed(http, node.ws_url, "admin-3")
    publisher = AsyncPublisher.from_url(redis_server.url)
    try:
        status = await publisher.online([3, "4"])
    finally:
        await publisher.aclose()
    assert status["3"]["online"] is True and status["3"]["connections"] == 1
    assert status["4"]["online"] is False
    await client.close()


async def test_embedded_mode_answers_online_and_posts_changes_to_django(
    make_node: Any, http: Any, django_site: Any
) -> None:
    node = await make_node(None, presence_grace_s=0.3, django_presence_path="presence/")
    client = await authed(http, node.ws_url, "cliente-4")
    assert (await online(http, node.http_url, "4"))["4"]["connections"] == 1
    await client.close()

    async def offline() -> bool:
        return (await online(http, node.http_url, "4"))["4"]["online"] is False

    await eventually(offline, 5, "user 4 to go offline in embedded mode")

    async def posted() -> bool:
        return len((await django_site.acalls())["presence"]) == 2

    await eventually(posted, 10, "the node to post both changes to Django")
    got = (await django_site.acalls())["presence"]
    assert [(c["userId"], c["role"], c["online"]) for c in got] == [
        ("4", "cliente", True),
        ("4", "cliente", False),
    ]
    assert len(node.node.accounting.store.changes) == 0  # posted, so forgotten


async def test_a_killed_nodes_users_go_offline_within_lease_plus_grace(
    redis_server: Any, gateway_process: Any, http: Any
) -> None:
    env = {
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_NODE_LEASE_S": "2",
        "GATEWAY_NODE_HEARTBEAT_S": "0.5",
        "GATEWAY_PRESENCE_GRACE_S": "1",
        "GATEWAY_PUBLISH_API_KEY": API_KEY,
    }
    a = await gateway_process.astart(env)
    b = await gateway_process.astart(env)
    both = [
        await authed(http, a.ws_url, "proveedor-9"),
        await authed(http, b.ws_url, "proveedor-9"),
    ]
    only_a = await authed(http, a.ws_url, "cliente-10")
    a.kill()
    killed = time.monotonic()

    async def offline() -> bool:
        status = await online(http, b.http_url, "10")
        return status["10"]["online"] is False

    took = await eventually(offline, 30, "cliente 10 to go offline after node A died")
    # proveedor 9 still has a connection on B: online, with exactly that one
    status = (await online(http, b.http_url, "9"))["9"]
    assert (status["online"], status["connections"]) == (True, 1)
    entries = stream(redis_server)
    assert entries.count(("10", "cliente", "0")) == 1
    assert ("9", "proveedor", "0") not in entries
    print(f"offline {took:.2f}s after the kill (lease 2 s + grace 1 s)")
    assert time.monotonic() - killed > 1.5  # not before the lease: A might have been alive
    await both[1].close()
    del only_a


def _connections(redis_server: Any, user_id: str) -> int:
    fields = redis_server.admin().hgetall(KEYS.user_online(user_id))
    return sum(int(v) for k, v in fields.items() if k.startswith(b"n:"))
