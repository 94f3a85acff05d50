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

from gateway.auth.revoke import revocation_ttl_from_env, revoke_async, revoke_sync
from gateway.backend import redis_publish, redis_receipts
from gateway.backend.base import PublishResult
from gateway.backend.clients import async_client, kind_of, sync_client
from gateway.backend.event_log import AsyncEventLog, SyncEventLog
from gateway.backend.keys import Keys
from gateway.backend.online import MAX_USERS_PER_QUERY, is_valid_user_id
from gateway.backend.receipts import answer as receipts_answer
from gateway.backend.redis_online import (
    connection_count,
    connections_of,
    online_status,
    status_of,
)
from gateway.backend.redis_publish import HistoryPolicy
from gateway.backend.sentinel import aclose_sentinels, close_sentinels
from gateway.backend.urls import parse_redis_url
from gateway.events import dumps_payload, now_ms
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


def _group_commit(client: Any) -> Any:
    """The nodes' group commit when hiredis is installed (the ``server`` extra), else ``None``:
    one redis-py pipeline per call, as before."""
    try:
        from gateway.backend.batch import make_batcher
    except ImportError:
        return None
    return make_batcher(client)


def _user_ids(user_ids: Sequence[str | int]) -> list[str]:
    if isinstance(user_ids, str | int):
        raise PublishError("give a list of user ids")
    ids = list(dict.fromkeys(str(u) for u in user_ids))
    if len(ids) > MAX_USERS_PER_QUERY:
        raise PublishError(f"at most {MAX_USERS_PER_QUERY} users per call")
    for user_id in ids:
        if not is_valid_user_id(user_id):
            raise PublishError(f"invalid user id {user_id!r}")
    return ids


P = TypeVar("P", bound="_Base")


