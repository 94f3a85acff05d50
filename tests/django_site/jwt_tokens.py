"""JWTs as Django issues them with SimpleJWT (``AccessToken``: ``token_type``, ``exp``, ``iat``,
``jti``, ``user_id``), signed HS256 with ``SIMPLE_JWT["SIGNING_KEY"]`` by SimpleJWT's own
``TokenBackend``, or RS256 / ES256 with the site's private keys (``kid`` in the header), whose
public halves the site serves as a JWKS. ``profile/`` accepts these tokens as a Django project
with SimpleJWT would.

Keys are made when the process starts; ``rotate`` adds an RSA key with a new ``kid``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from django.conf import settings
from rest_framework_simplejwt.backends import TokenBackend
from rest_framework_simplejwt.tokens import AccessToken

ALGORITHMS = ("HS256", "RS256", "ES256")


def _pem(key: Any) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def _new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class JwtState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    rsa: dict[str, Any] = field(default_factory=lambda: {"rsa-1": _new_rsa()})  # kid -> key
    ec: dict[str, Any] = field(
        default_factory=lambda: {"ec-1": ec.generate_private_key(ec.SECP256R1())}
    )
    jwks_mode: str = "ok"  # "ok" or "fail" (503)
    jwks_calls: int = 0
    roles: dict[str, str] = field(default_factory=dict)  # role of users whose tokens carry none
    unpublished: set[str] = field(default_factory=set)  # kids that sign but are not in the JWKS

    def reset(self) -> None:
        with self.lock:
            self.rsa = dict(list(self.rsa.items())[:1])
            self.jwks_mode, self.jwks_calls, self.roles = "ok", 0, {}
            self.unpublished = set()

    def rotate(self, publish: bool) -> str:
        """A new RSA key that signs from now on; in the JWKS at once, or after ``publish``."""
        key = _new_rsa()  # slow: outside the lock
        with self.lock:
            kid = f"rsa-{len(self.rsa) + 1}"
            self.rsa[kid] = key
            if not publish:
                self.unpublished.add(kid)
            return kid

    def describe(self) -> dict[str, Any]:
        with self.lock:
            return {
                "secret": settings.SIMPLE_JWT["SIGNING_KEY"],
                "rsa_public_pem": _pem(next(iter(self.rsa.values()))),
                "ec_public_pem": _pem(next(iter(self.ec.values()))),
                "kids": {"rsa": list(self.rsa), "ec": list(self.ec)},
                "jwks_calls": self.jwks_calls,
            }

    def jwks(self) -> dict[str, Any] | None:
        with self.lock:
            self.jwks_calls += 1
            if self.jwks_mode != "ok":
                return None
            keys = [(kid, k, "RS256") for kid, k in self.rsa.items() if kid not in self.unpublished]
            keys += [(kid, k, "ES256") for kid, k in self.ec.items()]
        result = []
        for kid, key, alg in keys:
            jwk = jwt.algorithms.get_default_algorithms()[alg].to_jwk(
                key.public_key(), as_dict=True
            )
            result.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": result}


JWT = JwtState()


def issue(options: dict[str, Any]) -> str:
    """A SimpleJWT access token. Options: ``userId`` (required), ``role`` (claim left out when
    absent), ``alg`` (HS256 / RS256 / ES256), ``kid`` (default: the newest key of the kind),
    ``lifetimeS`` (negative: already expired), ``iat`` (epoch s), ``aud``, ``iss``, ``claims``."""
    token = AccessToken()
    token["user_id"] = str(options["userId"])
    if options.get("role") is not None:
        token["role"] = options["role"]
    if options.get("lifetimeS") is not None:
        token.set_exp(lifetime=timedelta(seconds=float(options["lifetimeS"])))
    if options.get("iat") is not None:
        token["iat"] = int(options["iat"])
    payload = {**token.payload, **options.get("claims", {})}
    alg = options.get("alg", "HS256")
    aud, iss = options.get("aud"), options.get("iss")
    if alg == "HS256":
        return TokenBackend(
            alg, settings.SIMPLE_JWT["SIGNING_KEY"], audience=aud, issuer=iss
        ).encode(payload)
    with JWT.lock:
        keys = JWT.rsa if alg == "RS256" else JWT.ec
        kid = options.get("kid") or list(keys)[-1]
        private = keys[kid]
    payload.update({k: v for k, v in (("aud", aud), ("iss", iss)) if v is not None})
    return jwt.encode(payload, private, algorithm=alg, headers={"kid": kid})


def user_of(token: str) -> dict[str, Any] | None:
    """``profile/``'s answer for one of our JWTs, or None (not ours, bad, or expired)."""
    try:
        header = jwt.get_unverified_header(token)
        alg, kid = header.get("alg"), header.get("kid")
        if alg == "HS256":
            key: Any = settings.SIMPLE_JWT["SIGNING_KEY"]
        else:
            with JWT.lock:
                private = (JWT.rsa if alg == "RS256" else JWT.ec).get(kid)
            if alg not in ALGORITHMS or private is None:
                return None
            key = private.public_key()
        payload = jwt.decode(token, key, algorithms=[alg], options={"verify_aud": False})
    except jwt.PyJWTError:
        return None
    if payload.get("user_id") is None:
        return None
    user_id = str(payload["user_id"])
    with JWT.lock:
        role = payload.get("role") or JWT.roles.get(user_id, "cliente")
    return {"id": int(user_id) if user_id.isdigit() else user_id, "role": role}
