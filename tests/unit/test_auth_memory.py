"""The node's own memory of tokens (``gateway.auth.local``) and the JWKS parser: bounded maps,
revocation by user, expiry; a JWKS entry we cannot use does not spoil the others."""

from __future__ import annotations

import time

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth.jwks import parse_jwks
from gateway.auth.local import LocalTokens, Verified
from gateway.rooms import Identity


def verified(user: str, *, ttl_s: float = 30, at: float | None = None) -> Verified:
    at = time.time() if at is None else at
    return Verified(Identity(user, "cliente"), at, at + ttl_s)


def test_entries_are_bounded_and_the_oldest_goes_first() -> None:
    local = LocalTokens(revocation_ttl_s=60, max_entries=3)
    for i in range(5):
        local.put(f"k{i}", verified(str(i)))
    assert len(local) == 3
    assert [local.get(f"k{i}") is not None for i in range(5)] == [False, False, True, True, True]


def test_expired_entries_are_not_served_nor_stored() -> None:
    local = LocalTokens(revocation_ttl_s=60)
    local.put("old", verified("1", ttl_s=-1))
    assert local.get("old") is None and len(local) == 0
    local.put("short", verified("1", ttl_s=0.05))
    assert local.get("short") is not None
    time.sleep(0.06)
    assert local.get("short") is None


def test_forget_user_drops_only_that_users_tokens_and_role() -> None:
    local = LocalTokens(revocation_ttl_s=60)
    local.put("a1", verified("a"))
    local.put("a2", verified("a"))
    local.put("b1", verified("b"))
    local.put_role(verified("a"))
    before = time.time()
    local.forget_user("a", time.time())
    assert local.get("a1") is None and local.get("a2") is None and local.role("a") is None
    assert local.get("b1") is not None
    assert local.revoked_since("a", before) and not local.revoked_since("b", before)
    assert not local.revoked_since("a", time.time() + 1)  # a check begun after it


def test_revocations_expire_and_are_bounded() -> None:
    local = LocalTokens(revocation_ttl_s=0.05, max_entries=2)
    local.forget_user("x", time.time())
    assert local.revoked_at("x") is not None
    time.sleep(0.06)
    assert local.revoked_at("x") is None
    local = LocalTokens(revocation_ttl_s=60, max_entries=2)
    for user in ("u1", "u2", "u3"):
        local.forget_user(user, time.time())
    assert [local.revoked_at(u) is not None for u in ("u1", "u2", "u3")] == [False, True, True]


def _jwk(key: object, algorithm: str, **extra: str) -> dict[str, object]:
    public = key.public_key()  # type: ignore[attr-defined]
    data = jwt.algorithms.get_default_algorithms()[algorithm].to_jwk(public, as_dict=True)
    return {**data, **extra}


def test_jwks_keeps_the_usable_signature_keys() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    document = {
        "keys": [
            _jwk(rsa_key, "RS256", kid="r", alg="RS256", use="sig"),
            _jwk(ec_key, "ES256", kid="e"),
            _jwk(rsa_key, "RS256", kid="enc", use="enc"),  # encryption key: not for us
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # a shared secret: never
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a key",
        ]
    }
    keys = parse_jwks(orjson.dumps(document))
    assert set(keys) == {"r", "e"}
    assert (keys["r"].family, keys["r"].algorithm) == ("RSA", "RS256")
    assert (keys["e"].family, keys["e"].algorithm) == ("EC", None)


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"keys": "no"}', b'{"keys": [{"kty": "oct", "k": "eA"}]}']
)
def test_a_jwks_without_a_usable_key_is_an_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_jwks(raw)
