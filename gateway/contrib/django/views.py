"""The Django side of the gateway's contract (CONTRACT sections 2 and 5), with DRF.

``profile_view``: ``GET {base}profile/`` — who is this token? Answers ``{"id", "role",
"username"}`` with DRF's configured authentication (TokenAuthentication, SimpleJWT, …).

``events_view``: ``POST {base}events/`` — a client business event, sent by the gateway *as the
user*. Handlers registered with ``@gateway_event("reservation_created")`` turn it into model
writes with Django's own permissions and return the canonical object (optionally with
``"rooms"``). Raise DRF's ``ValidationError`` (400, field errors) or ``PermissionDenied`` (403)
to reject. Retries carrying the same ``Idempotency-Key`` get the first answer from the cache.

    urlpatterns = [
        path("api/v1/profile/", profile_view),
        path("api/v1/events/", events_view),
    ]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils.module_loading import import_string
from rest_framework import status
from rest_framework.decorators import api_view, permission_classes
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

Handler = Callable[[Request, dict[str, Any], str], dict[str, Any] | None]
_handlers: dict[str, Handler] = {}

IDEMPOTENCY_TTL_S = 300


def gateway_event(event_type: str) -> Callable[[Handler], Handler]:
    """Register the handler of one business event type."""

    def register(fn: Handler) -> Handler:
        _handlers[event_type] = fn
        return fn

    return register


def default_role(user: Any) -> str:
    if user.is_staff or user.is_superuser:
        return "admin"
    role = getattr(user, "role", None) or getattr(getattr(user, "profile", None), "role", None)
    return str(role or "cliente")


def _role_of(user: Any) -> str:
    resolver = getattr(settings, "GATEWAY_ROLE_RESOLVER", None)
    fn = import_string(resolver) if isinstance(resolver, str) else default_role
    return str(fn(user))


@api_view(["GET"])
@permission_classes([IsAuthenticated])
def profile_view(request: Request) -> Response:
    user = request.user
    return Response({"id": user.pk, "role": _role_of(user), "username": user.get_username()})


@api_view(["POST"])
@permission_classes([IsAuthenticated])
def events_view(request: Request) -> Response:
    body = request.data
    if not isinstance(body, dict):
        raise ValidationError({"detail": "expected a JSON object"})
    event_type = body.get("type")
    payload = body.get("payload")
    event_id = str(body.get("eventId") or request.headers.get("Idempotency-Key") or "")
    handler = _handlers.get(str(event_type))
    if handler is None:
        return Response({"detail": f"unknown event type {event_type!r}"}, status=400)
    if not isinstance(payload, dict):
        raise ValidationError({"payload": ["expected an object"]})
    key = f"gateway:event:{request.user.pk}:{event_id}" if event_id else None
    if key is not None and (seen := cache.get(key)) is not None:
        return Response(seen, status=status.HTTP_200_OK)
    answer = handler(request, payload, event_id)
    if answer is None:
        return Response(status=status.HTTP_204_NO_CONTENT)
    if key is not None:
        cache.set(key, answer, IDEMPOTENCY_TTL_S)
    return Response(answer, status=status.HTTP_201_CREATED)
