"""The dashboard on a 390 px phone (issue 19, item 9), in headless Chromium against a real node.

Under 600 px every row of the nodes, clients and events tables is a card: one line per column,
labelled with the column's header. The test opens the page at 390 x 844 and checks, for every
table, that nothing scrolls sideways and that every column of a row is on screen with its label
(Source, Event id and Last seen were off-screen before).
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.dashboard.support import api_publish
from tests.support.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.support.nodes import DASHBOARD

pytestmark = pytest.mark.browser

WIDTH = 390
WAIT_MS = 15_000

# For each table: its header texts, and for its first data row, each cell's box and label.
LAYOUT = """
(selector) => {
  const table = document.querySelector(selector);
  const wrap = table.closest('.table-wrap');
  const row = table.querySelector('tbody tr:not(.empty-row)');
  const headers = [...table.tHead.rows[0].cells].map((th) => th.textContent.trim());
  const cells = [...row.cells].map((td) => {
    const box = td.getBoundingClientRect();
    const label = getComputedStyle(td, '::before').content;
    return {left: box.left, right: box.right, width: box.width, height: box.height,
            display: getComputedStyle(td).display, label, text: td.textContent.trim()};
  });
  return {headers, cells, wrapScroll: wrap.scrollWidth, wrapClient: wrap.clientWidth,
          headerHeight: table.tHead.getBoundingClientRect().height};
}
"""
TABLES = {
    "#nodes": ["Health", "Node", "Connections", "Rooms", "Memory", "Uptime", "Frames in / out",
               "Django probe", "Last seen"],
    "#clients-table": ["User", "Role", "Node", "Rooms", "Connected"],
    ".event-table": ["Time", "Room", "Type", "Source", "Event id", "Received"],
}  # fmt: skip


async def test_every_column_of_every_table_shows_on_a_phone(
    make_node: Any, http: aiohttp.ClientSession
) -> None:
    from playwright.async_api import async_playwright

    node = await make_node()
    clients = [await node.client(http, token=t) for t in ("cliente-31", "proveedor-32")]
    for client in clients:
        await client.expect("auth_success")
    await clients[0].join("service_5")
    event_id = await api_publish(http, node.http_url, "service_5", "price_changed", {"p": "1"})

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                viewport={"width": WIDTH, "height": 844},
                http_credentials={"username": "ops", "password": DASHBOARD},
                is_mobile=True,
                has_touch=True,
            )
            page = await context.new_page()
            response = await page.goto(f"{node.http_url}/dashboard")
            assert response is not None and response.status == 200
            for selector in [*TABLES, "#rooms-table"]:
                await page.wait_for_function(
                    "(s) => document.querySelector(s).querySelector('tbody tr:not(.empty-row)')",
                    arg=selector,
                    timeout=WAIT_MS,
                )
            assert await page.evaluate("document.documentElement.scrollWidth") <= WIDTH

            for selector, headers in TABLES.items():
                layout = await page.evaluate(LAYOUT, selector)
                assert layout["headers"] == headers
                assert layout["wrapScroll"] <= layout["wrapClient"], selector  # no sideways
                assert layout["headerHeight"] <= 1, selector  # cards: the header row is hidden
                assert len(layout["cells"]) == len(headers)
                for header, cell in zip(headers, layout["cells"], strict=True):
                    assert cell["display"] != "none" and cell["height"] > 0, (selector, header)
                    assert cell["left"] >= 0 and cell["right"] <= WIDTH, (selector, header, cell)
                    assert cell["label"] == f'"{header}"', (selector, header, cell)

            events = await page.evaluate(LAYOUT, ".event-table")
            assert [c["text"] for c in events["cells"]][1:] == [
                "service_5",
                "price_changed",
                "api",
                event_id,
                "",  # Received: only events published with receipts show "n of m"
            ]
            rooms = await page.evaluate(LAYOUT, "#rooms-table")
            assert rooms["wrapScroll"] <= rooms["wrapClient"]
            assert all(c["left"] >= 0 and c["right"] <= WIDTH for c in rooms["cells"])
            await context.close()
        finally:
            await browser.close()
    for client in clients:
        await client.close()
