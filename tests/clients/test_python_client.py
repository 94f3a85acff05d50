"""``GatewayClient`` (Python) against real nodes on a real Redis: it rides out a node crash and a
node drain without losing, duplicating or reordering an event, and it stops for good after close
4403 (server API disconnect) and close 4401 (a refused token)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.client import AuthError, ClientState, Disconnected, GatewayClient
from gateway.publish import AsyncPublisher
from tests.clients.conftest import Collector, PinnedJitter, offsets, seqs
from tests.support.nodes import API_KEY, DASHBOARD

ROOM = "service_77"
TOTAL = 200
PACE_S = 0.01  # 200 events over ~2 s; the client is away ~0.3 s: ~30 of them are missed


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["kill", "term"])
async def test_reconnects_to_the_other_node_and_misses_nothing(
    start_cluster: Any, failure: str
) -> None:
    """kill -9 (a crash) or SIGTERM (a drain: close 1012) of the node the client is on, while
    a publisher keeps going: the client moves to the other node, and its handlers get every
    event exactly once, in order."""
    cluster = await start_cluster()
    client = GatewayClient(cluster.ws_urls, "cliente-31", rng=PinnedJitter())
    got = Collector()
    client.on("*", got)
    lifecycle: list[tuple[str, Any]] = []
    for name in ("connected", "disconnected", "reconnected", "recovery_failed"):
        client.on_lifecycle(name, lambda info, name=name: lifecycle.append((name, info)))
    publisher = AsyncPublisher.from_url(cluster.redis.url)

    async def publish_steadily() -> None:
        for seq in range(TOTAL):
            await publisher.publish(ROOM, "tick", {"seq": seq})
            await asyncio.sleep(PACE_S)

    try:
        auth = await client.connect()
        first = cluster.by_id(auth["node"])
        [other] = [n for n in cluster.nodes if n is not first]
        await client.join(ROOM)
        publishing = asyncio.create_task(publish_steadily())
        await got.wait_for(ROOM, 50)
        if failure == "kill":
            first.kill()
        else:
            first.term()
        await publishing
        await got.wait_for(ROOM, TOTAL, timeout_s=15)
        await asyncio.sleep(0.3)  # room for a duplicate to show up
        if failure == "term":
            assert await asyncio.to_thread(first.wait, 10) == 0
    finally:
        await client.close()
        await publisher.aclose()

    events = got.in_room(ROOM)
    assert offsets(events) == list(range(1, TOTAL + 1))
    assert seqs(events) == list(range(TOTAL))
    assert len({e["epoch"] for e in events}) == 1
    assert client.node == other.node_id
    assert client.url == other.ws_url
    assert client.stats.reconnects == 1
    assert client.stats.recoveries >= 1
    assert client.stats.missed_delivered > 0  # recovery, not live delivery, closed the gap
    assert client.stats.duplicates_dropped == 0
    names = [name for name, _ in lifecycle]
    assert names == ["connected", "disconnected", "reconnected"]
    code = lifecycle[1][1]["code"]
    assert code == 1012 if failure == "term" else code not in (1000, 1012, 4401, 4403)


async def user_connections(http: aiohttp.ClientSession, node: Any, user_id: str) -> int:
    async with http.get(
        f"{node.http_url}/dashboard/clients",
        headers={"Authorization": f"Bearer {DASHBOARD}"},
    ) as response:
        assert response.status == 200
        body = await response.json()
    return sum(1 for c in body["clients"] if c["userId"] == user_id)


async def test_disconnect_api_4403_ends_the_client(
    make_node: Any, redis_server: Any, http: aiohttp.ClientSession
) -> None:
    """``POST /api/disconnect`` closes the connection with 4403: the client does not reconnect
    (to either node), reports ``terminated`` and refuses further requests."""
    a = await make_node(redis_server.url)
    b = await make_node(redis_server.url)
    client = GatewayClient([a.ws_url, b.ws_url], "cliente-41", backoff_base_s=0.05)
    lifecycle: list[tuple[str, Any]] = []
    for name in ("connected", "disconnected", "reconnected", "terminated"):
        client.on_lifecycle(name, lambda info, name=name: lifecycle.append((name, info)))
    try:
        await client.connect()
        await client.join("service_4")
        assert await user_connections(http, b, "41") == 1
        async with http.post(
            f"{b.http_url}/api/disconnect",
            json={"userId": "41"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 200
            assert await response.json() == {"disconnected": 1}
        async with asyncio.timeout(5):
            await client.wait_stopped()
        await asyncio.sleep(0.5)  # ten backoff windows: a reconnect would have happened
        assert await user_connections(http, a, "41") == 0
        with pytest.raises(Disconnected):
            await client.join("service_5")
    finally:
        await client.close()

    assert client.state is ClientState.FAILED
    assert client.close_code == 4403
    assert isinstance(client.terminal_error, Disconnected)
    assert client.terminal_error.terminal
    assert client.stats.connects == 1
    assert client.stats.reconnects == 0
    assert client.stats.connect_failures == 0
    names = [name for name, _ in lifecycle]
    assert names == ["connected", "disconnected", "terminated"]
    assert lifecycle[1][1] == {"code": 4403}
    assert lifecycle[2][1]["code"] == "disconnected"


async def test_bad_token_raises_auth_error_and_is_not_retried(
    make_node: Any, redis_server: Any, django_site: Any
) -> None:
    """A token Django refuses: ``connect()`` raises ``AuthError`` (``invalid_token``, terminal)
    after one try, although a second URL was there to try."""
    a = await make_node(redis_server.url)
    b = await make_node(redis_server.url)
    client = GatewayClient([a.ws_url, b.ws_url], "no-such-token", backoff_base_s=0.05)
    with pytest.raises(AuthError) as caught:
        await client.connect()
    await asyncio.sleep(0.3)
    calls = await django_site.acalls()

    assert caught.value.code == "invalid_token"
    assert caught.value.terminal
    assert client.state is ClientState.FAILED
    assert client.terminal_error is caught.value
    assert calls["profile_calls_by_token"].get("no-such-token") == 1
    await client.close()  # harmless after a failure
    assert client.state is ClientState.FAILED


async def test_token_revoked_while_away_ends_the_client_at_reconnect(
    make_node: Any, redis_server: Any, django_site: Any
) -> None:
    """The client's token is revoked, then the node it is on drains (close 1012): the other
    node answers ``invalid_token`` and closes 4401, and the client stops instead of retrying."""
    # no token cache: with one, node B would let the token in from Redis for its 30 s
    a = await make_node(redis_server.url, auth_cache_s=0)
    b = await make_node(redis_server.url, auth_cache_s=0)
    client = GatewayClient([a.ws_url, b.ws_url], "cliente-42", backoff_base_s=0.05)
    terminated: list[dict[str, Any]] = []
    client.on_lifecycle("terminated", terminated.append)
    try:
        auth = await client.connect()
        assert auth["node"] == a.settings.node_id
        await django_site.acontrol(revoke=["cliente-42"])
        await a.node.drain(0)
        async with asyncio.timeout(10):
            await client.wait_stopped()
        await asyncio.sleep(0.5)  # ten backoff windows: any retry would have reached Django
        calls = await django_site.acalls()
    finally:
        await client.close()

    assert client.state is ClientState.FAILED
    assert isinstance(client.terminal_error, AuthError)
    assert client.terminal_error.code == "invalid_token"
    assert client.stats.connects == 1
    assert client.stats.reconnects == 0
    assert terminated and terminated[0]["code"] == "invalid_token"
    # one verification at connect (node A), one refused at the reconnect (node B), no more
    assert calls["profile_calls_by_token"]["cliente-42"] == 2
