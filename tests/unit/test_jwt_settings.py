"""The JWT settings (CONTRACT section 2, "Local JWT verification"): the default algorithms follow
the keys; ``none``, HMAC without a secret (so never with a public key) and a bad key stop the
process at startup with one line naming the variable, never echoing the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.jwt_verify import JwtVerifier
from gateway.config import ConfigError, load_settings

SECRET = "a-jwt-signing-secret-of-at-least-32-bytes"


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_PEM = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
EC_PEM = pem(ec.generate_private_key(ec.SECP384R1()))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def error_of(**settings: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(**settings)
    message = str(info.value)
    assert "\n" not in message
    return message


async def _no_fetch(url: str) -> bytes:
    raise OSError("not fetched in this test")


def algorithms(**settings: object) -> set[str]:
    verifier = JwtVerifier.from_settings(load_settings(**settings), _no_fetch)
    assert verifier is not None
    return set(verifier.algorithms)


def test_without_keys_every_token_goes_to_django() -> None:
    assert JwtVerifier.from_settings(load_settings(), _no_fetch) is None
    assert JwtVerifier.from_settings(load_settings(jwt_secret="  "), _no_fetch) is None


def test_default_algorithms_follow_the_keys(tmp_path: Path) -> None:
    assert algorithms(jwt_secret=SECRET) == {"HS256"}
    assert algorithms(jwt_public_key=RSA_PEM) == {"RS256"}
    assert algorithms(jwt_public_key=EC_PEM) == {"ES384"}  # by curve
    assert algorithms(jwt_jwks_url="https://issuer.test/jwks") == {"RS256", "ES256"}
    assert algorithms(jwt_secret=SECRET, jwt_public_key=RSA_PEM) == {"HS256", "RS256"}
    # PEM with \n escapes, as a .env file writes it, or a file path
    assert algorithms(jwt_public_key=RSA_PEM.replace("\n", "\\n")) == {"RS256"}
    path = tmp_path / "key.pem"
    path.write_text(RSA_PEM)
    assert algorithms(jwt_public_key=str(path)) == {"RS256"}
    settings = load_settings(jwt_public_key=str(path))
    assert settings.jwt_public_key is not None and settings.jwt_public_key.startswith("-----BEGIN")


def test_environment_names_and_csv_algorithms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_JWT_SECRET", SECRET)
    monkeypatch.setenv("GATEWAY_JWT_PUBLIC_KEY", RSA_PEM)
    monkeypatch.setenv("GATEWAY_JWT_ALGORITHMS", "RS256, PS256")
    monkeypatch.setenv("GATEWAY_JWT_AUDIENCE", "gateway")
    monkeypatch.setenv("GATEWAY_JWT_ISSUER", "https://django.test")
    monkeypatch.setenv("GATEWAY_JWT_USER_CLAIM", "sub")
    monkeypatch.setenv("GATEWAY_JWT_ROLE_CLAIM", "kind")
    monkeypatch.setenv("GATEWAY_AUTH_REVOCATION_TTL_S", "3600")
    settings = load_settings()
    assert settings.jwt_algorithms == ["RS256", "PS256"]
    assert (settings.jwt_audience, settings.jwt_issuer) == ("gateway", "https://django.test")
    assert (settings.jwt_user_claim, settings.jwt_role_claim) == ("sub", "kind")
    assert settings.auth_revocation_ttl_s == 3600
    assert SECRET not in repr(settings)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"jwt_secret": SECRET, "jwt_algorithms": ["none"]}, "'none' is never accepted"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["NONE"]}, "'none' is never accepted"),
        ({"jwt_public_key": RSA_PEM, "jwt_algorithms": ["HS256"]}, "needs GATEWAY_JWT_SECRET"),
        ({"jwt_jwks_url": "https://i.test/", "jwt_algorithms": ["HS512"]}, "never checked"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["RS256"]}, "GATEWAY_JWT_JWKS_URL"),
        ({"jwt_secret": SECRET, "jwt_algorithms": ["XS256"]}, "unknown algorithm"),
    ],
)
def test_bad_algorithms_name_the_variable(settings: dict[str, object], says: str) -> None:
    message = error_of(**settings)
    assert "GATEWAY_JWT_ALGORITHMS" in message and says in message


def test_bad_keys_name_their_variable_without_echoing_them() -> None:
    short = "short-Secret-Value"
    message = error_of(jwt_secret=short)
    assert "GATEWAY_JWT_SECRET" in message and "32 bytes" in message
    assert short not in message
    assert "GATEWAY_JWT_PUBLIC_KEY" in error_of(jwt_public_key="/no/such/key.pem")
    bad_pem = "-----BEGIN PUBLIC KEY-----\nnot-base64!\n-----END PUBLIC KEY-----"
    assert "not a PEM public key" in error_of(jwt_public_key=bad_pem)
    weak = pem(rsa.generate_private_key(public_exponent=65537, key_size=1024))
    assert "at least 2048 bits" in error_of(jwt_public_key=weak)
    assert "GATEWAY_JWT_JWKS_URL" in error_of(jwt_jwks_url="ftp://issuer.test/jwks")
