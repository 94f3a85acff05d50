"""Talking to Django's REST API: token verification, business events as the user, and the
periodic reachability probe. One pooled aiohttp ClientSession; a circuit breaker stops us
hammering a Django that is down. Tokens are never logged. Answers are cached by ``gateway.auth``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.closecodes import AuthErrorCode
from gateway.config import Settings
from gateway.rooms import ROLES, Identity

log = logging.getLogger("gateway.django")

# A control character cannot be in a header (CR/LF would be header injection): no such token.
_NOT_A_TOKEN = re.compile(r"[\x00-\x1f\x7f]")


class AuthFailure(Exception):
    def __init__(self, code: AuthErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class EventOutcome:
    status: str  # "ok" | "rejected" | "unavailable"
    body: Any = None
    message: str = ""
    fields: dict[str, Any] | None = None


@dataclass(slots=True)
class ProbeState:
    reachable: bool | None = None
    latency_ms: float | None = None
    checked_at_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reachable": self.reachable,
            "latencyMs": self.latency_ms,
            "checkedAt": self.checked_at_ms,
        }


@dataclass(slots=True)
class CircuitBreaker:
    failures_to_open: int
    reset_s: float
    failures: int = 0
    opened_at: float | None = None
    trial_in_flight: bool = field(default=False)

    def allow(self) -> bool:
        if self.opened_at is None:
            return True
        if time.monotonic() - self.opened_at >= self.reset_s and not self.trial_in_flight:
            self.trial_in_flight = True  # half-open: let one request through
            return True
        return False

    def success(self) -> None:
        if self.opened_at is not None:
            log.info("Django answers again: circuit closed")
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def failure(self) -> None:
        self.failures += 1
        self.trial_in_flight = False
        if self.failures >= self.failures_to_open:
            if self.opened_at is None:
                log.warning("Django unavailable: circuit open for %.1fs", self.reset_s)
            self.opened_at = time.monotonic()

    @property
    def open(self) -> bool:
        return self.opened_at is not None


def parse_identity(body: Any) -> Identity:
    if not isinstance(body, dict) or "id" not in body or body.get("role") not in ROLES:
        raise ValueError("profile answer lacks 'id' or a known 'role'")
    user_id = body["id"]
    if isinstance(user_id, bool) or not isinstance(user_id, int | str) or user_id == "":
        raise ValueError("profile 'id' must be an integer or a string")
    return Identity(user_id=str(user_id), role=body["role"])


class DjangoClient:
    def __init__(self, settings: Settings, metrics: Any = None) -> None:
        self.base_url = settings.django_base_url
        self.profile_url = settings.django_base_url + "profile/"
        self.events_url = settings.django_base_url + settings.django_events_path
        self.scheme = settings.django_auth_scheme
        self.timeout = aiohttp.ClientTimeout(total=settings.django_timeout)
        self.breaker = CircuitBreaker(
            settings.django_breaker_failures, settings.django_breaker_reset_s
        )
        self.probe = ProbeState()
        self.metrics = metrics
        self._inflight: dict[str, asyncio.Future[Identity]] = {}
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # cleanup of closed connections is a workaround for TLS peers that never finish their
        # shutdown (a 2 s timer of its own): only worth it for https
        tls = self.base_url.startswith("https:")
        connector = aiohttp.TCPConnector(limit=200, ttl_dns_cache=60, enable_cleanup_closed=tls)
        self._http = aiohttp.ClientSession(
            connector=connector, json_serialize=lambda o: orjson.dumps(o).decode()
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "DjangoClient.start() was not called"
        return self._http

    def _auth_header(self, token: str) -> dict[str, str]:
        return {"Authorization": f"{self.scheme} {token}", "Accept": "application/json"}

    def _observe(self, what: str, started: float) -> None:
        if self.metrics is not None:
            self.metrics.django_latency.labels(what).observe(time.monotonic() - started)

    # --- authentication ------------------------------------------------------------------------
    async def verify(self, token: str) -> Identity:
        """Django's identity for a token; raises ``AuthFailure``. Concurrent verifications of
        one token share a single request. Not cached here: ``gateway.auth`` caches answers."""
        if not token or _NOT_A_TOKEN.search(token):
            raise AuthFailure(AuthErrorCode.INVALID_TOKEN, "invalid token")
        inflight = self._inflight.get(token)
        if inflight is not None:
            return await asyncio.shield(inflight)
        fut: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()
        self._inflight[token] = fut
        try:
            identity = await self._verify_remote(token)
        except AuthFailure as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            fut.set_result(identity)
            return identity
        finally:
            del self._inflight[token]

    async def _verify_remote(self, token: str) -> Identity:
        unavailable = AuthFailure(
            AuthErrorCode.AUTH_UNAVAILABLE, "authentication service unavailable, retry later"
        )
        if not self.breaker.allow():
            raise unavailable
        started = time.monotonic()
        try:
            async with self.http.get(
                self.profile_url, headers=self._auth_header(token), timeout=self.timeout
            ) as resp:
                status = resp.status
                body = await resp.read() if status == 200 else b""
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.breaker.failure()
            log.warning("token verification failed: Django unreachable (%s)", type(exc).__name__)
            raise unavailable from None
        finally:
            self._observe("profile", started)
        if status in (401, 403):
            self.breaker.success()
            raise AuthFailure(AuthErrorCode.INVALID_TOKEN, "invalid token")
        if status != 200:
            if status >= 500:
                self.breaker.failure()
            log.warning("token verification failed: Django answered %d", status)
            raise unavailable
        self.breaker.success()
        try:
            return parse_identity(orjson.loads(body))
        except (orjson.JSONDecodeError, ValueError) as exc:
            log.error("Django's profile answer is not usable: %s", exc)
            raise unavailable from None

    # --- business events -------------------------------------------------------------------
    async def send_event(
        self, token: str, event_id: str, type_: str, payload: dict[str, Any]
    ) -> EventOutcome:
        if not self.breaker.allow():
            return EventOutcome("unavailable", message="Django is unavailable")
        headers = {**self._auth_header(token), "Idempotency-Key": event_id}
        started = time.monotonic()
        try:
            async with self.http.post(
                self.events_url,
                data=orjson.dumps({"eventId": event_id, "type": type_, "payload": payload}),
                headers={**headers, "Content-Type": "application/json"},
                timeout=self.timeout,
            ) as resp:
                status = resp.status
                raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.breaker.failure()
            reason = type(exc).__name__
            log.warning("event %s not confirmed: Django unreachable (%s)", type_, reason)
            return EventOutcome("unavailable", message="Django is unavailable")
        finally:
            self._observe("events", started)
        if 200 <= status < 300:
            self.breaker.success()
            return EventOutcome("ok", body=self._json_or_none(raw))
        if 400 <= status < 500:
            self.breaker.success()
            return self._rejection(status, self._json_or_none(raw))
        self.breaker.failure()
        log.warning("event %s not confirmed: Django answered %d", type_, status)
        return EventOutcome("unavailable", message=f"Django answered {status}")

    @staticmethod
    def _json_or_none(raw: bytes) -> Any:
        if not raw.strip():
            return None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None

    @staticmethod
    def _rejection(status: int, body: Any) -> EventOutcome:
        message = f"Django rejected the event ({status})"
        fields = None
        if isinstance(body, dict):
            detail = body.get("detail")
            if isinstance(detail, str):
                message = detail
            fields = {k: v for k, v in body.items() if k != "detail"} or None
        elif isinstance(body, list) and body and isinstance(body[0], str):
            message = body[0]
        return EventOutcome("rejected", message=message, fields=fields)

    # --- probe -----------------------------------------------------------------------------
    async def probe_once(self) -> ProbeState:
        started = time.monotonic()
        reachable = True
        try:
            async with self.http.get(self.profile_url, timeout=self.timeout) as resp:
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            reachable = False
        latency = round((time.monotonic() - started) * 1000, 2)
        if reachable != self.probe.reachable:
            if reachable:
                log.info("Django API reachable at %s (%.0f ms)", self.base_url, latency)
            else:
                log.warning("Django API unreachable at %s", self.base_url)
        self.probe.reachable = reachable
        self.probe.latency_ms = latency if reachable else None
        self.probe.checked_at_ms = int(time.time() * 1000)
        return self.probe
