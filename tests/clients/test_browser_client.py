"""The browser client (``GET /client.js``) in headless Chromium against a real node on a real
Redis: it connects, joins and receives; when the node restarts (SIGTERM drain, then a new
process on the same port) it reconnects and its handlers get the events published meanwhile
exactly once, in order; its business-event methods resolve to the ``ack`` or reject with the
gateway's code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.publish import AsyncPublisher
from tests.clients.conftest import cluster_env, offsets, seqs
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS

ROOM = "service_21"
WAIT_MS = 15_000

# Runs in the page: import the module the node serves, connect, join, collect into window.
START = """
async ({room, token}) => {
  const {GatewayClient} = await import('/client.js');
  const client = new GatewayClient(`ws://${location.host}/ws`, {token, backoffMaxMs: 1000});
  window.client = client;
  window.events = [];
  window.lifecycle = [];
  client.on('*', (event) => { window.events.push(event); });
  for (const name of ['connected', 'disconnected', 'reconnected', 'recovery_failed']) {
    client.onLifecycle(name, (info) => { window.lifecycle.push([name, info]); });
  }
  const auth = await client.connect();
  const joined = await client.join(room);
  return {auth, joined};
}
"""

# After the restart: one business event that works and one the gateway refuses.
BUSINESS = """
async ({room}) => {
  const ack = await window.client.createComment({servicioId: room.split('_')[1], text: 'hola'});
  let refused = null;
  try {
    await window.client.createReservation(
      {clienteId: '999', proveedorId: '2', servicioId: '1', fecha: '2030-01-01'});
  } catch (error) {
    refused = {name: error.name, code: error.code, terminal: error.terminal};
  }
  return {ack, refused, state: window.client.state};
}
"""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def count_events(page: Any, room: str, n: int) -> None:
    await page.wait_for_function(
        "([room, n]) => window.events.filter((e) => e.room === room).length >= n",
        arg=[room, n],
        timeout=WAIT_MS,
    )


@pytest.mark.slow
@pytest.mark.browser
async def test_browser_client_recovers_across_a_node_restart(
    browser: Any, gateway_process: Any, redis_server: Any
) -> None:
    node = await gateway_process.astart(cluster_env(redis_server.url))
    page = await browser.new_page()
    publisher = AsyncPublisher.from_url(redis_server.url)

    async def publish(first: int, last: int) -> None:
        for seq in range(first, last):
            await publisher.publish(ROOM, "tick", {"seq": seq})

    try:
        response = await page.goto(f"{node.http_url}/healthz")
        assert response is not None and response.ok
        started = await page.evaluate(START, {"room": ROOM, "token": "cliente-21"})
        assert started["auth"]["userId"] == "21"
        assert started["auth"]["node"] == node.node_id
        assert started["joined"]["room"] == ROOM
        await publish(0, 5)
        await count_events(page, ROOM, 5)

        node.term()  # drain: close 1012, exit 0; the page keeps running
        assert await asyncio.to_thread(node.wait, 10) == 0
        await publish(5, 15)  # while no node is up
        node.start(wait=False)  # the same port: a restart
        await node.wait_ready_async()
        await publish(15, 20)
        await count_events(page, ROOM, 20)
        business = await page.evaluate(BUSINESS, {"room": ROOM})
        await count_events(page, ROOM, 21)  # the comment, through the service room
        await asyncio.sleep(0.3)  # room for a duplicate to show up
        events = await page.evaluate("window.events")
        lifecycle = await page.evaluate("window.lifecycle")
        stats = await page.evaluate("window.client.stats")
        await page.evaluate("window.client.close()")
    finally:
        await page.close()
        await publisher.aclose()

    ticks = [e for e in events if e["room"] == ROOM and e["type"] == "tick"]
    assert offsets(ticks) == list(range(1, 21))
    assert seqs(ticks) == list(range(20))
    assert len({e["epoch"] for e in ticks}) == 1
    assert [name for name, _ in lifecycle] == ["connected", "disconnected", "reconnected"]
    assert lifecycle[1][1]["code"] == 1012
    assert stats["reconnects"] == 1
    assert stats["recoveries"] >= 1
    assert stats["missedDelivered"] >= 10  # at least those published while no node was up
    assert stats["duplicatesDropped"] == 0

    assert business["ack"]["event"] == "comment_created"
    [comment] = [e for e in events if e["type"] == "comment_created"]
    assert comment["id"] == business["ack"]["eventId"]
    assert comment["room"] == ROOM
    assert comment["offset"] == 21
    assert business["refused"] == {"name": "GatewayError", "code": "forbidden", "terminal": False}
    assert business["state"] == "connected"
