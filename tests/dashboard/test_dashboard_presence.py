"""The dashboard shows online users and, in the live log, how many received an event that asked
for receipts ("n of m"), cluster-wide, on a Redis user that may not scan the keyspace."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from tests.dashboard.support import Cluster, acl_denials, api_publish, bearer, dash_get, poll
from tests.support.nodes import API_KEY, DASHBOARD


async def publish_with_receipts(http: aiohttp.ClientSession, base_url: str, room: str) -> str:
    body = {"room": room, "type": "notice", "payload": {}, "receipts": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(f"{base_url}/api/publish", json=body, headers=headers) as response:
        assert response.status == 200
        return str((await response.json())["eventId"])


async def test_online_users_and_receipts_in_the_live_log(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    a, b = (node.http_url for node in cluster.nodes)
    first = await cluster.connect(http, 0, "cliente-1", join=("service_7",))
    await cluster.connect(http, 1, "cliente-1")
    second = await cluster.connect(http, 1, "proveedor-2", join=("service_7",))
    for base in (a, b):
        assert (await dash_get(http, base, "/dashboard/stats"))["onlineUsers"] == 2
    listed = await dash_get(http, b, "/dashboard/online")
    assert listed["total"] == 2
    assert [(u["userId"], u["online"], u["connections"]) for u in listed["users"]] == [
        ("1", True, 2),
        ("2", True, 1),
    ]
    page = await dash_get(http, a, "/dashboard/online", limit=1)
    assert [u["userId"] for u in page["users"]] == ["1"] and page["nextCursor"] == "1"
    rest = await dash_get(http, a, "/dashboard/online", limit=1, cursor=page["nextCursor"])
    assert [u["userId"] for u in rest["users"]] == ["2"] and "nextCursor" not in rest

    async with http.ws_connect(f"{a}/dashboard/feed", headers=bearer(DASHBOARD)) as feed:
        await api_publish(http, a, "service_7", "plain", {})
        event_id = await publish_with_receipts(http, b, "service_7")
        sent = await _feed_frame(
            feed, lambda f: f["type"] == "event" and f["data"]["id"] == event_id
        )
        assert sent["data"]["receipts"] == {"connections": 0, "members": 2}
        _, event = await first.client.events(2, "service_7")  # the plain one, then ours
        await second.client.events(2, "service_7")
        data = {k: event[k] for k in ("room", "offset", "epoch")}
        await first.client.send("received", data)
        update = await _feed_frame(feed, lambda f: f["type"] == "receipts")
        assert update["data"] == {
            "room": "service_7",
            "id": event_id,
            "receipts": {"connections": 1, "members": 2},
        }

    async def logged() -> Any:
        events = (await dash_get(http, b, "/dashboard/events"))["events"]
        return [e.get("receipts") for e in events if e["room"] == "service_7"]

    expected = [{"connections": 1, "members": 2}, None]
    assert await poll(logged, lambda r: r == expected, "receipts in the log") == expected
    assert acl_denials(cluster.redis) == []


async def _feed_frame(feed: aiohttp.ClientWebSocketResponse, pred: Any) -> dict[str, Any]:
    while True:
        message = await feed.receive(timeout=10)
        assert message.type is aiohttp.WSMsgType.TEXT, message
        frame: dict[str, Any] = orjson.loads(message.data)
        if pred(frame):
            return frame
