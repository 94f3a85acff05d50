"""Faults while traffic flows (CONTRACT section 2, "History, recovery and the delivery
guarantee"): a node killed with SIGKILL, Redis stopped and restarted with its AOF, Django stopped
and restarted. Real ``python -m gateway`` processes, real redis-server and Django processes, and
``GatewayClient`` members that reconnect and recover by themselves.

Afterwards every acknowledged or published event reached every member. This is checked, not
assumed: a fresh connection joins the room with ``since`` the position before the traffic, and
the history it recovers must hold every acked and published event, and every member must have
received exactly that sequence (live or through its own recovery), once and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from gateway.client import GatewayClient, GatewayError
from gateway.publish import AsyncPublisher
from tests.support import DjangoSite, GatewayProcess, ProcessFactory, RedisServer
from tests.support.wsclient import WsClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOM = "service_42"
DASHBOARD = "faults-dashboard-token"
HISTORY_SIZE = 5000  # the whole test's traffic stays recoverable
NODE_ENV = {
    "GATEWAY_HISTORY_SIZE": str(HISTORY_SIZE),
    "GATEWAY_NODE_LEASE_S": "2",
    "GATEWAY_NODE_HEARTBEAT_S": "0.5",
    "GATEWAY_DASHBOARD_TOKEN": DASHBOARD,
    "GATEWAY_DJANGO_BREAKER_RESET_S": "0.5",
    "GATEWAY_DRAIN_SECONDS": "0.5",
}


class Member:
    """A ``GatewayClient`` in ``ROOM`` that records the room's events in arrival order."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        client.on("*", self._on_event)

    def _on_event(self, data: dict[str, Any]) -> None:
        if data["room"] == ROOM:
            self.events.append(data)

    @classmethod
    async def join(cls, urls: list[str], token: str) -> tuple[Member, dict[str, Any]]:
        client = GatewayClient(
            urls, token, backoff_base_s=0.05, backoff_max_s=0.5, request_timeout_s=3.0
        )
        member = cls(client)
        await client.connect()
        joined = await client.join(ROOM)
        return member, joined


class Traffic:
    """Publishes with ``AsyncPublisher`` and sends business events from members, recording
    what was confirmed: the offsets the publisher got and the event ids acknowledged."""

    def __init__(self) -> None:
        self.published: list[str] = []  # event ids, as delivered in ``id``
        self.acked: list[str] = []
        self.failures: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = itertools.count()

    def publish_every(self, redis_url: str, interval_s: float) -> None:
        self._tasks.append(asyncio.create_task(self._publish(redis_url, interval_s)))

    def send_every(self, member: Member, interval_s: float) -> None:
        self._tasks.append(asyncio.create_task(self._send(member, interval_s)))

    async def _publish(self, redis_url: str, interval_s: float) -> None:
        publisher = AsyncPublisher.from_url(redis_url, history_size=HISTORY_SIZE)
        try:
            while not self._stop.is_set():
                n = next(self._seq)
                try:
                    result = await publisher.publish_many([ROOM], "tick", {"n": n})
                except (OSError, ConnectionError, TimeoutError) as exc:
                    self._fail(type(exc).__name__)
                except Exception as exc:  # redis errors while Redis restarts
                    self._fail(type(exc).__name__)
                else:
                    self.published.append(result.event_id)
                await self._pause(interval_s)
        finally:
            await publisher.aclose()

    async def _send(self, member: Member, interval_s: float) -> None:
        while not self._stop.is_set():
            text = f"comment {next(self._seq)}"
            try:
                ack = await member.client.create_comment(servicioId="42", text=text)
            except GatewayError as exc:  # connection_lost, django_unavailable, timeout...
                self._fail(exc.code)
            else:
                self.acked.append(ack["eventId"])
            await self._pause(interval_s)

    def _fail(self, why: str) -> None:
        self.failures[why] = self.failures.get(why, 0) + 1

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks.clear()


async def recover_history(ws_url: str, http: aiohttp.ClientSession, since: dict[str, Any]) -> Any:
    """The room's events after ``since``, from a fresh connection's recovery."""
    client = await WsClient.connect(http, ws_url)
    await client.authenticate("admin-1")
    joined = await client.join(ROOM, since=since)
    await client.close()
    assert joined["recovered"] is True, joined
    return joined["missed"]


