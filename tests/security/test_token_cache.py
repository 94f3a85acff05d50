"""The cluster-wide token cache (CONTRACT section 2, "Authentication"; section 3, disconnect):
a token verified by Django on one node is not verified again on another, ``disconnect(user_id)``
forgets it everywhere (so Django judges it again), and only token hashes ever reach Redis.
Real nodes on one real redis-server, the real Django test site, real WebSocket clients."""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.auth.local import Verified
from gateway.auth.shared import CLOCK_SLACK_MS, SharedTokens
from gateway.backend.keys import Keys
from gateway.publish import AsyncPublisher, Publisher
from gateway.rooms import Identity
from tests.security.helpers import metric
from tests.support import DjangoSite, RedisServer
from tests.support.nodes import API_KEY


async def auth_reply(node: Any, http: Any, token: str) -> tuple[dict[str, Any], Any]:
    client = await node.client(http)
    return await client.request("authenticate", {"token": token}), client


def profile_calls(calls: dict[str, Any], token: str) -> int:
    return int(calls["profile_calls_by_token"].get(token, 0))


async def disconnect_by(way: str, node: Any, http: Any, redis_url: str, user_id: str) -> int:
    """``disconnect(user_id)`` through one of its three ways in."""
    if way == "api":
        async with http.post(
            f"{node.http_url}/api/disconnect",
            json={"userId": user_id},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            assert resp.status == 200, await resp.text()
            return int((await resp.json())["disconnected"])
    if way == "async_publisher":
        publisher = AsyncPublisher.from_url(redis_url)
        try:
            return await publisher.disconnect(user_id)
        finally:
            await publisher.aclose()
    sync = Publisher.from_url(redis_url)
    try:
        return await asyncio.to_thread(sync.disconnect, user_id)
    finally:
        sync.close()


async def test_token_verified_on_one_node_is_not_verified_again_on_another(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    a = await make_node(redis_server.url)
    b = await make_node(redis_server.url)
    first = await a.client(http)
    await first.authenticate("cliente-101")
    # a storm onto the other node: every client of the user lands on b, none asks Django
    again = [await b.client(http) for _ in range(5)]
    for client in again:
        assert (await client.authenticate("cliente-101"))["userId"] == "101"
    assert profile_calls(await django_site.acalls(), "cliente-101") == 1
    assert await metric(http, b.http_url, "gateway_auth_token_checks_total", source="redis") == 1
    assert await metric(http, b.http_url, "gateway_auth_token_checks_total", source="memory") == 4
    assert await metric(http, b.http_url, "gateway_auth_token_checks_total", source="django") == 0
    # Redis holds the token's sha256, never the token itself
    digest = hashlib.sha256(b"cliente-101").hexdigest()
    async with aioredis.from_url(redis_server.url) as r:
        keys = [k.decode() async for k in r.scan_iter("gateway:auth:*")]
        assert f"gateway:auth:tok:{digest}" in keys
        values = [await r.dump(k) for k in keys]
    assert not any("cliente-101" in k for k in keys)
    assert not any(b"cliente-101" in (v or b"") for v in values)
    for client in (first, *again):
        await client.close()


@pytest.mark.parametrize("way", ["api", "publisher", "async_publisher"])
async def test_disconnect_forgets_the_users_tokens_on_every_node(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite, way: str
) -> None:
    a = await make_node(redis_server.url)
    b = await make_node(redis_server.url)
    on_a, on_b = await a.client(http), await b.client(http)
    await on_a.authenticate("cliente-7")
    await on_b.authenticate("cliente-7")
    other = await b.client(http)
    await other.authenticate("cliente-8")  # another user: untouched
    assert profile_calls(await django_site.acalls(), "cliente-7") == 1
    await django_site.acontrol(revoke=["cliente-7"])  # logout in Django...
    assert await disconnect_by(way, a, http, redis_server.url, "7") == 2  # ...then disconnect
    assert await on_a.wait_closed() == 4403
    assert await on_b.wait_closed() == 4403
    # the revoked token cannot come back from any cache, on either node nor on a node that
    # started after the disconnect (it never got the control message): Django refuses it
    c = await make_node(redis_server.url)
    for node in (a, b, c):
        reply, client = await auth_reply(node, http, "cliente-7")
        assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
        assert await client.wait_closed() == 4401
    assert profile_calls(await django_site.acalls(), "cliente-7") == 4
    # the other user's cached token still serves without Django
    fresh = await c.client(http)
    await fresh.authenticate("cliente-8")
    assert profile_calls(await django_site.acalls(), "cliente-8") == 1
    for client in (other, fresh):
        await client.close()


async def test_after_disconnect_a_good_token_is_verified_with_django_again(
    node: Any, http: Any, django_site: DjangoSite, backend_kind: str
) -> None:
    """Both backends: embedded mode forgets the user's tokens in memory the same way."""
    client = await node.client(http)
    await client.authenticate("proveedor-5")
    again = await node.client(http)
    await again.authenticate("proveedor-5")
    assert profile_calls(await django_site.acalls(), "proveedor-5") == 1
    async with http.post(
        f"{node.http_url}/api/disconnect",
        json={"userId": 5},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        assert (await resp.json()) == {"disconnected": 2}
    assert await client.wait_closed() == 4403
    back = await node.client(http)
    assert (await back.authenticate("proveedor-5"))["role"] == "proveedor"
    assert profile_calls(await django_site.acalls(), "proveedor-5") == 2
    await back.close()


async def test_a_check_in_flight_during_a_disconnect_leaves_no_entry_behind(
    redis_server: RedisServer,
) -> None:
    """A node that asked Django before the disconnect and writes after it: its entry is
    deleted again (the mark is read after the write), unless it began after the mark."""
    client = aioredis.from_url(redis_server.url)
    keys = Keys("gateway")
    shared = SharedTokens(lambda: client, keys, cache_s=30, revocation_ttl_s=60)
    identity = Identity("9", "cliente")
    now = time.time()
    await shared.revoke("9", int(now * 1000))
    began_before = Verified(identity, now - 1, now + 29)
    await shared.put("a" * 64, began_before)
    assert await client.exists(keys.auth_token("a" * 64)) == 0
    began_after = Verified(identity, now + CLOCK_SLACK_MS / 1000 + 1, now + 60)
    await shared.put("b" * 64, began_after)
    assert await shared.get("b" * 64) is not None
    # and a later disconnect finds it through the user's set
    await shared.revoke("9", int(time.time() * 1000) + CLOCK_SLACK_MS + 2000)
    assert await client.exists(keys.auth_token("b" * 64), keys.auth_user_tokens("9")) == 0
    await client.aclose()


async def test_redis_cache_entries_expire_with_the_cache_period(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    a = await make_node(redis_server.url, auth_cache_s=1.0)
    b = await make_node(redis_server.url, auth_cache_s=1.0)
    first = await a.client(http)
    await first.authenticate("admin-4")
    digest = hashlib.sha256(b"admin-4").hexdigest()
    async with aioredis.from_url(redis_server.url) as r:
        ttl_ms = await r.pttl(f"gateway:auth:tok:{digest}")
        assert 0 < ttl_ms <= 1000
    await asyncio.sleep(1.2)
    late = await b.client(http)
    await late.authenticate("admin-4")
    assert profile_calls(await django_site.acalls(), "admin-4") == 2
    for client in (first, late):
        await client.close()


@pytest.mark.cluster
async def test_cache_and_revocation_on_a_redis_cluster(
    redis_cluster: Any, make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    """Token entries spread over the masters; the user's keys share one slot, so the
    revocation script runs there, and the entries it names are deleted on their own masters."""
    secret = (await django_site.ajwt_keys())["secret"]
    a = await make_node(redis_cluster.url, redis_cluster=True, jwt_secret=secret)
    b = await make_node(redis_cluster.url, redis_cluster=True, jwt_secret=secret)
    on_a = await a.client(http)
    await on_a.authenticate("cliente-201")
    on_b = await b.client(http)
    await on_b.authenticate("cliente-201")
    jwt = await django_site.ajwt(201, role="cliente")
    by_jwt = await b.client(http)
    await by_jwt.authenticate(jwt)
    assert profile_calls(await django_site.acalls(), "cliente-201") == 1
    # more cached tokens of the user (other devices), landing on several masters
    cluster_client = aioredis.RedisCluster.from_url(redis_cluster.url)
    keys = Keys("gateway")
    shared = SharedTokens(
        lambda: cluster_client, keys, cache_s=30, revocation_ttl_s=60, cluster=True
    )
    hashes = [hashlib.sha256(f"device-{i}".encode()).hexdigest() for i in range(12)]
    for digest in hashes:
        await shared.put(
            digest, Verified(Identity("201", "cliente"), time.time(), time.time() + 30)
        )
    digest = hashlib.sha256(b"cliente-201").hexdigest()
    masters = {redis_cluster.keyslot_node(keys.auth_token(h)) for h in [digest, *hashes]}
    assert len(masters) > 1
    await django_site.acontrol(revoke=["cliente-201"])
    publisher = Publisher.from_url(redis_cluster.url, cluster=True)
    try:
        assert await asyncio.to_thread(publisher.disconnect, "201") == 3
    finally:
        publisher.close()
    for client in (on_a, on_b, by_jwt):
        assert await client.wait_closed() == 4403
    for h in [digest, *hashes]:
        assert await cluster_client.exists(keys.auth_token(h)) == 0
    late = await make_node(redis_cluster.url, redis_cluster=True, jwt_secret=secret)
    for token in ("cliente-201", jwt):
        reply, client = await auth_reply(late, http, token)
        assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
    assert profile_calls(await django_site.acalls(), "cliente-201") == 2
    await cluster_client.aclose()
