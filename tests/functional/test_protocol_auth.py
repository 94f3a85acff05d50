"""Authentication over ``/ws`` (CONTRACT section 2, "Authentication"): a real node on both
backends, the real Django test site, real WebSocket clients."""

from __future__ import annotations

from typing import Any

from tests.support import DjangoSite


async def first_frame(client: Any) -> dict[str, Any]:
    return await client.wait_for(lambda frame: True)


# --- success ----------------------------------------------------------------------------------
async def test_authenticate_event_answers_django_identity_with_string_id(
    node: Any, http: Any
) -> None:
    client = await node.client(http)
    await client.send("authenticate", {"token": "cliente-42"}, frame_id="auth-1")
    reply = await first_frame(client)
    assert reply["event"] == "auth_success"
    assert reply["id"] == "auth-1"
    data = reply["data"]
    assert data["userId"] == "42"  # Django answers the number 42: a string on the wire
    assert data["role"] == "cliente"
    assert data["rooms"] == ["cliente_42", "all_clientes"]
    assert data["node"] == node.settings.node_id
    assert isinstance(data["connectionId"], str) and data["connectionId"]
    # claiming exactly Django's identity is fine
    admin = await node.client(http)
    claimed = await admin.authenticate("admin-3", userId="3", role="admin")
    assert (claimed["userId"], claimed["role"], claimed["rooms"]) == (
        "3",
        "admin",
        ["admin_dashboard"],
    )
    assert claimed["connectionId"] != data["connectionId"]
    await client.close()
    await admin.close()


async def test_query_token_makes_auth_success_the_first_frame(node: Any, http: Any) -> None:
    client = await node.client(http, token="proveedor-9")
    reply = await first_frame(client)
    assert reply["event"] == "auth_success"
    assert "id" not in reply
    assert reply["data"]["userId"] == "9"
    assert reply["data"]["role"] == "proveedor"
    assert reply["data"]["rooms"] == ["proveedor_9", "all_proveedores"]
    # authenticated: a protected request is served
    joined = await client.join("service_1")
    assert joined["room"] == "service_1"
    await client.close()


# --- failures ---------------------------------------------------------------------------------
async def test_claimed_identity_that_differs_is_identity_mismatch_and_4401(
    node: Any, http: Any
) -> None:
    for claims in ({"userId": "43"}, {"role": "admin"}, {"userId": "42", "role": "proveedor"}):
        client = await node.client(http)
        reply = await client.request("authenticate", {"token": "cliente-42", **claims})
        assert reply["event"] == "auth_error", claims
        assert reply["data"]["code"] == "identity_mismatch", claims
        assert reply["data"]["message"]
        assert await client.wait_closed() == 4401, claims


async def test_bad_token_is_invalid_token_and_4401(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    client = await node.client(http)
    reply = await client.request("authenticate", {"token": "nobody-1"})
    assert reply["event"] == "auth_error"
    assert reply["data"]["code"] == "invalid_token"
    assert await client.wait_closed() == 4401
    # at connect time: auth_error is the first frame
    client = await node.client(http, token="garbage")
    reply = await first_frame(client)
    assert reply["event"] == "auth_error"
    assert reply["data"]["code"] == "invalid_token"
    assert await client.wait_closed() == 4401
    # a token Django revoked (401 from Django)
    await django_site.acontrol(revoke=["cliente-5"])
    client = await node.client(http)
    reply = await client.request("authenticate", {"token": "cliente-5"})
    assert reply["data"]["code"] == "invalid_token"
    assert await client.wait_closed() == 4401


async def test_django_5xx_or_timeout_is_auth_unavailable_and_1013(
    node_with: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await node_with(django_timeout=0.3)
    await django_site.acontrol(profile_mode="fail")
    client = await node.client(http)
    reply = await client.request("authenticate", {"token": "cliente-5"})
    assert reply["event"] == "auth_error"
    assert reply["data"]["code"] == "auth_unavailable"  # never invalid_token
    assert await client.wait_closed() == 1013
    # at connect time too
    client = await node.client(http, token="cliente-6")
    reply = await first_frame(client)
    assert reply["data"]["code"] == "auth_unavailable"
    assert await client.wait_closed() == 1013
    calls = await django_site.acalls()
    assert calls["profile_calls_by_token"] == {"cliente-5": 1, "cliente-6": 1}
    # Django slower than GATEWAY_DJANGO_TIMEOUT
    await django_site.acontrol(profile_mode="slow", slow_seconds=1.0)
    client = await node.client(http)
    reply = await client.request("authenticate", {"token": "cliente-7"})
    assert reply["data"]["code"] == "auth_unavailable"
    assert await client.wait_closed() == 1013


async def test_bearer_scheme_is_sent_when_configured(
    node_with: Any, http: Any, django_site: DjangoSite
) -> None:
    node = await node_with(django_auth_scheme="Bearer")
    client = await node.client(http)
    await client.authenticate("proveedor-8")
    calls = await django_site.acalls()
    assert calls["profile_schemes"] == {"Bearer": 1}
    assert calls["profile_calls_by_token"] == {"proveedor-8": 1}
    await client.close()


# --- deadline and pre-auth frames ---------------------------------------------------------------
async def test_no_authenticate_within_deadline_closes_4408(node_with: Any, http: Any) -> None:
    node = await node_with(auth_timeout_s=0.8)
    authed = await node.client(http)
    await authed.authenticate("cliente-1")
    idle = await node.client(http)
    chatty = await node.client(http)  # pings are allowed but do not authenticate
    await chatty.request("ping")
    assert await idle.wait_closed(timeout=3) == 4408
    assert await chatty.wait_closed(timeout=3) == 4408
    # the authenticated connection outlives the deadline
    assert (await authed.request("ping"))["event"] == "pong"
    assert authed.close_code is None
    await authed.close()


async def test_frames_before_authentication_are_unauthenticated(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    client = await node.client(http)
    pong = await client.request("ping")
    assert pong["event"] == "pong"
    for event, data in [
        ("join_room", {"room": "service_1"}),
        ("leave_room", {"room": "service_1"}),
        ("presence", {"room": "service_1"}),
        ("comment_created", {"servicioId": "1", "text": "hola"}),
        ("no_such_event", {}),  # unauthenticated is judged before unknown_event
    ]:
        reply = await client.request(event, data)
        assert reply["event"] == "error", (event, reply)
        assert reply["data"]["code"] == "unauthenticated", (event, reply)
    assert (await django_site.acalls())["events"] == []
    # the connection is still open and can authenticate
    await client.authenticate("cliente-1")
    assert (await client.join("service_1"))["room"] == "service_1"
    # a second authenticate is refused; the connection stays open
    reply = await client.request("authenticate", {"token": "admin-1"})
    assert reply["event"] == "error"
    assert reply["data"]["code"] == "already_authenticated"
    assert (await client.request("ping"))["event"] == "pong"
    await client.close()


async def test_verified_token_is_cached(node: Any, http: Any, django_site: DjangoSite) -> None:
    first = await node.client(http)
    await first.authenticate("cliente-5")
    second = await node.client(http, token="cliente-5")
    reply = await first_frame(second)
    assert reply["event"] == "auth_success"
    assert reply["data"]["userId"] == "5"
    other = await node.client(http)
    await other.authenticate("cliente-6")
    calls = await django_site.acalls()
    assert calls["profile_calls_by_token"] == {"cliente-5": 1, "cliente-6": 1}
    assert calls["profile_schemes"] == {"Token": 2}  # the default scheme
    for client in (first, second, other):
        await client.close()
