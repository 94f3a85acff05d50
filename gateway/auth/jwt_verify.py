"""Local verification of JWTs signed by Django (SimpleJWT and similar), with PyJWT.

Keys: ``GATEWAY_JWT_SECRET`` for HMAC, ``GATEWAY_JWT_PUBLIC_KEY`` and/or ``GATEWAY_JWT_JWKS_URL``
for RSA/EC. A token's ``alg`` must be one of ``GATEWAY_JWT_ALGORITHMS`` (by default the ones its
keys imply) and picks the kind of key: HMAC only ever with the secret, so a token "signed" with
the public key as an HMAC secret is refused, and ``none`` is never accepted. ``exp`` is required;
``aud`` and ``iss`` are checked when configured.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import jwt
import orjson

from gateway.auth.jwks import Fetch, JwksKeys, JwksUnavailable
from gateway.auth.keyfiles import HMAC, PublicKey, family, key_algorithms, read_public_key
from gateway.closecodes import AuthErrorCode
from gateway.config import Settings
from gateway.djangoapi import AuthFailure
from gateway.rooms import ROLES, Role


def invalid(message: str) -> AuthFailure:
    return AuthFailure(AuthErrorCode.INVALID_TOKEN, message)


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: str
    role: Role | None  # None: the token has no role claim
    issued_at: float | None  # ``iat``, seconds
    expires_at: float  # ``exp``, seconds


class JwtVerifier:
    def __init__(
        self,
        *,
        algorithms: list[str],
        secret: bytes | None = None,
        public_key: PublicKey | None = None,
        jwks: JwksKeys | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        user_claim: str = "user_id",
        role_claim: str = "role",
    ) -> None:
        self.algorithms = frozenset(algorithms)
        self.secret = secret
        self.public_key = public_key
        self.jwks = jwks
        self.audience = audience
        self.issuer = issuer
        self.user_claim = user_claim
        self.role_claim = role_claim
        self._options: Any = {
            "require": ["exp"],
            "verify_aud": audience is not None,
            # iat only dates the token for revocation: a Django clock a little ahead of ours
            # must not make a fresh token "not yet valid"
            "verify_iat": False,
            "enforce_minimum_key_length": True,
        }

    @classmethod
    def from_settings(cls, settings: Settings, fetch: Fetch) -> JwtVerifier | None:
        """None when no key is configured: every token then goes to Django."""
        secret = settings.jwt_secret.get_secret_value().encode() if settings.jwt_secret else None
        public = read_public_key(settings.jwt_public_key)[1] if settings.jwt_public_key else None
        url = settings.jwt_jwks_url
        if secret is None and public is None and url is None:
            return None
        algorithms = list(settings.jwt_algorithms)
        if not algorithms:  # the default follows the keys
            algorithms = (["HS256"] if secret else []) + (key_algorithms(public) if public else [])
            if url:
                algorithms += ["RS256", "ES256"]
        return cls(
            algorithms=list(dict.fromkeys(algorithms)),
            secret=secret,
            public_key=public,
            jwks=JwksKeys(url, fetch) if url else None,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            user_claim=settings.jwt_user_claim,
            role_claim=settings.jwt_role_claim,
        )

    @staticmethod
    def header(token: str) -> dict[str, Any] | None:
        """The token's JOSE header when it is a JWT (three parts, a base64url JSON header with
        an ``alg``), else None: that token is not ours to judge and goes to Django. Only picks
        the key: PyJWT parses the whole token again, strictly, when it verifies it (its own
        header parser costs more than the rest of a connect's authentication)."""
        if token.count(".") != 2:
            return None
        head = token[: token.index(".")]
        try:
            header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        except (ValueError, orjson.JSONDecodeError):  # binascii.Error is a ValueError
            return None
        if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
            return None
        return header

    async def verify(self, token: str, header: dict[str, Any]) -> Claims:
        """Raises ``AuthFailure``: ``invalid_token`` for a token that fails any check,
        ``auth_unavailable`` when the JWKS was never reachable."""
        algorithm = header["alg"]
        if algorithm not in self.algorithms:
            raise invalid("token algorithm not accepted")
        key = await self._key(algorithm, header.get("kid"))
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options=self._options,
            )
        except jwt.ExpiredSignatureError:
            raise invalid("token expired") from None
        except jwt.PyJWTError:
            raise invalid("invalid token") from None
        return self._claims(payload)

    async def _key(self, algorithm: str, kid: Any) -> Any:
        if algorithm in HMAC:
            return self.secret  # present: the settings refuse HMAC algorithms without it
        if not isinstance(kid, str | None):
            raise invalid("invalid token key id")
        if self.jwks is not None and (kid is not None or self.public_key is None):
            try:
                found = await self.jwks.key(kid, algorithm)
            except JwksUnavailable:
                raise AuthFailure(
                    AuthErrorCode.AUTH_UNAVAILABLE, "signing keys unavailable, retry later"
                ) from None
            if found is None:
                raise invalid("unknown token signing key")
            return found.key
        if self.public_key is None or family(algorithm) != _family_of(self.public_key):
            raise invalid("no key for the token's algorithm")
        return self.public_key

    def _claims(self, payload: dict[str, Any]) -> Claims:
        user = payload.get(self.user_claim)
        if isinstance(user, bool) or not isinstance(user, int | str) or user == "":
            raise invalid(f"token has no '{self.user_claim}' claim")
        role = payload.get(self.role_claim)
        if role is not None and role not in ROLES:
            raise invalid(f"token's '{self.role_claim}' claim is not a known role")
        iat = payload.get("iat")
        return Claims(
            user_id=str(user),
            role=role,
            issued_at=float(iat) if isinstance(iat, int | float) else None,
            expires_at=float(payload["exp"]),
        )


def _family_of(key: PublicKey) -> str:
    return "RSA" if key_algorithms(key)[0].startswith("RS") else "EC"
