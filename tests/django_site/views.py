"""The site's HTTP surface. Business rules live in ``business.py``, state in ``state.py``."""

from __future__ import annotations

import json
import time
from typing import Any

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from gateway.contrib.django import PresenceChange, presence_changed, presence_view
from tests.django_site import jwt_tokens
from tests.django_site.business import Rejected, judge
from tests.django_site.state import (
    EVENTS_MODES,
    PRESENCE_MODES,
    PROFILE_MODES,
    STATE,
    user_for_token,
)

AUTH_SCHEMES = ("token", "bearer")  # DRF TokenAuthentication and SimpleJWT; case-insensitive
INVALID_TOKEN = {"detail": "Invalid token."}


def _credentials(request: HttpRequest) -> tuple[str | None, str | None]:
    """(scheme as sent, token) from ``Authorization``, or (None, None)."""
    parts = request.headers.get("Authorization", "").split()
    if len(parts) != 2 or parts[0].lower() not in AUTH_SCHEMES:
        return None, None
    return parts[0], parts[1]


def _authenticate(token: str | None) -> dict[str, Any] | None:
    if token is None:
        return None
    with STATE.lock:
        if token in STATE.revoked:
            return None
    return user_for_token(token) or jwt_tokens.user_of(token)


def _unauthorized() -> JsonResponse:
    response = JsonResponse(INVALID_TOKEN, status=401)
    response["WWW-Authenticate"] = "Token"
    return response


def _answer(status: int, body: dict[str, Any] | None) -> HttpResponse:
    return HttpResponse(status=204) if body is None else JsonResponse(body, status=status)


@require_GET
def profile(request: HttpRequest) -> HttpResponse:
    scheme, token = _credentials(request)
    with STATE.lock:
        mode, slow_s = STATE.profile_mode, STATE.slow_seconds
        if token is None:
            STATE.profile_probes += 1
        else:
            STATE.profile_calls += 1
            STATE.profile_calls_by_token[token] += 1
            STATE.profile_schemes[str(scheme)] += 1
    if mode == "fail":
        return JsonResponse({"detail": "Server error (test)."}, status=500)
    if mode == "slow":
        time.sleep(slow_s)
    user = _authenticate(token)
    if mode == "late":  # the answer is decided, then on its way for slow_s (a revoke meanwhile
        time.sleep(slow_s)  # does not change it)
    return _unauthorized() if user is None else JsonResponse(user)


@require_POST
def events(request: HttpRequest) -> HttpResponse:
    scheme, token = _credentials(request)
    key = request.headers.get("Idempotency-Key")
    call: dict[str, Any] = {
        "auth_scheme": scheme,
        "token": token,
        "idempotency_key": key,
        "replayed": False,
    }
    try:
        call["body"] = json.loads(request.body)
    except ValueError:
        call["body"] = request.body.decode(errors="replace")
    status, body = _handle_event(call, _authenticate(token), key)
    call.update(status=status, response=body)
    with STATE.lock:
        STATE.events.append(call)
    return _answer(status, body)


def _handle_event(
    call: dict[str, Any], user: dict[str, Any] | None, key: str | None
) -> tuple[int, dict[str, Any] | None]:
    if user is None:
        return 401, INVALID_TOKEN
    call["user_id"] = user["id"]
    with STATE.lock:
        mode, slow_s, rooms = STATE.events_mode, STATE.slow_seconds, list(STATE.rooms)
        if key is not None and key in STATE.answered:
            call["replayed"] = True
            return STATE.answered[key]
    if mode == "reject":
        return 400, {"detail": "Rejected by test"}
    if mode == "fail":
        return 500, {"detail": "Server error (test)."}
    if mode == "slow":
        time.sleep(slow_s)
    body = call["body"]
    if not isinstance(body, dict):
        return 400, {"detail": "JSON parse error: expected an object."}
    try:
        with STATE.lock:
            obj = judge(body.get("type"), body.get("payload"), user, STATE.new_id)
    except Rejected as exc:
        return exc.status, exc.body
    if mode == "rooms":
        obj["rooms"] = rooms
    if mode == "receipts":
        obj["receipts"] = True  # the gateway asks the receivers to acknowledge the event
    answer: tuple[int, dict[str, Any] | None] = (204, None) if mode == "empty" else (201, obj)
    if key is not None:
        with STATE.lock:
            # Two concurrent first tries: the first to finish wins, as with a unique index.
            answer = STATE.answered.setdefault(key, answer)
    return answer


