"""The server API and the Publisher against several nodes: disconnect everywhere, publish from
another process without aiohttp, request validation and keys."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from typing import Any

from gateway.backend.redis_online import connections_of
from gateway.publish import AsyncPublisher, Publisher
from tests.cluster.helpers import KEYS, api_post, assert_quiet, eventually, member
from tests.support import GatewayProcess, ProcessFactory
from tests.support.nodes import API_KEY
from tests.support.processes import child_env
from tests.support.wsclient import WsClient


async def test_disconnect_closes_the_user_on_every_node(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    redis = redis_server.client()
    a, b, c = [await make_node(redis_server.url) for _ in range(3)]
    targets = [
        await member(a, http, "cliente-5"),
        await member(a, http, "cliente-5"),
        await member(b, http, "cliente-5"),
    ]
    bystanders = [await member(b, http, "cliente-6"), await member(c, http, "proveedor-8")]

    # wrong or missing key: 401, nobody is disconnected
    status, _ = await api_post(http, c.http_url, "/api/disconnect", {"userId": "5"}, key=None)
    assert status == 401
    status, _ = await api_post(http, c.http_url, "/api/disconnect", {"userId": "5"}, key="nope")
    assert status == 401
    status, body = await api_post(http, c.http_url, "/api/disconnect", {"user": "5"})
    assert status == 400 and "userId" in body["message"]

    status, body = await api_post(http, c.http_url, "/api/disconnect", {"userId": "5"})
    assert (status, body) == (200, {"disconnected": 3})
    for client in targets:
        assert await client.wait_closed(timeout=5) == 4403
    # the other users stay connected and served
    for client in bystanders:
        reply = await client.request("ping", {})
        assert reply["event"] == "pong"
    await eventually(
        lambda: _user_conns(redis, "5") == 0,
        3,
        "the closed connections to leave the cluster registry",
    )

    # the same through Publisher (sync, int id) and AsyncPublisher
    await _disconnect_with_both_publishers(redis_server, http, user=5, two_on=(c, a), one_on=b)
    for client in bystanders:
        assert (await client.request("ping", {}))["event"] == "pong"


def _user_conns(redis: Any, user_id: str) -> int:
    """The user's connections as the nodes count them (``user_online``'s ``n:<node>``)."""
    return connections_of(redis.hgetall(KEYS.user_online(user_id)))


async def _disconnect_with_both_publishers(
    redis_server: Any, http: Any, *, user: int | str, two_on: tuple[Any, Any], one_on: Any
) -> None:
    """``Publisher.disconnect`` (sync) counts and closes two connections of ``cliente-<user>``
    (one on each of ``two_on``), then ``AsyncPublisher.disconnect`` one more on ``one_on``."""
    token, redis = f"cliente-{user}", redis_server.client()
    again = [await member(node, http, token) for node in two_on]
    publisher = Publisher.from_url(redis_server.url)
    try:
        assert await asyncio.to_thread(publisher.disconnect, user) == 2
    finally:
        publisher.close()
    for client in again:
        assert await client.wait_closed(timeout=5) == 4403
    last = await member(one_on, http, token)
    await eventually(lambda: _user_conns(redis, str(user)) == 1, 3, "one connection left")
    async_pub = AsyncPublisher.from_url(redis_server.url)
    try:
        assert await async_pub.disconnect(str(user)) == 1
    finally:
        await async_pub.aclose()
    assert await last.wait_closed(timeout=5) == 4403


async def test_disconnect_counts_the_connections_left_after_a_node_is_killed_and_swept(
    redis_server: Any,
    make_node: Any,
    gateway_process: ProcessFactory[GatewayProcess],
    http: Any,
) -> None:
    """A node SIGKILLed keeps its count of the user until its lease expires and a live node's
    accounting sweeps it; from then on every way of disconnecting counts the live ones only."""
    redis = redis_server.client()
    a = await make_node(redis_server.url, presence_grace_s=0.5)
    doomed = await gateway_process.astart(
        {
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_NODE_LEASE_S": "2",
            "GATEWAY_NODE_HEARTBEAT_S": "0.5",
        }
    )
    on_a = [await member(a, http, "cliente-5"), await member(a, http, "cliente-5")]
    on_b = await WsClient.connect(http, doomed.ws_url, "cliente-5")
    await on_b.expect("auth_success")
    assert _user_conns(redis, "5") == 3
    doomed.kill()
    assert _user_conns(redis, "5") == 3  # until the lease expires and a live node sweeps
    took = await eventually(lambda: _user_conns(redis, "5") == 2, 15, "the dead node swept")
    assert took > 0.5  # it was the sweep, not a close, that released it

    status, body = await api_post(http, a.http_url, "/api/disconnect", {"userId": "5"})
    assert (status, body) == (200, {"disconnected": 2})
    for client in on_a:
        assert await client.wait_closed(timeout=5) == 4403
    await eventually(lambda: _user_conns(redis, "5") == 0, 3, "the closes counted")

    await _disconnect_with_both_publishers(redis_server, http, user="5", two_on=(a, a), one_on=a)


async def test_server_api_is_404_without_a_key_configured(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    keyless = await make_node(redis_server.url, publish_api_key=None)
    for path, body in (
        ("/api/disconnect", {"userId": "5"}),
        ("/api/publish", {"room": "service_1", "type": "t", "payload": {}}),
    ):
        for key in (None, API_KEY, "anything"):
            status, _ = await api_post(http, keyless.http_url, path, body, key=key)
            assert status == 404, (path, key)


async def test_publish_api_validation_and_answers(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    watcher = await member(node, http, "admin-1", "service_31", "service_32")

    async def publish(body: Any, **kw: Any) -> tuple[int, Any]:
        return await api_post(http, node.http_url, "/api/publish", body, **kw)

    status, _ = await publish({"room": "service_31", "type": "t", "payload": {}}, key=None)
    assert status == 401
    status, _ = await publish({"room": "service_31", "type": "t", "payload": {}}, key="bad")
    assert status == 401

    status, body = await publish(None, raw=b'{"room": "service_31", "type": ')
    assert status == 400
    assert body["error"] == "bad_request" and "JSON" in body["message"]

    status, body = await publish({"room": "nope room", "type": "t", "payload": {}})
    assert status == 400
    assert "nope room" in body["message"] and "not a valid room" in body["message"]
    status, body = await publish({"rooms": ["service_31", "bad/room"], "type": "t"})
    assert status == 400 and "bad/room" in body["message"]
    status, body = await publish({"type": "t", "payload": {}})
    assert status == 400 and "room" in body["message"]
    status, body = await publish({"room": "service_31", "payload": {}})
    assert status == 400 and "type" in body["message"]
    status, body = await publish({"room": "service_31", "type": "t", "oops": 1})
    assert status == 400 and "oops" in body["message"]
    # nothing invalid was delivered
    await assert_quiet([watcher], "service_31", seconds=0.2)

    status, body = await publish(
        {"rooms": ["service_31", "service_32"], "type": "note", "payload": {"x": [1, "2"]}}
    )
    assert status == 200, body
    assert body["offsets"] == {"service_31": 1, "service_32": 1}
    got = {e["room"]: e for e in await watcher.events(2)}
    assert set(got) == {"service_31", "service_32"}
    for event in got.values():
        assert event["payload"] == {"x": [1, "2"]}
        assert event["source"] == "api"
        assert event["type"] == "note"
        assert event["id"] == body["eventId"]


async def test_publish_from_another_python_process_without_aiohttp(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a, b = await make_node(redis_server.url), await make_node(redis_server.url)
    room = "proveedor_7"
    watchers = [await member(a, http, "proveedor-7", room), await member(b, http, "admin-1", room)]
    script = textwrap.dedent(
        f"""
        import sys
        from gateway.publish import Publisher
        p = Publisher.from_url({redis_server.url!r})
        first = p.publish({room!r}, "reservation_accepted", {{"id": 12, "estado": "aceptada"}})
        result = p.publish_many([{room!r}, "admin_dashboard"], "note", {{"n": 2}})
        p.close()
        assert "aiohttp" not in sys.modules, "gateway.publish imported aiohttp"
        print(first, result.offsets[{room!r}], result.offsets["admin_dashboard"])
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        env=child_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["1", "2", "1"]
    for watcher in watchers:
        first, second = await watcher.events(2, room=room)
        assert (first["type"], first["source"], first["offset"]) == (
            "reservation_accepted",
            "publisher",
            1,
        )
        assert first["payload"] == {"id": 12, "estado": "aceptada"}
        assert (second["type"], second["payload"], second["offset"]) == ("note", {"n": 2}, 2)
    # the admin is in admin_dashboard automatically and got that copy too
    [dash] = await watchers[1].events(1, room="admin_dashboard")
    assert dash["id"] == second["id"]
    await assert_quiet(watchers, room)
