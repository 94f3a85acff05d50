"""``Harness``: a backend under contract test plus what it handed to its callbacks."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backend.base import (
    Backend,
    ConnectionInfo,
    ControlMessage,
    NodeStats,
    Publication,
    PublishResult,
)

UNSUBSCRIBE_DELAY_S = 0.1
_seq = itertools.count(1)


def node_stats(node: str, connections: int = 0) -> NodeStats:
    return NodeStats(
        node=node,
        connections=connections,
        by_role={"cliente": connections} if connections else {},
        rooms=0,
        rss_bytes=1000,
        uptime_s=1.5,
        started_at_ms=int(time.time() * 1000),
        frames_in=0,
        frames_out=0,
        connection_seconds_sum=0.0,
        django={"reachable": True, "latencyMs": 1.0, "checkedAt": 0},
    )


@dataclass
class Harness:
    """A started backend plus what it handed to its callbacks, in order."""

    backend: Backend
    node_id: str
    publications: list[Publication] = field(default_factory=list)
    controls: list[ControlMessage] = field(default_factory=list)
    resyncs: list[list[str]] = field(default_factory=list)

    async def start(self) -> None:
        await self.backend.start(
            self.node_id,
            self.publications.append,
            self.controls.append,
            lambda rooms: self.resyncs.append(list(rooms)),
        )
        await self.backend.heartbeat(node_stats(self.node_id))  # registered, as a node does

    def conn(self, user_id: str, role: str = "cliente", connection_id: str | None = None) -> Any:
        return ConnectionInfo(
            connection_id=connection_id or f"conn-{next(_seq):04d}",
            user_id=user_id,
            role=role,
            node=self.node_id,
            connected_at_ms=int(time.time() * 1000),
        )

    async def publish(self, room: str | list[str], n: int = 1, **kw: Any) -> list[PublishResult]:
        rooms = [room] if isinstance(room, str) else room
        results = []
        for i in range(n):
            payload = orjson.dumps({"i": i})
            results.append(await self.backend.publish(rooms, "test", payload, "api", **kw))
        return results

    def received(self, room: str) -> list[Publication]:
        return [p for p in self.publications if p.room == room]

    async def eventually(self, pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
        async with asyncio.timeout(timeout_s):
            while not pred():
                await asyncio.sleep(0.005)

    async def barrier(self, room: str = "barrier_room") -> None:
        """Publish to a subscribed room and wait for it: delivery is in order on one backend
        connection, so anything published before has been delivered by then."""
        await self.backend.subscribe(room)
        [result] = await self.publish(room)
        await self.eventually(
            lambda: any(orjson.loads(p.body)["id"] == result.event_id for p in self.publications)
        )
