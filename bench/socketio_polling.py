"""What a Socket.IO delivery costs by transport: WebSocket, long-polling, and long-polling or a
WebSocket that reach another node than the session's owner (forwarded through Redis).

    python -m bench.socketio_polling [--clients 100] [--events 300] [--rate 100]
        [--scenarios websocket,polling,...] [--gateway-env KEY=VALUE ...]

Starts a private redis-server, the Django test site and two gateway nodes (A and B, real
``python -m gateway`` processes on Redis), then for each scenario connects ``--clients`` raw
Engine.IO clients (Python, aiohttp: one event loop, so the client side is the same for every
scenario), joins them to one room, publishes ``--events`` events at ``--rate`` per second with
Django's publisher, and reports the nodes' CPU per delivery (user + system time of A and B over
the publishing, divided by events x clients) and the delivery latency (publisher's clock to the
client's, same machine): median and 99th percentile. Scenarios:

- ``websocket``: ``transports: ["websocket"]`` on A;
- ``polling``: long-polling, every request to A (the owner);
- ``polling, forwarded``: the handshake on A, every later GET and POST to B, which forwards it;
- ``upgraded, relayed``: long-polling handshake on A, the WebSocket upgrade on B, which relays.

Numbers in docs/benchmarks.md ("Socket.IO: long-polling and forwarding").
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from gateway.publish import AsyncPublisher
from tests.support import DjangoSite
from tests.support.processes import GatewayProcess
from tests.support.redis_server import RedisServer

ROOM = "service_1"
QUERY = "/socket.io/?EIO=4"


class Client:
    """One raw Engine.IO client; ``latencies`` in ms, one per event received."""

    async def open(self, first: str, later: str) -> None:
        raise NotImplementedError

    def __init__(self, http: aiohttp.ClientSession, token: str) -> None:
        self.http = http
        self.token = token
        self.latencies: list[float] = []
        self.task: asyncio.Task[None] | None = None

    def on_packet(self, packet: str) -> None:
        if packet.startswith('42["event"'):
            sent = orjson.loads(packet[2:])[1]["payload"]["t"]
            self.latencies.append((time.time_ns() - sent) / 1e6)


class PollingClient(Client):
    async def open(self, first: str, later: str) -> None:
        async with self.http.get(f"{first}{QUERY}&transport=polling") as r:
            sid = orjson.loads((await r.text())[1:])["sid"]
        self.url = f"{later}{QUERY}&transport=polling&sid={sid}"
        body = f'40{{"token":"{self.token}"}}\x1e421["join_room",{{"room":"{ROOM}"}}]'
        await self._post(body)
        while not any(p.startswith("431[") for p in await self._get()):
            pass
        self.task = asyncio.create_task(self._loop())

    async def _get(self) -> list[str]:
        async with self.http.get(self.url) as r:
            packets = (await r.text()).split("\x1e")
        for packet in packets:
            if packet == "2":
                await self._post("3")
            else:
                self.on_packet(packet)
        return packets

    async def _post(self, body: str) -> None:
        async with self.http.post(self.url, data=body) as r:
            assert r.status == 200, await r.text()

    async def _loop(self) -> None:
        while True:
            await self._get()


class WebSocketClient(Client):
    async def open(self, first: str, later: str) -> None:
        if first == later:  # a session born on the WebSocket
            url = f"{first.replace('http', 'ws')}{QUERY}&transport=websocket"
            self.ws = await self.http.ws_connect(url)
            await self.ws.receive_str()  # OPEN
        else:  # long-polling on ``first``, upgraded on ``later`` (relayed to ``first``)
            async with self.http.get(f"{first}{QUERY}&transport=polling") as r:
                sid = orjson.loads((await r.text())[1:])["sid"]
            url = f"{later.replace('http', 'ws')}{QUERY}&transport=websocket&sid={sid}"
            self.ws = await self.http.ws_connect(url)
            await self.ws.send_str("2probe")
            assert await self.ws.receive_str() == "3probe"
            await self.ws.send_str("5")
        await self.ws.send_str(f'40{{"token":"{self.token}"}}')
        await self.ws.send_str(f'421["join_room",{{"room":"{ROOM}"}}]')
        while not (await self._next()).startswith("431["):
            pass
        self.task = asyncio.create_task(self._loop())

    async def _next(self) -> str:
        packet = await self.ws.receive_str()
        if packet == "2":
            await self.ws.send_str("3")
        else:
            self.on_packet(packet)
        return packet

    async def _loop(self) -> None:
        while True:
            await self._next()


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def scenario(
    name: str,
    make: Callable[[aiohttp.ClientSession, str], Client],
    urls: tuple[str, str],
    nodes: list[GatewayProcess],
    redis_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        clients = [make(http, f"cliente-{10_000 + i}") for i in range(args.clients)]
        for start in range(0, len(clients), 20):
            await asyncio.gather(*(c.open(*urls) for c in clients[start : start + 20]))
        await asyncio.sleep(1)
        publisher = AsyncPublisher.from_url(redis_url)
        pids = [n.pid for n in nodes]
        cpu = _cpu_s(pids)
        started = time.perf_counter()
        for _ in range(args.events):
            await publisher.publish(ROOM, "tick", {"t": time.time_ns()})
            await asyncio.sleep(1 / args.rate)
        expected = args.events * len(clients)
        deadline = time.monotonic() + 30
        while sum(len(c.latencies) for c in clients) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu = _cpu_s(pids) - cpu
        await publisher.aclose()
        for client in clients:
            if client.task is not None:
                client.task.cancel()
    latencies = sorted(x for c in clients for x in c.latencies)
    received = len(latencies)
    return {
        "name": name,
        "deliveries": received,
        "expected": expected,
        "cpu_us": cpu * 1e6 / max(received, 1),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan"),
        "seconds": elapsed,
    }


async def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-sio-"))
    redis = RedisServer(work / "redis")
    redis.start()
    site = DjangoSite(work / "django")
    site.start()
    env = {
        "GATEWAY_REDIS_URL": redis.url,
        "GATEWAY_MAX_CONNECTIONS_PER_IP": "100000",
        "GATEWAY_LOG_LEVEL": "WARNING",
        **dict(item.split("=", 1) for item in args.gateway_env),
    }
    nodes = [GatewayProcess(work / "gw", site.base_url, env=env, node_id=n) for n in ("a", "b")]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            await node.wait_ready_async()
        a, b = (n.http_url for n in nodes)
        scenarios: list[tuple[str, Callable[..., Client], tuple[str, str]]] = [
            ("websocket", WebSocketClient, (a, a)),
            ("polling", PollingClient, (a, a)),
            ("polling, forwarded", PollingClient, (a, b)),
            ("upgraded, relayed", WebSocketClient, (a, b)),
        ]
        print(f"{args.clients} clients, {args.events} events at {args.rate}/s, one room\n")
        print("| transport | deliveries | node CPU per delivery | latency p50 | p99 |")
        print("|---|---|---|---|---|")
        for name, make, urls in scenarios:
            if args.scenarios and name not in args.scenarios:
                continue
            r = await scenario(name, make, urls, nodes, redis.url, args)
            print(
                f"| {name} | {r['deliveries']:,}/{r['expected']:,} | {r['cpu_us']:.1f} µs | "
                f"{r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms |"
            )
    finally:
        for node in nodes:
            node.stop()
        site.stop()
        redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--scenarios", type=lambda v: v.split(","), default=[])
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
