"""Local JWT verification (CONTRACT section 2, "Local JWT verification"): tokens minted by the
Django test site with SimpleJWT (HS256 with its signing key, RS256 / ES256 with its private keys,
public halves also served as a JWKS) are accepted without a request to Django; forged, expired
and misaddressed ones are ``invalid_token``; ``disconnect(user_id)`` refuses the user's JWTs
issued before it, cluster-wide. Real nodes, real redis-server, real Django site."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.auth.jwks import MIN_REFRESH_S
from tests.support import DjangoSite, RedisServer
from tests.support.nodes import API_KEY
from tests.support.wsclient import WsClient


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT made by hand, as an attacker would: HMAC-SHA256 with ``key``, or no signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


def claims(user_id: str = "7", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "token_type": "access",
        "user_id": user_id,
        "role": "cliente",
        "iat": now,
        "exp": now + 300,
        "jti": "x",
        **extra,
    }


async def outcome(node: Any, http: Any, token: str) -> tuple[str, str | int | None]:
    """("auth_success", userId) or ("auth_error", code), after the close for an error."""
    client = await WsClient.connect(http, node.ws_url)  # an in-process node or a process
    reply = await client.request("authenticate", {"token": token})
    if reply["event"] == "auth_success":
        await client.close()
        return "auth_success", f"{reply['data']['userId']}/{reply['data']['role']}"
    code = reply["data"]["code"]
    assert await client.wait_closed() == (4401 if code == "invalid_token" else 1013)
    return "auth_error", code


@pytest.fixture
async def keys(django_site: DjangoSite) -> dict[str, Any]:
    return await django_site.ajwt_keys()


async def test_hs256_simplejwt_token_is_accepted_without_django(
    node_with: Any, http: Any, django_site: DjangoSite, keys: dict[str, Any]
) -> None:
    node = await node_with(jwt_secret=keys["secret"])
    token = await django_site.ajwt(7, role="proveedor")
    assert await outcome(node, http, token) == ("auth_success", "7/proveedor")
    client = await node.client(http, token=token)  # as ?token= too
    assert (await client.expect("auth_success"))["data"]["rooms"] == [
        "proveedor_7",
        "all_proveedores",
    ]
    await client.close()
    # a token that is not a JWT still goes to Django, as before
    assert await outcome(node, http, "cliente-3") == ("auth_success", "3/cliente")
    calls = await django_site.acalls()
    assert calls["profile_calls_by_token"] == {"cliente-3": 1}


async def test_rs256_and_es256_with_public_keys_text_and_file(
    make_node: Any, http: Any, django_site: DjangoSite, keys: dict[str, Any], tmp_path: Path
) -> None:
    rs = await make_node(jwt_public_key=keys["rsa_public_pem"])
    ec_file = tmp_path / "ec.pem"
    ec_file.write_text(keys["ec_public_pem"])
    es = await make_node(jwt_public_key=str(ec_file))
    rs_token = await django_site.ajwt(11, role="admin", alg="RS256")
    es_token = await django_site.ajwt(12, role="cliente", alg="ES256")
    assert await outcome(rs, http, rs_token) == ("auth_success", "11/admin")
    assert await outcome(es, http, es_token) == ("auth_success", "12/cliente")
    # the default algorithms follow the key: an RSA node does not take ES256, nor the reverse
    assert await outcome(rs, http, es_token) == ("auth_error", "invalid_token")
    assert await outcome(es, http, rs_token) == ("auth_error", "invalid_token")
    assert (await django_site.acalls())["profile_calls"] == 0


async def test_forged_expired_and_misaddressed_tokens_are_invalid_token(
    make_node: Any, http: Any, django_site: DjangoSite, keys: dict[str, Any]
) -> None:
    rs = await make_node(jwt_public_key=keys["rsa_public_pem"])
    both = await make_node(
        jwt_secret=keys["secret"],
        jwt_public_key=keys["rsa_public_pem"],
        jwt_audience="gateway",
        jwt_issuer="https://django.test",
    )
    public_pem = keys["rsa_public_pem"].encode()
    with_public_as_hmac = forge({"alg": "HS256", "typ": "JWT"}, claims(), public_pem)
    unsigned = forge({"alg": "none", "typ": "JWT"}, claims(), None)
    for node in (rs, both):
        assert await outcome(node, http, with_public_as_hmac) == ("auth_error", "invalid_token")
        assert await outcome(node, http, unsigned) == ("auth_error", "invalid_token")
    addressed = {"aud": "gateway", "iss": "https://django.test"}
    tokens = {
        "expired": await django_site.ajwt(7, role="cliente", lifetimeS=-5, **addressed),
        "no aud": await django_site.ajwt(7, role="cliente", iss="https://django.test"),
        "wrong aud": await django_site.ajwt(7, role="cliente", aud="other", iss=addressed["iss"]),
        "wrong iss": await django_site.ajwt(7, role="cliente", aud="gateway", iss="https://evil"),
        "other key": forge(
            {"alg": "HS256"}, claims(**addressed), b"another-secret-of-32-bytes-or-more!"
        ),
        "no user": await django_site.ajwt(7, role="cliente", claims={"user_id": None}, **addressed),
        "bad role": await django_site.ajwt(7, role="superuser", **addressed),
    }
    for name, token in tokens.items():
        assert await outcome(both, http, token) == ("auth_error", "invalid_token"), name
    good = await django_site.ajwt(7, role="cliente", **addressed)
    assert await outcome(both, http, good) == ("auth_success", "7/cliente")
    good_rs = await django_site.ajwt(8, role="admin", alg="RS256", **addressed)
    assert await outcome(both, http, good_rs) == ("auth_success", "8/admin")
    # none of these was sent to Django: a JWT is judged here
    assert (await django_site.acalls())["profile_calls"] == 0


async def test_without_a_role_claim_django_is_asked_once_per_user(
    node_with: Any, http: Any, django_site: DjangoSite, keys: dict[str, Any]
) -> None:
    node = await node_with(jwt_secret=keys["secret"], django_auth_scheme="Bearer")
    await django_site.ajwt_control(action="role", userId="21", role="proveedor")
    first = await django_site.ajwt(21)
    second = await django_site.ajwt(21)  # another token (jti) of the same user
    assert first != second
    assert await outcome(node, http, first) == ("auth_success", "21/proveedor")
    assert await outcome(node, http, second) == ("auth_success", "21/proveedor")
    calls = await django_site.acalls()
    assert calls["profile_calls"] == 1
    assert calls["profile_schemes"] == {"Bearer": 1}


async def test_jwks_rotation_rate_limit_and_url_down(
    make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    # prepared before the first fetch, so that what follows it is quick: the issuer's next
    # key (not yet in its JWKS), a token signed with it, and tokens with made-up key ids
    kid = (await django_site.ajwt_control(action="rotate", publish=False))["kid"]
    new = await django_site.ajwt(33, role="cliente", alg="RS256", kid=kid)
    old = await django_site.ajwt(31, role="cliente", alg="RS256", kid="rsa-1")
    es = await django_site.ajwt(32, role="cliente", alg="ES256")
    signed = (await django_site.ajwt(34, role="cliente", alg="RS256")).split(".", 1)[1]
    made_up = [
        f"{b64(json.dumps({'alg': 'RS256', 'kid': f'x{i}'}).encode())}.{signed}" for i in range(3)
    ]
    node = await make_node(jwt_jwks_url=django_site.jwks_url)
    fetched = time.monotonic()  # the node fetches after this: its windows end no earlier
    assert await outcome(node, http, old) == ("auth_success", "31/cliente")
    assert await outcome(node, http, es) == ("auth_success", "32/cliente")
    # the issuer publishes its new key, and its JWKS URL goes down
    await django_site.ajwt_control(action="publish", kid=kid)
    await django_site.ajwt_control(action="jwks", mode="fail")
    # an unknown kid right after a fetch, or a flood of made-up ones: not refused (the key may
    # be new: retry later), and at most one fetch per MIN_REFRESH_S, not one per token
    for token in (new, *made_up):
        assert await outcome(node, http, token) == ("auth_error", "auth_unavailable")
    extra = (await django_site.ajwt_keys())["jwks_calls"] - 1
    assert extra <= (time.monotonic() - fetched) // MIN_REFRESH_S
    # a few seconds later an unknown kid fetches again; the URL is down: the last good keys stay
    calls = await until_fetched(node, http, django_site, new, "auth_unavailable")
    assert await outcome(node, http, old) == ("auth_success", "31/cliente")
    # the URL is back: the next allowed fetch learns the new key; a kid absent from a fresh
    # set is refused
    await django_site.ajwt_control(action="jwks", mode="ok")
    await until_fetched(node, http, django_site, made_up[0], "invalid_token", calls)
    assert await outcome(node, http, new) == ("auth_success", "33/cliente")
    assert (await django_site.acalls())["profile_calls"] == 0


async def until_fetched(
    node: Any, http: Any, site: DjangoSite, token: str, code: str, calls: int | None = None
) -> int:
    """Send ``token`` until the node fetches the JWKS again (allowed again after
    ``MIN_REFRESH_S``); that check must end in ``code``. Returns the JWKS call count."""
    calls = (await site.ajwt_keys())["jwks_calls"] if calls is None else calls
    deadline = time.monotonic() + MIN_REFRESH_S + 15
    while True:
        result = await outcome(node, http, token)
        now = (await site.ajwt_keys())["jwks_calls"]
        if now > calls:
            assert result == ("auth_error", code)
            return int(now)
        assert result == ("auth_error", "auth_unavailable")  # not fetched yet: retry later
        assert time.monotonic() < deadline, "the node never fetched the JWKS again"
        await asyncio.sleep(0.3)


async def test_jwks_never_reachable_is_auth_unavailable(
    make_node: Any, http: Any, django_site: DjangoSite
) -> None:
    await django_site.ajwt_control(action="jwks", mode="fail")
    node = await make_node(jwt_jwks_url=django_site.jwks_url)
    token = await django_site.ajwt(41, role="cliente", alg="ES256")
    assert await outcome(node, http, token) == ("auth_error", "auth_unavailable")


async def test_jwts_issued_before_a_disconnect_are_refused_cluster_wide(
    redis_server: RedisServer,
    make_node: Any,
    http: Any,
    django_site: DjangoSite,
    keys: dict[str, Any],
) -> None:
    a = await make_node(redis_server.url, jwt_secret=keys["secret"])
    before = await django_site.ajwt(51, role="cliente")
    client = await a.client(http)
    await client.authenticate(before)
    async with http.post(
        f"{a.http_url}/api/disconnect",
        json={"userId": "51"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        assert (await resp.json()) == {"disconnected": 1}
    assert await client.wait_closed() == 4403
    # a node started after the disconnect never saw the control message: Redis tells it
    b = await make_node(redis_server.url, jwt_secret=keys["secret"])
    for node in (a, b):
        assert await outcome(node, http, before) == ("auth_error", "invalid_token")
    # a token issued after the disconnect (the next second: iat has whole seconds) is good
    after = await django_site.ajwt(51, role="cliente", iat=int(time.time()) + 1)
    for node in (a, b):
        assert await outcome(node, http, after) == ("auth_success", "51/cliente")
    assert (await django_site.acalls())["profile_calls"] == 0


async def test_embedded_disconnect_refuses_older_jwts_too(
    make_node: Any, http: Any, django_site: DjangoSite, keys: dict[str, Any]
) -> None:
    node = await make_node(jwt_secret=keys["secret"])
    token = await django_site.ajwt(61, role="proveedor")
    assert await outcome(node, http, token) == ("auth_success", "61/proveedor")
    async with http.post(
        f"{node.http_url}/api/disconnect",
        json={"userId": 61},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        assert resp.status == 200
    assert await outcome(node, http, token) == ("auth_error", "invalid_token")


async def test_a_connection_outlives_its_jwt(
    node_with: Any, http: Any, django_site: DjangoSite, keys: dict[str, Any]
) -> None:
    """Documented: the token is checked when the connection authenticates, not afterwards."""
    node = await node_with(jwt_secret=keys["secret"])
    token = await django_site.ajwt(71, role="cliente", lifetimeS=3)
    client = await node.client(http)
    await client.authenticate(token)
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    await asyncio.sleep(max(0.0, claims["exp"] + 0.5 - time.time()))
    assert (await client.request("ping", {}))["event"] == "pong"
    assert (await client.join("service_1"))["room"] == "service_1"
    await client.close()
    # while a new connection with it is refused
    assert await outcome(node, http, token) == ("auth_error", "invalid_token")


async def test_no_token_in_any_log_line_nor_in_redis(
    gateway_process: Any, redis_server: RedisServer, django_site: DjangoSite, http: Any
) -> None:
    """A real ``python -m gateway`` at DEBUG, JSON logs: tokens good and bad, JWTs and
    Django's, cache hits, the JWKS, a disconnect; no token (nor a JWT's signature or claims
    segment) is in anything it wrote, and Redis holds hashes only."""
    keys = await django_site.ajwt_keys()
    gw = await gateway_process.astart(
        {
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": "DEBUG",
            "GATEWAY_PUBLISH_API_KEY": API_KEY,
            "GATEWAY_DRAIN_SECONDS": "0.2",
            "GATEWAY_JWT_SECRET": keys["secret"],
            "GATEWAY_JWT_JWKS_URL": django_site.jwks_url,
        }
    )
    tokens = {
        "jwt": await django_site.ajwt(81, role="cliente"),
        "jwks": await django_site.ajwt(82, role="proveedor", alg="ES256"),
        "no role": await django_site.ajwt(83),
        "expired": await django_site.ajwt(84, role="cliente", lifetimeS=-1),
        "unsigned": forge({"alg": "none"}, claims("85"), None),
        "django": "cliente-918273646",
        "bad": "bad-Secret-Token-Qw8",
    }
    good = {"jwt", "jwks", "no role", "django"}
    for name, token in tokens.items():
        for _ in range(2):  # the second time from a cache
            reply = await outcome(gw, http, token)
            assert reply[0] == ("auth_success" if name in good else "auth_error"), name
    async with http.post(
        f"{gw.http_url}/api/disconnect",
        json={"userId": "81"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        assert resp.status == 200
    assert await outcome(gw, http, tokens["jwt"]) == ("auth_error", "invalid_token")
    gw.term()
    assert gw.wait(10) == 0
    logs = gw.logs()
    assert "authentication failed" in logs and "JWKS loaded" in logs
    pieces = list(tokens.values())
    pieces += [
        part for t in tokens.values() if t.count(".") == 2 for part in t.split(".")[1:] if part
    ]
    for piece in pieces:
        assert piece not in logs, piece
    admin = redis_server.client()
    stored = b"".join(k + (admin.dump(k) or b"") for k in admin.scan_iter("*"))
    admin.close()
    for piece in pieces:
        assert piece.encode() not in stored, piece


def commandstats(redis_server: RedisServer) -> dict[str, int]:
    admin = redis_server.client()
    stats = admin.info("commandstats")
    admin.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def test_a_jwt_check_asks_redis_nothing_and_a_missed_disconnect_is_polled(
    redis_server: RedisServer,
    make_node: Any,
    http: Any,
    django_site: DjangoSite,
    keys: dict[str, Any],
) -> None:
    """Nodes poll Redis's list of recent disconnects, so a JWT check reads no Redis key; a
    disconnect whose control message a node never got (only its Redis part ran here) still
    reaches it through the poll."""
    from gateway.auth.revoke import revoke_async
    from gateway.backend.keys import Keys

    node = await make_node(redis_server.url, jwt_secret=keys["secret"])
    tokens = [await django_site.ajwt(90 + i, role="cliente") for i in range(5)]
    assert await outcome(node, http, tokens[0]) == ("auth_success", "90/cliente")
    deadline = time.monotonic() + 10
    while commandstats(redis_server).get("zrangebyscore", 0) == 0:  # the node's first poll
        assert time.monotonic() < deadline, "the node never read the list of disconnects"
        await asyncio.sleep(0.05)
    before = commandstats(redis_server)
    for i, token in enumerate(tokens[1:], start=91):
        assert await outcome(node, http, token) == ("auth_success", f"{i}/cliente")
    after = commandstats(redis_server)
    assert after.get("mget", 0) == before.get("mget", 0)
    assert after.get("get", 0) == before.get("get", 0)
    # the Redis part of disconnect(91) only: no control message reaches the node
    client = aioredis.from_url(redis_server.url)
    await revoke_async(client, Keys("gateway"), "91", 3600)
    await client.aclose()
    deadline = time.monotonic() + 15
    while await outcome(node, http, tokens[1]) != ("auth_error", "invalid_token"):
        assert time.monotonic() < deadline, "the poll never brought the disconnect"
        await asyncio.sleep(0.2)
    assert await outcome(node, http, tokens[2]) == ("auth_success", "92/cliente")
