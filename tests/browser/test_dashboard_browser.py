"""The dashboard page in headless Chromium against two real nodes on one Redis.

A person opens /dashboard, gets the HTTP Basic challenge and logs in (Playwright's
``http_credentials`` is how the browser answers that challenge; no header is injected). The page
must show the test's connections, go live over /dashboard/feed, and show a newly published event
without a reload. A screenshot is left in tests/artifacts/dashboard.png.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import aiohttp
import pytest

from gateway.publish import AsyncPublisher
from tests.dashboard.support import api_publish, dash_get, poll
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.nodes import DASHBOARD, RunningNode
from tests.support.ports import REPO_ROOT
from tests.support.redis_server import RedisServer
from tests.support.wsclient import WsClient

pytestmark = pytest.mark.browser

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"

# (node index, token, rooms to join): eight connections of three roles on two nodes
PEOPLE = [
    (0, "cliente-11", ("service_3",)),
    (0, "cliente-12", ("service_3", "location_1")),
    (0, "proveedor-21", ("service_3",)),
    (0, "admin-1", ()),
    (1, "cliente-13", ("location_1",)),
    (1, "cliente-14", ()),
    (1, "proveedor-22", ("service_4",)),
    (1, "proveedor-23", ()),
]


async def _business(client: WsClient, event: str, data: dict[str, Any]) -> None:
    reply = await client.request(event, data)
    assert reply["event"] == "ack", reply


async def _real_activity(
    nodes: list[RunningNode], http: aiohttp.ClientSession, redis_url: str
) -> list[WsClient]:
    """Connections, rooms and events of every source, the way a marketplace makes them."""
    clients = []
    for index, token, rooms in PEOPLE:
        client = await nodes[index].client(http, token=token)
        await client.expect("auth_success")
        for room in rooms:
            await client.join(room)
        clients.append(client)
    by_token = {token: clients[i] for i, (_, token, _) in enumerate(PEOPLE)}
    await _business(
        by_token["cliente-11"],
        "reservation_created",
        {"clienteId": "11", "proveedorId": "21", "servicioId": "3", "fecha": "2030-05-04"},
    )
    await _business(
        by_token["proveedor-21"],
        "reservation_accepted",
        {"reservationId": "1", "clienteId": "11", "proveedorId": "21", "servicioId": "3"},
    )
    await _business(
        by_token["cliente-12"],
        "payment_created",
        {"clienteId": "12", "proveedorId": "22", "amount": "25.00", "currency": "EUR"},
    )
    await _business(
        by_token["cliente-13"],
        "comment_created",
        {"servicioId": "3", "text": "Great service", "rating": 5},
    )
    for i, room in enumerate(("service_3", "service_4", "location_1")):
        await api_publish(http, nodes[i % 2].http_url, room, "price_changed", {"price": "9.50"})
    publisher = AsyncPublisher.from_url(redis_url)
    try:
        await publisher.publish("cliente_14", "profile_updated", {"field": "phone"})
    finally:
        await publisher.aclose()
    return clients


async def _wait(page: Any, expression: str, arg: Any = None, timeout_ms: int = 10_000) -> None:
    """Wait until ``expression`` (which may use ``arg``) is truthy in the page. It is sent as a
    function: a bare string would go through eval(), which the page's CSP forbids."""
    try:
        await page.wait_for_function(f"(arg) => ({expression})", arg=arg, timeout=timeout_ms)
    except Exception as exc:  # playwright's TimeoutError
        raise AssertionError(f"the page never showed: {expression} (arg {arg!r})") from exc


