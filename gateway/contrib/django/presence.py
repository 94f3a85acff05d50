"""Online/offline changes from the gateway, in Django (contract §8).

The gateway's worker POSTs ``{"changes": [{"changeId", "userId", "role", "online", "ts"}]}`` to
``{GATEWAY_DJANGO_BASE_URL}{GATEWAY_DJANGO_PRESENCE_PATH}`` with ``Authorization: Bearer
<GATEWAY_PUBLISH_API_KEY>``. Mount ``presence_view`` there and register handlers:

    # urls.py
    from gateway.contrib.django import presence_view
    urlpatterns = [path("api/v1/presence/", presence_view)]

    # anywhere imported at startup (e.g. an AppConfig.ready)
    from gateway.contrib.django import presence_changed

    @presence_changed
    def on_presence(change):
        Profile.objects.filter(user_id=change.user_id).update(online=change.online)

Each handler gets a ``PresenceChange`` (``change_id``, ``user_id``, ``role``, ``online``, ``ts``),
once per change, in order per user. The view answers 2xx only when every handler returned, so a
change whose handler raised is sent again (with the rest of its batch). A batch that was delivered
but whose answer was lost is sent again too: the view remembers the last ``changeId`` handled per
user in Django's cache (``GATEWAY_PRESENCE_CACHE``, default ``"default"``; use a shared cache such
as Redis when Django runs several processes) and skips changes it has already handled.

This module imports nothing from Django at import time and needs no Django app or DRF.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from typing import Any

from gateway.backend.online import PresenceChange

__all__ = ["PresenceChange", "presence_changed", "presence_view"]

Handler = Callable[[PresenceChange], object]
_handlers: list[Handler] = []
SEEN_TTL_S = 30 * 86400
MAX_CHANGES = 10_000


def presence_changed(fn: Handler) -> Handler:
    """Register ``fn(change)`` to run for every online/offline change."""
    _handlers.append(fn)
    return fn


def _order(change_id: str) -> tuple[int, int]:
    ms, _, seq = change_id.partition("-")
    return int(ms), int(seq or 0)


def _parse(raw: Any) -> PresenceChange:
    if not isinstance(raw, dict):
        raise ValueError("each change must be an object")
    change = PresenceChange(
        change_id=str(raw["changeId"]),
        user_id=str(raw["userId"]),
        role=str(raw.get("role", "")),
        online=bool(raw["online"]),
        ts=int(raw["ts"]),
    )
    _order(change.change_id)  # a changeId that does not order is malformed
    return change


def _api_key() -> str:
    from django.conf import settings

    key = getattr(settings, "GATEWAY_PUBLISH_API_KEY", None) or os.environ.get(
        "GATEWAY_PUBLISH_API_KEY"
    )
    return str(key or "")


def _authorized(request: Any) -> bool:
    key = _api_key()
    given = request.headers.get("Authorization", "")
    return bool(key) and hmac.compare_digest(given.encode(), f"Bearer {key}".encode())


def _cache() -> Any:
    from django.conf import settings
    from django.core.cache import caches

    return caches[getattr(settings, "GATEWAY_PRESENCE_CACHE", "default")]


def handle_changes(changes: list[PresenceChange]) -> int:
    """Run the handlers for every change not handled before; returns how many ran."""
    cache = _cache()
    handled = 0
    for change in changes:
        key = f"gateway:presence:last:{change.user_id}"
        last = cache.get(key)
        if last is not None and _order(str(last)) >= _order(change.change_id):
            continue  # a repeat of a batch already handled
        for handler in _handlers:
            handler(change)
        cache.set(key, change.change_id, SEEN_TTL_S)
        handled += 1
    return handled


def presence_view(request: Any) -> Any:
    """``POST`` from the gateway; 401 without the API key, 400 for a malformed body."""
    from django.http import JsonResponse

    if request.method != "POST":
        return JsonResponse({"detail": "POST only"}, status=405)
    if not _authorized(request):
        return JsonResponse({"detail": "a valid Bearer API key is required"}, status=401)
    try:
        body = json.loads(request.body)
        raw = body["changes"]
        if not isinstance(raw, list) or len(raw) > MAX_CHANGES:
            raise ValueError("changes must be a list")
        changes = [_parse(c) for c in raw]
    except (ValueError, KeyError, TypeError) as exc:
        return JsonResponse({"detail": f"malformed presence batch: {exc}"}, status=400)
    return JsonResponse({"handled": handle_changes(changes)})


presence_view.csrf_exempt = True  # type: ignore[attr-defined]  # called by a server, with a key
