"""The gateway's limits on Socket.IO connections (docs/socketio.md, "Limits"): the packet size
(``GATEWAY_MAX_MESSAGE_BYTES``) and the frame rate (``GATEWAY_RATE_LIMIT`` / ``_BURST``), which
count Socket.IO events exactly as ``/ws`` frames and never Engine.IO pings and pongs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.socketio.conftest import EngineSocket, connected, engine_url

pytestmark = pytest.mark.node

LIMIT = 4096


def ping_packet(size: int) -> str:
    """A ``42["ping",{"pad":"…"}]`` Engine.IO packet of exactly ``size`` bytes."""
    head, tail = '42["ping",{"pad":"', '"}]'
    return head + "x" * (size - len(head) - len(tail)) + tail


async def test_a_packet_over_max_message_bytes_closes_the_connection(
    make_node: Any, http: Any, sio: Any
) -> None:
    node = await make_node(max_message_bytes=LIMIT)
    raw = await EngineSocket.connect(http, engine_url(node))
    assert raw.open["maxPayload"] == LIMIT  # the handshake announces the limit
    await raw.send('40{"token":"cliente-7"}')
    await raw.receive_text()  # 40{"sid"}
    assert '"auth_success"' in await raw.receive_text()

    await raw.send(ping_packet(LIMIT))  # the whole Engine.IO packet counts, up to the limit
    assert await raw.receive_text() == '42["pong",{}]'
    await raw.send(ping_packet(LIMIT + 1))
    end = await raw.receive_close()
    assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, 1009)
    async with asyncio.timeout(5):
        while node.node.sessions:
            await asyncio.sleep(0.02)

    # socket.io-client sees a transport close, reconnects and authenticates again by itself
    client = await sio(node, token="cliente-7")
    first = await connected(client, token="cliente-7")
    await client.emit("comment_created", {"servicioId": "1", "text": "x" * LIMIT})
    assert (await client.expect("disconnect"))["reason"] == "transport close"
    second = await connected(client, token="cliente-7")
    assert second["connectionId"] != first["connectionId"]
    assert list(node.node.sessions) == [second["connectionId"]]


async def test_rate_limit_counts_events_not_heartbeats(make_node: Any, sio: Any, http: Any) -> None:
    node = await make_node(
        rate_limit=1,
        rate_burst=2,
        rate_limit_strikes=3,
        socketio_ping_interval_s=0.1,
        socketio_ping_timeout_s=0.5,
    )
    client = await sio(node, token="cliente-7", reconnection=False)
    await connected(client, token="cliente-7")  # authentication took one token
    # ten ping/pong rounds at 1 frame/s with a burst of 2: pongs would have been struck out
    await asyncio.sleep(1.1)
    assert await client.request("ping") == {}
    assert await client.request("ping") == {}
    assert node.node.sessions[next(iter(node.node.sessions))].strikes == 0

    seqs = [await client.emit("ping", ack=True) for _ in range(5)]
    errors = [await client.expect("event", name="error") for _ in range(2)]
    assert [e["data"]["code"] for e in errors] == ["rate_limited", "rate_limited"]
    # the third strike closes the connection (4429): a DISCONNECT packet first, so the client
    # reports "io server disconnect" and does not come back by itself (contract §7)
    assert (await client.expect("disconnect"))["reason"] == "io server disconnect"
    assert not [line for line in client.lines if line["kind"] == "ack" and line["seq"] in seqs]
    async with asyncio.timeout(5):
        while node.node.sessions:
            await asyncio.sleep(0.02)

    # packets the gateway refuses count too: a flood of malformed ones is no way around it
    raw = await EngineSocket.connect(http, engine_url(node))
    await raw.send('40{"token":"cliente-8"}')  # authentication takes the first token
    await raw.receive_text()  # 40{"sid"}
    assert '"auth_success"' in await raw.receive_text()
    codes = []
    for _ in range(4):
        await raw.send("4zzz")
    for _ in range(3):
        codes.append(orjson.loads((await raw.receive_text())[2:])[1]["code"])
    assert codes == ["bad_request", "rate_limited", "rate_limited"]
    end = await raw.receive_close()
    assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, 4429)
