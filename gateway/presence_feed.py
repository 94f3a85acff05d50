"""Online/offline changes POSTed to Django (contract §8).

``{GATEWAY_DJANGO_BASE_URL}{GATEWAY_DJANGO_PRESENCE_PATH}`` receives batches ``{"changes":
[{"changeId", "userId", "role", "online", "ts"}]}`` with ``Authorization: Bearer
<GATEWAY_PUBLISH_API_KEY>``. A batch is retried (with backoff) until Django answers 2xx and only
then forgotten, so nothing is lost while Django is down and changes stay in order per user.
``changeId`` only grows, so a receiver that keeps the last one per user drops a repeated batch
(``gateway.contrib.django.presence_view`` does).

With Redis the worker reads the ``gateway:presence`` stream (worker/presence.py); in embedded mode
the node posts what its in-memory store recorded (``feed_from_memory``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from gateway.backend.online import PresenceChange
from gateway.config import Settings

log = logging.getLogger("gateway.presence")


def presence_url(settings: Settings) -> str | None:
    """Where changes go, or None when they are not to be sent (logged once)."""
    if not settings.django_presence_path:
        return None
    if settings.publish_api_key is None:
        log.error(
            "GATEWAY_DJANGO_PRESENCE_PATH is set but GATEWAY_PUBLISH_API_KEY is not: presence "
            "changes are not sent to Django (the key authenticates them)"
        )
        return None
    return settings.django_base_url + settings.django_presence_path.lstrip("/")


class PresencePoster:
    def __init__(self, url: str, api_key: str, timeout_s: float) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.failing_since: float | None = None
        self.posted = 0

    async def post(self, changes: Sequence[PresenceChange]) -> bool:
        """True once Django answered 2xx; False (logged once per outage) otherwise."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = orjson.dumps({"changes": [c.as_dict() for c in changes]})
        try:
            async with self._session.post(self.url, data=body, headers=self._headers) as response:
                await response.read()
                ok = 200 <= response.status < 300
                why = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, why = False, type(exc).__name__
        if ok:
            self.posted += len(changes)
            if self.failing_since is not None:
                log.info(
                    "Django accepts presence changes again after %.1fs",
                    time.monotonic() - self.failing_since,
                )
                self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning("Django did not accept presence changes (%s); retrying", why)
        return ok

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def feed_from_memory(store: Any, poster: PresencePoster, batch: int) -> None:
    """Embedded mode: post the changes the node's ``MemoryOnline`` recorded, oldest first."""
    delay_s = 0.5
    try:
        while True:
            if not store.changes:
                store.changed.clear()
                await store.changed.wait()
                continue
            changes = [store.changes[i] for i in range(min(batch, len(store.changes)))]
            if await poster.post(changes):
                delay_s = 0.5
                sent = {c.change_id for c in changes}
                while store.changes and store.changes[0].change_id in sent:
                    store.changes.popleft()
            else:
                await asyncio.sleep(delay_s)
                delay_s = min(10.0, delay_s * 2)
    finally:
        await poster.close()


def embedded_feed(settings: Settings, store: Any) -> Any:
    """The coroutine that posts an embedded node's changes, or None (Redis: the worker does)."""
    url = presence_url(settings)
    if url is None or settings.publish_api_key is None or not hasattr(store, "changes"):
        return None
    key = settings.publish_api_key.get_secret_value()
    poster = PresencePoster(url, key, settings.django_timeout)
    return feed_from_memory(store, poster, settings.presence_batch)


def changes_from_stream(entries: Sequence[tuple[Any, dict[Any, Any]]]) -> list[PresenceChange]:
    """Stream entries -> changes; malformed entries (not written by a node) are skipped."""
    out = []
    for entry_id, raw in entries:
        fields = {_s(k): _s(v) for k, v in (raw or {}).items()}
        try:
            out.append(
                PresenceChange(
                    change_id=_s(entry_id),
                    user_id=fields["userId"],
                    role=fields.get("role", ""),
                    online=fields["online"] == "1",
                    ts=int(fields["ts"]),
                )
            )
        except (KeyError, ValueError):
            log.warning("skipping malformed presence entry %s", _s(entry_id))
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
