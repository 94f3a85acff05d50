"""Handshake bounds (CONTRACT section 2, "Limits and close codes"): a request head not complete
within ``GATEWAY_HANDSHAKE_TIMEOUT_S`` gets its TCP connection closed; unfinished handshakes
count toward ``GATEWAY_MAX_CONNECTIONS`` and are bounded by it. Real nodes, raw sockets."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import aiohttp
import pytest

from tests.security.helpers import metric

UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
)
PATHS = ["/ws", "/socket.io/?EIO=4&transport=websocket", "/healthz"]


def upgrade_request(path: str) -> bytes:
    return UPGRADE.format(path=path, key=base64.b64encode(os.urandom(16)).decode()).encode()


async def tcp(node: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = node.http_url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def until(predicate: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("path", PATHS)
async def test_a_silent_or_trickling_request_head_is_closed_after_the_timeout(
    make_node: Any, http: Any, path: str
) -> None:
    """Issue 18 item 3: a socket that sent nothing, or one byte every 5 s, stayed open."""
    node = await make_node(handshake_timeout_s=0.5)
    silent_reader, silent = await tcp(node)
    trickle_reader, trickle = await tcp(node)
    request = upgrade_request(path)

    async def drip() -> None:
        for byte in request[:-1]:  # never the last byte: the head is never complete
            trickle.write(bytes((byte,)))
            await asyncio.sleep(0.1)

    dripping = asyncio.create_task(drip())
    assert await asyncio.wait_for(silent_reader.read(), 10) == b""
    assert await asyncio.wait_for(trickle_reader.read(), 10) == b""
    dripping.cancel()
    assert node.node.handshakes == 0
    rejected = await metric(
        http, node.http_url, "gateway_rejected_upgrades_total", reason="handshake_timeout"
    )
    assert rejected == 2
    for writer in (silent, trickle):
        writer.close()


async def test_a_complete_head_is_not_cut_by_the_timeout(make_node: Any, http: Any) -> None:
    node = await make_node(handshake_timeout_s=0.3)
    client = await node.client(http, token="cliente-5")
    await client.wait_for(lambda f: f["event"] == "auth_success")
    await asyncio.sleep(0.6)
    assert (await client.request("ping"))["event"] == "pong"
    await client.close()


async def test_unfinished_handshakes_count_toward_max_connections_and_are_bounded(
    make_node: Any, http: Any
) -> None:
    node = await make_node(max_connections=3, handshake_timeout_s=3)
    session = await node.client(http)
    unfinished = [await tcp(node) for _ in range(2)]
    await until(lambda: node.node.handshakes == 2)
    # one session and two unfinished handshakes: the node is full for upgrades
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(node.ws_url)
    assert refused.value.status == 503
    # plain requests still get through (health checks of a node full of sessions)
    async with http.get(f"{node.http_url}/healthz") as response:
        assert response.status == 200
    await session.close()
    # as many unfinished handshakes as the cap: a new connection is refused before its head
    unfinished.append(await tcp(node))
    await until(lambda: node.node.handshakes == 3)
    reader, writer = await tcp(node)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 503 ") and node.node.handshakes == 3
    writer.close()
    rejected = await metric(
        http, node.http_url, "gateway_rejected_upgrades_total", reason="handshakes_full"
    )
    assert rejected == 1
    # the unfinished ones time out; then upgrades are served again
    for unfinished_reader, _ in unfinished:
        assert await asyncio.wait_for(unfinished_reader.read(), 10) == b""
    await until(lambda: node.node.handshakes == 0)
    client = await node.client(http, token="cliente-6")
    await client.wait_for(lambda f: f["event"] == "auth_success")
    await client.close()
    for _, unfinished_writer in unfinished:
        unfinished_writer.close()
