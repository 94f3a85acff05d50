"""Redis outages a node must ride out: Redis not there when the node (or the worker) starts, and a
Redis that accepts connections only to close them (maxclients), which once made nodes send
``rejoin`` in a loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.backend.keys import Keys
from tests.cluster.helpers import api_publish, member
from tests.ha.conftest import node_logs_clean
from tests.ha.helpers import readyz
from tests.support import RedisCluster, RedisServer
from tests.support.nodes import API_KEY
from tests.support.ports import eventually, http_status_or_none

KEYS = Keys("gateway")


async def _joins_and_delivers(session: Any, node: Any) -> None:
    """A client on ``node`` joins a room and gets an event published through it."""
    client = await member(node, session, "cliente-1", "service_5")
    offset = await api_publish(session, node.http_url, "service_5", "t", {"seq": 0})
    [event] = await client.events(1, room="service_5", timeout=10)
    assert event["offset"] == offset
    await client.close()


@pytest.mark.parametrize("deployment", ["single", "cluster"])
async def test_a_node_started_without_redis_waits_and_becomes_ready(
    deployment: str, tmp_path: Path, gateway_process: Any, session: Any
) -> None:
    if deployment == "single":
        server: Any = RedisServer(tmp_path / "redis")
        url = server.url
    else:
        server = RedisCluster(tmp_path / "cluster", masters=3)
        url = server.cluster_url
    node = await gateway_process.astart(
        {"GATEWAY_REDIS_URL": url, "GATEWAY_PUBLISH_API_KEY": API_KEY}
    )
    try:
        assert await readyz(session, node.http_url) == 503
        await asyncio.sleep(3.5)  # a heartbeat period: still one line, still alive
        assert node.alive and await readyz(session, node.http_url) == 503
        assert node.logs().count("(GATEWAY_REDIS_URL) is unreachable at startup") == 1
        await asyncio.to_thread(server.start)
        took = await eventually(lambda: readyz_is(session, node, 200), 20, "/readyz 200")
        print(f"\n{deployment} Redis up at last: /readyz 200 {took:.1f}s after")
        await _joins_and_delivers(session, _Http(node))
    finally:
        server.stop()
    assert node.logs().count("backend reachable again") == 1
    node_logs_clean([node])


async def readyz_is(session: Any, node: Any, status: int) -> bool:
    return await readyz(session, node.http_url) == status


class _Http:
    """A process node seen through the helpers made for in-process nodes."""

    def __init__(self, process: Any) -> None:
        self.http_url = process.http_url
        self.ws_url = process.ws_url

    async def client(self, session: Any) -> Any:
        from tests.support.wsclient import WsClient

        return await WsClient.connect(session, self.ws_url)


async def test_the_worker_started_without_redis_waits_then_works(
    tmp_path: Path, worker_process: Any, make_node: Any, session: Any
) -> None:
    server = RedisServer(tmp_path / "redis")
    worker = await worker_process.astart({"GATEWAY_REDIS_URL": server.url})
    try:
        await asyncio.sleep(2)
        assert worker.alive and http_status_or_none(f"{worker.http_url}/healthz") == 200
        await asyncio.to_thread(server.start)
        node = await make_node(server.url)
        client = await member(node, session, "cliente-1", "service_6")
        payload = orjson.dumps({"seq": 1})
        server.client().xadd(KEYS.ingest, {"room": "service_6", "type": "t", "payload": payload})
        [event] = await client.events(1, room="service_6", timeout=15)
        assert event["payload"] == {"seq": 1}
        await client.close()
    finally:
        await asyncio.to_thread(worker.stop)
        server.stop()
    assert "Traceback" not in worker.logs()


async def test_a_redis_that_accepts_then_closes_causes_no_rejoin_storm(
    redis_server: Any, make_node: Any, session: Any
) -> None:
    # issue 16 item 4: the backoff reset at every TCP connect, so each accept-then-close turned
    # into a rejoin for every room (27 in 1.5 s); now it resets after a confirmed subscribe,
    # and clients hear one rejoin, once the subscription is live again
    admin = redis_server.client()
    node = await make_node(redis_server.url)
    client = await member(node, session, "cliente-1", "service_7")
    rooms = ["cliente_1", "all_clientes", "service_7"]
    connected = int(admin.info("clients")["connected_clients"])
    admin.config_set("maxclients", connected - 1)  # the pub/sub link's place will be taken
    rejected_before = int(admin.info("stats")["rejected_connections"])
    admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    await asyncio.sleep(1.5)
    tries = int(admin.info("stats")["rejected_connections"]) - rejected_before
    rejoins = [f for f in client.inbox if f.get("event") == "rejoin"]
    assert rejoins == []  # not live yet: nothing to rejoin
    assert 1 <= tries <= 8, tries  # backing off (the old loop: ~30 in 1.5 s)

    admin.config_set("maxclients", 10000)
    started = time.monotonic()
    for room in rooms:
        frame = await client.wait_for(
            lambda f, r=room: f.get("event") == "rejoin" and f["data"]["room"] == r, timeout=10
        )
        assert frame["data"]["reason"] == "subscription_lost"
    await asyncio.sleep(1)
    assert [f for f in client.inbox if f.get("event") == "rejoin"] == []  # once per room
    # the client answers its rejoin (the room's live events are held for it until it does)
    await client.join("service_7", since={"offset": 0, "epoch": "0"})
    offset = await api_publish(session, node.http_url, "service_7", "t", {"seq": 1})
    [event] = await client.events(1, room="service_7", timeout=10)
    assert event["offset"] == offset
    print(f"\nmaxclients: {tries} tries in 1.5 s; rejoined {time.monotonic() - started:.1f}s after")
    await client.close()


async def test_a_refused_subscribe_fails_that_join_at_once_and_nothing_else(
    redis_factory: Any,
) -> None:
    # an error reply to a subscribe (here NOPERM: the ACL allows one room's channel) fails the
    # waiting join at once instead of leaving it to time out, and the other rooms stay live
    from gateway.backend.redis import RedisBackend
    from gateway.backend.subscriptions import SubscribeError

    acl = ["&gateway:control", "&gateway:{dashboard}:requests", "&gateway:node:*"]
    acl.append("&gateway:room:{service_1}:ch")
    server = redis_factory(
        extra_args=["--user", "default", "off", "--user", "app", "on", ">pw", "~*", "+@all", *acl]
    )
    got: list[Any] = []
    backend = RedisBackend(
        f"redis://app:pw@127.0.0.1:{server.port}/0", probe_s=1.0, unsubscribe_delay_s=0
    )
    await backend.start("acl-node", got.append, lambda _: None, lambda _: None)
    try:
        await backend.subscribe("service_1")
        started = time.monotonic()
        with pytest.raises(SubscribeError, match="NOPERM"):
            await backend.subscribe("service_2")
        assert time.monotonic() - started < 2  # not the 5 s timeout
        assert not await backend.ready()  # a wanted room without a live subscription
        backend.unsubscribe("service_2")
        await eventually(backend.ready, 5, "ready once the refused room is not wanted")
        await backend.publish(["service_1"], "t", b'{"seq":1}', "api")
        await eventually(lambda: len(got) == 1, 5, "the allowed room's event")
        assert got[0].room == "service_1"
    finally:
        await backend.close()
