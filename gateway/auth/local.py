"""What one node remembers about tokens, in memory, in front of Redis (and instead of it in
embedded mode): verified tokens by hash, Django's role per user for JWTs without a role claim,
and when each user was last disconnected. Every map is bounded.

Times are wall-clock seconds, as Redis entries and JWT ``iat`` carry them; expiry is also kept
on the monotonic clock, so a wall-clock jump cannot stretch a cache entry's life.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.rooms import Identity

MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class Verified:
    identity: Identity
    verified_at: float  # when the check that produced it began (wall clock, s)
    expires_at: float  # wall clock, s


@dataclass(frozen=True, slots=True)
class _Entry:
    verified: Verified
    expires_mono: float


def _entry(verified: Verified) -> _Entry:
    return _Entry(verified, time.monotonic() + verified.expires_at - time.time())


class LocalTokens:
    def __init__(self, revocation_ttl_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.revocation_ttl_s = revocation_ttl_s
        self.max_entries = max_entries
        self._tokens: dict[str, _Entry] = {}
        self._by_user: dict[str, set[str]] = {}
        self._roles: dict[str, _Entry] = {}
        self._revoked: dict[str, float] = {}  # user -> wall time, oldest first
        self.complete = True  # every mark within the revocation TTL is here

    # --- verified tokens ----------------------------------------------------------------------
    def get(self, key: str) -> Verified | None:
        entry = self._tokens.get(key)
        if entry is None:
            return None
        if entry.expires_mono <= time.monotonic():
            self._drop(key)
            return None
        return entry.verified

    def put(self, key: str, verified: Verified) -> None:
        if verified.expires_at <= time.time():
            return
        if key not in self._tokens and len(self._tokens) >= self.max_entries:
            self._evict()
        self._drop(key)
        self._tokens[key] = _entry(verified)
        self._by_user.setdefault(verified.identity.user_id, set()).add(key)

    def __len__(self) -> int:
        return len(self._tokens)

    def _drop(self, key: str) -> None:
        entry = self._tokens.pop(key, None)
        if entry is None:
            return
        user = entry.verified.identity.user_id
        keys = self._by_user.get(user)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[user]

    def _evict(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._tokens.items() if e.expires_mono <= now]:
            self._drop(key)
        while len(self._tokens) >= self.max_entries:
            self._drop(next(iter(self._tokens)))  # the oldest

    # --- roles of users whose JWTs carry none ------------------------------------------------
    def role(self, user_id: str) -> Verified | None:
        entry = self._roles.get(user_id)
        if entry is None:
            return None
        if entry.expires_mono <= time.monotonic():
            del self._roles[user_id]
            return None
        return entry.verified

    def put_role(self, verified: Verified) -> None:
        user = verified.identity.user_id
        if user not in self._roles and len(self._roles) >= self.max_entries:
            self._roles.pop(next(iter(self._roles)))
        self._roles[user] = _entry(verified)

    # --- revocation ---------------------------------------------------------------------------
    def forget_user(self, user_id: str, at: float) -> None:
        """``disconnect(user_id)`` at wall time ``at``: drop what was verified for the user
        before it and remember when, for checks in flight and for JWTs issued before."""
        for key in list(self._by_user.get(user_id, ())):
            if self._tokens[key].verified.verified_at < at:
                self._drop(key)
        role = self._roles.get(user_id)
        if role is not None and role.verified.verified_at < at:
            del self._roles[user_id]
        at = max(at, self._revoked.pop(user_id, at))
        self._revoked[user_id] = at  # re-inserted: the map stays in time order
        self._expire_revocations()

    def revoked_at(self, user_id: str) -> float | None:
        at = self._revoked.get(user_id)
        if at is not None and at + self.revocation_ttl_s <= time.time():
            del self._revoked[user_id]
            return None
        return at

    def revoked_since(self, user_id: str, since: float) -> bool:
        """Whether the user was disconnected at or after ``since``."""
        at = self.revoked_at(user_id)
        return at is not None and at >= since

    def _expire_revocations(self) -> None:
        horizon = time.time() - self.revocation_ttl_s
        while self._revoked:
            user, at = next(iter(self._revoked.items()))
            if at > horizon and len(self._revoked) <= self.max_entries:
                break
            if at > horizon:
                self.complete = False  # a mark still in force had to go: ask Redis from now on
            del self._revoked[user]
