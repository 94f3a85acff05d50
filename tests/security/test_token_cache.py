"""The cluster-wide token cache (CONTRACT section 2, "Authentication"; section 3, disconnect):
a token verified by Django on one node is not verified again on another, ``disconnect(user_id)``
forgets it everywhere (so Django judges it again), and only token hashes ever reach Redis.
Real nodes on one real redis-server, the real Django test site, real WebSocket clients."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from gateway.auth.local import Verified
from gateway.auth.revoke import revoke_async
from gateway.auth.shared import CLOCK_SLACK_MS, SharedTokens, voided
from gateway.backend.keys import Keys
from gateway.djangoapi import AuthFailure
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


async def test_an_entry_is_void_while_the_users_mark_is_not_older_than_its_check(
    redis_server: RedisServer,
) -> None:
    """No entry is deleted or undone: the mark voids an entry whose check began before it (by
    ``CLOCK_SLACK_MS``), and a later disconnect voids an entry that was good."""
    client = aioredis.from_url(redis_server.url)
    keys = Keys("gateway")
    shared = SharedTokens(lambda: client, keys, cache_s=30, revocation_ttl_s=60)
    identity = Identity("9", "cliente")
    now = time.time()
    await shared.revoke("9", int(now * 1000))
    mark = await shared.revoked_at("9")
    assert mark == int(now * 1000) / 1000
    began_before = Verified(identity, now - 1, now + 29)
    began_within_slack = Verified(identity, now + CLOCK_SLACK_MS / 1000 - 1, now + 30)
    began_after = Verified(identity, now + CLOCK_SLACK_MS / 1000 + 1, now + 60)
    for digest, verified in (("a", began_before), ("b", began_within_slack), ("c", began_after)):
        await shared.put(digest * 64, verified)
    entries = {d: await shared.get(d * 64) for d in "abc"}
    assert all(entry is not None and entry.identity == identity for entry in entries.values())
    assert [voided(mark, entries[d]) for d in "abc"] == [True, True, False]  # type: ignore[arg-type]
    # a later disconnect voids the good one too
    await shared.revoke("9", int(time.time() * 1000) + CLOCK_SLACK_MS + 2000)
    assert voided(await shared.revoked_at("9"), entries["c"])  # type: ignore[arg-type]
    assert await shared.revoked_at("10") is None  # another user: no mark
    await client.aclose()


@pytest.mark.parametrize("way", ["api", "publisher", "async_publisher"])
async def test_a_check_in_flight_during_a_disconnect_is_taken_from_no_cache(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite, way: str
) -> None:
    """Node A asks Django; Django decides "valid", and while its answer is on the way the token
    is revoked and the user disconnected: A writes its entry after the disconnect. Afterwards
    no node takes the token from a cache: A checks again, and B (which never saw the token)
    and a node started later find the entry void by the mark. Django refuses each."""
    a = await make_node(redis_server.url)
    b = await make_node(redis_server.url)
    await django_site.acontrol(profile_mode="late", slow_seconds=2.0)
    in_flight = asyncio.create_task(auth_reply(a, http, "cliente-61"))
    deadline = time.monotonic() + 10
    while profile_calls(await django_site.acalls(), "cliente-61") == 0:  # Django has decided
        assert time.monotonic() < deadline, "node A never asked Django"
        await asyncio.sleep(0.02)
    await django_site.acontrol(profile_mode="ok", revoke=["cliente-61"])  # logout in Django...
    assert await disconnect_by(way, a, http, redis_server.url, "61") == 0  # ...then disconnect
    reply, client = await in_flight
    assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
    assert profile_calls(await django_site.acalls(), "cliente-61") == 2  # A asked again
    # the race did happen: A's entry is in Redis, from a check that began before the mark
    keys = Keys("gateway")
    digest = hashlib.sha256(b"cliente-61").hexdigest()
    async with aioredis.from_url(redis_server.url) as r:
        raw, mark = await r.mget(keys.auth_token(digest), keys.auth_user_revoked("61"))
    assert raw is not None and mark is not None
    assert orjson.loads(raw)[:2] == ["61", "cliente"] and orjson.loads(raw)[2] < int(mark)
    c = await make_node(redis_server.url)  # never got the control message
    for node in (a, b, c):
        reply, client = await auth_reply(node, http, "cliente-61")
        assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
        assert await client.wait_closed() == 4401
    assert profile_calls(await django_site.acalls(), "cliente-61") == 5
    for node in (a, b, c):
        for source in ("redis", "memory"):
            metric_value = await metric(
                http, node.http_url, "gateway_auth_token_checks_total", source=source
            )
            assert metric_value == 0, (node.http_url, source)


async def test_a_node_whose_poll_fails_reads_the_mark_before_it_trusts_the_cache(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    """Node B may not run ZRANGEBYSCORE (an ACL): its poll of the recent disconnects fails,
    so its marks are not current. A disconnect whose control message B never got (only its
    Redis part runs) must not let B accept the token from the cache: B reads the user's mark.
    Another user's entry still serves B from Redis. A node whose poll works learns of the
    disconnect within a poll."""
    admin = redis_server.client()
    admin.acl_setuser(
        "nopoll",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-zrangebyscore"],
    )
    a = await make_node(redis_server.url)
    b = await make_node(f"redis://nopoll:pw@127.0.0.1:{redis_server.port}/0")
    polled = await make_node(redis_server.url)
    for token in ("cliente-71", "cliente-72"):
        client = await a.client(http)
        await client.authenticate(token)
        await client.close()
    assert not b.node.auth._marks_known()  # the poll fails: B cannot vouch for its marks
    await django_site.acontrol(revoke=["cliente-71"])
    async with aioredis.from_url(redis_server.url) as r:  # disconnect(71): no control message
        await revoke_async(r, Keys("gateway"), "71", 3600)
    reply, client = await auth_reply(b, http, "cliente-71")
    assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
    assert await client.wait_closed() == 4401
    assert profile_calls(await django_site.acalls(), "cliente-71") == 2  # B asked Django
    client = await b.client(http)
    assert (await client.authenticate("cliente-72"))["userId"] == "72"
    assert profile_calls(await django_site.acalls(), "cliente-72") == 1
    assert await metric(http, b.http_url, "gateway_auth_token_checks_total", source="redis") == 1
    await client.close()
    # a node with a working poll: the disconnect reaches it within a poll
    deadline = time.monotonic() + 10
    while True:
        reply, client = await auth_reply(polled, http, "cliente-71")
        await client.close()
        if reply["event"] == "auth_error":
            break
        assert time.monotonic() < deadline, "the poll never brought the disconnect"
        await asyncio.sleep(0.2)
    assert reply["data"]["code"] == "invalid_token"


def _auth_commands(servers: list[Any]) -> Counter[str]:
    """Calls per command, summed over the masters, less the helpers' own."""
    total: Counter[str] = Counter()
    for server in servers:
        for name, value in server.admin().info("commandstats").items():
            total[name.removeprefix("cmdstat_")] += int(value["calls"])
    for own in ("info", "config|resetstat", "ping"):
        total.pop(own, None)
    return total


