"""Who a token belongs to, asked of the cheapest source that can answer:

1. this node's memory (``local``): tokens verified here or fetched from Redis recently;
2. a JWT we can verify (``jwt_verify``): its signature and claims, and the user's revocation
   mark — known here from the control messages and a poll of Redis's list of recent
   disconnects, read from Redis only while that poll is late — (and Django's role for the user
   when the token has no role claim);
3. the cluster-wide cache in Redis (``shared``), for any other token: an entry is void while
   the user's revocation mark is not older than it (the mark known here, read from Redis only
   while the poll is late);
4. Django's ``profile/``, whose answer is then cached in Redis and here.

A Redis that fails is skipped for the cache (Django answers instead); a JWT's revocation mark
cannot be skipped, so with no recent poll and no Redis the answer is ``auth_unavailable``.
``disconnect(user_id)`` reaches ``forget_user`` on every node (the control message) and
``revoke`` on the node or publisher that was asked (Redis); a check that was in flight when its
user was disconnected is done again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import Any

import aiohttp

from gateway.auth.jwt_verify import Claims, JwtVerifier, invalid
from gateway.auth.local import LocalTokens, Verified
from gateway.auth.revoke import now_ms
from gateway.auth.shared import CLOCK_SLACK_MS, SharedTokens, voided
from gateway.backend.batch import make_batcher
from gateway.backend.keys import Keys
from gateway.closecodes import AuthErrorCode
from gateway.config import Settings
from gateway.djangoapi import AuthFailure, DjangoClient
from gateway.rooms import Identity

log = logging.getLogger("gateway.auth")

# A control character cannot be in a header (CR/LF would be header injection): no such token.
_NOT_A_TOKEN = re.compile(r"[\x00-\x1f\x7f]")
# How often a node reads the list of recent disconnects; its marks stand for Redis's for a
# JWT check while the last poll is under two periods old.
POLL_S = 2.0
_REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)
try:
    from redis.exceptions import RedisError

    _REDIS_ERRORS = (*_REDIS_ERRORS, RedisError)
except ImportError:  # pragma: no cover
    pass


def token_hash(token: str) -> str:
    """The only form in which a token is ever a key, in memory or in Redis."""
    return hashlib.sha256(token.encode()).hexdigest()


def _unavailable(message: str) -> AuthFailure:
    return AuthFailure(AuthErrorCode.AUTH_UNAVAILABLE, message)


class Authenticator:
    def __init__(
        self,
        settings: Settings,
        django: DjangoClient,
        shared: SharedTokens | None = None,
        metrics: Any = None,
    ) -> None:
        self.django = django
        self.shared = shared
        self.metrics = metrics
        self.cache_s = settings.auth_cache_s
        self.local = LocalTokens(settings.auth_revocation_ttl_s)
        self.jwt = JwtVerifier.from_settings(settings, self._fetch)
        self._polled_at: float | None = None  # monotonic time of the last complete poll
        self._polled_to_ms = 0  # the latest mark seen by a poll

    @classmethod
    def for_backend(
        cls, settings: Settings, backend: Any, django: DjangoClient, metrics: Any = None
    ) -> Authenticator:
        """With a Redis backend the cache is shared through the backend's own client."""
        shared = None
        if backend.name == "redis":
            shared = SharedTokens(
                lambda: backend.client,
                Keys(settings.redis_prefix),
                cache_s=settings.auth_cache_s,
                revocation_ttl_s=settings.auth_revocation_ttl_s,
                # a group commit of its own; a Cluster's keys are on several masters: redis-py
                batch=None
                if settings.cluster_mode
                else make_batcher(backend.client, settings.django_timeout),
            )
        return cls(settings, django, shared, metrics)

    # --- asked by the node --------------------------------------------------------------------
    def cached(self, token: str) -> bool:
        """Whether ``verify(token)`` should answer without waiting on Django or Redis: the
        token is in this node's memory, or it looks like a JWT and the revocation marks are
        known here (the ``/ws`` fast path then sends its 101 with the answer, in one write)."""
        if self.jwt is not None and token.count(".") == 2 and self._marks_known():
            return True
        return self.local.get(token_hash(token)) is not None

    async def verify(self, token: str) -> Identity:
        """The token's identity; raises ``AuthFailure``."""
        if not token or _NOT_A_TOKEN.search(token):
            raise invalid("invalid token")
        key = token_hash(token)
        hit = self.local.get(key)
        if hit is not None:
            self._count("memory")
            return hit.identity
        for _ in range(2):  # once more if the user was disconnected while we checked
            verified = await self._verify(token, key)
            user = verified.identity.user_id
            if not self.local.revoked_since(user, verified.verified_at):
                self.local.put(key, verified)
                return verified.identity
            log.debug("user %s was disconnected during a token check: checking again", user)
        raise _unavailable("authentication interrupted by a disconnect, retry")

    async def follow_revocations(self) -> None:
        """Run by the node: poll Redis's list of recent disconnects every ``POLL_S`` (the whole
        list at first), so this node knows every user's mark and a JWT check needs no Redis
        call. The control message still tells it at once; the poll covers one it missed."""
        if self.shared is None:
            return  # embedded: every disconnect is this process's own
        task = asyncio.current_task()
        try:
            while task is None or not task.cancelling():  # redis-py can swallow a cancel()
                try:
                    await self._poll_revocations()
                except _REDIS_ERRORS as exc:
                    log.debug("revocation poll failed: %s", type(exc).__name__)
                await asyncio.sleep(POLL_S)
        finally:  # the node stops: the cache's own connection goes with this task
            await self.shared.aclose()

    async def _poll_revocations(self) -> None:
        assert self.shared is not None
        started = time.monotonic()
        since_ms = self._polled_to_ms - CLOCK_SLACK_MS if self._polled_to_ms else 0
        for user_id, at in await self.shared.revocations_since(since_ms):
            self.local.forget_user(user_id, at)
            self._polled_to_ms = max(self._polled_to_ms, int(at * 1000))
        self._polled_at = started

    def _marks_known(self) -> bool:
        """Whether this node's marks can stand for Redis's: polled recently and complete (in
        embedded mode they are this process's own)."""
        if self.shared is None:
            return True
        fresh = self._polled_at is not None and time.monotonic() - self._polled_at < 2 * POLL_S + 1
        return fresh and self.local.complete

    def forget_user(self, user_id: str) -> None:
        """The control message of ``disconnect(user_id)``: forget the user here."""
        self.local.forget_user(user_id, time.time())

    async def revoke(self, user_id: str) -> None:
        """``disconnect(user_id)`` asked of this node: mark and forget the user cluster-wide
        (raises the backend's error), then here."""
        at_ms = now_ms()
        if self.shared is not None:
            await self.shared.revoke(user_id, at_ms)
        self.local.forget_user(user_id, at_ms / 1000)

    # --- the sources --------------------------------------------------------------------------
    async def _verify(self, token: str, key: str) -> Verified:
        if self.jwt is not None:
            header = self.jwt.header(token)
            if header is not None:
                return await self._verify_jwt(token, header)
        if self.shared is not None:
            hit = await self._shared_get(key)
            if hit is not None:
                return hit
        started = time.time()
        identity = await self.django.verify(token)
        self._count("django")
        verified = Verified(identity, started, started + self.cache_s)
        if self.shared is not None and self.cache_s > 0:
            await self._shared_call("put", self.shared.put(key, verified))
        return verified

    async def _shared_get(self, key: str) -> Verified | None:
        """An entry of the cluster-wide cache, unless the user's mark voids it: the mark this
        node knows while its marks are current, else the one in Redis (a node whose poll is
        late cannot tell a disconnect it missed). No mark to be had: Django decides."""
        assert self.shared is not None
        hit: Verified | None = await self._shared_call("get", self.shared.get(key))
        if hit is None:
            return None
        user = hit.identity.user_id
        mark = self.local.revoked_at(user)
        if not self._marks_known():
            try:
                shared_mark = await self.shared.revoked_at(user)
            except _REDIS_ERRORS as exc:
                self._redis_error("revoked_at", exc)
                return None
            if shared_mark is not None:
                mark = max(mark or 0.0, shared_mark)
        if voided(mark, hit):
            return None
        self._count("redis")
        return hit

    async def _verify_jwt(self, token: str, header: dict[str, Any]) -> Verified:
        assert self.jwt is not None
        started = time.time()
        claims = await self.jwt.verify(token, header)
        mark, cached_role = await self._user_state(claims.user_id, claims.role is None)
        if mark is not None and (claims.issued_at is None or claims.issued_at < mark):
            raise invalid("token revoked")
        expires_at = min(started + self.cache_s, claims.expires_at)
        role = claims.role or (cached_role.identity.role if cached_role else None)
        if role is None:
            return await self._role_from_django(token, claims, started, expires_at)
        self._count("jwt")
        return Verified(Identity(claims.user_id, role), started, expires_at)

    async def _user_state(
        self, user_id: str, need_role: bool
    ) -> tuple[float | None, Verified | None]:
        mark = self.local.revoked_at(user_id)
        role = self.local.role(user_id)
        if self.shared is not None and not (self._marks_known() and (role or not need_role)):
            try:
                shared_mark, shared_role = await self.shared.user_state(user_id)
            except _REDIS_ERRORS as exc:
                self._redis_error("user_state", exc)
                raise _unavailable("authentication unavailable, retry later") from None
            if shared_mark is not None:
                mark = max(mark or 0.0, shared_mark)
            role = role or shared_role
        return mark, role

    async def _role_from_django(
        self, token: str, claims: Claims, started: float, expires_at: float
    ) -> Verified:
        """A JWT without a role claim: Django's profile answer, cached per user."""
        identity = await self.django.verify(token)
        self._count("django")
        if identity.user_id != claims.user_id:
            raise invalid("token's user differs from Django's answer")
        role = Verified(identity, started, started + self.cache_s)
        if not self.local.revoked_since(identity.user_id, started):
            self.local.put_role(role)
        if self.shared is not None and self.cache_s > 0:
            await self._shared_call("put_role", self.shared.put_role(role))
        return Verified(identity, started, expires_at)

    async def _shared_call(self, op: str, call: Any) -> Any:
        """A cache read or write in Redis; a failure is logged and counted, never fatal."""
        try:
            return await call
        except _REDIS_ERRORS as exc:
            self._redis_error(op, exc)
            return None

    def _redis_error(self, op: str, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.redis_errors.labels(f"auth_{op}").inc()
        log.warning("token cache %s failed: %s", op, type(exc).__name__)

    def _count(self, source: str) -> None:
        if self.metrics is not None:
            self.metrics.auth_sources.labels(source).inc()

    async def _fetch(self, url: str) -> bytes:
        """GET for the JWKS, on Django's pooled HTTP session."""
        try:
            async with self.django.http.get(
                url, timeout=self.django.timeout, headers={"Accept": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise OSError(f"answered {resp.status}")
                return await resp.read()
        except (aiohttp.ClientError, RuntimeError) as exc:  # RuntimeError: session closed
            raise OSError(type(exc).__name__) from None
