"""Real ``gateway`` processes: a node crash (SIGKILL) and a node drain (SIGTERM) lose nothing for
a client that reconnects elsewhere and joins with ``since``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.publish import Publisher
from tests.cluster.helpers import offsets, seqs
from tests.support.wsclient import WsClient


async def connect(http: Any, proc: Any, token: str) -> WsClient:
    client = await WsClient.connect(http, proc.ws_url)
    await client.authenticate(token)
    return client


@pytest.mark.slow
async def test_crash_and_drain_then_recover_on_another_node(
    redis_server: Any, gateway_process: Any, http: Any
) -> None:
    env = {"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_DRAIN_SECONDS": "0.5"}
    a = await gateway_process.astart(env)
    b = await gateway_process.astart(env)
    room = "service_41"
    publisher = Publisher.from_url(redis_server.url)
    seen: list[dict[str, Any]] = []

    async def publish(first: int, last: int) -> None:
        for seq in range(first, last):
            await asyncio.to_thread(publisher.publish, room, "t", {"seq": seq})

    try:
        client = await connect(http, a, "cliente-1")
        await client.join(room)
        await publish(0, 5)
        seen += await client.events(5, room=room)

        # node A crashes: the socket just drops
        a.kill()
        assert await client.wait_closed(timeout=5) not in (1000, 1012, 4403)
        await publish(5, 12)
        client = await connect(http, b, "cliente-1")
        joined = await client.join(room, since={"offset": 5, "epoch": seen[-1]["epoch"]})
        assert joined["recovered"] is True
        seen += joined["missed"]
        await publish(12, 14)
        seen += await client.events(2, room=room)

        # node B drains on SIGTERM: close 1012, exit 0; A comes back on its port
        a.start(wait=False)
        await a.wait_ready_async()
        b.term()
        assert await client.wait_closed(timeout=5) == 1012
        assert await asyncio.to_thread(b.wait, 10) == 0
        await publish(14, 20)
        client = await connect(http, a, "cliente-1")
        last = seen[-1]
        joined = await client.join(room, since={"offset": last["offset"], "epoch": last["epoch"]})
        assert joined["recovered"] is True
        seen += joined["missed"]
        await publish(20, 21)
        seen += await client.events(1, room=room)
        await asyncio.sleep(0.3)
        assert client.pending_events(room) == []
    finally:
        publisher.close()

    assert offsets(seen) == list(range(1, 22))
    assert seqs(seen) == list(range(21))
    assert len({e["epoch"] for e in seen}) == 1