class _Base:
    _make_client: Any  # clients.sync_client or clients.async_client
    _make_event_log: Any  # event_log.SyncEventLog or event_log.AsyncEventLog

    @classmethod
    def from_url(
        cls: type[P],
        url: str,
        *,
        prefix: str | None = None,
        history_size: int | None = None,
        history_ttl_s: int | None = None,
        cluster: bool | None = None,
        revocation_ttl_s: int | None = None,
    ) -> P:
        """A publisher for ``url``: any ``GATEWAY_REDIS_URL`` form (``redis://``, ``rediss://``,
        ``unix://``, ``redis+cluster://``, ``redis+sentinel://``; with Sentinel the publisher
        follows the master across failovers). History size/TTL, the key prefix and how long
        ``disconnect`` refuses older JWTs default to the ``GATEWAY_*`` variables."""
        is_cluster = kind_of(parse_redis_url(url), cluster) == "cluster"
        return cls(
            cls._make_client(url, cluster=is_cluster, protocol=2),
            prefix=prefix or os.environ.get("GATEWAY_REDIS_PREFIX", "gateway"),
            history=_policy(history_size, history_ttl_s),
            cluster=is_cluster,
            revocation_ttl_s=revocation_ttl_s,
        )

    def __init__(
        self,
        client: Any,
        *,
        prefix: str,
        history: HistoryPolicy,
        cluster: bool,
        revocation_ttl_s: int | None = None,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.history = history
        self.cluster = cluster
        self.revocation_ttl_s = revocation_ttl_s or revocation_ttl_from_env()
        self.event_log = self._make_event_log(client, self.keys)  # the dashboard's summaries

    def _calls(
        self,
        rooms: Sequence[str],
        type_: str,
        payload: Any,
        idempotency_key: str | None,
        event_id: str | None = None,
        receipts: bool = False,
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
            receipts=receipts,
        )

    def _control(self, user_id: str) -> tuple[str, bytes]:
        msg = orjson.dumps({"action": "disconnect", "args": {"userId": str(user_id)}})
        return ("SPUBLISH" if self.cluster else "PUBLISH"), msg


class Publisher(_Base):
    """Synchronous publisher for Django views, signals and management commands."""

    _make_client = staticmethod(sync_client)
    _make_event_log = SyncEventLog

    def publish(
        self,
        room: str,
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
        receipts: bool = False,
    ) -> int:
        """Publish one event to one room; returns its offset in the room. ``event_id`` names the
        event (its ``id`` when delivered); publishing it again returns the first result.
        ``receipts``: receivers acknowledge it (``receipts(event_id)``, contract §8)."""
        result = self.publish_many(
            [room], type, payload, idempotency_key, event_id=event_id, receipts=receipts
        )
        return result.offsets[room]

    def publish_many(
        self,
        rooms: Sequence[str],
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
        receipts: bool = False,
    ) -> PublishResult:
        """Publish one event (one id) to several rooms in one round trip (two with receipts)."""
        event_id, calls = self._calls(rooms, type, payload, idempotency_key, event_id, receipts)
        result = redis_publish.run_sync(self.client, self.event_log, event_id, calls, self.cluster)
        if receipts:
            redis_receipts.write_index_sync(
                self.client, self.keys, result.event_id, result.offsets, self.history.ttl_s
            )
        return result

    def receipts(self, event_id: str) -> dict[str, Any] | None:
        """Who received an event published with ``receipts=True``: ``{"eventId", "rooms":
        {room: {"offset", "users": {userId: firstReceivedTs}, "connections", "members"}}}``
        (broadcast rooms: ``users`` is a count); None when unknown or past the history TTL."""
        rooms = redis_receipts.read_sync(self.client, self.keys, event_id)
        return None if rooms is None else receipts_answer(event_id, rooms)

    def disconnect(self, user_id: str | int) -> int:
        """Close every connection of the user on every node (close 4403) and forget the
        user's verified tokens: a token Django revoked cannot come back from the cache, and
        the user's JWTs issued before now are refused (for ``GATEWAY_AUTH_REVOCATION_TTL_S``).
        Returns how many connections the user had open (what the nodes count in
        ``user_online``, cluster-wide)."""
        count = connections_of(self.client.hgetall(self.keys.user_online(str(user_id))))
        revoke_sync(self.client, self.keys, str(user_id), self.revocation_ttl_s)
        command, msg = self._control(str(user_id))
        self.client.execute_command(command, self.keys.control_channel, msg)
        return count

    def online(self, user_ids: Sequence[str | int]) -> dict[str, dict[str, Any]]:
        """Cluster-wide online status: ``{userId: {"online", "connections", "lastSeen"}}``
        (``online`` stays true for ``GATEWAY_PRESENCE_GRACE_S`` after the last close)."""
        ids = _user_ids(user_ids)
        pipe = self.client.pipeline(transaction=False)
        for user_id in ids:
            pipe.hgetall(self.keys.user_online(user_id))
        now = now_ms()
        return {u: status_of(h, now).as_dict() for u, h in zip(ids, pipe.execute(), strict=True)}

    def close(self) -> None:
        """Writes the dashboard's summary of what was published (also done at exit)."""
        self.event_log.close()
        self.client.close()
        close_sentinels(self.client)


class AsyncPublisher(_Base):
    """The same for asyncio code (ASGI views, async tasks)."""

    _make_client = staticmethod(async_client)
    _make_event_log = AsyncEventLog
    _batcher: Any = None  # group commit of concurrent publishes, made on first use

    async def publish(
        self,
        room: str,
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
        receipts: bool = False,
    ) -> int:
        result = await self.publish_many(
            [room], type, payload, idempotency_key, event_id=event_id, receipts=receipts
        )
        return result.offsets[room]

    async def publish_many(
        self,
        rooms: Sequence[str],
        type: str,
        payload: Any,
        idempotency_key: str | None = None,
        *,
        event_id: str | None = None,
        receipts: bool = False,
    ) -> PublishResult:
        """Concurrent calls (tasks publishing at once) share one round trip to Redis."""
        event_id, calls = self._calls(rooms, type, payload, idempotency_key, event_id, receipts)
        if self._batcher is None and not self.cluster:
            self._batcher = _group_commit(self.client)
        result = await redis_publish.run_async(
            self.client, self.event_log, event_id, calls, self.cluster, self._batcher
        )
        if receipts:
            await redis_receipts.write_index_async(
                self.client, self.keys, result.event_id, result.offsets, self.history.ttl_s
            )
        return result

    async def receipts(self, event_id: str) -> dict[str, Any] | None:
        rooms = await redis_receipts.read_async(self.client, self.keys, event_id)
        return None if rooms is None else receipts_answer(event_id, rooms)

    async def disconnect(self, user_id: str | int) -> int:
        count = await connection_count(self.client, self.keys, str(user_id))
        await revoke_async(self.client, self.keys, str(user_id), self.revocation_ttl_s)
        command, msg = self._control(str(user_id))
        await self.client.execute_command(command, self.keys.control_channel, msg)
        return count

    async def online(self, user_ids: Sequence[str | int]) -> dict[str, dict[str, Any]]:
        statuses = await online_status(self.client, self.keys, _user_ids(user_ids), now_ms())
        return {user_id: status.as_dict() for user_id, status in statuses.items()}

    async def aclose(self) -> None:
        """Writes the dashboard's summary of what was published, then closes: call it when
        done (a publisher dropped without it loses its last second of dashboard summaries)."""
        await self.event_log.aclose()
        if self._batcher is not None:
            await self._batcher.aclose()
        await self.client.aclose()
        await aclose_sentinels(self.client)