async def assert_everyone_has_everything(
    members: list[Member],
    traffic: Traffic,
    ws_url: str,
    http: aiohttp.ClientSession,
    since: dict[str, Any],
) -> None:
    history = await recover_history(ws_url, http, since)
    ids = [e["id"] for e in history]
    assert len(ids) == len(set(ids))
    offsets = [e["offset"] for e in history]
    assert offsets == list(range(since["offset"] + 1, since["offset"] + 1 + len(history)))
    confirmed = set(traffic.published) | set(traffic.acked)
    assert confirmed <= set(ids), ("confirmed but lost", confirmed - set(ids))
    assert len(traffic.published) > 20 and len(traffic.acked) > 5, traffic.failures
    for member in members:
        async with asyncio.timeout(20):  # members may still be catching up
            while len(member.events) < len(ids):
                await asyncio.sleep(0.05)
        got = [e["id"] for e in member.events]
        assert got == ids, (member.client.user_id, len(got), len(ids))


async def start_position(joined: dict[str, Any]) -> dict[str, Any]:
    return {"offset": joined["offset"], "epoch": joined["epoch"]}


async def run_traffic_around(
    traffic: Traffic, fault: Callable[[], Awaitable[None]], before_s: float, after_s: float
) -> None:
    await asyncio.sleep(before_s)
    await fault()
    await asyncio.sleep(after_s)
    await traffic.stop()


async def assert_serves_new_clients(ws_url: str, http: aiohttp.ClientSession, token: str) -> None:
    listener = await WsClient.connect(http, ws_url)
    await listener.authenticate(token)
    await listener.join("service_43")
    sender = await WsClient.connect(http, ws_url)
    await sender.authenticate("cliente-99")
    ack = await sender.request("comment_created", {"servicioId": "43", "text": "after"})
    assert ack["event"] == "ack", ack
    (event,) = await listener.events(1, room="service_43", timeout=10)
    assert event["id"] == ack["data"]["eventId"]
    await listener.close()
    await sender.close()


class Harness:
    """Members and traffic of one test; whatever happens, all are stopped at teardown."""

    def __init__(self) -> None:
        self.members: list[Member] = []
        self.traffic = Traffic()

    async def join(
        self, tokens_and_urls: list[tuple[str, list[str]]]
    ) -> tuple[list[Member], dict[str, Any]]:
        members = []
        since: dict[str, Any] | None = None
        for token, urls in tokens_and_urls:
            member, joined = await Member.join(urls, token)
            self.members.append(member)
            members.append(member)
            since = since or await start_position(joined)
        assert since is not None
        return members, since

    async def close(self) -> None:
        await self.traffic.stop()
        for member in self.members:
            await member.client.close()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    h = Harness()
    yield h
    await h.close()


# --- (a) a node killed with SIGKILL ---------------------------------------------------------------
async def test_kill_9_of_a_node_clients_fail_over_and_its_state_is_cleaned(
    gateway_process: ProcessFactory[GatewayProcess],
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
    harness: Harness,
) -> None:
    env = {**NODE_ENV, "GATEWAY_REDIS_URL": redis_server.url}
    a = await gateway_process.astart(env)
    b = await gateway_process.astart(env)
    members, since = await harness.join(
        [
            ("cliente-1", [a.ws_url, b.ws_url]),
            ("cliente-2", [a.ws_url, b.ws_url]),
            ("proveedor-3", [a.ws_url, b.ws_url]),
            ("cliente-4", [b.ws_url, a.ws_url]),
            ("proveedor-5", [b.ws_url, a.ws_url]),
        ]
    )
    assert [m.client.node for m in members] == [a.node_id] * 3 + [b.node_id] * 2
    traffic = harness.traffic
    traffic.publish_every(redis_server.url, 0.02)
    for member in (members[0], members[3]):  # one sender on each node
        traffic.send_every(member, 0.05)

    async def kill_a() -> None:
        a.kill()

    await run_traffic_around(traffic, kill_a, before_s=1.5, after_s=3.0)
    assert all(m.client.node == b.node_id for m in members)  # everyone failed over
    assert all(m.client.stats.reconnects == 1 for m in members[:3])
    await assert_everyone_has_everything(members, traffic, b.ws_url, http, since)

    # the dead node cannot answer for its connections any more, but its memberships and room
    # counts linger in Redis until cleanup after its lease
    bearer = {"Authorization": f"Bearer {DASHBOARD}"}

    async def all_clientes() -> int:
        async with http.get(f"{b.http_url}/dashboard/rooms?limit=1000", headers=bearer) as resp:
            rooms = {r["room"]: r["members"] for r in (await resp.json())["rooms"]}
        return rooms["all_clientes"]

    async with http.get(f"{b.http_url}/dashboard/clients", headers=bearer) as resp:
        before = await resp.json()
    assert {c["node"] for c in before["clients"]} == {b.node_id}
    assert await all_clientes() == 3 + 2  # clientes 1, 2, 4 on b; 1 and 2 still counted on a
    async with http.post(f"{b.http_url}/dashboard/cleanup", headers=bearer) as resp:
        assert resp.status == 200
        removed = (await resp.json())["removed"]
    assert removed["nodes"] == 1 and removed["connections"] == 3, removed
    async with http.get(f"{b.http_url}/dashboard/clients", headers=bearer) as resp:
        clients = (await resp.json())["clients"]
    assert {c["node"] for c in clients} == {b.node_id}
    assert sorted(c["userId"] for c in clients) == ["1", "2", "3", "4", "5"]
    assert await all_clientes() == 3
    presence = await members[0].client.presence(ROOM)
    assert {(p["userId"], p["connections"]) for p in presence["members"]} == {
        (str(i), 1) for i in range(1, 6)
    }
    async with http.get(f"{b.http_url}/dashboard/stats", headers=bearer) as resp:
        assert [n["node"] for n in (await resp.json())["nodes"]] == [b.node_id]

    await assert_serves_new_clients(b.ws_url, http, "cliente-50")
    a.spawn()  # the killed node comes back and serves too
    await a.wait_ready_async()
    await assert_serves_new_clients(a.ws_url, http, "cliente-51")


