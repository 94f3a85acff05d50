"""The cluster-wide token cache in Redis, so a client that reconnects to another node (a storm
after a node loss) is not verified with Django again.

A token Django verified is stored under its sha256 (never the token) with the identity and when
the check began, for ``GATEWAY_AUTH_CACHE_S``, and its hash is added to the user's set, which
``disconnect(user_id)`` (``revoke.py``) reads to delete the user's entries without a scan.
A check that was still running when the user was disconnected must not leave an entry behind:
after writing, the node reads the user's revocation mark and deletes its entry again when the
mark is not older than the check. Either the disconnect's script saw the hash in the set (and
deleted the entry), or the node's read comes after the mark: the entry cannot survive both.

A hit costs one ``GET``; a miss that Django answers costs ``SET``, ``SADD``, ``PEXPIRE``,
``GET`` in one round trip (on a Redis Cluster in two: the token's key and the user's keys are on
different masters, and the entry must exist before the set names it). They go through a group
commit of their own (``gateway.backend.batch``), so the checks of a storm share round trips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway.auth.local import Verified
from gateway.auth.revoke import revoke_async
from gateway.backend.keys import Keys
from gateway.rooms import ROLES, Identity

# A revocation mark up to this much older than a check still voids it: marks are written with
# the caller's clock (Django's, for the publishers) and checks are dated with the node's.
CLOCK_SLACK_MS = 5000


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class SharedTokens:
    def __init__(
        self,
        client: Callable[[], Any],
        keys: Keys,
        *,
        cache_s: float,
        revocation_ttl_s: int,
        cluster: bool = False,
        batch: Any = None,
    ) -> None:
        self._client = client  # the backend's client, looked up at each use
        self._batch = batch  # a gateway.backend.batch group commit, or None
        self.keys = keys
        self.cluster = cluster
        self.cache_s = cache_s
        self.revocation_ttl_s = revocation_ttl_s

    async def _run(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Commands in one round trip: through the group commit when there is one (a storm's
        checks share round trips, and no redis-py objects per command), else a pipeline."""
        if self._batch is not None:
            results: list[Any] = await self._batch.run(
                lambda buf: [buf.execute_command(*c) for c in commands]
            )
            return results
        pipe = self._client().pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        results = await pipe.execute()
        return results

    async def get(self, token_hash: str) -> Verified | None:
        [raw] = await self._run(("GET", self.keys.auth_token(token_hash)))
        return None if raw is None else self._parse(raw)

    def _parse(self, raw: bytes) -> Verified | None:
        try:
            entry = orjson.loads(raw)
            user, role, at_ms = str(entry["u"]), entry["r"], int(entry["t"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        if role not in ROLES or not user:
            return None
        at = at_ms / 1000
        return Verified(Identity(user, role), at, at + self.cache_s)

    async def put(self, token_hash: str, verified: Verified) -> None:
        keys, user = self.keys, verified.identity.user_id
        ttl_ms = _ms(verified.expires_at - verified.verified_at)
        if ttl_ms <= 0:
            return
        entry = orjson.dumps(
            {"u": user, "r": verified.identity.role, "t": _ms(verified.verified_at)}
        )
        store = ("SET", keys.auth_token(token_hash), entry, "PX", ttl_ms)
        name = (
            ("SADD", keys.auth_user_tokens(user), token_hash),
            ("PEXPIRE", keys.auth_user_tokens(user), _ms(self.cache_s)),
            ("GET", keys.auth_user_revoked(user)),
        )
        if self.cluster:  # another master: the entry must exist before the user's set names it
            await self._run(store)
            mark = (await self._run(*name))[-1]
        else:  # one connection: Redis runs the commands in order
            mark = (await self._run(store, *name))[-1]
        if self._voids(mark, verified):
            await self._client().delete(keys.auth_token(token_hash))

    async def user_state(self, user_id: str) -> tuple[float | None, Verified | None]:
        """The user's last disconnect (wall s) and Django's cached role, in one ``MGET``."""
        keys = self.keys
        [raw] = await self._run(
            ("MGET", keys.auth_user_revoked(user_id), keys.auth_user_role(user_id))
        )
        mark = int(raw[0]) / 1000 if raw[0] is not None else None
        role = self._parse(raw[1]) if raw[1] is not None else None
        if role is not None and role.identity.user_id != user_id:
            role = None
        return mark, role

    async def put_role(self, verified: Verified) -> None:
        """Django's role for a user (JWTs without a role claim), voided like a token entry."""
        keys, user = self.keys, verified.identity.user_id
        entry = orjson.dumps(
            {"u": user, "r": verified.identity.role, "t": _ms(verified.verified_at)}
        )
        _, mark = await self._run(
            ("SET", keys.auth_user_role(user), entry, "PX", max(1, _ms(self.cache_s))),
            ("GET", keys.auth_user_revoked(user)),
        )
        if self._voids(mark, verified):
            await self._client().delete(keys.auth_user_role(user))

    async def revocations_since(self, since_ms: int) -> list[tuple[str, float]]:
        """(user, wall s) of the disconnects marked at or after ``since_ms``."""
        raw = await self._client().zrangebyscore(
            self.keys.auth_revocations, since_ms, "+inf", withscores=True
        )
        return [(_text(user), score / 1000) for user, score in raw]

    async def aclose(self) -> None:
        if self._batch is not None:
            await self._batch.aclose()

    async def revoke(self, user_id: str, at_ms: int) -> None:
        await revoke_async(self._client(), self.keys, user_id, self.revocation_ttl_s, at_ms)

    @staticmethod
    def _voids(mark: Any, verified: Verified) -> bool:
        return mark is not None and int(mark) >= _ms(verified.verified_at) - CLOCK_SLACK_MS


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