@require_POST
def control(request: HttpRequest) -> HttpResponse:
    """Change the behaviour: see ``tests.support.django_site.DjangoSite.control``."""
    try:
        changes = json.loads(request.body)
    except ValueError:
        return JsonResponse({"detail": "body must be JSON"}, status=400)
    error = _control_error(changes)
    if error:
        return JsonResponse({"detail": error}, status=400)
    if changes.get("reset"):
        jwt_tokens.JWT.reset()
    with STATE.lock:
        if changes.get("reset"):
            STATE.reset()
            caches["default"].clear()  # presence_view's last changeId per user
        for name in ("events_mode", "profile_mode", "rooms", "presence_mode"):
            if name in changes:
                setattr(STATE, name, changes[name])
        if "slow_seconds" in changes:
            STATE.slow_seconds = float(changes["slow_seconds"])
        STATE.revoked.update(changes.get("revoke", []))
        return JsonResponse(STATE.calls_report() | {"events": len(STATE.events)})


def _control_error(changes: object) -> str | None:
    allowed = {
        "events_mode",
        "profile_mode",
        "slow_seconds",
        "rooms",
        "revoke",
        "reset",
        "presence_mode",
    }
    if not isinstance(changes, dict):
        return "body must be a JSON object"
    unknown = set(changes) - allowed
    if unknown:
        return f"unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}"
    if changes.get("events_mode", "ok") not in EVENTS_MODES:
        return f"events_mode must be one of {sorted(EVENTS_MODES)}"
    if changes.get("profile_mode", "ok") not in PROFILE_MODES:
        return f"profile_mode must be one of {sorted(PROFILE_MODES)}"
    if changes.get("presence_mode", "ok") not in PRESENCE_MODES:
        return f"presence_mode must be one of {sorted(PRESENCE_MODES)}"
    for name in ("rooms", "revoke"):
        value = changes.get(name, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"{name} must be a list of strings"
    slow = changes.get("slow_seconds", 0)
    if not isinstance(slow, int | float) or isinstance(slow, bool) or slow < 0:
        return "slow_seconds must be a non-negative number"
    return None


@require_http_methods(["GET"])
def control_calls(request: HttpRequest) -> HttpResponse:
    with STATE.lock:
        return JsonResponse(STATE.calls_report())


@presence_changed
def _record_presence(change: PresenceChange) -> None:
    with STATE.lock:
        STATE.presence.append(change.as_dict())


@csrf_exempt
def presence(request: HttpRequest) -> HttpResponse:
    """The gateway's presence feed, through ``gateway.contrib.django.presence_view`` (which
    checks the API key, drops repeats and runs the hook above); ``presence_mode=fail``: 503."""
    with STATE.lock:
        STATE.presence_posts += 1
        failing = STATE.presence_mode == "fail"
    if failing:
        return JsonResponse({"detail": "Service unavailable (test)."}, status=503)
    response: HttpResponse = presence_view(request)
    return response


# --- JWTs (SimpleJWT) -------------------------------------------------------------------------
@require_GET
def jwks(request: HttpRequest) -> HttpResponse:
    """The public keys of the site's RS256 / ES256 tokens, as a JWKS."""
    document = jwt_tokens.JWT.jwks()
    if document is None:
        return JsonResponse({"detail": "JWKS unavailable (test)."}, status=503)
    return JsonResponse(document)


@require_http_methods(["GET", "POST"])
def control_jwt(request: HttpRequest) -> HttpResponse:
    """GET: the keys and the JWKS call count. POST ``{"action": ...}``: ``issue`` (options of
    ``jwt_tokens.issue``) -> ``{"token"}``; ``rotate`` -> ``{"kid"}`` of a new RSA key
    (``publish``: false keeps it out of the JWKS until ``publish`` with its ``kid``); ``jwks``
    with ``mode`` ``ok``/``fail``; ``role`` with ``userId``, ``role`` (the profile answer for
    tokens without a role claim). ``reset`` of /control/ resets it."""
    if request.method == "GET":
        return JsonResponse(jwt_tokens.JWT.describe())
    try:
        body = json.loads(request.body)
        action = body["action"]
        if action == "issue":
            return JsonResponse({"token": jwt_tokens.issue(body)})
        if action == "rotate":
            return JsonResponse({"kid": jwt_tokens.JWT.rotate(body.get("publish", True) is True)})
        with jwt_tokens.JWT.lock:
            if action == "publish":
                jwt_tokens.JWT.unpublished.discard(str(body["kid"]))
            elif action == "jwks":
                jwt_tokens.JWT.jwks_mode = str(body["mode"])
            elif action == "role":
                jwt_tokens.JWT.roles[str(body["userId"])] = str(body["role"])
            else:
                return JsonResponse({"detail": f"unknown action {action!r}"}, status=400)
    except (ValueError, KeyError, TypeError) as exc:
        return JsonResponse({"detail": f"bad request: {exc!r}"}, status=400)
    return JsonResponse({"ok": True})
