"""Cluster-wide connection caps (contract §2, limits table): per user and per client address,
counted in Redis by every node, released on close and swept after a dead node's lease; and the
stated policy while Redis is unreachable (per-node caps, counts written back afterwards)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from gateway.backend.keys import Keys
from tests.support.ports import eventually
from tests.support.wsclient import WsClient

KEYS = Keys("gateway")


async def refused_status(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        ws = await http.ws_connect(url, **kw)
        await ws.close()
    return info.value.status


async def try_auth(http: aiohttp.ClientSession, ws_url: str, token: str) -> WsClient | int:
    """An authenticated client, or the close code after ``auth_error too_many_connections``."""
    client = await WsClient.connect(http, ws_url)
    reply = await client.request("authenticate", {"token": token}, timeout=10)
    if reply["event"] == "auth_success":
        return client
    assert reply["data"]["code"] == "too_many_connections", reply
    code = await client.wait_closed(timeout=10)
    assert code is not None
    return code


async def authed(http: aiohttp.ClientSession, ws_url: str, token: str) -> WsClient:
    client = await try_auth(http, ws_url, token)
    assert isinstance(client, WsClient), f"refused with {client}"
    return client


async def test_a_users_21st_connection_anywhere_is_refused_until_one_closes_or_a_node_dies(
    redis_server: Any, gateway_process: Any, http: Any
) -> None:
    env = {
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_NODE_LEASE_S": "2",
        "GATEWAY_NODE_HEARTBEAT_S": "0.5",
    }
    a, b, c = [await gateway_process.astart(env) for _ in range(3)]
    token = "cliente-21"
    on_a = [await authed(http, a.ws_url, token) for _ in range(7)]
    on_b = [await authed(http, b.ws_url, token) for _ in range(7)]
    on_c = [await authed(http, c.ws_url, token) for _ in range(6)]
    for node in (a, b, c):  # the 21st, wherever it lands
        assert await try_auth(http, node.ws_url, token) == 4429
    # another user is not affected
    other = await authed(http, a.ws_url, "cliente-22")

    # a close frees one place, on any node
    await on_b.pop().close()
    await eventually(
        lambda: _counted(redis_server, token) == 19, 10, "the close to be released in Redis"
    )
    on_c.append(await authed(http, c.ws_url, token))
    assert await try_auth(http, b.ws_url, token) == 4429

    # node A dies (SIGKILL): its 7 are released once its lease expires, not before
    a.kill()
    assert await try_auth(http, c.ws_url, token) == 4429
    freed: list[WsClient] = []

    async def one_more_fits() -> bool:
        outcome = await try_auth(http, c.ws_url, token)
        if isinstance(outcome, WsClient):
            freed.append(outcome)
            return True
        return False

    await eventually(one_more_fits, 30, "node A's connections to be swept", interval_s=0.3)
    freed += [await authed(http, b.ws_url, token) for _ in range(6)]
    assert await try_auth(http, b.ws_url, token) == 4429
    admin = redis_server.client()
    assert a.node_id.encode() not in admin.smembers(KEYS.held_nodes)
    assert admin.exists(KEYS.node_held(a.node_id)) == 0
    for client in on_b + on_c + freed + [other]:
        await client.close()
    del on_a  # their node is gone


def _counted(redis_server: Any, user_id_token: str) -> int:
    user_id = user_id_token.split("-")[1]
    fields = redis_server.admin().hgetall(KEYS.user_online(user_id))
    return sum(int(v) for k, v in fields.items() if k.startswith(b"n:"))


async def test_the_per_ip_cap_is_cluster_wide_on_every_way_in(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a = await make_node(redis_server.url, max_connections_per_ip=3)
    b = await make_node(redis_server.url, max_connections_per_ip=3)
    held = [await a.client(http), await a.client(http), await b.client(http)]
    assert await refused_status(http, a.ws_url) == 429
    assert await refused_status(http, b.ws_url) == 429
    sio = b.http_url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    assert await refused_status(http, sio) == 429
    await held.pop().close()  # B's: freed for the whole cluster
    await eventually(
        lambda: (
            not redis_server.admin()
            .hgetall(KEYS.ip_connections("127.0.0.1"))
            .get(f"n:{b.settings.node_id}".encode())
        ),
        5,
        "B's connection to be released",
    )
    held.append(await a.client(http))
    assert await refused_status(http, b.ws_url) == 429
    for client in held:
        await client.close()


async def test_behind_a_trusted_proxy_each_client_address_has_its_own_cluster_wide_cap(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    settings = {"max_connections_per_ip": 2, "trusted_proxies": ["127.0.0.0/8"]}
    a = await make_node(redis_server.url, **settings)
    b = await make_node(redis_server.url, **settings)

    def via(ip: str) -> dict[str, Any]:
        return {"headers": {"X-Forwarded-For": ip}}

    alice = [await a.client(http, **via("203.0.113.1")), await b.client(http, **via("203.0.113.1"))]
    assert await refused_status(http, a.ws_url, **via("203.0.113.1")) == 429
    bob = [await a.client(http, **via("203.0.113.2")), await b.client(http, **via("203.0.113.2"))]
    counts = redis_server.admin().hgetall(KEYS.ip_connections("203.0.113.2"))
    assert sorted(int(v) for v in counts.values()) == [1, 1]
    for client in alice + bob:
        await client.close()


async def test_while_redis_is_unreachable_the_caps_are_per_node_and_counts_return_after(
    redis_server: Any, make_node: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.accounting")
    node = await make_node(redis_server.url, max_connections_per_ip=2, limits_timeout_s=0.5)
    node_id = node.settings.node_id
    redis_server.stop()
    held = [await node.client(http), await node.client(http)]  # upgrades still accepted
    assert await refused_status(http, node.ws_url) == 429  # the node's own cap
    outage = [r for r in caplog.records if "caps are per node" in r.getMessage()]
    assert len(outage) == 1
    redis_server.start()  # empty: the node writes its counts back

    def written_back() -> bool:
        fields = redis_server.admin().hgetall(KEYS.ip_connections("127.0.0.1"))
        return fields.get(f"n:{node_id}".encode()) == b"2"

    await eventually(written_back, 15, "the node's counts to be restored in Redis")
    # the write is seen in Redis before the node's task resumes to log the recovery
    await eventually(
        lambda: any("available again" in r.getMessage() for r in caplog.records),
        2,
        "the recovery to be logged",
    )
    await held.pop().close()
    await eventually(
        lambda: redis_server.admin().hget(KEYS.ip_connections("127.0.0.1"), f"n:{node_id}") == b"1",
        5,
        "the close to be released",
    )
    await held[0].close()


async def test_a_node_warns_once_when_most_connections_share_an_untrusted_private_address(
    redis_server: Any, make_node: Any, http: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.accounting")
    # the node trusts a first proxy, but a second one in front of it is not configured: every
    # client then seems to come from that second proxy's private address
    node = await make_node(redis_server.url, trusted_proxies=["127.0.0.1"])
    headers = {"X-Forwarded-For": "10.20.30.40"}
    clients = [await node.client(http, headers=headers) for _ in range(25)]
    await asyncio.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for m in messages if "GATEWAY_TRUSTED_PROXIES" in m]
    assert len(warnings) == 1 and "10.20.30.40" in warnings[0]
    for client in clients:
        await client.close()
