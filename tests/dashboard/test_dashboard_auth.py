"""Who may see the dashboard: Bearer for everything, Basic (token as password) for GET only."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from tests.dashboard.support import Cluster, basic, bearer
from tests.support.nodes import DASHBOARD

GET_PATHS = (
    "/dashboard",
    "/dashboard/stats",
    "/dashboard/clients",
    "/dashboard/rooms",
    "/dashboard/events",
    "/dashboard/api-status",
)


async def _status(
    http: aiohttp.ClientSession, method: str, url: str, **kw: object
) -> tuple[int, Any, bytes]:
    async with http.request(method, url, **kw) as resp:  # type: ignore[arg-type]
        return resp.status, resp.headers, await resp.read()


async def test_every_get_needs_the_token(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    for path in GET_PATHS:
        await _check_get(http, cluster.nodes[0].http_url + path)


async def _check_get(http: aiohttp.ClientSession, url: str) -> None:
    status, headers, body = await _status(http, "GET", url)
    assert status == 401
    # a browser is challenged for HTTP Basic, so a person can log in
    assert headers["WWW-Authenticate"] == 'Basic realm="gateway dashboard"'
    assert b"connections" not in body, url

    for wrong in (bearer("wrong-token"), bearer(DASHBOARD + "x"), bearer(DASHBOARD[:-1])):
        status, _, _ = await _status(http, "GET", url, headers=wrong)
        assert status == 401, (url, wrong)
    status, _, _ = await _status(http, "GET", url, headers=basic("ops", "nope"))
    assert status == 401
    # the token as the user name is not the password
    status, _, _ = await _status(http, "GET", url, headers=basic(DASHBOARD, ""))
    assert status == 401

    status, _, _ = await _status(http, "GET", url, headers=bearer(DASHBOARD))
    assert status == 200
    for user in ("ops", "", "any name"):
        status, _, _ = await _status(http, "GET", url, headers=basic(user, DASHBOARD))
        assert status == 200, (url, user)


async def test_cleanup_needs_bearer_not_basic(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    url = cluster.nodes[1].http_url + "/dashboard/cleanup"
    status, headers, _ = await _status(http, "POST", url)
    assert status == 401
    # a browser is not invited to log in for POST: Basic is never accepted there
    assert "Basic" not in headers.get("WWW-Authenticate", "")
    status, _, _ = await _status(http, "POST", url, headers=basic("ops", DASHBOARD))
    assert status == 401
    status, _, _ = await _status(http, "POST", url, headers=bearer("wrong-token"))
    assert status == 401
    status, _, body = await _status(http, "POST", url, headers=bearer(DASHBOARD))
    assert status == 200
    removed = json.loads(body)["removed"]
    assert removed == {"nodes": 0, "connections": 0, "memberships": 0, "presence": 0}


async def test_feed_needs_the_token(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    url = cluster.nodes[0].http_url + "/dashboard/feed"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url)
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(url, headers=bearer("wrong-token"))
    assert refused.value.status == 401
    async with http.ws_connect(url, headers=basic("ops", DASHBOARD)) as ws:
        frame = await ws.receive_json(timeout=5)
        assert frame["type"] == "stats"
