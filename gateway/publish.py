"""Publishing from Django (or any Python process) straight to Redis. Imports no aiohttp.

    from gateway.publish import Publisher
    publisher = Publisher.from_url("redis://localhost:6379/0")
    offset = publisher.publish("proveedor_7", "reservation_accepted", {"id": 12})

One call writes the room's history and fans out atomically (the same Lua script the nodes use) and
returns the event's offset in the room. History size and TTL are read from the same
``GATEWAY_HISTORY_SIZE`` / ``GATEWAY_HISTORY_TTL_SECONDS`` variables the nodes use, so give the
publisher the same values (or pass them explicitly).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
import redis
from redis import asyncio as aioredis

from gateway.backend import redis_publish
from gateway.backend.base import PublishResult
from gateway.backend.keys import Keys
from gateway.backend.redis_publish import HistoryPolicy
from gateway.events import dumps_payload
from gateway.rooms import is_valid_room

MAX_EVENT_ID = 128
SOURCE = "publisher"


class PublishError(ValueError):
    """The event cannot be published as given (bad room, type or payload)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _policy(history_size: int | None, history_ttl_s: int | None) -> HistoryPolicy:
    return HistoryPolicy(
        size=history_size if history_size is not None else _env_int("GATEWAY_HISTORY_SIZE", 100),
        ttl_s=history_ttl_s
        if history_ttl_s is not None
        else _env_int("GATEWAY_HISTORY_TTL_SECONDS", 600),
        meta_ttl_s=_env_int("GATEWAY_HISTORY_META_TTL_S", 86400),
    )


def _is_cluster(url: str, cluster: bool | None) -> bool:
    return cluster if cluster is not None else "+cluster" in url


def _check(rooms: Sequence[str], type_: str, payload: Any) -> bytes:
    if not rooms:
        raise PublishError("no room given")
    for room in rooms:
        if not isinstance(room, str) or not is_valid_room(room):
            raise PublishError(f"invalid room {room!r}")
    if not isinstance(type_, str) or not 0 < len(type_) <= 64:
        raise PublishError("type must be a non-empty string of at most 64 characters")
    try:
        return dumps_payload(payload)
    except TypeError as exc:
        raise PublishError(f"payload is not JSON-serializable: {exc}") from None


P = TypeVar("P", bound="_Base")


class _Base:
    _clients: tuple[Any, Any]  # (single Redis client class, Redis Cluster client class)

    @classmethod
    def from_url(
        cls: type[P],
        url: str,
        *,
        prefix: str | None = None,
        history_size: int | None = None,
        history_ttl_s: int | None = None,
        cluster: bool | None = None,
    ) -> P:
        """A publisher for ``url`` (``redis://``, ``rediss://``, ``redis+cluster://``).
        History size/TTL and the key prefix default to the ``GATEWAY_*`` variables."""
        is_cluster = _is_cluster(url, cluster)
        client_class = cls._clients[1] if is_cluster else cls._clients[0]
        return cls(
            client_class.from_url(url.replace("+cluster", ""), protocol=2),
            prefix=prefix or os.environ.get("GATEWAY_REDIS_PREFIX", "gateway"),
            history=_policy(history_size, history_ttl_s),
            cluster=is_cluster,
        )

    def __init__(self, client: Any, *, prefix: str, history: HistoryPolicy, cluster: bool) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.history = history
        self.cluster = cluster

    def _calls(
        self,
        rooms: Sequence[str],
        type_: str,
        payload: Any,
        idempotency_key: str | None,
        event_id: str | None = None,
    ) -> tuple[str, list[redis_publish.PublishCall]]:
        payload_json = _check(rooms, type_, payload)
        if event_id is not None and not 0 < len(event_id) <= MAX_EVENT_ID:
            raise ValueError(f"event_id must be 1..{MAX_EVENT_ID} characters")
        return redis_publish.build_calls(
            self.keys,
            self.history,
            list(dict.fromkeys(rooms)),
            type_,
            payload_json,
            SOURCE,
            sharded=self.cluster,
            event_id=event_id,
            idempotency_key=idempotency_key,
        )

    def _control(self, user_id: str) -> tuple[str, bytes]:
        msg = orjson.dumps({"action": "disconnect", "args": {"userId": str(user_id)}})
        return ("SPUBLISH" if self.cluster else "PUBLISH"), msg


class Publisher(_Base):
    """Synchronous publisher for Django views, signals and management commands."""

    _clients = (redis.Redis, redis.RedisCluster)

    def publish(
        self,
        room: str,
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
    ) -> int:
        """Publish one event to one room; returns its offset in the room. ``event_id`` names the
        event (its ``id`` when delivered); publishing it again returns the first result."""
        return self.publish_many([room], type, payload, idempotency_key, event_id=event_id).offsets[
            room
        ]

    def publish_many(
        self,
        rooms: Sequence[str],
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
    ) -> PublishResult:
        """Publish one event (one id) to several rooms in one round trip."""
        event_id, calls = self._calls(rooms, type, payload, idempotency_key, event_id)
        return redis_publish.run_sync(self.client, self.keys, event_id, calls, self.cluster)

    def disconnect(self, user_id: str | int) -> int:
        """Close every connection of the user on every node (close 4403). Returns how many
        connections the user had open."""
        count = int(self.client.scard(self.keys.user_connections(str(user_id))))
        command, msg = self._control(str(user_id))
        self.client.execute_command(command, self.keys.control_channel, msg)
        return count

    def close(self) -> None:
        self.client.close()


class AsyncPublisher(_Base):
    """The same for asyncio code (ASGI views, async tasks)."""

    _clients = (aioredis.Redis, aioredis.RedisCluster)

    async def publish(
        self,
        room: str,
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
    ) -> int:
        result = await self.publish_many([room], type, payload, idempotency_key, event_id=event_id)
        return result.offsets[room]

    async def publish_many(
        self,
        rooms: Sequence[str],
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
    ) -> PublishResult:
        event_id, calls = self._calls(rooms, type, payload, idempotency_key, event_id)
        return await redis_publish.run_async(self.client, self.keys, event_id, calls, self.cluster)

    async def disconnect(self, user_id: str | int) -> int:
        count = int(await self.client.scard(self.keys.user_connections(str(user_id))))
        command, msg = self._control(str(user_id))
        await self.client.execute_command(command, self.keys.control_channel, msg)
        return count

    async def aclose(self) -> None:
        await self.client.aclose()