async def test_dashboard_page_live_in_chromium(
    redis_server: RedisServer,
    make_node: Any,
    http: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    nodes = [await make_node(redis_server.url), await make_node(redis_server.url)]
    node_ids = sorted(n.settings.node_id for n in nodes)
    clients = await _real_activity(nodes, http, redis_server.url)
    await poll(
        lambda: dash_get(http, nodes[0].http_url, "/dashboard/stats"),
        lambda s: s["connections"]["total"] == len(PEOPLE) and len(s["nodes"]) == 2,
        "both nodes' heartbeats",
    )
    url = f"{nodes[0].http_url}/dashboard"

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            # a browser without credentials gets the Basic challenge; with nobody to answer
            # it, headless Chromium gives up on the navigation
            anonymous = await browser.new_context()
            page = await anonymous.new_page()
            seen: list[tuple[int, str | None]] = []
            page.on(
                "response", lambda r: seen.append((r.status, r.headers.get("www-authenticate")))
            )
            with pytest.raises(PlaywrightError, match="ERR_INVALID_AUTH_CREDENTIALS"):
                await page.goto(url)
            assert seen == [(401, 'Basic realm="gateway dashboard"')]
            await anonymous.close()

            # a wrong password is refused
            wrong = await browser.new_context(
                http_credentials={"username": "ops", "password": "not-the-token"}
            )
            response = await (await wrong.new_page()).goto(url)
            assert response is not None and response.status == 401
            await wrong.close()

            # a person types the token as the password when the browser asks for it
            caplog.clear()
            context = await browser.new_context(
                http_credentials={"username": "ops", "password": DASHBOARD},
                viewport={"width": 1440, "height": 900},
                color_scheme="light",
            )
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            response = await page.goto(url)
            assert response is not None and response.status == 200
            # the challenge and its answer, as the node saw them
            assert _dashboard_statuses(caplog)[:2] == [401, 200]
            assert "default-src 'none'" in (
                await response.header_value("content-security-policy") or ""
            )
            await _check_page(page, nodes, node_ids)
            await _check_live_event(page, nodes, http)

            # the next stats push counts every listed event in the chart's hour
            rows = await page.eval_on_selector_all("#event-log tr[data-event-id]", "r => r.length")
            await _wait(
                page,
                "document.querySelector('#epm-legend').textContent.endsWith(arg)",
                f" {rows} events in the hour",
            )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            assert problems == []
            await context.close()
        finally:
            await browser.close()
    for client in clients:
        await client.close()


def _dashboard_statuses(caplog: pytest.LogCaptureFixture) -> list[int]:
    """Statuses of ``GET /dashboard`` in the nodes' access log, in order."""
    out = []
    for record in caplog.records:
        match = re.search(r'"GET /dashboard HTTP/1.1" (\d{3})', record.getMessage())
        if record.name == "aiohttp.access" and match:
            out.append(int(match.group(1)))
    return out


async def _check_page(page: Any, nodes: list[RunningNode], node_ids: list[str]) -> None:
    await _wait(page, "document.querySelector('#live-status').dataset.state === 'live'")
    await _wait(
        page, "document.querySelector('#total-connections').textContent === arg", str(len(PEOPLE))
    )
    roles = await page.eval_on_selector_all(
        "#role-connections li[data-role]",
        "items => Object.fromEntries(items.map(li => "
        "[li.dataset.role, li.querySelector('.role-count').textContent]))",
    )
    assert roles == {"cliente": "4", "proveedor": "3", "admin": "1"}
    shown = await page.eval_on_selector_all(
        "#nodes tbody tr[data-node]", "rows => rows.map(r => r.dataset.node)"
    )
    assert sorted(shown) == node_ids
    await _wait(page, "document.querySelector('#django-status').dataset.state === 'up'")
    # the events published before the page opened are listed, newest first
    await _wait(page, "document.querySelectorAll('#event-log tr[data-event-id]').length >= 8")
    types = await page.eval_on_selector_all(
        "#event-log tr[data-event-id] td:nth-child(3)", "cells => cells.map(c => c.textContent)"
    )
    assert types[0] == "profile_updated" and "reservation_created" in types
    await _wait(
        page,
        "document.querySelectorAll('#clients-table tbody tr[data-connection-id]').length === arg",
        len(PEOPLE),
    )
    await _wait(page, "!!document.querySelector('#rooms-table tr[data-room=\"service_3\"]')")


async def _check_live_event(
    page: Any, nodes: list[RunningNode], http: aiohttp.ClientSession
) -> None:
    await page.evaluate("() => { window.__sameDocument = true; }")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    started = time.monotonic()
    event_id = await api_publish(http, nodes[1].http_url, "service_3", "order_shipped", {"n": 1})
    await _wait(page, "document.querySelector('#event-log tr')?.dataset.eventId === arg", event_id)
    assert time.monotonic() - started < 10
    row = f"#event-log tr[data-event-id='{event_id}']"
    assert await page.text_content(f"{row} td:nth-child(2)") == "service_3"
    assert await page.text_content(f"{row} td:nth-child(3)") == "order_shipped"
    # it arrived over the feed: same document, no navigation
    assert await page.evaluate("() => window.__sameDocument === true")
    assert navigations == []
