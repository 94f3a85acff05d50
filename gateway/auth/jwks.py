"""Signing keys from a JWKS URL (``GATEWAY_JWT_JWKS_URL``), cached.

The set is fetched on first use and again after ``MAX_AGE_S`` (in the background: the keys in
hand keep serving), and at once for a ``kid`` we do not know — an issuer that rotated its key —
but never more than once per ``MIN_REFRESH_S``, so tokens with made-up key ids cannot make us
hammer the URL. While the URL is down the last good keys stay in use. A token whose key is
unknown is refused only when a set fetched for it lacks the key; when no fetch was possible it
is ``auth_unavailable`` (retry), since it may be signed with a key we have not seen yet.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from gateway.auth.keyfiles import family

log = logging.getLogger("gateway.auth")

MIN_REFRESH_S = 5.0
MAX_AGE_S = 300.0

# GET the URL's body; raises OSError (or TimeoutError) when it cannot
Fetch = Callable[[str], Awaitable[bytes]]


class JwksUnavailable(Exception):
    """The token's key is not known and the set cannot be fetched now: judge it later."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: Any  # a cryptography public key object
    family: str  # "RSA" or "EC"
    algorithm: str | None  # the JWK's "alg", when it names one


def parse_jwks(raw: bytes) -> dict[str | None, SigningKey]:
    """The usable signature keys of a JWKS document by ``kid``; ValueError when there is none."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError("the JWKS is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    keys: dict[str | None, SigningKey] = {}
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") not in ("RSA", "EC"):
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key we cannot use does not spoil the others
        alg = entry.get("alg")
        keys[entry.get("kid")] = SigningKey(
            jwk.key, entry["kty"], alg if isinstance(alg, str) else None
        )
    if not keys:
        raise ValueError("the JWKS has no usable RSA or EC signature key")
    return keys


class JwksKeys:
    def __init__(
        self,
        url: str,
        fetch: Fetch,
        *,
        min_refresh_s: float = MIN_REFRESH_S,
        max_age_s: float = MAX_AGE_S,
    ) -> None:
        self.url = url
        self._shown_url = re.sub(r"//[^/@]*@", "//***@", url)  # no credentials in logs
        self._fetch = fetch
        self._min_refresh_s = min_refresh_s
        self._max_age_s = max_age_s
        self._keys: dict[str | None, SigningKey] = {}
        self._loaded_at = 0.0
        self._loads = 0  # successful fetches
        self._tried_at: float | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._ok: bool | None = None
        self.fetches = 0

    async def key(self, kid: str | None, algorithm: str) -> SigningKey | None:
        """The key for a token's ``kid`` and ``alg``, or None when a set fetched for this
        question has none. Raises ``JwksUnavailable`` when the key is unknown and the set could
        not be fetched now (the URL is down, or it was fetched less than ``MIN_REFRESH_S``
        ago): the token may be good, so it is not refused."""
        found = self._find(kid, algorithm)
        if found is None:
            loads = self._loads
            await self._refresh_now()
            found = self._find(kid, algorithm)
            if found is None and self._loads == loads:
                raise JwksUnavailable(self.url)
        elif time.monotonic() - self._loaded_at > self._max_age_s:
            self._refresh_soon()
        return found

    def _find(self, kid: str | None, algorithm: str) -> SigningKey | None:
        wanted = family(algorithm)
        if kid is None:  # no key id: only unambiguous with one key of the right kind
            candidates = [k for k in self._keys.values() if k.family == wanted]
            return candidates[0] if len(candidates) == 1 else None
        key = self._keys.get(kid)
        if key is None or key.family != wanted or key.algorithm not in (None, algorithm):
            return None
        return key

    async def _refresh_now(self) -> None:
        if self._refresh is None:
            if not self._may_fetch():
                return
            self._refresh = asyncio.create_task(self._load(), name="jwks refresh")
        await asyncio.shield(self._refresh)

    def _refresh_soon(self) -> None:
        if self._refresh is None and self._may_fetch():
            self._refresh = asyncio.create_task(self._load(), name="jwks refresh")

    def _may_fetch(self) -> bool:
        now = time.monotonic()
        return self._tried_at is None or now - self._tried_at >= self._min_refresh_s

    async def _load(self) -> None:
        self._tried_at = time.monotonic()
        self.fetches += 1
        try:
            keys = parse_jwks(await self._fetch(self.url))
        except (OSError, TimeoutError, ValueError) as exc:  # the keys we have stay in use
            self._state(False, f"{type(exc).__name__}: {exc}")
        else:
            self._keys = keys
            self._loaded_at = time.monotonic()
            self._loads += 1
            self._state(True, f"{len(keys)} keys")
        finally:
            self._refresh = None

    def _state(self, ok: bool, detail: str) -> None:
        if ok != self._ok:
            if ok:
                log.info("JWKS loaded from %s (%s)", self._shown_url, detail)
            else:
                kept = f"keeping {len(self._keys)} keys" if self._keys else "no keys yet"
                log.warning("JWKS unavailable at %s (%s); %s", self._shown_url, detail, kept)
        self._ok = ok
