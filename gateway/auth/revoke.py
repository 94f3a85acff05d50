"""``disconnect(user_id)``'s part in Redis: mark when the user was disconnected (JWTs issued
before it are refused, and so are cached token entries whose check began before it; the mark
goes on the user's key and on the list of recent disconnects that the nodes poll) and forget
the user's cached role. Entries named in the user's token set are deleted too: only the
previous release writes that set (this one writes none, its entries are voided by the mark),
so its entries go as well during a rolling upgrade. Run before the control message that closes
the user's connections. Shared by the nodes (``POST /api/disconnect``) and the publishers:
imports no aiohttp, and works with sync and asyncio redis clients alike.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gateway.backend import scripts
from gateway.backend.keys import Keys

DEFAULT_TTL_S = 86400


def revocation_ttl_from_env() -> int:
    """``GATEWAY_AUTH_REVOCATION_TTL_S``, as the nodes read it (publishers run in Django)."""
    raw = os.environ.get("GATEWAY_AUTH_REVOCATION_TTL_S")
    return int(raw) if raw not in (None, "") else DEFAULT_TTL_S


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _call(keys: Keys, user_id: str, at_ms: int, ttl_s: int) -> tuple[list[str], list[Any]]:
    return (
        [
            keys.auth_user_revoked(user_id),
            keys.auth_user_tokens(user_id),
            keys.auth_user_role(user_id),
        ],
        [at_ms, ttl_s],
    )


def _entries(keys: Keys, hashes: list[Any]) -> list[str]:
    return [keys.auth_token(h.decode() if isinstance(h, bytes) else str(h)) for h in hashes]


def _record(pipe: Any, keys: Keys, user_id: str, at_ms: int, ttl_s: int) -> Any:
    """The cluster-wide list of recent disconnects that the nodes poll (its own slot)."""
    pipe.zadd(keys.auth_revocations, {user_id: at_ms}, gt=True)
    pipe.zremrangebyscore(keys.auth_revocations, "-inf", f"({at_ms - ttl_s * 1000}")
    return pipe


def revoke_sync(
    client: Any, keys: Keys, user_id: str, ttl_s: int, at_ms: int | None = None
) -> None:
    at_ms = at_ms or now_ms()
    script = scripts.load(scripts.AUTH_REVOKE)
    hashes = script.run_sync(client, *_call(keys, user_id, at_ms, ttl_s))
    if hashes:
        client.delete(*_entries(keys, hashes))  # split by slot on a cluster
    _record(client.pipeline(transaction=False), keys, user_id, at_ms, ttl_s).execute()


async def revoke_async(
    client: Any, keys: Keys, user_id: str, ttl_s: int, at_ms: int | None = None
) -> None:
    at_ms = at_ms or now_ms()
    script = scripts.load(scripts.AUTH_REVOKE)
    hashes = await script.run(client, *_call(keys, user_id, at_ms, ttl_s))
    if hashes:
        await client.delete(*_entries(keys, hashes))
    await _record(client.pipeline(transaction=False), keys, user_id, at_ms, ttl_s).execute()
