"""``python -m gateway.testclients`` against a two-node cluster (real ``gateway`` processes, a
real redis-server, the Django test site): a clean run reports nothing lost or duplicated and
exits 0; a node crash is survived without loss when history covers the outage, and reported as
loss, with exit status 1, when it cannot (``GATEWAY_HISTORY_SIZE=0``)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients.conftest import Cluster, eventually
from tests.support import ManagedProcess
from tests.support.nodes import DASHBOARD
from tests.support.processes import child_env

CLIENTES, PROVEEDORES, SERVICES_PER_CLIENT = 4, 2, 2
# cliente and proveedor connections, each in SERVICES_PER_CLIENT service rooms
SERVICE_MEMBERSHIPS = (CLIENTES + PROVEEDORES) * SERVICES_PER_CLIENT


def run_testclients(cluster: Cluster, log_dir: Path, *extra: str) -> ManagedProcess:
    """The scenario as a child process (stopped by pid at the end of the test)."""
    argv = [sys.executable, "-m", "gateway.testclients", "--json", "--seed", "1"]
    for url in cluster.ws_urls:
        argv += ["--url", url]
    argv += [
        f"--clientes={CLIENTES}",
        f"--proveedores={PROVEEDORES}",
        f"--services-per-client={SERVICES_PER_CLIENT}",
        "--admin",
        "--rounds=1",
        "--settle-seconds=0.5",
        "--round-timeout=3",
        "--request-timeout=5",
        *extra,
    ]
    proc = ManagedProcess("testclients", argv, child_env(), log_dir)
    proc.spawn()
    return proc


async def finish(proc: ManagedProcess) -> tuple[int, dict[str, Any]]:
    """Wait for the run to end; (exit status, the JSON report)."""
    code = await asyncio.to_thread(proc.wait, 60)
    try:
        report = json.loads(proc.stdout())
    except ValueError:
        raise AssertionError(f"no JSON report; exit {code}\n{proc.logs()}") from None
    return code, report


@pytest.mark.slow
async def test_clean_run_loses_nothing(start_cluster: Any, tmp_path: Path) -> None:
    cluster = await start_cluster()
    proc = run_testclients(cluster, tmp_path, "--rounds=2")
    try:
        code, report = await finish(proc)
    finally:
        proc.stop()

    assert code == 0, proc.logs()
    assert report["exit_code"] == 0
    # 4 clientes x 2 rounds x (reservation, acceptance, payment, comment)
    assert report["sent"] == report["acked"] == 32
    assert report["sent_by_type"] == {
        "reservation_created": 8,
        "reservation_accepted": 8,
        "payment_created": 8,
        "comment_created": 8,
    }
    assert report["failed"] == 0
    assert report["expected"] > report["acked"]  # several rooms and connections per event
    assert report["delivered"] == report["expected"]
    assert report["lost"] == 0
    assert report["duplicates"] == 0
    assert report["connect_failures"] == []
    assert report["latency_ms"]["p50"] is not None


async def service_memberships(http: aiohttp.ClientSession, node: Any) -> int:
    async with http.get(
        f"{node.http_url}/dashboard/rooms?limit=1000",
        headers={"Authorization": f"Bearer {DASHBOARD}"},
    ) as response:
        body = await response.json()
    return sum(r["members"] for r in body["rooms"] if r["room"].startswith("service_"))


@pytest.mark.slow
@pytest.mark.parametrize("history_size", [100, 0])
async def test_node_crash_mid_run(
    start_cluster: Any,
    django_site: Any,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    history_size: int,
) -> None:
    """Node A hangs (SIGSTOP) just as the round starts and is then killed (SIGKILL) while
    node B keeps delivering events to A's clients' rooms. Django answers business events after
    1.5 s during the hang, so every event of the round is published while A cannot pass it on.

    Clients are spread over the URLs by index, so node A holds clientes 1 and 3, proveedor 1
    and the admin; clientes 2 and 4 (on B) reserve with proveedor 1 in round 1, so their
    reservations must reach proveedor 1 and the admin, both on the hung node. Their clients
    reconnect to B and join with ``since``:

    - with history (100 events per room) they recover what they missed: nothing is lost;
    - with ``GATEWAY_HISTORY_SIZE=0`` there is nothing to recover from (``recovered: false``):
      those deliveries are honestly lost, the report says so and the run exits 1.

    The requests A's clientes had in flight fail with ``connection_lost``; the run allows
    them (``--max-failed``), so the exit status speaks only of loss.
    """
    cluster = await start_cluster(GATEWAY_HISTORY_SIZE=str(history_size))
    a, b = cluster.nodes
    await django_site.acontrol(events_mode="slow", slow_seconds=1.5)
    proc = run_testclients(cluster, tmp_path, "--max-failed=10")
    try:

        async def all_joined() -> bool:
            return await service_memberships(http, b) >= SERVICE_MEMBERSHIPS

        await eventually(all_joined, 15, "every client to join its service rooms")
        await asyncio.sleep(0.2)  # the last joins answered: the round starts now
        os.kill(a.pid, signal.SIGSTOP)
        await asyncio.sleep(2.0)  # Django answers, B publishes, A passes nothing on
        a.kill()
        await django_site.acontrol(events_mode="ok")  # the rest of the round goes quickly
        code, report = await finish(proc)
    finally:
        proc.stop()

    clients = report["clients"]
    assert report["connect_failures"] == []
    assert clients["reconnects"] == 4  # clientes 1 and 3, proveedor 1, the admin
    assert report["failed_by_code"] == {"connection_lost": 2}  # A's clientes' reservations
    assert report["duplicates"] == 0
    if history_size:
        assert code == 0, proc.logs()
        assert report["lost"] == 0
        assert report["delivered"] == report["expected"] > 0
        assert clients["recoveries"] >= 4
        assert clients["missed_delivered"] >= 4  # 2 reservations x (proveedor 1, admin)
        assert clients["recovery_failures"] == 0
        # proveedor 1 got the two reservations through recovery and the chains went on
        assert report["sent_by_type"] == {
            "reservation_created": 4,
            "reservation_accepted": 2,
            "payment_created": 2,
            "comment_created": 2,
        }
    else:
        assert code == 1, proc.logs()
        assert report["exit_code"] == 1
        assert report["lost"] >= 4  # 2 reservations x (proveedor 1, admin)
        assert clients["recovery_failures"] >= 2  # the clients were told, too
        assert clients["missed_delivered"] == 0
        # proveedor 1 never saw the reservations, so nobody accepted them
        assert report["sent_by_type"] == {"reservation_created": 4}
