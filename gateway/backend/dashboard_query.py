"""``/dashboard/clients`` answered by the nodes themselves, not by an index every connect writes.

A connection's dashboard entry (user, role, node, rooms, connectedAt) lives only in the memory of
the node that holds it. A request is published on ``dashboard_channel``; every node subscribed to
it answers on the requester's own channel with its first ``limit + 1`` connections after the
cursor and how many it holds; the publish's receiver count says how many answers to wait for (the
pattern of socket.io's Redis adapter for ``fetchSockets()``). Connections are disjoint between
nodes, so the merge is exact: ``total`` is the sum, and the first ``limit`` of the merged answers
are the first ``limit`` of the cluster (a node holds at most ``limit`` before any of them, or
it would have answered with those instead). Connections of a node that died but is not swept
yet are not listed (that node cannot answer).

A node that does not answer within ``timeout_s`` (its pub/sub connection is being restored) is
left out of that one answer, and a warning names how many answered.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backend.base import Page
from gateway.backend.keys import Keys

log = logging.getLogger("gateway.dashboard")

TIMEOUT_S = 2.0
MAX_LIMIT = 1000

Listen = Callable[[str, Callable[[bytes], None], Callable[[], None]], Awaitable[None]]
LocalClients = Callable[[int, str | None], tuple[list[dict[str, Any]], int]]


@dataclass(slots=True)
class _Pending:
    expected: int | None = None
    answers: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if self.expected is not None and len(self.answers) >= self.expected:
            self.done.set()


class NodeQuery:
    def __init__(
        self,
        client: Any,
        keys: Keys,
        local_clients: LocalClients,
        *,
        cluster: bool = False,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.client = client
        self.keys = keys
        self.local_clients = local_clients
        self.publish = "SPUBLISH" if cluster else "PUBLISH"
        self.timeout_s = timeout_s
        self.node_id = ""
        self._pending: dict[str, _Pending] = {}
        self._replies: set[asyncio.Task[None]] = set()

    async def start(self, node_id: str, listen: Listen) -> None:
        self.node_id = node_id
        await listen(self.keys.node_dashboard(node_id), self._on_answer, _nothing)
        await listen(self.keys.dashboard_channel, self._on_request, _nothing)

    async def close(self) -> None:
        for task in list(self._replies):
            task.cancel()
        for task in list(self._replies):
            try:
                await task
            except asyncio.CancelledError:
                pass

    # --- answering ----------------------------------------------------------------------------
    def _on_request(self, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
            req_id, sender, limit = str(msg["id"]), str(msg["from"]), int(msg["limit"])
            cursor = msg.get("cursor")
            if cursor is not None and not isinstance(cursor, str):
                raise TypeError("cursor")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("ignoring malformed dashboard request")
            return
        items, total = self.local_clients(max(1, min(limit, MAX_LIMIT)), cursor)
        answer = orjson.dumps(
            {"id": req_id, "node": self.node_id, "clients": items, "total": total}
        )
        task = asyncio.create_task(self._send(self.keys.node_dashboard(sender), answer))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    async def _send(self, channel: str, data: bytes) -> None:
        try:
            await self.client.execute_command(self.publish, channel, data)
        except Exception as exc:  # the requester times out on this node and says so
            log.debug("dashboard answer not sent: %s", exc)

    def _on_answer(self, data: bytes) -> None:
        try:
            msg = orjson.loads(data)
            pending = self._pending.get(str(msg["id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring malformed dashboard answer")
            return
        if pending is not None:
            pending.answers.append(msg)
            pending.check()

    # --- asking -------------------------------------------------------------------------------
    async def clients(self, limit: int, cursor: str | None) -> Page:
        req_id = uuid.uuid4().hex
        pending = self._pending[req_id] = _Pending()
        request = {"id": req_id, "from": self.node_id, "limit": limit, "cursor": cursor}
        try:
            receivers = await self.client.execute_command(
                self.publish, self.keys.dashboard_channel, orjson.dumps(request)
            )
            pending.expected = int(receivers)
            pending.check()
            try:
                async with asyncio.timeout(self.timeout_s):
                    await pending.done.wait()
            except TimeoutError:
                log.warning(
                    "dashboard clients: %d of %d nodes answered within %.1f s",
                    len(pending.answers),
                    pending.expected,
                    self.timeout_s,
                )
        finally:
            del self._pending[req_id]
        return merge_clients(pending.answers, limit)


def merge_clients(answers: list[dict[str, Any]], limit: int) -> Page:
    """One page from the nodes' answers (each: its first ``limit + 1`` after the cursor)."""
    merged = sorted(
        (item for answer in answers for item in answer.get("clients", [])),
        key=lambda item: str(item["connectionId"]),
    )
    total = sum(int(answer.get("total", 0)) for answer in answers)
    items = merged[:limit]
    more = len(merged) > limit
    return Page(items=items, total=total, next_cursor=items[-1]["connectionId"] if more else None)


def _nothing() -> None:
    """A lost subscription needs nothing redone: a request in flight times out."""