# --- (b) Redis stopped and restarted with its data ------------------------------------------------
async def test_redis_restart_while_publishing_loses_nothing(
    gateway_process: ProcessFactory[GatewayProcess],
    redis_factory: Any,
    http: aiohttp.ClientSession,
    harness: Harness,
) -> None:
    redis = redis_factory(appendonly=True)
    env = {**NODE_ENV, "GATEWAY_REDIS_URL": redis.url}
    a = await gateway_process.astart(env)
    b = await gateway_process.astart(env)
    members, since = await harness.join(
        [
            ("cliente-1", [a.ws_url, b.ws_url]),
            ("cliente-2", [b.ws_url, a.ws_url]),
            ("proveedor-3", [a.ws_url, b.ws_url]),
            ("proveedor-4", [b.ws_url, a.ws_url]),
        ]
    )
    traffic = harness.traffic
    traffic.publish_every(redis.url, 0.02)
    traffic.send_every(members[0], 0.05)
    traffic.send_every(members[1], 0.05)

    async def restart_redis() -> None:
        await asyncio.to_thread(redis.stop)  # SIGTERM: the AOF is complete
        await asyncio.sleep(1.0)  # publishes and business events fail meanwhile
        redis.spawn()
        await redis.wait_ready_async()

    await run_traffic_around(traffic, restart_redis, before_s=1.5, after_s=3.0)
    assert traffic.failures, "the outage was not noticed"
    await assert_everyone_has_everything(members, traffic, a.ws_url, http, since)
    # history kept: one epoch throughout (the room's first publish gave it; nothing changed it)
    assert len({e["epoch"] for e in members[0].events}) == 1
    for gw in (a, b):
        await assert_serves_new_clients(gw.ws_url, http, "cliente-60")


# --- (c) Django stopped and restarted -----------------------------------------------------------
async def test_django_restart_while_sending_business_events(
    gateway_process: ProcessFactory[GatewayProcess],
    redis_server: RedisServer,
    django_factory: Any,
    http: aiohttp.ClientSession,
    harness: Harness,
) -> None:
    site: DjangoSite = django_factory()
    env = {**NODE_ENV, "GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_DJANGO_TIMEOUT": "1"}
    a = await gateway_process.astart(env, django_base_url=site.base_url)
    b = await gateway_process.astart(env, django_base_url=site.base_url)
    members, since = await harness.join(
        [
            ("cliente-1", [a.ws_url, b.ws_url]),
            ("cliente-2", [b.ws_url, a.ws_url]),
            ("cliente-3", [a.ws_url, b.ws_url]),
            ("proveedor-4", [b.ws_url, a.ws_url]),
        ]
    )
    traffic = harness.traffic
    traffic.publish_every(redis_server.url, 0.05)
    for member in members[:3]:
        traffic.send_every(member, 0.03)

    async def restart_django() -> None:
        await asyncio.to_thread(site.stop)
        await asyncio.sleep(1.0)
        site.spawn()
        await site.wait_ready_async()

    await run_traffic_around(traffic, restart_django, before_s=1.5, after_s=2.5)
    assert traffic.failures.get("django_unavailable", 0) > 0, traffic.failures
    assert set(traffic.failures) <= {"django_unavailable"}, traffic.failures  # nothing else
    await assert_everyone_has_everything(members, traffic, a.ws_url, http, since)
    # no member was disconnected: Django is not on the delivery path
    assert all(m.client.stats.reconnects == 0 for m in members)
    for gw in (a, b):
        await assert_serves_new_clients(gw.ws_url, http, "cliente-70")
