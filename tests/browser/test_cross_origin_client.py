"""A page of another origin imports ``/client.js`` from a node (CONTRACT section 6).

The page is served by a second HTTP server (another port: another origin). In headless Chromium
it imports the module from the node, connects, joins a room and receives an event published
through the node's API; a business event Django rejects with field errors rejects with an error
carrying ``fields``; ``/client.d.ts`` and ``/asyncapi.json`` can be fetched from the page too.
A file the node serves without ``Access-Control-Allow-Origin`` (``/static/client.js``) cannot be
imported from the same page: the browser does enforce CORS here, so the import above works
because of the header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.dashboard.support import api_publish
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

ROOM = "service_3"
WAIT_MS = 15_000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>another origin</title></head>
<body><p id="status">loading</p></body></html>
"""

# Runs in the page of the other origin.
CONNECT = """
async ({gateway, room}) => {
  const {GatewayClient} = await import(`${gateway}/client.js`);
  const client = new GatewayClient(gateway.replace('http', 'ws') + '/ws', {token: 'cliente-7'});
  window.client = client;
  window.events = [];
  client.on('*', (event) => { window.events.push(event); });
  const auth = await client.connect();
  const joined = await client.join(room);
  return {auth, joined, origin: location.origin};
}
"""

REJECTED = """
async () => {
  try {
    await window.client.createReservation(
      {clienteId: '7', proveedorId: '2', servicioId: '3', fecha: '1999-05-04'});
    return null;
  } catch (error) {
    return {name: error.name, code: error.code, fields: error.fields, field: error.field};
  }
}
"""

FETCH_PUBLIC = """
async ({gateway}) => {
  const dts = await fetch(`${gateway}/client.d.ts`);
  const spec = await fetch(`${gateway}/asyncapi.json`);
  return {dts: dts.ok && (await dts.text()).includes('class GatewayClient'),
          asyncapi: spec.ok && (await spec.json()).asyncapi};
}
"""

NO_CORS_IMPORT = """
async ({gateway}) => {
  try {
    await import(`${gateway}/static/client.js`);
    return 'imported';
  } catch (error) {
    return String(error);
  }
}
"""


@pytest.fixture
async def other_origin() -> AsyncIterator[str]:
    """An HTTP server on another port serving one page: ``http://127.0.0.1:P/page.html``."""

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/page.html", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/page.html"
    await runner.cleanup()


async def test_a_page_of_another_origin_imports_the_client_and_receives(
    make_node: Any, http: aiohttp.ClientSession, other_origin: str
) -> None:
    from playwright.async_api import async_playwright

    node = await make_node()
    gateway = node.http_url
    async with http.get(f"{gateway}/client.js", headers={"Origin": "http://elsewhere"}) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.headers["Content-Type"].startswith("text/javascript")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(other_origin)
            started = await page.evaluate(CONNECT, {"gateway": gateway, "room": ROOM})
            assert started["origin"] != gateway  # really another origin
            assert started["auth"]["userId"] == "7" and started["auth"]["role"] == "cliente"
            assert started["joined"]["room"] == ROOM

            event_id = await api_publish(http, gateway, ROOM, "price_changed", {"price": "9.50"})
            await page.wait_for_function(
                "(id) => window.events.some((e) => e.id === id)", arg=event_id, timeout=WAIT_MS
            )
            [event] = [e for e in await page.evaluate("window.events") if e["id"] == event_id]
            assert event["room"] == ROOM and event["type"] == "price_changed"
            assert event["payload"] == {"price": "9.50"} and event["source"] == "api"

            refused = await page.evaluate(REJECTED)
            assert refused == {
                "name": "GatewayError",
                "code": "rejected",
                "fields": {"fecha": ["La fecha no puede estar en el pasado."]},
                "field": None,
            }
            assert await page.evaluate(FETCH_PUBLIC, {"gateway": gateway}) == {
                "dts": True,
                "asyncapi": "3.1.0",
            }
            blocked = await page.evaluate(NO_CORS_IMPORT, {"gateway": gateway})
            assert blocked != "imported" and "Failed to fetch" in blocked, blocked
            await page.evaluate("window.client.close()")
        finally:
            await browser.close()
