"""Connection counts and online status in memory (embedded mode: the node is the cluster).

The same ``OnlineStore`` contract as ``redis_online.RedisOnline`` (online.py); the presence stream
is a bounded deque here, read by the node's own poster (``gateway.presence_feed``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.backend.online import OFFLINE_TTL_S, USER, Admission, PresenceChange, UserStatus
from gateway.events import now_ms as _now_ms


@dataclass(slots=True)
class _User:
    counts: Counter[str] = field(default_factory=Counter)  # node -> connections
    role: str = ""
    on: bool = False
    seen: int = 0
    off: int | None = None  # ms when the grace period ends


class MemoryOnline:
    def __init__(self, *, grace_ms: int = 5000, stream_maxlen: int = 100_000) -> None:
        self.grace_ms = grace_ms
        self._users: dict[str, _User] = {}
        self._ips: dict[str, Counter[str]] = {}
        self._held: dict[str, Counter[str]] = {}  # node -> "u:<id>" / "i:<ip>" -> count
        self._due: dict[str, int] = {}
        self._seq = itertools.count(1)
        self._next_prune = 0
        self.changes: deque[PresenceChange] = deque(maxlen=stream_maxlen)
        self.changed = asyncio.Event()  # set when a change is appended (the poster waits)

    async def register(self, node: str) -> None:
        await self.sweep_node(node)
        self._held[node] = Counter()

    async def registered(self, node: str) -> bool:
        return node in self._held

    def _counts(self, kind: str, key: str) -> Counter[str]:
        if kind == USER:
            return self._users.setdefault(key, _User()).counts
        return self._ips.setdefault(key, Counter())

    async def acquire(
        self,
        node: str,
        kind: str,
        key: str,
        *,
        cap: int = 0,
        role: str = "",
        set_count: int | None = None,
    ) -> Admission:
        counts = self._counts(kind, key)
        total = sum(counts.values())
        held = self._held.setdefault(node, Counter())
        if set_count is None:
            if cap > 0 and total >= cap:
                return Admission(False, total)
            counts[node] += 1
            held[f"{kind}:{key}"] += 1
        else:
            counts[node] = held[f"{kind}:{key}"] = set_count
        total = sum(counts.values())
        if kind != USER:
            return Admission(True, total)
        user = self._users[key]
        now = _now_ms()
        user.role, user.seen, user.off = role, now, None
        self._due.pop(key, None)
        if user.on:
            return Admission(True, total)
        user.on = True
        self._append(key, role, True, now)
        return Admission(True, total, came_online=True)

    async def release(self, node: str, kind: str, key: str, count: int | None = 1) -> int:
        counts = self._counts(kind, key)
        mine = counts.get(node, 0)
        take = mine if count is None else min(mine, count)
        counts[node] = mine - take
        if counts[node] <= 0:
            del counts[node]
        held = self._held.get(node)
        if held is not None:
            name = f"{kind}:{key}"
            held[name] -= mine if count is None else count
            if count is None or held[name] <= 0:
                del held[name]
        total = sum(counts.values())
        if kind != USER:
            if total == 0:
                self._ips.pop(key, None)
            return total
        if total == 0 and take > 0:
            user = self._users[key]
            now = _now_ms()
            user.seen = now
            user.off = now + (self.grace_ms if count is not None else 0)
            self._due[key] = user.off
        return total

    async def sweep_node(self, node: str) -> int:
        names = list(self._held.get(node, ()))
        for name in names:
            kind, _, key = name.partition(":")
            await self.release(node, kind, key, None)
        self._held.pop(node, None)
        return len(names)

    async def dead_nodes(self) -> list[str]:
        return []  # one process: its node cannot die without the store

    async def settle_due(self, now_ms: int) -> list[PresenceChange]:
        if now_ms >= self._next_prune:
            self._prune(now_ms)
        changes = []
        for user_id, due in list(self._due.items()):
            if due > now_ms:
                continue
            del self._due[user_id]
            user = self._users.get(user_id)
            if user is None or sum(user.counts.values()) > 0 or user.off is None:
                continue
            user.off = None
            if user.on:
                user.on = False
                changes.append(self._append(user_id, user.role, False, user.seen))
        return changes

    def _prune(self, now_ms: int) -> None:
        """Forget users offline for longer than OFFLINE_TTL_S (Redis: the hash's TTL)."""
        self._next_prune = now_ms + 3_600_000
        cutoff = now_ms - OFFLINE_TTL_S * 1000
        for user_id in [
            u for u, x in self._users.items() if not x.on and not x.counts and x.seen < cutoff
        ]:
            del self._users[user_id]

    def _append(self, user_id: str, role: str, online: bool, ts: int) -> PresenceChange:
        # ids grow like stream ids (receivers keep the last one per user to drop repeats)
        change = PresenceChange(f"{_now_ms()}-{next(self._seq)}", user_id, role, online, ts)
        self.changes.append(change)
        self.changed.set()
        return change

    async def online(self, user_ids: Sequence[str], now_ms: int) -> dict[str, UserStatus]:
        out = {}
        for user_id in user_ids:
            user = self._users.get(user_id)
            if user is None:
                out[user_id] = UserStatus(False, 0, None)
                continue
            connections = sum(user.counts.values())
            if connections:
                out[user_id] = UserStatus(True, connections, now_ms)
            else:
                out[user_id] = UserStatus(user.on, 0, user.seen or None)
        return out

    async def online_users(self, limit: int, cursor: str | None) -> tuple[list[str], int]:
        names = sorted(u for u, x in self._users.items() if x.on)
        after = [n for n in names if cursor is None or n > cursor]
        return after[: limit + 1], len(names)

    async def close(self) -> None:
        pass
