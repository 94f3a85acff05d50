"""Django failing under the gateway (CONTRACT section 2, "Authentication"; section 5): 5xx, timeouts
and a stopped Django are ``auth_unavailable`` (never ``invalid_token``); recently verified tokens
still authenticate from the cache; the circuit breaker stops hammering a failing Django."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support import DjangoSite, RedisServer


async def auth_reply(node: Any, http: Any, token: str) -> tuple[dict[str, Any], Any]:
    client = await node.client(http)
    return await client.request("authenticate", {"token": token}), client


async def assert_unavailable(node: Any, http: Any, token: str) -> None:
    reply, client = await auth_reply(node, http, token)
    assert (reply["event"], reply["data"]["code"]) == ("auth_error", "auth_unavailable"), reply
    assert await client.wait_closed() == 1013  # retry later: the token was not judged


RESET_S = 2.0


@pytest.mark.parametrize("mode", ["fail", "slow"])
async def test_django_5xx_or_timeout_is_auth_unavailable_never_invalid_token(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite, mode: str
) -> None:
    node = await make_node(redis_server.url, django_timeout=0.3)
    await django_site.acontrol(profile_mode=mode, slow_seconds=1.0)
    for token in ("cliente-1", "not-a-real-token"):  # even a bad token is not judged now
        await assert_unavailable(node, http, token)
    await django_site.acontrol(profile_mode="ok")
    reply, client = await auth_reply(node, http, "not-a-real-token")
    assert reply["data"]["code"] == "invalid_token"  # judged once Django answers
    assert await client.wait_closed() == 4401


async def test_cached_token_authenticates_while_django_is_down(
    redis_server: RedisServer, make_node: Any, http: Any, django_factory: Any
) -> None:
    site: DjangoSite = django_factory()
    node = await make_node(redis_server.url, django_base_url=site.base_url, auth_cache_s=30)
    first = await node.client(http)
    await first.authenticate("cliente-1")
    await asyncio.to_thread(site.stop)
    # a reconnect storm while Django is down: verified tokens are let in from the cache...
    again = await node.client(http)
    auth = await again.authenticate("cliente-1")
    assert (auth["userId"], auth["role"]) == ("1", "cliente")
    # ...tokens never verified are not, and are not refused either (connection refused)
    await assert_unavailable(node, http, "cliente-2")
    site.spawn()
    await site.wait_ready_async()
    fresh = await node.client(http)
    assert (await fresh.authenticate("cliente-2"))["userId"] == "2"
    for client in (first, again, fresh):
        await client.close()


async def test_circuit_breaker_stops_calls_to_a_failing_django(
    redis_server: RedisServer, make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await make_node(
        redis_server.url, django_breaker_failures=3, django_breaker_reset_s=RESET_S
    )
    member = await node.client(http)
    await member.authenticate("cliente-1")
    await django_site.acontrol(profile_mode="fail", events_mode="fail")
    for i in range(3):  # each failure reaches Django and counts
        await assert_unavailable(node, http, f"cliente-{10 + i}")
    assert (await django_site.acalls())["profile_calls"] == 4  # cliente-1, then three failures
    opened = time.monotonic()
    # open: auths and business events fail fast, without reaching Django
    for i in range(5):
        started = time.monotonic()
        await assert_unavailable(node, http, f"cliente-{20 + i}")
        assert time.monotonic() - started < 1.0
    reply = await member.request("comment_created", {"servicioId": "1", "text": "x"})
    assert (reply["event"], reply["data"]["code"]) == ("error", "django_unavailable")
    calls = await django_site.acalls()
    assert time.monotonic() - opened < RESET_S  # all of this happened while open
    assert calls["profile_calls"] == 4
    assert calls["events"] == []
    # Django recovers; after the reset period one trial call closes the circuit again
    await django_site.acontrol(profile_mode="ok", events_mode="ok")
    await asyncio.sleep(max(0.0, opened + RESET_S + 0.1 - time.monotonic()))
    client = await node.client(http)
    assert (await client.authenticate("cliente-30"))["userId"] == "30"
    ack = await member.request("comment_created", {"servicioId": "1", "text": "x"})
    assert ack["event"] == "ack"
    calls = await django_site.acalls()
    assert calls["profile_calls_by_token"].get("cliente-30") == 1
    assert not any(f"cliente-{20 + i}" in calls["profile_calls_by_token"] for i in range(5))
    assert len(calls["events"]) == 1
    await client.close()
    await member.close()
