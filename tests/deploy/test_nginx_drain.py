"""Rolling restart behind a real nginx: a node drains on SIGTERM mid-stream; its clients
reconnect through the balancer to the other nodes, recover from history, and every client ends
with every event exactly once, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.publish import AsyncPublisher

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy"))
from launch import Topology

pytestmark = [pytest.mark.slow, pytest.mark.nginx]

ROOM = "service_42"
EVENTS = 300
CLIENTS = 12


async def _until(predicate: Any, timeout_s: float, what: str) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.05)


async def test_sigterm_mid_stream_loses_nothing(django_site: Any) -> None:
    with Topology(
        nodes=3, worker=False, django_url=django_site.base_url, drain_seconds=1.5
    ) as topo:
        received: dict[int, list[int]] = {i: [] for i in range(CLIENTS)}
        clients = []
        for i in range(CLIENTS):
            client = GatewayClient(topo.ws_url, token=f"cliente-{100 + i}", backoff_max_s=1.0)
            client.on(
                "*", lambda e, i=i: received[i].append(e["offset"]) if e["room"] == ROOM else None
            )
            await client.connect()
            await client.join(ROOM)
            clients.append(client)
        first_nodes = [c.node for c in clients]
        assert len(set(first_nodes)) >= 2, f"nginx should spread clients, got {first_nodes}"

        publisher = AsyncPublisher.from_url(topo.redis_url)
        victim_pid = topo.node_pids[0]
        for n in range(EVENTS):
            await publisher.publish(ROOM, "tick", {"n": n})
            if n == EVENTS // 3:
                os.kill(victim_pid, signal.SIGTERM)  # rolling deploy: one node drains
            await asyncio.sleep(0.005)
        await publisher.aclose()

        await _until(
            lambda: all(len(r) >= EVENTS for r in received.values()), 30, "every event everywhere"
        )
        await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now
        for i, offsets in received.items():
            assert offsets == list(range(1, EVENTS + 1)), f"client {i}: {offsets[:5]}…"
        moved = [i for i, c in enumerate(clients) if c.node != first_nodes[i]]
        assert moved, "the drained node's clients should have reconnected elsewhere"
        for client in clients:
            await client.close()
        proc = next(p for p in topo.procs if p.pid == victim_pid)
        assert proc.popen.wait(timeout=10) == 0, proc.log_tail()
