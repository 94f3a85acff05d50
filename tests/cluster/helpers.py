"""Small tools shared by the cluster tests: the HTTP publish API, Redis introspection, polling,
and exactly-once checks over what a WebSocket client received."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import aiohttp
import redis

from gateway.backend.keys import Keys
from tests.support.nodes import API_KEY
from tests.support.ports import eventually  # noqa: F401 - re-exported for the tests here
from tests.support.wsclient import WsClient

KEYS = Keys("gateway")


async def api_post(
    http: aiohttp.ClientSession,
    base_url: str,
    path: str,
    body: Any,
    key: str | None = API_KEY,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """POST JSON (or ``raw`` bytes) to a node's server API; (status, decoded JSON or text)."""
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
    async with http.post(f"{base_url}{path}", headers=headers, **kwargs) as response:
        text = await response.text()
        try:
            return response.status, await response.json(content_type=None)
        except ValueError:
            return response.status, text


async def api_publish(
    http: aiohttp.ClientSession, base_url: str, room: str, type_: str, payload: Any, **extra: Any
) -> int:
    """``/api/publish`` to one room; returns the event's offset (asserts a 200)."""
    status, body = await api_post(
        http, base_url, "/api/publish", {"room": room, "type": type_, "payload": payload, **extra}
    )
    assert status == 200, body
    return int(body["offsets"][room])


def numsub(client: redis.Redis, channel: str) -> int:
    """How many connections are subscribed to ``channel`` (PUBSUB NUMSUB)."""
    [(_, count)] = client.pubsub_numsub(channel)
    return int(count)


def pubsub_connections(client: redis.Redis) -> int:
    """How many pub/sub connections the server has (CLIENT LIST TYPE pubsub)."""
    raw = client.execute_command("CLIENT", "LIST", "TYPE", "pubsub")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return len([line for line in text.splitlines() if line.strip()])


async def member(node: Any, http: aiohttp.ClientSession, token: str, *rooms: str) -> WsClient:
    """A client authenticated on ``node`` and joined to ``rooms``."""
    client = await node.client(http)
    await client.authenticate(token)
    for room in rooms:
        await client.join(room)
    return client


async def assert_quiet(clients: Sequence[WsClient], room: str, seconds: float = 0.3) -> None:
    """Nothing more arrives for ``room``: no duplicate and no stray event."""
    await asyncio.sleep(seconds)
    for client in clients:
        assert client.pending_events(room) == [], "unexpected extra events"


def offsets(events: Sequence[dict[str, Any]]) -> list[int]:
    return [int(e["offset"]) for e in events]


def seqs(events: Sequence[dict[str, Any]]) -> list[Any]:
    return [e["payload"]["seq"] for e in events]
