"""Cross-site WebSocket hijacking and CORS (CONTRACT sections 1 and 2: ``GATEWAY_ALLOWED_ORIGINS``;
the Origin allow-list applies to both transports; CORS only for configured origins)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.support.nodes import API_KEY

APP = "https://app.example"
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"


@pytest.fixture
async def node(make_node: Any) -> Any:
    return await make_node(allowed_origins=[APP], cors_origins=[APP])


async def upgrade_status(http: aiohttp.ClientSession, url: str, origin: str | None) -> int:
    """101 when the upgrade is accepted, else the refusal's status."""
    headers = {} if origin is None else {"Origin": origin}
    try:
        ws = await http.ws_connect(url, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status
    await ws.close()
    return 101


@pytest.mark.parametrize("path", ["/ws", SIO_PATH], ids=["native", "socketio"])
async def test_upgrade_from_a_foreign_origin_is_403(node: Any, http: Any, path: str) -> None:
    url = node.http_url.replace("http://", "ws://") + path
    for origin in [
        "https://evil.example",
        "https://app.example.evil.example",  # a longer name is another site
        "http://app.example",  # another scheme is another origin
        "https://app.example:8443",
        "null",  # sandboxed iframes and file:// pages
    ]:
        assert await upgrade_status(http, url, origin) == 403, origin
    assert await upgrade_status(http, url, APP) == 101
    assert await upgrade_status(http, url, APP + "/") == 101
    assert await upgrade_status(http, url, None) == 101  # not a browser: allowed


async def test_allowed_origin_is_served_end_to_end(node: Any, http: Any) -> None:
    client = await node.client(http, headers={"Origin": APP})
    await client.authenticate("cliente-1")
    assert (await client.join("service_1"))["room"] == "service_1"
    await client.close()


async def test_without_an_allow_list_any_origin_may_connect(make_node: Any, http: Any) -> None:
    node = await make_node()
    assert await upgrade_status(http, node.ws_url, "https://anywhere.example") == 101


async def preflight(http: aiohttp.ClientSession, url: str, origin: str) -> aiohttp.ClientResponse:
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(url, headers=headers) as resp:
        await resp.read()
        return resp


async def test_cors_preflight_only_for_configured_origins(node: Any, http: Any) -> None:
    url = f"{node.http_url}/api/publish"
    ok = await preflight(http, url, APP)
    assert ok.status == 204
    assert ok.headers["Access-Control-Allow-Origin"] == APP
    assert "POST" in ok.headers["Access-Control-Allow-Methods"]
    assert "authorization" in ok.headers["Access-Control-Allow-Headers"].lower()
    assert "Origin" in ok.headers["Vary"]
    evil = await preflight(http, url, "https://evil.example")
    assert "Access-Control-Allow-Origin" not in evil.headers
    assert "Access-Control-Allow-Methods" not in evil.headers
    assert evil.status >= 400
    # the real request: readable by the allowed origin only
    body = {"room": "service_1", "type": "notice", "payload": {}}
    auth = {"Authorization": f"Bearer {API_KEY}"}
    for origin, expected in [(APP, APP), ("https://evil.example", None)]:
        headers = {**auth, "Origin": origin}
        async with http.post(url, json=body, headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers.get("Access-Control-Allow-Origin") == expected, origin


async def test_cors_is_off_without_configured_origins(make_node: Any, http: Any) -> None:
    node = await make_node(allowed_origins=[APP])  # WebSocket allow-list only
    resp = await preflight(http, f"{node.http_url}/api/publish", APP)
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_dashboard_feed_refuses_cross_site_pages(make_node: Any, http: Any) -> None:
    """A browser sends its Basic login with any page's WebSocket upgrade: the feed must come
    from the dashboard's own origin (or an allowed one), or a foreign page could read it."""
    import base64

    from tests.support.nodes import DASHBOARD

    basic = "Basic " + base64.b64encode(f"admin:{DASHBOARD}".encode()).decode()
    for node in (await make_node(), await make_node(allowed_origins=[APP])):
        url = node.http_url.replace("http://", "ws://") + "/dashboard/feed"
        own = node.http_url  # the page the dashboard itself serves
        port = int(own.rsplit(":", 1)[1])
        for origin, expected in [
            ("https://evil.example", 403),
            # the same host name, another origin (issue 18 item 11: only the host was compared)
            (f"http://127.0.0.1:{port + 1}", 403),
            (f"https://127.0.0.1:{port}", 403),
            ("http://127.0.0.1", 403),
            (f"http://127.0.0.1.evil.example:{port}", 403),
            ("null", 403),
            (own, 101),
            (own.upper().replace("HTTP://", "http://"), 101),  # host names are case-blind
            (None, 101),
        ]:
            headers = {"Authorization": basic}
            if origin is not None:
                headers["Origin"] = origin
            try:
                ws = await http.ws_connect(url, headers=headers)
            except aiohttp.WSServerHandshakeError as exc:
                status = exc.status
            else:
                status = 101
                await ws.close()
            assert status == expected, (node.settings.allowed_origins, origin)


async def test_dashboard_feed_behind_a_tls_proxy_trusts_its_forwarded_scheme(
    make_node: Any, http: Any
) -> None:
    """Behind a proxy that terminates TLS the page is ``https://host``: the feed believes the
    proxy's X-Forwarded-Proto only when the proxy is in GATEWAY_TRUSTED_PROXIES."""
    import base64

    from tests.support.nodes import DASHBOARD

    basic = "Basic " + base64.b64encode(f"admin:{DASHBOARD}".encode()).decode()
    headers = {
        "Authorization": basic,
        "Host": "dash.example",
        "X-Forwarded-Proto": "https",
        "Origin": "https://dash.example",
    }
    for trusted, expected in [([], 403), (["127.0.0.0/8"], 101)]:
        node = await make_node(trusted_proxies=trusted)
        url = node.http_url.replace("http://", "ws://") + "/dashboard/feed"
        try:
            ws = await http.ws_connect(url, headers=headers)
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
        else:
            status = 101
            await ws.close()
        assert status == expected, trusted
