"""The Redis backend: stateless nodes share rooms, presence, history and fan-out through Redis.

Fan-out uses one pub/sub connection per Redis server (one in total on a single Redis or Sentinel's
master; one per master with Redis Cluster, where sharded pub/sub keeps each room's traffic on its
slot's master), managed by ``subscriptions.Subscriptions``, which follows failovers and slot
moves. A node subscribes to a room's channel only while it has local members; unsubscribes are
deferred briefly so join/leave churn does not thrash Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisClusterException, RedisError

from gateway.backend import redis_publish, scripts
from gateway.backend.base import (
    ConnectionInfo,
    ControlHandler,
    ControlMessage,
    NodeStats,
    Page,
    Position,
    PresenceMember,
    Publication,
    PublicationHandler,
    PublishResult,
    Recovery,
    ResyncHandler,
)
from gateway.backend.clients import async_client, kind_of
from gateway.backend.dashboard_query import NodeQuery
from gateway.backend.endpoint import Endpoint
from gateway.backend.event_log import AsyncEventLog
from gateway.backend.keys import Keys
from gateway.backend.redis_publish import HistoryPolicy
from gateway.backend.redis_state import RedisState
from gateway.backend.sentinel import SentinelMaster, aclose_sentinels
from gateway.backend.subscriptions import Subscriptions
from gateway.backend.topology import ClusterSlots, SingleServer, Topology
from gateway.backend.urls import parse_redis_url
from gateway.events import UNPUBLISHED_EPOCH, new_epoch, now_ms

log = logging.getLogger("gateway.redis")

POSITIONS_BATCH = 1000


# What a Redis that cannot be reached raises through redis-py (a cluster that cannot be reached
# raises RedisClusterException, which is not a RedisError).
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)


def make_client(url: str, *, cluster: bool, timeout_s: float = 5.0) -> Any:
    """The asyncio redis-py client of nodes and the worker, for any ``GATEWAY_REDIS_URL``."""
    options: dict[str, Any] = {
        "protocol": 2,  # reply shapes this module parses; pub/sub has its own connection
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "health_check_interval": 15,
    }
    if kind_of(parse_redis_url(url), cluster) != "cluster":
        options["retry"] = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=1)
    return async_client(url, cluster=cluster, **options)


def make_topology(url: str, kind: str, client: Any) -> Topology:
    template = Endpoint.of(parse_redis_url(url))
    if kind == "cluster":
        return ClusterSlots(client, template)
    if kind == "sentinel":
        return SentinelMaster(client, template)
    return SingleServer(template)


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gateway",
        cluster: bool = False,
        history: HistoryPolicy | None = None,
        node_lease_s: float = 15.0,
        probe_s: float = 5.0,
        unsubscribe_delay_s: float = 2.0,
        client: Any = None,
    ) -> None:
        self.url = url
        self.keys = Keys(prefix)
        self.kind = kind_of(parse_redis_url(url), cluster)
        self.cluster = cluster = self.kind == "cluster"
        self.history = history or HistoryPolicy()
        self.client = client or make_client(url, cluster=cluster)
        self.state = RedisState(self.client, self.keys, node_lease_s=node_lease_s, cluster=cluster)
        self.event_log = AsyncEventLog(self.client, self.keys)  # the dashboard's summaries
        self.query = NodeQuery(self.client, self.keys, self.state.local_clients, cluster=cluster)
        self.subscriptions = Subscriptions(
            make_topology(url, self.kind, self.client),
            sharded=cluster,
            on_message=self._on_message,
            on_restored=self._on_lost,
            probe_s=probe_s,
        )
        self._probe_s = probe_s
        self._unsub_delay_s = unsubscribe_delay_s
        self._pending_unsub: dict[str, asyncio.TimerHandle] = {}
        self._node_id = ""
        self._on_publication: PublicationHandler | None = None
        self._on_control: ControlHandler | None = None
        self._on_resync: ResyncHandler | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_seen = asyncio.Event()
        self.dropped_messages = 0
        self._listeners: dict[str, tuple[Callable[[bytes], None], Callable[[], None]]] = {}

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(
        self,
        node_id: str,
        on_publication: PublicationHandler,
        on_control: ControlHandler,
        on_resync: ResyncHandler,
    ) -> None:
        self._node_id = node_id
        self._on_publication = on_publication
        self._on_control = on_control
        self._on_resync = on_resync
        self.subscriptions.start()
        self._probe_task = asyncio.create_task(self._probe_loop(), name="pubsub probe")
        channels = [self.keys.control_channel, self.keys.node_channel(node_id)]
        try:  # a Redis that cannot be reached now is not fatal: the node reports not ready
            await self.subscriptions.subscribe(channels, impatient=True)
        except (ConnectionError, TimeoutError) as exc:  # the node logs it, once
            log.debug("Redis not reachable at startup (%s): retrying", exc)
        await self.query.start(node_id, self.listen)

    async def close(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        for handle in self._pending_unsub.values():
            handle.cancel()
        await self.query.close()
        await self.subscriptions.close()
        await self.event_log.aclose()
        await self.state.batch.aclose()
        await self.client.aclose()
        await aclose_sentinels(self.client)

    async def ready(self) -> bool:
        """Redis answers a PING, and every channel the node wants is live."""
        try:
            async with asyncio.timeout(2):
                await self.client.ping()
        except REDIS_ERRORS:
            return False
        return self.subscriptions.all_live()

    @property
    def pubsub_reconnects(self) -> int:
        return self.subscriptions.reconnects

    # --- fan-out ------------------------------------------------------------------------------
    async def subscribe(self, room: str) -> None:
        """Returns once the server that owns the room's channel now confirmed the subscription
        (waiting for a re-subscription after a loss); raises on refusal or after 5 s."""
        channel = self.keys.room_channel(room)
        handle = self._pending_unsub.pop(room, None)
        if handle is not None:
            handle.cancel()
        await self.subscriptions.subscribe([channel])

    def unsubscribe(self, room: str) -> None:
        if room in self._pending_unsub:
            return
        loop = asyncio.get_running_loop()
        self._pending_unsub[room] = loop.call_later(self._unsub_delay_s, self._unsubscribe, room)

    def _unsubscribe(self, room: str) -> None:
        self._pending_unsub.pop(room, None)
        self.subscriptions.unsubscribe([self.keys.room_channel(room)])

    def _on_message(self, channel: str, data: bytes) -> None:
        if channel == self.keys.control_channel:
            try:
                msg = orjson.loads(data)
                message = ControlMessage(action=msg["action"], args=msg.get("args", {}))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                log.warning("ignoring malformed control message")
                return
            if self._on_control is not None:
                self._on_control(message)
            return
        if channel == self.keys.node_channel(self._node_id):
            self._probe_seen.set()
            return
        listener = self._listeners.get(channel)
        if listener is not None:
            listener[0](data)
            return
        try:
            offset_raw, epoch_raw, body = data.split(b":", 2)
            pub = Publication(
                room=self.keys.room_from_channel(channel),
                offset=int(offset_raw),
                epoch=epoch_raw.decode(),
                body=body,
            )
        except ValueError:
            self.dropped_messages += 1
            log.warning("ignoring malformed publication on %s", channel)
            return
        if self._on_publication is not None:
            self._on_publication(pub)

    def _on_lost(self, channels: list[str]) -> None:
        """Channels live again after a loss: their rooms may have missed events."""
        for channel in channels:
            listener = self._listeners.get(channel)
            if listener is not None:
                listener[1]()
        rooms = [self.keys.room_from_channel(c) for c in channels if self.keys.is_room_channel(c)]
        if rooms and self._on_resync is not None:
            self._on_resync(rooms)

    async def _probe_loop(self) -> None:
        """Publish to our own channel; if it does not come back, restart that connection."""
        own = self.keys.node_channel(self._node_id)
        publish = "SPUBLISH" if self.cluster else "PUBLISH"
        task = asyncio.current_task()
        while task is None or not task.cancelling():  # redis-py can swallow a cancel()
            await asyncio.sleep(self._probe_s)
            if not self.subscriptions.is_live(own):
                continue
            self._probe_seen.clear()
            try:
                await self.client.execute_command(publish, own, b"probe")
                async with asyncio.timeout(self._probe_s):
                    await self._probe_seen.wait()
            except TimeoutError:
                if self.subscriptions.is_live(own):
                    self.subscriptions.restart(own, "liveness probe not delivered")
            except REDIS_ERRORS as exc:
                log.debug("probe publish failed: %s", exc)

    async def listen(
        self, channel: str, on_message: Callable[[bytes], None], on_lost: Callable[[], None]
    ) -> None:
        """Receive a channel that is not a room's (a node's own, e.g. Socket.IO forwarding):
        ``on_message(data)`` per message, ``on_lost()`` when the subscription was lost and
        messages may have been missed. Publish to it with PUBLISH (SPUBLISH in a cluster)."""
        self._listeners[channel] = (on_message, on_lost)
        try:  # a Redis that cannot be reached now: the channel is wanted, and placed later
            await self.subscriptions.subscribe([channel], impatient=True)
        except (ConnectionError, TimeoutError) as exc:
            log.debug("%s not subscribed yet (%s): retrying", channel, exc)

    # --- publishing and history ---------------------------------------------------------------
    async def publish(
        self,
        rooms: Sequence[str],
        type_: str,
        payload_json: bytes,
        source: str,
        *,
        event_id: str | None = None,
        idempotency_key: str | None = None,
        receipts: bool = False,
    ) -> PublishResult:
        event_id, calls = redis_publish.build_calls(
            self.keys,
            self.history,
            rooms,
            type_,
            payload_json,
            source,
            sharded=self.cluster,
            event_id=event_id,
            idempotency_key=idempotency_key,
            receipts=receipts,
        )
        return await redis_publish.run_async(
            self.client, self.event_log, event_id, calls, self.cluster, self.state.batch
        )

    def _history_call(
        self, room: str, since: Position | None
    ) -> tuple[scripts.LuaScript, list[str], list[Any]]:
        return (
            scripts.load(scripts.HISTORY),
            [self.keys.room_meta(room), self.keys.room_history(room)],
            [
                UNPUBLISHED_EPOCH,
                0,
                since.offset if since else -1,
                since.epoch if since else "",
            ],
        )

    @staticmethod
    def _recovery(room: str, result: Any) -> Recovery:
        offset, epoch, recovered, flat = int(result[0]), result[1], int(result[2]), result[3]
        epoch = epoch.decode() if isinstance(epoch, bytes) else str(epoch)
        position = Position(offset=offset, epoch=epoch)
        if not recovered:
            return Recovery(position=position, recovered=False)
        pubs = [
            Publication(room, int(flat[i].split(b"-")[1]), epoch, flat[i + 1])
            for i in range(0, len(flat), 2)
        ]
        return Recovery(position=position, recovered=True, publications=pubs)

    async def history_since(self, room: str, since: Position | None) -> Recovery:
        script, keys, args = self._history_call(room, since)
        if self.cluster:
            return self._recovery(room, await script.run(self.client, keys, args))
        # Through the group commit, not a pooled connection each: a reconnect storm rejoins
        # thousands of rooms at once, and redis-py's pool refuses callers past its size
        # ("Too many connections", found by bench/storm.py).
        [result] = await self.state.batch.run(
            lambda buffer: buffer.evalsha(script.sha, len(keys), *keys, *args)
        )
        return self._recovery(room, result)

    async def positions(self, rooms: Sequence[str]) -> dict[str, Position]:
        found: dict[str, Position] = {}
        for i in range(0, len(rooms), POSITIONS_BATCH):  # bounded pipelines on big nodes
            chunk = rooms[i : i + POSITIONS_BATCH]
            pipe = self.client.pipeline(transaction=False)
            for room in chunk:
                pipe.hmget(self.keys.room_meta(room), ["epoch", "offset"])
            for room, (epoch, offset) in zip(chunk, await pipe.execute(), strict=True):
                if epoch is None:
                    found[room] = Position(0, UNPUBLISHED_EPOCH)
                else:
                    found[room] = Position(int(offset or 0), epoch.decode())
        return found

    async def new_epoch(self, room: str, old_epoch: str) -> Position:
        result = await scripts.load(scripts.NEW_EPOCH).run(
            self.client,
            [self.keys.room_meta(room), self.keys.room_history(room)],
            [
                old_epoch,
                new_epoch(),
                max(self.history.meta_ttl_s, self.history.ttl_s),
                UNPUBLISHED_EPOCH,
            ],
        )
        epoch = result[1].decode() if isinstance(result[1], bytes) else str(result[1])
        return Position(offset=int(result[0]), epoch=epoch)

    async def join_and_recover(
        self,
        conn: ConnectionInfo,
        room: str,
        since: Position | None,
        all_rooms: Sequence[str],
    ) -> Recovery:
        result = await self.state.join_with(
            conn, [room], all_rooms, self._history_call(room, since)
        )
        return self._recovery(room, result)

    async def control(self, message: ControlMessage) -> None:
        data = orjson.dumps({"action": message.action, "args": message.args})
        publish = "SPUBLISH" if self.cluster else "PUBLISH"
        await self.client.execute_command(publish, self.keys.control_channel, data)

    # --- membership and presence --------------------------------------------------------------
    async def add_connection(self, conn: ConnectionInfo, rooms: Sequence[str] = ()) -> None:
        await self.state.add_connection(conn, rooms)

    async def remove_connection(self, conn: ConnectionInfo, rooms: Sequence[str]) -> None:
        await self.state.remove_connection(conn, rooms)

    async def join(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        await self.state.join(conn, rooms, all_rooms)

    async def leave(
        self, conn: ConnectionInfo, rooms: Sequence[str], all_rooms: Sequence[str]
    ) -> None:
        await self.state.leave(conn, rooms, all_rooms)

    async def presence(self, room: str) -> list[PresenceMember]:
        return await self.state.presence(room)

    async def room_count(self, room: str) -> int:
        return await self.state.room_count(room)

    # --- node registry, dashboard -------------------------------------------------------------
    async def heartbeat(self, stats: NodeStats) -> bool:
        return await self.state.heartbeat(stats, now_ms())

    async def deregister(self) -> None:
        await self.state.remove_node(self._node_id)
        self.state.local.clear()  # its connections are gone from the cluster's view

    async def nodes(self) -> list[dict[str, Any]]:
        return await self.state.nodes()

    async def list_clients(self, limit: int, cursor: str | None) -> Page:
        return await self.query.clients(limit, cursor)

    async def list_rooms(self, limit: int, cursor: str | None) -> Page:
        return await self.state.list_rooms(limit, cursor)

    async def recent_events(self, limit: int, cursor: str | None) -> Page:
        return await self.state.recent_events(limit, cursor)

    async def events_per_minute(self, now_ms_: int) -> list[int]:
        return await self.state.events_per_minute(now_ms_)

    async def cleanup(self) -> dict[str, int]:
        # under the worker janitor's lease: a dashboard cleanup never overlaps its sweep
        return await self.state.cleanup_exclusive(self._node_id, exclude={self._node_id})
