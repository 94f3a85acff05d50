"""A rolling upgrade from the previous release loses nothing.

Kubernetes with ``maxSurge: 1`` runs old and new nodes on one Redis for a while: a node of the
previous release (commit 2c5b7dd, its files taken from this repository's history) and a node of
this tree serve clients side by side, events are published by both nodes' API, by this tree's
``Publisher`` and by the worker's ingest; then the old node drains (SIGTERM) and its clients move
to the new node. Every client (the shipped Python client, which recovers with ``since``) must end
with every event of its rooms exactly once, in order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.publish import Publisher
from tests.support.releases import extract_release

PREVIOUS_RELEASE = "2c5b7dd"
ROOM = "service_77"


@pytest.fixture(scope="module")
def previous_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release's ``gateway`` and ``worker`` packages, from git history."""
    return extract_release(PREVIOUS_RELEASE, tmp_path_factory.mktemp("previous-release"))


class Collector:
    """One shipped client and the payload sequence numbers its handlers got, per room."""

    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.seqs: dict[str, list[int]] = {}
        client.on("*", self._on_event)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.seqs.setdefault(event["room"], []).append(event["payload"]["seq"])

    async def until(self, room: str, count: int, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seqs.get(room, [])) < count:
                await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_old_and_new_nodes_on_one_redis_lose_nothing(
    previous_release: Path,
    redis_server: Any,
    gateway_process: Any,
    worker_process: Any,
    http: Any,
) -> None:
    env = {
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_DRAIN_SECONDS": "0.5",
        "GATEWAY_PUBLISH_API_KEY": "upgrade-key",
    }
    old = await gateway_process.astart({**env, "PYTHONPATH": str(previous_release)})
    new = await gateway_process.astart(env)
    await worker_process.astart({"GATEWAY_REDIS_URL": redis_server.url})
    publisher = Publisher.from_url(redis_server.url)
    seq = 0

    async def publish_round(count: int, ways: tuple[str, ...]) -> None:
        """``count`` events through each way in: old node's API, new node's API, Publisher,
        ingest — interleaved, so both releases write the room in turn."""
        nonlocal seq
        for _ in range(count):
            for way in ways:
                payload = {"seq": seq}
                seq += 1
                if way in ("old", "new"):
                    node = old if way == "old" else new
                    body = {"room": ROOM, "type": "t", "payload": payload}
                    headers = {"Authorization": "Bearer upgrade-key"}
                    async with http.post(
                        f"{node.http_url}/api/publish", json=body, headers=headers
                    ) as resp:
                        assert resp.status == 200, await resp.text()
                elif way == "publisher":
                    await asyncio.to_thread(publisher.publish, ROOM, "t", payload)
                else:
                    await asyncio.to_thread(
                        publisher.client.xadd,
                        "gateway:ingest",
                        {"room": ROOM, "type": "t", "payload": f'{{"seq": {payload["seq"]}}}'},
                    )
                    # the worker publishes ingest entries asynchronously: keep the order by
                    # waiting for it before the next way in
                    await until_offset(publisher, seq)

    # a client of each node, a third that starts on the old node and can fail over to the new
    on_old = Collector(GatewayClient([old.ws_url, new.ws_url], token="cliente-1"))
    on_new = Collector(GatewayClient([new.ws_url], token="cliente-2"))
    try:
        for collector in (on_old, on_new):
            await collector.client.connect()
            await collector.client.join(ROOM)
        await publish_round(5, ("old", "new", "publisher", "ingest"))
        for collector in (on_old, on_new):
            await collector.until(ROOM, seq)

        old.term()  # the old node drains: its client moves to the new node and recovers
        assert await asyncio.to_thread(old.wait, 15) == 0
        await publish_round(5, ("new", "publisher", "ingest"))
        for collector in (on_old, on_new):
            await collector.until(ROOM, seq)
        await asyncio.sleep(0.5)  # a duplicate would arrive now
        for collector in (on_old, on_new):
            assert collector.seqs[ROOM] == list(range(seq)), collector.seqs[ROOM]
    finally:
        for collector in (on_old, on_new):
            await collector.client.close()
        publisher.close()
    assert "Traceback" not in old.logs() and "Traceback" not in new.logs()


async def until_offset(publisher: Publisher, offset: int) -> None:
    async with asyncio.timeout(20):
        while True:
            got = await asyncio.to_thread(
                publisher.client.hget, publisher.keys.room_meta(ROOM), "offset"
            )
            if got is not None and int(got) >= offset:
                return
            await asyncio.sleep(0.02)
