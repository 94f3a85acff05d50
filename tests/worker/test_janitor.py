"""The janitor: a dead node's state leaves cluster-wide state within lease + one period, live
nodes' state stays, and two workers never sweep at once (job leases)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from gateway.backend.keys import Keys
from gateway.backend.redis_online import connection_count
from tests.support import GatewayProcess, ProcessFactory, RedisServer
from tests.support.ports import eventually
from tests.support.wsclient import WsClient
from tests.worker.conftest import StartWorker, worker_url
from tests.worker.helpers import scrape, value
from worker import janitor as janitor_module
from worker.janitor import Janitor
from worker.leases import Lease, LeaseLost, run_under_lease
from worker.metrics import WorkerMetrics

DASHBOARD = {"Authorization": "Bearer test-dashboard-token"}
KEYS = Keys("gateway")


async def _clients(http: Any, node: Any) -> list[dict[str, Any]]:
    async with http.get(f"{node.http_url}/dashboard/clients", headers=DASHBOARD) as response:
        assert response.status == 200
        return list((await response.json())["clients"])


async def _rooms(http: Any, node: Any) -> dict[str, int]:
    async with http.get(f"{node.http_url}/dashboard/rooms", headers=DASHBOARD) as response:
        assert response.status == 200
        return {r["room"]: r["members"] for r in (await response.json())["rooms"]}


async def _presence(ws: WsClient, room: str) -> list[dict[str, Any]]:
    reply = await ws.request("presence", {"room": room})
    assert reply["event"] == "presence", reply
    return list(reply["data"]["members"])


async def _connection_count(aredis: Any, user_id: str, expected: int) -> bool:
    return await connection_count(aredis, KEYS, user_id) == expected


async def _doomed_node(
    gateway_process: ProcessFactory[GatewayProcess], redis_url: str, http: Any
) -> tuple[GatewayProcess, WsClient]:
    """A node subprocess with a 2 s lease and one admin connection in room service_77."""
    proc = await gateway_process.astart(
        {
            "GATEWAY_REDIS_URL": redis_url,
            "GATEWAY_NODE_LEASE_S": "2",
            "GATEWAY_NODE_HEARTBEAT_S": "0.5",
            "GATEWAY_DASHBOARD_TOKEN": "test-dashboard-token",
        }
    )
    ws = await WsClient.connect(http, proc.ws_url, "proveedor-77")
    await ws.expect("auth_success")
    await ws.join("service_77")
    return proc, ws


@pytest.mark.slow
async def test_a_killed_nodes_connections_leave_cluster_state_within_lease_plus_a_period(
    redis_server: RedisServer,
    gateway_process: ProcessFactory[GatewayProcess],
    make_node: Any,
    start_worker: StartWorker,
    http: Any,
    aredis: Any,
) -> None:
    observer = await make_node(redis_server.url)
    watcher = await observer.client(http, token="admin-1")
    await watcher.expect("auth_success")
    proc, doomed = await _doomed_node(gateway_process, redis_server.url, http)
    worker = await start_worker(redis_server.url, janitor_interval_s=0.5)

    on_dead_node = [c for c in await _clients(http, observer) if c["node"] == proc.node_id]
    assert [c["userId"] for c in on_dead_node] == ["77"]
    await asyncio.sleep(1.5)  # three janitor periods: a live node's state is left alone
    assert [c["node"] for c in await _clients(http, observer)].count(proc.node_id) == 1
    assert [m["userId"] for m in await _presence(watcher, "service_77")] == ["77"]
    assert await connection_count(aredis, KEYS, "77") == 1

    proc.kill()
    # the dashboard's clients are answered by the live nodes: the dead one's are not listed
    assert [c["node"] for c in await _clients(http, observer)] == [observer.node.node_id]

    async def gone() -> bool:
        rooms = await _rooms(http, observer)
        return "service_77" not in rooms and not await aredis.exists(memberships_key)

    memberships_key = KEYS.node_memberships(proc.node_id)
    took = await eventually(gone, 10, "the dead node's connections removed")
    assert took < 2 + 0.5 + 1.5  # lease + one period (+ scheduling slack)
    assert await _presence(watcher, "service_77") == []
    rooms = await _rooms(http, observer)
    assert "service_77" not in rooms and "proveedor_77" not in rooms
    # the dead node's connection count of the user is released by the live node's accounting
    # sweep (lease + its sweep period): disconnect then counts 0
    await eventually(lambda: _connection_count(aredis, "77", 0), 10, "the count released")
    metrics = await scrape(http, worker_url(worker))
    assert value(metrics, "gateway_worker_janitor_removed_total", kind="nodes") == 1
    assert value(metrics, "gateway_worker_janitor_removed_total", kind="connections") == 1
    assert value(metrics, "gateway_worker_janitor_removed_total", kind="memberships") == 3
    assert value(metrics, "gateway_worker_janitor_sweeps_total") >= 3
    await doomed.close()
    await watcher.close()


@pytest.mark.slow
async def test_post_dashboard_cleanup_removes_a_dead_nodes_state(
    redis_server: RedisServer,
    gateway_process: ProcessFactory[GatewayProcess],
    make_node: Any,
    http: Any,
    aredis: Any,
) -> None:
    observer = await make_node(redis_server.url)
    proc, doomed = await _doomed_node(gateway_process, redis_server.url, http)
    url = f"{observer.http_url}/dashboard/cleanup"
    async with http.post(url, headers=DASHBOARD) as response:
        assert response.status == 200
        assert await response.json() == {
            "removed": {"nodes": 0, "connections": 0, "memberships": 0, "presence": 0}
        }
    proc.kill()
    await asyncio.sleep(2.5)  # the node's lease expires; no worker runs: nothing removes it
    assert await aredis.scard(KEYS.node_memberships(proc.node_id)) == 3
    assert (await _rooms(http, observer))["service_77"] == 1
    basic = "Basic " + base64.b64encode(b"admin:test-dashboard-token").decode()
    async with http.post(url, headers={"Authorization": basic}) as response:
        assert response.status == 401  # POST needs the Bearer header
    async with http.post(url, headers=DASHBOARD) as response:
        assert response.status == 200
        removed = (await response.json())["removed"]
    # three memberships; all_proveedores keeps a count, no presence entry
    assert removed == {"nodes": 1, "connections": 1, "memberships": 3, "presence": 2}
    assert all(c["node"] != proc.node_id for c in await _clients(http, observer))
    assert await aredis.exists(KEYS.node_memberships(proc.node_id)) == 0
    assert "service_77" not in await _rooms(http, observer)
    await doomed.close()


async def test_two_janitors_ticking_at_once_sweep_once(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any
) -> None:
    worker = await start_worker(redis_server.url, janitor_interval_s=60)
    metrics = [WorkerMetrics(), WorkerMetrics()]
    janitors = [Janitor(aredis, worker.settings, m, asyncio.Event()) for m in metrics]
    results = await asyncio.gather(*(j.tick() for j in janitors))
    assert sorted(r is None for r in results) == [False, True]  # one swept, one skipped
    sweeps = [m.registry.get_sample_value("gateway_worker_janitor_sweeps_total") for m in metrics]
    skips = [
        m.registry.get_sample_value("gateway_worker_lease_busy_total", {"job": "janitor"})
        for m in metrics
    ]
    assert sorted(sweeps) == [0, 1] and sorted(skips) == [0, 1]
    # the next ticks of this period are skipped too; the lease itself is free at once (a
    # dashboard cleanup need not wait for the period to end)
    assert await janitors[0].tick() is None and await janitors[1].tick() is None
    assert 0 < await aredis.pttl(KEYS.job_period("janitor")) <= 48_000
    assert await aredis.exists(KEYS.lease("janitor")) == 0


async def test_a_lease_is_only_renewed_or_released_by_its_holder(aredis: Any) -> None:
    key = KEYS.lease("test")
    first = Lease(aredis, key, "w1", ttl_s=0.3)
    second = Lease(aredis, key, "w2", ttl_s=5)
    assert await first.acquire()
    assert not await second.acquire()
    await asyncio.sleep(0.4)  # the first holder's lease expired...
    assert await second.acquire()  # ...and the second took it
    assert not await first.renew()
    assert not await first.release()  # compare-and-delete: the second's lease survives
    assert (await aredis.get(key)).startswith(b"w2:")
    assert await second.release(linger_s=1)
    assert 0 < await aredis.pttl(key) <= 1000
    assert not await first.acquire()


async def test_a_job_whose_lease_is_lost_is_cancelled(aredis: Any) -> None:
    key = KEYS.lease("test")
    lease = Lease(aredis, key, "w1", ttl_s=0.3)
    finished = asyncio.Event()

    async def job() -> None:
        await aredis.delete(key)  # e.g. expired during a long pause, then taken by others
        await asyncio.sleep(2)
        finished.set()

    with pytest.raises(LeaseLost):
        await run_under_lease(lease, job)
    assert not finished.is_set()

    async def quick() -> int:
        await asyncio.sleep(0.25)  # longer than a third of the TTL: renewed at least once
        return 42

    assert await run_under_lease(lease, quick) == (True, 42)
    assert await aredis.exists(key) == 0  # released


async def test_idle_consumers_without_pending_entries_are_forgotten(
    redis_server: RedisServer,
    start_worker: StartWorker,
    aredis: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(janitor_module, "CONSUMER_IDLE_MS", 200)
    await aredis.xgroup_create(KEYS.ingest, KEYS.ingest_group, id="0", mkstream=True)
    await aredis.xadd(KEYS.ingest, {"room": "service_1", "type": "t", "payload": "1"})
    await aredis.xreadgroup(KEYS.ingest_group, "gone-with-work", {KEYS.ingest: ">"})
    await aredis.xgroup_createconsumer(KEYS.ingest, KEYS.ingest_group, "gone-idle")
    await asyncio.sleep(0.3)
    worker = await start_worker(redis_server.url, janitor_interval_s=60, ingest_claim_idle_s=600)
    janitor = Janitor(aredis, worker.settings, WorkerMetrics(), asyncio.Event())
    removed = await janitor.tick()
    assert removed is not None and removed["consumers"] == 1
    names = {c["name"] for c in await aredis.xinfo_consumers(KEYS.ingest, KEYS.ingest_group)}
    assert names == {b"gone-with-work"}  # its pending entry is not dropped
