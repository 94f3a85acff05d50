"""The OnlineStore contract (``gateway/backend/online.py``), one suite for every implementation:
``MemoryOnline``, ``RedisOnline`` on a single Redis (one script call per change) and on a Redis
Cluster (the counter, the node's record and the stream in different slots)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.backend.batch import make_batcher
from gateway.backend.keys import Keys
from gateway.backend.online import IP, USER
from gateway.backend.online_memory import MemoryOnline
from gateway.backend.redis import make_client
from gateway.backend.redis_online import RedisOnline, connection_count
from gateway.events import now_ms

GRACE_MS = 300
_seq = itertools.count(1)


class Probe:
    """The store plus a way to read the presence changes it announced (stream or deque)."""

    def __init__(self, store: Any, client: Any = None, keys: Keys | None = None) -> None:
        self.store = store
        self.client = client
        self.keys = keys

    async def changes(self) -> list[tuple[str, bool]]:
        if self.client is None:
            return [(c.user_id, c.online) for c in self.store.changes]
        assert self.keys is not None
        entries = await self.client.xrange(self.keys.presence_stream)
        return [(f[b"userId"].decode(), f[b"online"] == b"1") for _, f in entries]

    async def settle_after_grace(self) -> None:
        await self.store.settle_due(now_ms() + GRACE_MS + 1)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def probe(request: pytest.FixtureRequest) -> AsyncIterator[Probe]:
    if request.param == "memory":
        yield Probe(MemoryOnline(grace_ms=GRACE_MS, stream_maxlen=1000))
        return
    async for made in _redis_probe(request):
        yield made


@pytest.fixture(params=["redis", "cluster"])
async def redis_probe(request: pytest.FixtureRequest) -> AsyncIterator[Probe]:
    async for made in _redis_probe(request):
        yield made


async def _redis_probe(request: pytest.FixtureRequest) -> AsyncIterator[Probe]:
    cluster = request.param == "cluster"
    if cluster:
        request.applymarker(pytest.mark.cluster)
        url = request.getfixturevalue("redis_cluster").url
    else:
        url = request.getfixturevalue("redis_server").url
    client = make_client(url, cluster=cluster)
    if cluster:
        await client.initialize()
    keys = Keys(f"online{next(_seq)}")
    batch = None if cluster else make_batcher(client)
    store = RedisOnline(
        client, keys, batch=batch, cluster=cluster, grace_ms=GRACE_MS, stream_maxlen=1000
    )
    yield Probe(store, client, keys)
    if batch is not None:
        await batch.aclose()
    await client.aclose()


async def test_disconnect_counts_what_every_node_counts(redis_probe: Probe) -> None:
    """``connection_count`` (``disconnect``'s count: Publisher, POST /api/disconnect) is the sum
    over the nodes, follows opens, closes, a restored count and a dead node's sweep."""
    s, client, keys = redis_probe.store, redis_probe.client, redis_probe.keys
    assert keys is not None
    for node in ("a", "b", "a"):
        await s.acquire(node, USER, "7", role="cliente")
    await s.acquire("a", IP, "10.0.0.1")
    assert await connection_count(client, keys, "7") == 3
    assert await connection_count(client, keys, "nobody") == 0
    await s.release("a", USER, "7")
    assert await connection_count(client, keys, "7") == 2
    await s.acquire("c", USER, "7", role="cliente", set_count=4)  # restored after an outage
    assert await connection_count(client, keys, "7") == 6
    await s.sweep_node("c")  # c died: its count of 4 goes
    assert await connection_count(client, keys, "7") == 2
    assert (await s.online(["7"], now_ms()))["7"].connections == 2


async def test_the_cap_counts_every_node_and_a_refusal_counts_nothing(probe: Probe) -> None:
    s = probe.store
    for node in ("a", "b", "c", "a"):
        assert (await s.acquire(node, USER, "7", cap=4, role="cliente")).admitted
    refused = await s.acquire("b", USER, "7", cap=4, role="cliente")
    assert (refused.admitted, refused.count) == (False, 4)
    assert (await s.online(["7"], now_ms()))["7"].connections == 4
    assert await s.release("c", USER, "7") == 3
    again = await s.acquire("c", USER, "7", cap=4, role="cliente")
    assert (again.admitted, again.count) == (True, 4)
    # addresses are counted apart from users, with their own cap
    assert (await s.acquire("a", IP, "10.0.0.1", cap=1)).admitted
    assert not (await s.acquire("b", IP, "10.0.0.1", cap=1)).admitted
    assert (await s.acquire("b", IP, "10.0.0.2", cap=1)).admitted


async def test_release_never_goes_below_zero_nor_takes_another_nodes_count(probe: Probe) -> None:
    s = probe.store
    await s.acquire("a", IP, "10.0.0.1")
    await s.acquire("b", IP, "10.0.0.1")
    assert await s.release("a", IP, "10.0.0.1") == 1
    assert await s.release("a", IP, "10.0.0.1") == 1  # node a holds none any more
    assert await s.release("c", IP, "10.0.0.1") == 1
    assert not (await s.acquire("c", IP, "10.0.0.1", cap=1)).admitted


async def test_online_once_offline_once_after_the_grace_period(probe: Probe) -> None:
    s = probe.store
    first = await s.acquire("a", USER, "7", role="proveedor")
    second = await s.acquire("b", USER, "7", role="proveedor")
    assert (first.came_online, second.came_online) == (True, False)
    await s.release("a", USER, "7")
    await probe.settle_after_grace()
    assert await probe.changes() == [("7", True)]  # still connected on node b
    await s.release("b", USER, "7")
    assert await s.settle_due(now_ms()) == []  # within the grace period: nothing yet
    status = (await s.online(["7"], now_ms()))["7"]
    assert (status.online, status.connections) == (True, 0)
    await probe.settle_after_grace()
    await probe.settle_after_grace()  # settling twice announces nothing twice
    assert await probe.changes() == [("7", True), ("7", False)]
    status = (await s.online(["7"], now_ms()))["7"]
    assert (status.online, status.connections) == (False, 0)
    assert status.last_seen_ms is not None and status.last_seen_ms <= now_ms()


async def test_a_reconnect_within_the_grace_period_is_no_flap(probe: Probe) -> None:
    s = probe.store
    await s.acquire("a", USER, "7", role="cliente")
    await s.release("a", USER, "7")
    reconnected = await s.acquire("b", USER, "7", role="cliente")
    assert reconnected.came_online is False
    await probe.settle_after_grace()
    assert await probe.changes() == [("7", True)]
    # the second close is what counts: offline one grace period after it, once
    await s.release("b", USER, "7")
    await probe.settle_after_grace()
    assert await probe.changes() == [("7", True), ("7", False)]


async def test_sweeping_a_node_releases_only_its_counts_and_its_users_go_offline_at_once(
    probe: Probe,
) -> None:
    s = probe.store
    await s.register("dead")
    await s.register("alive")
    for user in ("1", "2"):
        await s.acquire("dead", USER, user, role="cliente")
    await s.acquire("alive", USER, "2", role="cliente")
    await s.acquire("dead", IP, "10.0.0.9", cap=2)
    assert await s.sweep_node("dead") == 3
    assert await s.settle_due(now_ms() + 1) != []  # no grace: the node died a lease ago
    assert await probe.changes() == [("1", True), ("2", True), ("1", False)]
    statuses = await s.online(["1", "2"], now_ms())
    assert (statuses["1"].online, statuses["2"].connections) == (False, 1)
    assert (await s.acquire("alive", IP, "10.0.0.9", cap=1)).admitted
    assert not await s.registered("dead")


async def test_restoring_a_nodes_count_is_idempotent(probe: Probe) -> None:
    s = probe.store
    await s.register("a")
    await s.acquire("b", USER, "7", role="cliente")
    for _ in range(2):
        restored = await s.acquire("a", USER, "7", role="cliente", set_count=3)
        assert restored.count == 4
    assert not (await s.acquire("b", USER, "7", cap=4, role="cliente")).admitted
    assert await probe.changes() == [("7", True)]


async def test_unknown_users_are_offline_and_never_seen(probe: Probe) -> None:
    status = (await probe.store.online(["404"], now_ms()))["404"]
    assert status.as_dict() == {"online": False, "connections": 0, "lastSeen": None}


async def test_registration_is_lost_with_the_record(probe: Probe) -> None:
    s = probe.store
    await s.register("a")
    assert await s.registered("a")
    await s.sweep_node("a")
    assert not await s.registered("a")


async def test_an_offline_users_record_expires_and_coming_back_keeps_it(probe: Probe) -> None:
    """conn_acquire reads "on"/"off" from its HGETALL and writes only what changes: the TTL an
    offline user's record gets must still be removed when the user connects again, and a second
    connection of an online user must not announce anything."""
    s = probe.store
    await s.acquire("a", USER, "8", role="cliente")
    await s.release("a", USER, "8")
    await probe.settle_after_grace()
    if probe.client is not None:
        assert probe.keys is not None
        assert await probe.client.ttl(probe.keys.user_online("8")) > 0  # offline: it expires
    again = await s.acquire("b", USER, "8", role="cliente")
    other = await s.acquire("c", USER, "8", role="cliente")
    assert (again.came_online, other.came_online) == (True, False)
    if probe.client is not None:
        assert await probe.client.ttl(probe.keys.user_online("8")) == -1  # online: kept
    assert await probe.changes() == [("8", True), ("8", False), ("8", True)]
    status = (await s.online(["8"], now_ms()))["8"]
    assert (status.online, status.connections) == (True, 2)


async def test_online_users_page_in_id_order_and_count_everyone(probe: Probe) -> None:
    s = probe.store
    users = [f"u{i:02d}" for i in range(40)]  # spread over the Redis index shards
    for user in users:
        await s.acquire("a", USER, user, role="cliente")
    listed: list[str] = []
    cursor = None
    while True:
        names, total = await s.online_users(7, cursor)
        assert total == 40
        page = names[:7]
        listed += page
        if len(names) <= 7:
            break
        cursor = page[-1]
    assert listed == users
    await s.release("a", USER, "u03")
    await probe.settle_after_grace()
    names, total = await s.online_users(100, None)
    assert total == 39 and "u03" not in names


async def test_users_of_the_legacy_g_indexes_are_settled_and_indexed(
    redis_probe: Probe,
) -> None:
    """A rolling upgrade: a node of an earlier release announced user 5 online (``{g}:online``,
    no ``ix`` mark) and put user 6, whose last connection it closed, in ``{g}:presence:due``."""
    probe = redis_probe
    s, client, keys = probe.store, probe.client, probe.keys
    assert keys is not None
    past = now_ms() - 1000
    await client.hset(keys.user_online("5"), mapping={"n:old": 1, "role": "cliente", "on": 1})
    await client.zadd(keys.online_users, {"5": 0})
    await client.hset(keys.user_online("6"), mapping={"role": "cliente", "on": 1, "off": past})
    await client.zadd(keys.presence_due, {"6": past})

    assert (await s.online_users(10, None)) == ([], 0)
    assert (await s.acquire("new", USER, "5", role="cliente")).came_online is False
    assert (await s.online_users(10, None)) == (["5"], 1)
    await s.acquire("new", USER, "5", role="cliente")  # marked: no second index write
    assert await client.hget(keys.user_online("5"), "ix") == b"1"

    changes = await s.settle_due(now_ms())
    assert [(c.user_id, c.online) for c in changes] == [("6", False)]
    assert await client.zcard(keys.presence_due) == 0
    assert not (await s.online(["6"], now_ms()))["6"].online

    await s.release("new", USER, "5")
    await s.release("new", USER, "5")
    await s.release("old", USER, "5")  # its last connection, closed after the upgrade
    assert await client.zscore(keys.due_index_of("5"), "5") is not None
    assert await client.zcard(keys.presence_due) == 0  # nothing new in the {g} slot
    await probe.settle_after_grace()
    assert (await s.online_users(10, None)) == ([], 0)
    assert await client.hget(keys.user_online("5"), "ix") == b"0"
