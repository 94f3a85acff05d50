"""Without GATEWAY_DASHBOARD_TOKEN: embedded mode makes one up and prints it once; with Redis the
dashboard is off (404) and the log says why."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from tests.dashboard.support import basic, bearer
from tests.support.nodes import DASHBOARD
from tests.support.redis_server import RedisServer

TOKEN_LINE = re.compile(r"dashboard token: (\S+)")


async def _get(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    async with http.get(url, **kw) as resp:
        await resp.read()
        return resp.status


async def test_embedded_node_generates_a_token(make_node: Any, http: aiohttp.ClientSession) -> None:
    first = await make_node(dashboard_token=None)
    second = await make_node(dashboard_token=None)
    token = first.dashboard_token
    assert len(token) >= 24 and token != DASHBOARD
    assert second.dashboard_token != token  # random, not a default
    url = f"{first.http_url}/dashboard/stats"
    assert await _get(http, url, headers=bearer(token)) == 200
    assert await _get(http, url, headers=basic("admin", token)) == 200
    assert await _get(http, url, headers=bearer(DASHBOARD)) == 401
    assert await _get(http, url, headers=bearer(second.dashboard_token)) == 401


async def test_embedded_process_prints_its_token_once(
    gateway_process: Any, http: aiohttp.ClientSession
) -> None:
    proc = await gateway_process.astart({"GATEWAY_DASHBOARD_TOKEN": None})
    url = f"{proc.http_url}/dashboard/stats"
    [token] = TOKEN_LINE.findall(proc.logs())
    assert len(token) >= 24
    assert await _get(http, url, headers=bearer(token)) == 200
    assert await _get(http, f"{proc.http_url}/dashboard", headers=basic("", token)) == 200
    assert await _get(http, url, headers=bearer(token + "x")) == 401
    assert await _get(http, url) == 401
    # printed once at startup, never again (not on requests, not at shutdown)
    proc.term()
    assert proc.wait(10) == 0, proc.stderr()[-3000:]
    logs = proc.logs()
    assert TOKEN_LINE.findall(logs) == [token]
    assert logs.count(token) == 1


async def test_redis_mode_without_a_token_has_no_dashboard(
    gateway_process: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    proc = await gateway_process.astart(
        {"GATEWAY_REDIS_URL": redis_server.url, "GATEWAY_DASHBOARD_TOKEN": None}
    )
    for path in ("/dashboard", "/dashboard/stats", "/dashboard/clients", "/dashboard/feed"):
        assert await _get(http, proc.http_url + path) == 404, path
        assert await _get(http, proc.http_url + path, headers=bearer("guess")) == 404, path
    async with http.post(f"{proc.http_url}/dashboard/cleanup", headers=bearer("guess")) as resp:
        assert resp.status == 404
    assert await _get(http, f"{proc.http_url}/readyz") == 200  # the node itself serves
    logs = proc.logs()
    assert "dashboard token:" not in logs
    [warning] = [line for line in logs.splitlines() if "GATEWAY_DASHBOARD_TOKEN" in line]
    assert "WARNING" in warning and "404" in warning


async def test_redis_mode_node_without_a_token_answers_404(
    redis_server: RedisServer, make_node: Any, http: aiohttp.ClientSession
) -> None:
    node = await make_node(redis_server.url, dashboard_token=None)
    assert node.dashboard_token == ""
    for token in ("", DASHBOARD):
        headers = bearer(token) if token else {}
        assert await _get(http, f"{node.http_url}/dashboard/stats", headers=headers) == 404
