"""Keys for local JWT verification: reading a PEM public key, and which algorithms a key allows.

Imports only ``cryptography``: the settings use it to refuse a bad key at startup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

HMAC = ("HS256", "HS384", "HS512")
RSA = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC = ("ES256", "ES384", "ES512")
SUPPORTED = HMAC + RSA + EC
MIN_RSA_BITS = 2048
_EC_ALGORITHM = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def read_public_key(value: str) -> tuple[str, PublicKey]:
    """``value`` is PEM text (a public key or a certificate; ``\\n`` escapes allowed, as .env
    files write them) or the path of a PEM file. Returns the PEM text and the loaded key."""
    text = value.replace("\\n", "\n").strip()
    if not text.startswith("-----BEGIN"):
        try:
            text = Path(text).expanduser().read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ValueError(f"neither PEM text nor a readable PEM file ({reason})") from None
    try:
        if "CERTIFICATE-----" in text.split("\n", 1)[0]:
            key: Any = x509.load_pem_x509_certificate(text.encode()).public_key()
        else:
            key = serialization.load_pem_public_key(text.encode())
    except ValueError:
        raise ValueError("not a PEM public key or certificate") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key needs at least {MIN_RSA_BITS} bits")
    elif not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in _EC_ALGORITHM:
        raise ValueError("must be an RSA or an EC (P-256, P-384, P-521) public key")
    return text, key


def key_algorithms(key: PublicKey) -> list[str]:
    """The default algorithms for a public key: RS256 for RSA, ES256/384/512 by EC curve."""
    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    return [_EC_ALGORITHM[key.curve.name]]


def family(algorithm: str) -> str:
    """``HMAC``, ``RSA`` or ``EC``: the kind of key an algorithm is verified with."""
    if algorithm in HMAC:
        return "HMAC"
    return "RSA" if algorithm in RSA else "EC"


def check_algorithms(value: list[str], *, secret: bool, public: bool) -> list[str]:
    """``GATEWAY_JWT_ALGORITHMS`` as given; refuses ``none`` and any algorithm without its key
    (so HMAC is never checked with a public key)."""
    for algorithm in value:
        if algorithm.lower() == "none":
            raise ValueError("'none' is never accepted")
        if algorithm not in SUPPORTED:
            raise ValueError(f"unknown algorithm {algorithm!r}; supported: {', '.join(SUPPORTED)}")
        if algorithm in HMAC and not secret:
            raise ValueError(
                f"{algorithm} needs GATEWAY_JWT_SECRET (HMAC is never checked with a public key)"
            )
        if algorithm not in HMAC and not public:
            raise ValueError(f"{algorithm} needs GATEWAY_JWT_PUBLIC_KEY or GATEWAY_JWT_JWKS_URL")
    return list(dict.fromkeys(value))
