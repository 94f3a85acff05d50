"""The live log (``/dashboard/feed``) sends every event of the cluster's event log once, also one
that a process flushed after others had flushed newer ones: publishing processes write their
summaries once a second each (gateway/backend/event_log.py), so an event can land below events
the feed has already sent."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from gateway.backend.event_log import AsyncEventLog
from gateway.backend.keys import Keys
from gateway.events import now_ms
from tests.dashboard.support import Cluster, bearer
from tests.support.nodes import DASHBOARD


async def _events(feed: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < count:
        message = await feed.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        frame = orjson.loads(message.data)
        if frame["type"] == "event":
            events.append(frame["data"])
    return events


async def test_a_late_flush_of_older_events_still_reaches_the_feed(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    client = Redis.from_url(cluster.url)
    early, late = AsyncEventLog(client, Keys("gateway")), AsyncEventLog(client, Keys("gateway"))
    ts = now_ms()
    try:
        async with http.ws_connect(
            f"{cluster.nodes[0].http_url}/dashboard/feed", headers=bearer(DASHBOARD)
        ) as feed:
            early.pending.add("service_1", "first", "ev-1", ts, "api")
            late.pending.add("service_2", "second", "ev-2", ts + 5, "api")
            await late.flush()  # the newer event is written first and sent
            assert [e["id"] for e in await _events(feed, 1)] == ["ev-2"]
            await early.flush()  # then the older one, a second later in real life
            [older] = await _events(feed, 1)
            assert older == {
                "room": "service_1",
                "type": "first",
                "id": "ev-1",
                "ts": ts,
                "source": "api",
            }
            await late.flush()  # nothing new: nothing sent again
            late.pending.add("service_3", "third", "ev-3", ts + 9, "api")
            await late.flush()
            assert [e["id"] for e in await _events(feed, 1)] == ["ev-3"]
    finally:
        await client.aclose()
