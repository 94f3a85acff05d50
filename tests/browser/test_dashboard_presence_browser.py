"""The dashboard in headless Chromium shows online users and "n of m" receipts on a live event,
updated as receivers acknowledge it."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.browser.test_dashboard_browser import _wait
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.nodes import API_KEY, DASHBOARD
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.browser


async def test_receipts_and_online_users_in_chromium(
    redis_server: RedisServer, make_node: Any, http: aiohttp.ClientSession
) -> None:
    from playwright.async_api import async_playwright

    node = await make_node(redis_server.url)
    clients = []
    for token in ("cliente-31", "cliente-32", "proveedor-33"):
        client = await node.client(http, token=token)
        await client.expect("auth_success")
        await client.join("service_30")
        clients.append(client)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                http_credentials={"username": "ops", "password": DASHBOARD}
            )
            page = await context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
            await page.goto(f"{node.http_url}/dashboard")
            await _wait(page, "document.querySelector('#live-status').dataset.state === 'live'")
            await _wait(page, "document.querySelector('#online-users').textContent === arg", "3")

            body = {"room": "service_30", "type": "notice", "payload": {}, "receipts": True}
            headers = {"Authorization": f"Bearer {API_KEY}"}
            async with http.post(f"{node.http_url}/api/publish", json=body, headers=headers) as r:
                event_id = (await r.json())["eventId"]
            cell = (
                f"document.querySelector('#event-log tr[data-event-id=\"{event_id}\"] td.receipts')"
            )
            await _wait(page, f"{cell} && {cell}.textContent === arg", "0 of 3")
            for client in clients[:2]:
                [event] = await client.events(1, "service_30")
                data = {k: event[k] for k in ("room", "offset", "epoch")}
                await client.send("received", data)
            await _wait(page, f"{cell}.textContent === arg", "2 of 3")
            assert problems == []
            await context.close()
        finally:
            await browser.close()
    for client in clients:
        await client.close()
