"""Django integration: publish to the gateway from Django, disconnect users, and the two views
the gateway calls (token verification and client business events).

    # settings.py
    GATEWAY_REDIS_URL = "redis://redis:6379/0"

    from gateway.contrib.django import publish, publish_on_commit, disconnect
    publish_on_commit("proveedor_9", "reservation_accepted", {"id": 811, "estado": "aceptada"})

Importing this module imports neither aiohttp nor Django's ORM; the publisher is created lazily
from ``settings.GATEWAY_REDIS_URL`` (or the ``GATEWAY_REDIS_URL`` environment variable).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from gateway.backend.base import PublishResult
from gateway.contrib.django.presence import PresenceChange, presence_changed, presence_view
from gateway.publish import Publisher, PublishError

__all__ = [
    "PresenceChange",
    "PublishError",
    "disconnect",
    "get_publisher",
    "online",
    "presence_changed",
    "presence_view",
    "publish",
    "publish_on_commit",
    "receipts",
    "reset_publisher",
    "wait_for_receipt",
]

_lock = threading.Lock()
_publisher: Publisher | None = None


def _redis_url() -> str:
    from django.conf import settings

    url = getattr(settings, "GATEWAY_REDIS_URL", None) or os.environ.get("GATEWAY_REDIS_URL")
    if not url:
        raise RuntimeError("set GATEWAY_REDIS_URL in Django settings to publish to the gateway")
    return str(url)


def get_publisher() -> Publisher:
    """The process-wide publisher (thread-safe, created on first use)."""
    global _publisher
    with _lock:
        if _publisher is None:
            from django.conf import settings

            _publisher = Publisher.from_url(
                _redis_url(),
                prefix=getattr(settings, "GATEWAY_REDIS_PREFIX", None),
                history_size=getattr(settings, "GATEWAY_HISTORY_SIZE", None),
                history_ttl_s=getattr(settings, "GATEWAY_HISTORY_TTL_SECONDS", None),
            )
        return _publisher


def reset_publisher() -> None:
    """Forget the publisher (tests, or after changing settings)."""
    global _publisher
    with _lock:
        if _publisher is not None:
            _publisher.close()
        _publisher = None


def _rooms(room: str | Sequence[str]) -> list[str]:
    return [room] if isinstance(room, str) else list(room)


def publish(
    room: str | Sequence[str],
    type: str,
    payload: Any,
    idempotency_key: str | None = None,
    *,
    receipts: bool = False,
) -> PublishResult:
    """Publish now: history + fan-out, atomically per room. Returns offsets per room and the
    event id (``receipts=True``: receivers acknowledge it; see ``wait_for_receipt``)."""
    return get_publisher().publish_many(
        _rooms(room), type, payload, idempotency_key, receipts=receipts
    )


def publish_on_commit(
    room: str | Sequence[str],
    type: str,
    payload: Any,
    idempotency_key: str | None = None,
    using: str | None = None,
) -> None:
    """Publish after the current transaction commits; nothing if it rolls back. Outside a
    transaction (autocommit) it publishes at once, as Django's ``on_commit`` does."""
    from django.db import transaction

    rooms = _rooms(room)
    transaction.on_commit(
        lambda: get_publisher().publish_many(rooms, type, payload, idempotency_key), using=using
    )


def disconnect(user: Any) -> int:
    """Close every gateway connection of a user (a user object or an id) on every node."""
    user_id = getattr(user, "pk", user)
    return get_publisher().disconnect(str(user_id))


def online(users: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Cluster-wide online status of users (objects or ids): ``{userId: {"online",
    "connections", "lastSeen"}}``."""
    return get_publisher().online([getattr(u, "pk", u) for u in users])


def receipts(event_id: str) -> dict[str, Any] | None:
    """Who received an event published with ``receipts=True`` (see ``Publisher.receipts``)."""
    return get_publisher().receipts(event_id)


def wait_for_receipt(event_id: str, user: Any, timeout: float, *, poll_s: float = 0.1) -> bool:
    """True as soon as ``user`` (an object or an id) has acknowledged the event, in any of its
    rooms; False when ``timeout`` seconds pass first — the moment to fall back to e-mail or push:

        result = publish("cliente_42", "reservation_accepted", data, receipts=True)
        if not wait_for_receipt(result.event_id, 42, timeout=5):
            send_mail(...)

    It polls Redis (every ``poll_s``, one round trip each) and blocks the calling thread: call it
    from a task queue or a thread rather than a request that must answer at once. Broadcast rooms
    (``all_*``) only count their receivers, so a receipt there does not name the user.
    """
    user_id = str(getattr(user, "pk", user))
    deadline = time.monotonic() + timeout
    while True:
        found = get_publisher().receipts(event_id)
        for room in (found or {}).get("rooms", {}).values():
            users = room.get("users")
            if isinstance(users, dict) and user_id in users:
                return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(poll_s, left))
