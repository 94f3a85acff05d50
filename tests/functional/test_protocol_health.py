"""``/healthz`` and ``/readyz`` of a node (CONTRACT section 4)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.support import RedisServer


async def status_of(http: Any, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def wait_status(http: Any, url: str, expected: int, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    status, body = await status_of(http, url)
    while status != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        status, body = await status_of(http, url)
    assert status == expected, (url, status, body)
    return body


async def test_healthz_and_readyz_answer_200(node: Any, http: Any, backend_kind: str) -> None:
    status, body = await status_of(http, f"{node.http_url}/healthz")
    assert status == 200
    status, body = await status_of(http, f"{node.http_url}/readyz")
    assert status == 200
    assert body["ready"] is True
    assert body["backend"] == backend_kind


async def test_readyz_follows_redis(redis_server: RedisServer, make_node: Any, http: Any) -> None:
    # redis_server before make_node: the node stops before its Redis at teardown
    node = await make_node(redis_server.url)
    ready = f"{node.http_url}/readyz"
    assert (await status_of(http, ready))[0] == 200
    await asyncio.to_thread(redis_server.stop)
    body = await wait_status(http, ready, 503, timeout_s=5)
    assert body["ready"] is False
    # the process still lives
    assert (await status_of(http, f"{node.http_url}/healthz"))[0] == 200
    await asyncio.to_thread(redis_server.start)
    await wait_status(http, ready, 200, timeout_s=15)
    # and it serves again: a client can authenticate and join
    client = await node.client(http, token="cliente-1")
    assert (await client.expect("auth_success"))["data"]["userId"] == "1"
    assert (await client.join("service_1"))["offset"] == 0
    await client.close()
