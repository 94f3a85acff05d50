"""Backpressure (CONTRACT section 2: a client too slow to read is closed with 4503): a member that
never reads, in a room that a fast publisher fills with 200 MB, is cut off; the node's memory does
not grow with the backlog, and the members that do read get every event, in order."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from gateway.publish import AsyncPublisher
from gateway.session import TRANSPORT_HIGH_WATER
from tests.security.helpers import RawWebSocket, metric, rss_kib
from tests.support import GatewayProcess, ProcessFactory, RedisServer
from tests.support.ports import eventually

ROOM = "service_5"
PAYLOAD_BYTES = 64 * 1024
TOTAL_BYTES = 200 * 1024 * 1024
EVENTS = TOTAL_BYTES // PAYLOAD_BYTES  # 3200
SEND_QUEUE_BYTES = 1024 * 1024  # the default
# The publisher runs at most 2 * WINDOW - 1 events (448 KB) ahead of the fast members: under
# their send queue whatever the speed of this test process, so only the slow reader overflows.
WINDOW = 4
RSS_LIMIT_KIB = 50 * 1024

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer grows to here (autotuning's ceiling)."""
    with open("/proc/sys/net/ipv4/tcp_wmem") as f:
        return int(f.read().split()[2])


class FastMember:
    """Reads every frame at once; keeps only offsets, not the 64 KB payloads."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.offsets: list[int] = []
        self.ids: set[str] = set()
        self.progress = asyncio.Condition()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def join(cls, http: aiohttp.ClientSession, url: str, token: str) -> FastMember:
        ws = await http.ws_connect(url, max_msg_size=0)
        await ws.send_json({"event": "authenticate", "data": {"token": token}})
        assert (await ws.receive_json())["event"] == "auth_success"
        await ws.send_json({"event": "join_room", "data": {"room": ROOM}})
        assert (await ws.receive_json())["event"] == "room_joined"
        return cls(ws)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = orjson.loads(msg.data)
            assert frame["event"] == "event", frame["event"]
            data = frame["data"]
            assert len(data["payload"]["blob"]) == PAYLOAD_BYTES - 100
            async with self.progress:
                self.offsets.append(data["offset"])
                self.ids.add(data["id"])
                self.progress.notify_all()

    async def wait_count(self, n: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.progress:
            await self.progress.wait_for(lambda: len(self.offsets) >= n or self.task.done())
        assert len(self.offsets) >= n, (len(self.offsets), n, self.ws.close_code)


async def drain_slow_reader(slow: RawWebSocket) -> tuple[int, int | None]:
    """Read what the node had sent the slow client: (events, close code)."""
    events = 0
    async with asyncio.timeout(30):
        while True:
            opcode, payload = await slow.read_frame()
            if opcode == 0x8:
                return events, int.from_bytes(payload[:2], "big")
            if opcode == 0x1 and orjson.loads(payload)["event"] == "event":
                events += 1


async def test_slow_reader_is_closed_4503_without_memory_growth_or_loss(
    gateway_process: ProcessFactory[GatewayProcess],
    redis_server: RedisServer,
    http: aiohttp.ClientSession,
) -> None:
    gw = await gateway_process.astart({"GATEWAY_REDIS_URL": redis_server.url})
    fast = [await FastMember.join(http, gw.ws_url, f"cliente-{i}") for i in (1, 2)]
    slow = await RawWebSocket.connect("127.0.0.1", gw.port)
    await slow.send_json({"event": "authenticate", "data": {"token": "cliente-3"}})
    assert (await slow.read_json())["event"] == "auth_success"
    await slow.send_json({"event": "join_room", "data": {"room": ROOM}})
    assert (await slow.read_json())["event"] == "room_joined"
    # from now on the slow client reads nothing until the node has closed it

    publisher = AsyncPublisher.from_url(redis_server.url)
    blob = "x" * (PAYLOAD_BYTES - 100)
    baseline = rss_kib(gw.pid)
    peak = baseline
    slow_result: asyncio.Task[tuple[int, int | None]] | None = None
    offsets = []
    started = time.monotonic()
    try:
        for n in range(EVENTS):
            offsets.append(await publisher.publish(ROOM, "bulk", {"n": n, "blob": blob}))
            if n % WINDOW == WINDOW - 1:
                for member in fast:
                    await member.wait_count(n + 1 - WINDOW)
                peak = max(peak, rss_kib(gw.pid))
            if slow_result is None and n % 64 == 63:
                closes = await metric(http, gw.http_url, "gateway_slow_consumer_closes_total")
                if closes >= 1:  # closed: now read what it was sent, the close frame last
                    slow_result = asyncio.create_task(drain_slow_reader(slow))
    finally:
        await publisher.aclose()
    for member in fast:
        await member.wait_count(EVENTS)
    elapsed = time.monotonic() - started
    peak = max(peak, rss_kib(gw.pid))

    assert slow_result is not None, "the slow client was never closed"
    slow_events, close_code = await slow_result
    slow.close()
    assert close_code == 4503
    # cut off early: what it was sent is at most what the node held for it (the send queue and
    # the transport's buffer) plus what the kernel's send buffer can hold, not the 200 MB
    held = SEND_QUEUE_BYTES + TRANSPORT_HIGH_WATER + kernel_send_buffer_max()
    assert slow_events * PAYLOAD_BYTES <= held + PAYLOAD_BYTES, (slow_events, held)
    assert await metric(http, gw.http_url, "gateway_slow_consumer_closes_total") == 1
    await eventually(lambda: "slow consumer" in gw.logs(), 5, "the close logged")
    # the backlog was dropped, not buffered
    assert peak - baseline < RSS_LIMIT_KIB, (baseline, peak, elapsed)
    # the fast members got every event, once, in order
    assert offsets == list(range(offsets[0], offsets[0] + EVENTS))
    for member in fast:
        assert member.offsets == offsets
        assert len(member.ids) == EVENTS
        assert member.ws.close_code is None
        await member.ws.close()
