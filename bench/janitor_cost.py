"""What the janitor and ``presence`` cost Redis with ~3,000 connections registered.

    python -m bench.janitor_cost [--connections 3000]

Starts a private redis-server, registers the connections through ``RedisState`` (the code the
nodes run: each connection in ``cliente_<id>``, ``all_clientes`` and one of 300 ``service_*``
rooms, spread over two nodes), then counts with ``INFO commandstats`` (commands run inside
scripts count too) and ``INFO cpu``: a quiet sweep (every node alive), the worker's janitor
tick, ``presence`` of ``all_clientes`` and of a service room, and the sweep of a dead node that
held half the connections. Run it from a checkout to compare two versions. Numbers in
docs/operations.md ("What the janitor costs").
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis

from gateway.backend.base import ConnectionInfo, NodeStats
from gateway.backend.keys import Keys
from gateway.backend.redis_state import RedisState
from gateway.config import load_settings
from tests.support.redis_server import RedisServer
from worker.janitor import Janitor
from worker.metrics import WorkerMetrics

KEYS = Keys("gateway")
NODES = ("node-a", "node-b")
SWEEPS = 10


def _stats(node: str, connections: int) -> NodeStats:
    return NodeStats(node, connections, {"cliente": connections}, 300, 0, 1.0, 0, 0, 0, 0.0, {})


async def _commands(client: Any) -> dict[str, int]:
    info = await client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}
    for own in ("info", "config|resetstat", "del"):
        calls.pop(own, None)
    return calls


async def _cpu_ms(client: Any) -> float:
    info = await client.info("cpu")
    return (float(info["used_cpu_user"]) + float(info["used_cpu_sys"])) * 1000


async def _measure(client: Any, label: str, times: int, step: Callable[[], Awaitable[Any]]) -> None:
    await client.config_resetstat()
    cpu = await _cpu_ms(client)
    started = time.perf_counter()
    for _ in range(times):
        await step()
    wall_ms = (time.perf_counter() - started) * 1000 / times
    cpu_ms = (await _cpu_ms(client) - cpu) / times
    calls = await _commands(client)
    top = ", ".join(f"{n} {c // times}" for n, c in sorted(calls.items(), key=lambda i: -i[1])[:5])
    per = sum(calls.values()) / times
    print(f"{label}: {per:.0f} commands, Redis CPU {cpu_ms:.1f} ms, {wall_ms:.1f} ms ({top})")


async def _populate(state: RedisState, connections: int) -> None:
    for node in NODES:
        await state.heartbeat(_stats(node, connections // 2), int(time.time() * 1000))
    for i in range(connections):
        conn = ConnectionInfo(f"c{i}", str(i), "cliente", NODES[i % 2], 0)
        rooms = [f"cliente_{i}", "all_clientes", f"service_{i % 300}"]
        await state.add_connection(conn, rooms)


async def run(port: int, connections: int) -> None:
    client = aioredis.Redis(port=port, protocol=2)
    state = RedisState(client, KEYS, node_lease_s=600)
    await _populate(state, connections)
    await _measure(client, "quiet sweep (all nodes alive)", SWEEPS, state.cleanup)
    settings = load_settings(redis_url=f"redis://127.0.0.1:{port}/0", janitor_interval_s=5)
    janitor = Janitor(client, settings, WorkerMetrics(), asyncio.Event())

    period = getattr(KEYS, "job_period", None)  # absent before the per-node sweeps

    async def tick() -> None:  # a new period each time: every tick sweeps
        await client.delete(KEYS.lease("janitor"), *([period("janitor")] if period else []))
        await janitor.tick()

    await _measure(client, "worker janitor tick (one per 5 s)", SWEEPS, tick)
    count = getattr(state, "room_count", None)  # the answer to presence of a broadcast room
    broadcast = count or state.presence
    await _measure(client, "presence all_clientes", 20, lambda: broadcast("all_clientes"))
    await _measure(client, "presence service_7", 20, lambda: state.presence("service_7"))
    await client.delete(KEYS.node_lease(NODES[1]))
    dead = f"sweep of a dead node ({connections // 2} connections)"
    await _measure(client, dead, 1, state.cleanup)
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            asyncio.run(run(server.port, args.connections))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