async def _count(servers: list[Any], call: Any) -> dict[str, int]:
    before = _auth_commands(servers)
    await call
    after = _auth_commands(servers)
    return {name: n - before[name] for name, n in after.items() if n != before[name]}


@pytest.mark.parametrize("topology", ["single", pytest.param("cluster", marks=pytest.mark.cluster)])
async def test_a_first_seen_token_costs_two_commands_and_a_hit_one(
    request: pytest.FixtureRequest, django_site: DjangoSite, topology: str
) -> None:
    """Counted by the servers (INFO commandstats), not by the code: a token Django verifies
    costs GET (a miss) and SET; a hit on another node costs GET; a node whose poll is late
    reads the user's mark too (GET)."""
    from gateway.auth.authenticator import Authenticator
    from gateway.djangoapi import DjangoClient
    from tests.support.nodes import node_settings

    cluster = topology == "cluster"
    if cluster:
        redis_cluster = request.getfixturevalue("redis_cluster")
        servers, url = redis_cluster.masters(), redis_cluster.url
        client: Any = aioredis.RedisCluster.from_url(url)
    else:
        server = request.getfixturevalue("redis_server")
        servers, url = [server], server.url
        client = aioredis.from_url(url)
    settings = node_settings(django_site.base_url, url, redis_cluster=cluster)
    django = DjangoClient(settings)
    await django.start()
    backend = SimpleNamespace(name="redis", client=client)  # what for_backend reads of one
    nodes = [Authenticator.for_backend(settings, backend, django) for _ in range(4)]
    first, hit, late, after = nodes
    try:
        await client.ping()  # a cluster client learns the slots first
        await first._poll_revocations()  # what follow_revocations does every 2 s
        assert await _count(servers, first.verify("cliente-81")) == {"get": 1, "set": 1}
        await hit._poll_revocations()
        assert await _count(servers, hit.verify("cliente-81")) == {"get": 1}
        assert await _count(servers, late.verify("cliente-81")) == {"get": 2}
        assert profile_calls(await django_site.acalls(), "cliente-81") == 1
        # disconnect: the entry stays, and is void for a node that reads the mark
        await django_site.acontrol(revoke=["cliente-81"])
        await first.revoke("81")
        with pytest.raises(AuthFailure) as refused:
            await after.verify("cliente-81")
        assert refused.value.code == "invalid_token"
        assert profile_calls(await django_site.acalls(), "cliente-81") == 2
    finally:
        for node in nodes:
            assert node.shared is not None
            await node.shared.aclose()
        await django.close()
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
    revocation script runs there. The entries stay where they are, void by the mark: no node
    takes the token from a cache afterwards."""
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
    shared = SharedTokens(lambda: cluster_client, keys, cache_s=30, revocation_ttl_s=60)
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
    mark = await shared.revoked_at("201")
    for h in [digest, *hashes]:
        entry = await shared.get(h)
        assert entry is not None and voided(mark, entry)
    late = await make_node(redis_cluster.url, redis_cluster=True, jwt_secret=secret)
    for node in (a, b, late):
        for token in ("cliente-201", jwt):
            reply, client = await auth_reply(node, http, token)
            assert (reply["event"], reply["data"]["code"]) == ("auth_error", "invalid_token")
    assert profile_calls(await django_site.acalls(), "cliente-201") == 4
    await cluster_client.aclose()
