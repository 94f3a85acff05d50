"""The OnlineStore contract: cluster-wide connection counts, caps and online status.

One mechanism serves the connection caps (``GATEWAY_MAX_CONNECTIONS_PER_USER`` / ``_PER_IP``) and
online status (contract section 8): each node counts its connections per user and per client
address in the store, so a count is cluster-wide and a check-and-increment is atomic. Two
implementations pass one test suite (tests/contract/test_online.py): ``online_memory.MemoryOnline``
(embedded mode: the node is the cluster) and ``redis_online.RedisOnline``.

Guarantees every implementation gives:

* ``acquire`` with a cap admits only while the cluster-wide count is below the cap, and counts the
  connection in the same atomic step; ``release`` undoes one count; neither goes below zero.
* A node's counts are recorded under its name, so a dead node's counts are removed by
  ``sweep_node`` in O(its own users and addresses) — after its lease, never before.
* A user's first connection announces ``online``; the last one closing announces ``offline`` only
  once ``grace_ms`` have passed without a new connection (``settle_due``), so a reconnect is not a
  flap. Each change is announced exactly once, in order per user (``PresenceChange``).
* ``online(users)`` answers the count, the announced state and ``lastSeen`` of each user.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

OFFLINE_TTL_S = 30 * 86400  # lastSeen of users offline for longer may be forgotten (contract §8)


@dataclass(frozen=True, slots=True)
class Admission:
    admitted: bool
    count: int  # cluster-wide, after the call
    came_online: bool = False


@dataclass(frozen=True, slots=True)
class UserStatus:
    online: bool  # connected now, or within the grace period after the last close
    connections: int
    last_seen_ms: int | None  # now while online; the last close otherwise; None: never seen

    def as_dict(self) -> dict[str, object]:
        return {
            "online": self.online,
            "connections": self.connections,
            "lastSeen": self.last_seen_ms,
        }


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """One entry of the presence stream; ``change_id`` is its stream id."""

    change_id: str
    user_id: str
    role: str
    online: bool
    ts: int

    def as_dict(self) -> dict[str, object]:
        return {
            "changeId": self.change_id,
            "userId": self.user_id,
            "role": self.role,
            "online": self.online,
            "ts": self.ts,
        }


USER = "u"
IP = "i"
MAX_USERS_PER_QUERY = 1000
_USER_ID = re.compile(r"^[A-Za-z0-9_.@:-]{1,128}\Z")


def is_valid_user_id(user_id: str) -> bool:
    """What ``online()`` accepts: Django ids as strings (numbers, UUIDs, slugs)."""
    return bool(_USER_ID.match(user_id))


class OnlineStore(Protocol):
    grace_ms: int

    async def register(self, node: str) -> None:
        """Start the node's record (its counts from a previous life are swept first)."""

    async def registered(self, node: str) -> bool:
        """False when the store lost the node's record (data loss, or swept after a partition):
        the node then restores its counts with ``acquire(..., set_count=n)``."""

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
        """Count one more connection of ``key`` (a user id for ``USER``, an address for ``IP``)
        on ``node`` unless the cluster-wide count is at ``cap`` (0 = no cap). ``set_count``
        sets the node's own count instead (restoring after an outage)."""

    async def release(self, node: str, kind: str, key: str, count: int | None = 1) -> int:
        """Count ``count`` fewer (None: all of the node's); returns the cluster-wide count."""

    async def sweep_node(self, node: str) -> int:
        """Remove every count of ``node`` (dead, or starting again); returns how many keys."""

    async def dead_nodes(self) -> list[str]:
        """Nodes with a record whose lease has expired."""

    async def settle_due(self, now_ms: int) -> list[PresenceChange]:
        """Users whose grace period ended with no connection go offline; returns the changes
        made here (Redis: already on the stream)."""

    async def online(self, user_ids: Sequence[str], now_ms: int) -> dict[str, UserStatus]: ...

    async def online_users(self, limit: int, cursor: str | None) -> tuple[list[str], int]:
        """Users announced online, by id, after ``cursor``: up to ``limit + 1`` (one more says
        there is a next page), and how many there are."""

    async def close(self) -> None: ...
