"""What the dashboard shows of online status and receipts: online users, and "received by n of
m" on events of the live log that asked for receipts. Kept apart from dashboard.py, which calls
these few functions."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from gateway.events import now_ms
from gateway.node import Node

TRACKED = 50  # recent events with receipts whose counts the feed keeps up to date


async def with_receipts(node: Node, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Event summaries, each with ``receipts: {"connections", "members"}`` when it asked."""
    pairs = [(str(item["room"]), str(item["id"])) for item in items]
    counts = await node.receipts.store.counts(pairs)
    out = []
    for item, pair in zip(items, pairs, strict=True):
        found = counts.get(pair)
        if found is not None:
            item = {**item, "receipts": {"connections": found[0], "members": found[1]}}
        out.append(item)
    return out


async def online_count(node: Node) -> int:
    _, total = await node.accounting.store.online_users(0, None)
    return total


async def online_page(node: Node, limit: int, cursor: str | None) -> dict[str, Any]:
    """``GET /dashboard/online``: users online now, by id, with their status."""
    names, total = await node.accounting.store.online_users(limit, cursor)
    more = len(names) > limit
    names = names[:limit]
    statuses = await node.accounting.store.online(names, now_ms()) if names else {}
    users = [{"userId": u, **statuses[u].as_dict()} for u in names]
    out: dict[str, Any] = {"users": users, "total": total}
    if more:
        out["nextCursor"] = names[-1]
    return out


class ReceiptTracker:
    """For the live feed: the latest events with receipts, and their counts last sent."""

    def __init__(self) -> None:
        self._last: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    def track(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            found = item.get("receipts")
            if found is not None:
                key = (str(item["room"]), str(item["id"]))
                self._last[key] = (found["connections"], found["members"])
                self._last.move_to_end(key)
        while len(self._last) > TRACKED:
            self._last.popitem(last=False)

    async def changes(self, node: Node) -> list[dict[str, Any]]:
        """Updates of the tracked events whose counts moved since they were last sent."""
        if not self._last:
            return []
        counts = await node.receipts.store.counts(list(self._last))
        out = []
        for key, before in list(self._last.items()):
            now = counts.get(key)
            if now is None:
                del self._last[key]  # expired with the history
            elif now != before:
                self._last[key] = now
                receipts = {"connections": now[0], "members": now[1]}
                out.append({"room": key[0], "id": key[1], "receipts": receipts})
        return out
