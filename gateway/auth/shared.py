"""The cluster-wide token cache in Redis, so a client that reconnects to another node (a storm
after a node loss) is not verified with Django again.

A token Django verified is stored under its sha256 (never the token) with the identity and when
the check began (``t``), for ``GATEWAY_AUTH_CACHE_S``: one ``SET``, one round trip also on a
Redis Cluster. ``disconnect(user_id)`` does not delete the user's entries: it writes the user's
revocation mark (``revoke.py``), and an entry is void while the mark is not older than its
``t`` (``CLOCK_SLACK_MS`` allowed). The reader applies that rule (``authenticator``): with the
mark every node keeps in memory (the control message, and a poll of the recent disconnects)
while those marks are current, else with the mark read from Redis. So a check that was still
running when its user was disconnected writes an entry that is void from the start: nothing has
to be undone after the write.

A hit costs one ``GET`` (and one more, of the user's mark, only while the node's poll is late);
a miss that Django answers costs the ``GET`` and the ``SET``. They go through a group commit of
their own (``gateway.backend.batch``) on a single Redis, so the checks of a storm share round
trips.

An entry is a JSON array ``[user, role, t]``. The previous release wrote ``{"u", "r", "t"}``
objects and named each in a per-user set that ``disconnect`` reads: its entries are read here
too (the same rule), and deleted by a ``disconnect`` of either release. Its nodes cannot parse
an array, so to them an entry of this release is a miss (Django answers): they never accept
one, since they would trust it on their local marks alone (docs/deployment.md, the cutover).
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
        batch: Any = None,
    ) -> None:
        self._client = client  # the backend's client, looked up at each use
        self._batch = batch  # a gateway.backend.batch group commit, or None
        self.keys = keys
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
        """The entry, whatever its ``t``: the caller voids it against the user's mark."""
        [raw] = await self._run(("GET", self.keys.auth_token(token_hash)))
        return None if raw is None else self._parse(raw)

    def _parse(self, raw: bytes) -> Verified | None:
        try:
            entry = orjson.loads(raw)
            if isinstance(entry, list):  # this release's token entries
                user, role, at_ms = str(entry[0]), entry[1], int(entry[2])
            else:  # role entries, and the previous release's token entries
                user, role, at_ms = str(entry["u"]), entry["r"], int(entry["t"])
        except (orjson.JSONDecodeError, IndexError, KeyError, TypeError, ValueError):
            return None
        if role not in ROLES or not user:
            return None
        at = at_ms / 1000
        return Verified(Identity(user, role), at, at + self.cache_s)

    async def put(self, token_hash: str, verified: Verified) -> None:
        """One ``SET``. An entry must not outlive a mark that voids it: the mark is kept for
        ``GATEWAY_AUTH_REVOCATION_TTL_S``, so the entry lives half of that at most."""
        ttl_ms = min(
            _ms(verified.expires_at - verified.verified_at), _ms(self.revocation_ttl_s) // 2
        )
        if ttl_ms <= 0:
            return
        identity = verified.identity
        entry = orjson.dumps([identity.user_id, identity.role, _ms(verified.verified_at)])
        await self._run(("SET", self.keys.auth_token(token_hash), entry, "PX", ttl_ms))

    async def revoked_at(self, user_id: str) -> float | None:
        """The user's last disconnect (wall s) as Redis has it: one ``GET``."""
        [raw] = await self._run(("GET", self.keys.auth_user_revoked(user_id)))
        return None if raw is None else int(raw) / 1000

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
        if mark is not None and voided(int(mark) / 1000, verified):
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


def voided(mark: float | None, verified: Verified) -> bool:
    """Whether a disconnect at ``mark`` (wall s) voids what a check begun at ``verified_at``
    found: the mark is not older than the check, by ``CLOCK_SLACK_MS``."""
    return mark is not None and round(mark * 1000) >= _ms(verified.verified_at) - CLOCK_SLACK_MS


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
