"""The demo shows "proveedor online": the worker POSTs presence changes to the demo's
``presence_view``, whose ``@presence_changed`` hook tells every cliente (``all_clientes``), and
``GET /api/v1/proveedores/`` answers who is online now (``gateway.contrib.django.online``); and a
view that waits for a receipt (``wait_for_receipt``) falls back to e-mail when the cliente is
offline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import GatewayClient
from gateway.publish import Publisher
from tests.demo.test_demo_django import DemoSite
from tests.support.nodes import API_KEY
from tests.support.redis_server import RedisServer


@pytest.fixture
def demo_site(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[DemoSite, Any]]:
    site = DemoSite(tmp_path, redis_server.url)
    site.env["GATEWAY_PUBLISH_API_KEY"] = API_KEY
    site.manage("migrate", "-v", "0")
    users = json.loads(site.manage("seed_demo", "--clientes", "1", "--proveedores", "1"))
    site.start()
    yield site, users
    site.stop()


async def proveedores(http: aiohttp.ClientSession, site: DemoSite, token: str) -> list[Any]:
    headers = {"Authorization": f"Token {token}"}
    async with http.get(site.base_url + "proveedores/", headers=headers) as response:
        assert response.status == 200, await response.text()
        result: list[Any] = await response.json()
        return result


@pytest.mark.slow
async def test_clientes_see_a_proveedor_come_online_and_go_offline(
    demo_site: Any, make_node: Any, worker_process: Any, redis_server: RedisServer, http: Any
) -> None:
    site, users = demo_site
    cliente, proveedor = users["cliente"][0], users["proveedor"][0]
    node = await make_node(redis_server.url, django_base_url=site.base_url, presence_grace_s=0.5)
    env = {
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_DJANGO_PRESENCE_PATH": "presence/",
        "GATEWAY_PUBLISH_API_KEY": API_KEY,
    }
    await worker_process.astart(env, django_base_url=site.base_url)
    c = await node.client(http, token=cliente["token"])
    await c.expect("auth_success")
    [listed] = await proveedores(http, site, cliente["token"])
    assert (listed["id"], listed["online"]) == (str(proveedor["id"]), False)

    p = await node.client(http, token=proveedor["token"])
    await p.expect("auth_success")
    [came] = await c.events(1, room="all_clientes", timeout=20)
    assert came["type"] == "proveedor_status"
    assert came["payload"]["proveedorId"] == str(proveedor["id"])
    assert came["payload"]["online"] is True
    assert (await proveedores(http, site, cliente["token"]))[0]["online"] is True

    await p.close()
    [went] = await c.events(1, room="all_clientes", timeout=20)
    assert (went["payload"]["proveedorId"], went["payload"]["online"]) == (
        str(proveedor["id"]),
        False,
    )
    [listed] = await proveedores(http, site, cliente["token"])
    assert listed["online"] is False and listed["lastSeen"] <= went["ts"]
    await c.close()


async def post(http: aiohttp.ClientSession, url: str, token: str, body: Any) -> Any:
    async with http.post(url, json=body, headers={"Authorization": f"Token {token}"}) as response:
        assert response.status < 300, await response.text()
        return await response.json()


@pytest.mark.slow
async def test_a_reminder_waits_for_the_receipt_and_falls_back_to_email_when_offline(
    demo_site: Any, make_node: Any, redis_server: RedisServer, http: Any
) -> None:
    site, users = demo_site
    cliente, proveedor = users["cliente"][0], users["proveedor"][0]
    node = await make_node(redis_server.url, django_base_url=site.base_url)
    created = await post(
        http,
        site.base_url + "reservations/",
        cliente["token"],
        {"proveedorId": proveedor["id"], "servicioId": "4", "fecha": "2031-06-01T09:00:00Z"},
    )
    remind = site.base_url + f"reservations/{created['id']}/remind/"

    # the cliente is offline: no receipt within the timeout, so an e-mail goes instead
    offline = await post(http, remind, proveedor["token"], {"timeout": 1})
    assert (offline["delivered"], offline["fallback"]) == (False, "email")
    assert "Recordatorio de tu reserva" in site.stdout()

    # online with the shipped client, which acknowledges by itself: delivered, no e-mail
    client = GatewayClient(node.ws_url, token=cliente["token"], session=http)
    reminders: list[Any] = []
    client.on("reservation_reminder", reminders.append)
    await client.connect()
    online = await post(http, remind, proveedor["token"], {"timeout": 10})
    assert (online["delivered"], online["fallback"]) == (True, None)
    assert [r["id"] for r in reminders] == [online["eventId"]]
    publisher = Publisher.from_url(redis_server.url)
    try:
        answer = publisher.receipts(online["eventId"])
    finally:
        publisher.close()
    assert answer is not None
    assert set(answer["rooms"][f"cliente_{cliente['id']}"]["users"]) == {str(cliente["id"])}
    assert site.stdout().count("Recordatorio de tu reserva") == 1
    await client.close()
