"""What delivery receipts cost: node CPU per delivery and per acknowledgement, Redis CPU per
publish and per acknowledgement (docs/benchmarks.md, "Receipts").

    python bench/receipts.py [--clients 200] [--events 300] [--rate 200] [--repeat 3]

It starts a private redis-server, the Django test site and one ``python -m gateway`` node, connects
``--clients`` WebSocket clients (this process, aiohttp) to one room, then runs three phases of
``--events`` publishes each at ``--rate`` per second through ``Publisher``:

1. ``plain``: no receipts (the baseline every other publish pays);
2. ``marked``: ``receipts=True``, nobody acknowledges (what the marker and the node's per-connection
   record add to each delivery, and what the publish script and the index add per publish);
3. ``acked``: ``receipts=True`` and every client sends ``received`` (what each acknowledgement
   costs the node and Redis).

CPU is read from ``/proc`` for the node and redis-server only (the clients' CPU is this
process's). Numbers are medians over ``--repeat`` runs. Nothing but loopback traffic is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.measure import cpu_us
from gateway.publish import Publisher
from tests.support import DjangoSite, GatewayProcess, RedisServer

ROOM = "service_1"


async def connect_all(ws_url: str, n: int, http: aiohttp.ClientSession) -> list[Any]:
    clients = []
    for i in range(n):
        ws = await http.ws_connect(f"{ws_url}?token=cliente-{i + 1}")
        assert orjson.loads((await ws.receive()).data)["event"] == "auth_success"
        await ws.send_str(
            orjson.dumps({"event": "join_room", "data": {"room": ROOM}, "id": 1}).decode()
        )
        while orjson.loads((await ws.receive()).data)["event"] != "room_joined":
            pass
        clients.append(ws)
    return clients


async def read(ws: Any, expect: int, ack: bool) -> None:
    got = 0
    while got < expect:
        frame = orjson.loads((await ws.receive()).data)
        if frame["event"] != "event":
            continue
        got += 1
        data = frame["data"]
        if ack and data.get("receipts"):
            receipt = {"room": data["room"], "offset": data["offset"], "epoch": data["epoch"]}
            await ws.send_str(orjson.dumps({"event": "received", "data": receipt}).decode())


async def phase(
    clients: list[Any], publisher: Publisher, pids: dict[str, int], args: Any, mode: str
) -> dict[str, float]:
    readers = [asyncio.create_task(read(ws, args.events, mode == "acked")) for ws in clients]
    before = {name: cpu_us(pid) for name, pid in pids.items()}
    interval = 1 / args.rate
    start = time.monotonic()
    for i in range(args.events):
        await asyncio.to_thread(
            publisher.publish_many, [ROOM], "bench", {"i": i}, receipts=mode != "plain"
        )
        delay = start + (i + 1) * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    await asyncio.sleep(0.5)  # the last acknowledgements reach Redis
    used = {name: cpu_us(pid) - before[name] for name, pid in pids.items()}
    deliveries = args.events * len(clients)
    return {
        "node_us_per_delivery": used["node"] / deliveries,
        "redis_us_per_publish": used["redis"] / args.events,
        "redis_us_total": used["redis"],
        "node_us_total": used["node"],
    }


async def run_once(args: Any, tmp: Path) -> dict[str, dict[str, float]]:
    redis = RedisServer(tmp / "redis")
    django = DjangoSite(tmp / "django")
    redis.start()
    django.start()
    node = GatewayProcess(
        tmp / "node",
        django.base_url,
        env={
            "GATEWAY_REDIS_URL": redis.url,
            "GATEWAY_MAX_CONNECTIONS_PER_IP": "1000000",
            "GATEWAY_RATE_LIMIT": "10000",
            "GATEWAY_LOG_LEVEL": "WARNING",
        },
    )
    node.start()
    publisher = Publisher.from_url(redis.url)
    results: dict[str, dict[str, float]] = {}
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            clients = await connect_all(node.ws_url, args.clients, http)
            pids = {"node": node.pid, "redis": redis.pid}
            for mode in ("plain", "marked", "acked"):
                results[mode] = await phase(clients, publisher, pids, args, mode)
            for ws in clients:
                await ws.close()
    finally:
        publisher.close()
        node.stop()
        django.stop()
        redis.stop()
    return results


def median_of(runs: list[dict[str, dict[str, float]]], mode: str, key: str) -> float:
    return statistics.median(run[mode][key] for run in runs)


def report(runs: list[dict[str, dict[str, float]]], args: Any) -> str:
    plain = median_of(runs, "plain", "node_us_per_delivery")
    marked = median_of(runs, "marked", "node_us_per_delivery")
    acked = median_of(runs, "acked", "node_us_per_delivery")
    deliveries = args.events * args.clients
    redis_ack = [
        (run["acked"]["redis_us_total"] - run["marked"]["redis_us_total"]) / deliveries
        for run in runs
    ]
    lines = [
        f"{args.clients} clients in one room, {args.events} publishes at {args.rate}/s per phase, "
        f"median of {len(runs)} runs (CPU µs from /proc):",
        "",
        "| phase | node µs per delivery | Redis µs per publish |",
        "|---|---|---|",
    ]
    for mode in ("plain", "marked", "acked"):
        lines.append(
            f"| {mode} | {median_of(runs, mode, 'node_us_per_delivery'):.2f} "
            f"| {median_of(runs, mode, 'redis_us_per_publish'):.1f} |"
        )
    lines += [
        "",
        f"- receipts on a delivery (marked - plain): {marked - plain:+.2f} µs of node CPU",
        f"- one acknowledgement (acked - marked): {acked - marked:+.2f} µs of node CPU, "
        f"{statistics.median(redis_ack):+.2f} µs of Redis CPU",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-receipts-") as tmp:
            runs.append(asyncio.run(run_once(args, Path(tmp))))
    print(report(runs, args))


if __name__ == "__main__":
    main()
