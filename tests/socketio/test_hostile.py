"""Hostile long-polling input against a real node on real sockets (contract §7, "Polling
limits"; docs/security.md): thousands of abandoned handshakes, unknown session ids, oversize
POSTs, overlapping long-polls and garbage packets. The node stays healthy, every session it made
for them goes, and its memory stays bounded: after a first round, further rounds of the same
abuse leave no Python object behind (``sys.getallocatedblocks``) and do not grow the process.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.socketio.routes import SERVER
from tests.js.sio_driver import SioDriver
from tests.security.helpers import metric, rss_kib

pytestmark = [pytest.mark.node, pytest.mark.slow]

POLLING = "/socket.io/?EIO=4&transport=polling"
HANDSHAKES = 1000  # per round; the per-IP cap is above it
CONCURRENCY = 40


async def _many(count: int, job: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """``job(i)`` for every i, ``CONCURRENCY`` at a time."""
    results: list[Any] = [None] * count
    queue = iter(range(count))

    async def worker() -> None:
        for i in queue:
            results[i] = await job(i)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return results


async def _handshake(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(base + POLLING) as response:
        assert response.status == 200, await response.text()
        return str(orjson.loads((await response.text())[1:])["sid"])


async def _connections(http: aiohttp.ClientSession, base: str) -> float:
    total = 0.0
    for role in ("anonymous", "cliente", "proveedor", "admin"):
        total += await metric(http, base, "gateway_connections", role=role, transport="sio")
    return total


async def _until_no_connections(http: aiohttp.ClientSession, base: str) -> None:
    async with asyncio.timeout(20):
        while await _connections(http, base):
            await asyncio.sleep(0.2)


async def test_hostile_polling_input_leaves_the_node_healthy_with_bounded_memory(
    make_node: Any,
) -> None:
    node = await make_node(
        auth_timeout_s=2,  # an unauthenticated session lives 2 s
        socketio_ping_interval_s=1,  # a silent one 2 s
        socketio_ping_timeout_s=1,
        max_connections_per_ip=HANDSHAKES + 100,
        max_message_bytes=4096,
        rate_limit=1000,
        rate_burst=1000,
    )
    base = node.http_url
    registry = node.server.app[SERVER].registry
    rng = random.Random(7)
    blocks: list[int] = []
    rss: list[int] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(3):
            await _abuse(http, base, rng)
            await _until_no_connections(http, base)
            async with asyncio.timeout(15):  # closed sessions' last long-polls are forgotten
                while registry.sessions:
                    await asyncio.sleep(0.2)
            assert node.node.sessions == {} and node.node.by_ip == {}
            gc.collect()
            blocks.append(sys.getallocatedblocks())
            rss.append(rss_kib(os.getpid()))

        # rounds 2 and 3 (each thousands of requests) kept nothing: a leak of one object per
        # request or per session would show thousands of blocks
        assert blocks[2] - blocks[1] < 2000, blocks
        assert rss[2] - rss[1] < 16 * 1024, rss
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
        # and a real client is served as before
        async with await SioDriver.start(
            base, token="cliente-7", options={"transports": None}
        ) as client:
            await client.expect("connect")
            assert (await client.request("join_room", {"room": "service_1"}))["offset"] == 0


async def _abuse(http: aiohttp.ClientSession, base: str, rng: random.Random) -> None:
    # 1. thousands of handshakes nobody follows up: each is a session until the
    # authentication deadline closes it
    before = await metric(http, base, "gateway_connects_total", transport="sio")
    sids = await _many(HANDSHAKES, lambda i: _handshake(http, base))
    assert len(set(sids)) == HANDSHAKES
    made = await metric(http, base, "gateway_connects_total", transport="sio") - before
    assert made == HANDSHAKES

    # 2. unknown session ids, on GETs and POSTs: 400, Engine.IO's body, nothing made
    async def unknown(i: int) -> None:
        sid = os.urandom(8).hex() + ("" if i % 3 else ".bm9kZQ")
        method = "GET" if i % 2 else "POST"
        async with http.request(method, f"{base}{POLLING}&sid={sid}", data="40") as response:
            assert response.status == 400
            assert await response.json() == {"code": 1, "message": "Session ID unknown"}

    await _many(1000, unknown)

    # 3. oversize POSTs (a 1 MiB body, and one that does not say its length): 413 (each on a
    # session of its own: an unauthenticated one lives only a second)
    async def oversize(i: int) -> None:
        sid = await _handshake(http, base)
        data: Any = b"4" * (1 << 20)
        if i % 2:
            data = _chunks(b"4" * 8192, 128)  # chunked: the reading stops past the limit
        async with http.post(f"{base}{POLLING}&sid={sid}", data=data) as response:
            assert response.status == 413

    await _many(50, oversize)

    # 4. overlapping long-polls: one waits, the others get 400 and the session is closed
    async def overlap(i: int) -> None:
        sid = await _handshake(http, base)
        url = f"{base}{POLLING}&sid={sid}"
        first = asyncio.create_task(_status(http, "GET", url))
        await asyncio.sleep(0.05)
        second = await _status(http, "GET", url)
        # whichever came second: 400; the one that was waiting: the CLOSE (200)
        assert sorted([await first, second]) == [200, 400]

    await _many(50, overlap)

    # 5. garbage packets, before and after CONNECT: refused, never a crash
    async def garbage(i: int) -> None:
        sid = await _handshake(http, base)
        url = f"{base}{POLLING}&sid={sid}"
        if i % 2:
            assert await _status(http, "POST", url, '40{"token":"cliente-7"}') == 200
        junk = [
            "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 40)))
            for _ in range(rng.randrange(1, 30))
        ]
        junk += ["4", "4x", '42["x",', "45-[]", "bAA==", "\x00", "9", '40{"token":1}', "451-[]"]
        rng.shuffle(junk)
        status = await _status(http, "POST", url, "\x1e".join(junk))
        assert status in (200, 400)
        assert await _status(http, "POST", url, b"\xff\xfe\xfd") in (400,)

    await _many(200, garbage)


async def _status(
    http: aiohttp.ClientSession, method: str, url: str, data: str | bytes | None = None
) -> int:
    async with http.request(method, url, data=data) as response:
        await response.read()
        return response.status


async def _chunks(piece: bytes, count: int) -> Any:
    for _ in range(count):
        yield piece
