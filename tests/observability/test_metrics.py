"""``GET /metrics``: valid Prometheus text, counters that follow the traffic, bounded labels."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.observability.scrape import Sample, all_label_values, samples, scrape
from tests.support.nodes import API_KEY
from tests.support.redis_server import RedisServer

# distinctive ids and rooms, so a label that leaked one is easy to spot
CLIENTE, PROVEEDOR = "73011", "73022"
ROOM = "service_88421"
PROMTOOL = shutil.which("promtool")


def _delta(
    before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str
) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def _traffic(node: Any, http: aiohttp.ClientSession) -> dict[str, Any]:
    """Connections of two roles, a refused token, pings, a business event, an API publish."""
    cliente = await node.client(http, token=f"cliente-{CLIENTE}")
    await cliente.expect("auth_success")
    proveedor = await node.client(http)
    await proveedor.authenticate(f"proveedor-{PROVEEDOR}")
    refused = await node.client(http, token="not-a-token")
    assert (await refused.expect("auth_error"))["data"]["code"] == "invalid_token"
    assert await refused.wait_closed() == 4401

    await cliente.join(ROOM)
    await proveedor.join(ROOM)
    for _ in range(5):
        assert (await cliente.request("ping", {}))["event"] == "pong"
    unknown = await cliente.request("no_such_event", {})
    assert unknown["data"]["code"] == "unknown_event"

    ack = await cliente.request(
        "reservation_created",
        {"clienteId": CLIENTE, "proveedorId": PROVEEDOR, "servicioId": "5", "fecha": "2030-01-02"},
    )
    assert ack["event"] == "ack", ack
    await proveedor.events(1, room=f"proveedor_{PROVEEDOR}")
    await cliente.events(1, room=f"cliente_{CLIENTE}")

    body = {"room": ROOM, "type": "order_shipped", "payload": {"n": 1}}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with http.post(f"{node.http_url}/api/publish", json=body, headers=headers) as resp:
        assert resp.status == 200
    await cliente.events(1, room=ROOM)
    await proveedor.events(1, room=ROOM)
    return {"cliente": cliente, "proveedor": proveedor}


async def test_counters_follow_the_traffic(
    redis_server: RedisServer, make_node: Any, http: aiohttp.ClientSession
) -> None:
    node = await make_node(redis_server.url)
    before = samples(await scrape(http, node.http_url))
    clients = await _traffic(node, http)
    await clients["proveedor"].close()
    await asyncio.sleep(0.2)  # the server side of the close is handled
    after = samples(await scrape(http, node.http_url))

    def d(name: str, **labels: str) -> float:
        return _delta(before, after, name, **labels)

    assert d("gateway_connects_total", transport="ws") == 3
    assert d("gateway_auth_total", result="success") == 2
    assert d("gateway_auth_total", result="invalid_token") == 1
    assert d("gateway_disconnects_total", code="4401") == 1
    assert d("gateway_disconnects_total", code="1000") == 1
    assert after[("gateway_connections", (("role", "cliente"), ("transport", "ws")))] == 1
    assert after[("gateway_connections", (("role", "proveedor"), ("transport", "ws")))] == 0
    assert d("gateway_frames_received_total", event="ping") == 5
    assert d("gateway_frames_received_total", event="unknown") == 1
    assert d("gateway_frames_received_total", event="reservation_created") == 1
    assert d("gateway_frames_sent_total", event="pong") == 5
    assert d("gateway_frames_sent_total", event="ack") == 1
    assert d("gateway_errors_sent_total", code="unknown_event") == 1
    outcome = {"type": "reservation_created", "outcome": "confirmed"}
    assert d("gateway_business_events_total", **outcome) == 1
    assert d("gateway_publishes_total", source="client") == 1
    assert d("gateway_publishes_total", source="api") == 1
    # the reservation reaches proveedor_X and cliente_Y (admin_dashboard has nobody here), the
    # API event reaches both members of ROOM: four frames from three publications with members
    assert d("gateway_deliveries_total") == 4
    assert d("gateway_delivery_latency_seconds_count") == 3
    assert 0 <= d("gateway_delivery_latency_seconds_sum") < 3
    assert d("gateway_django_request_duration_seconds_count", endpoint="events") == 1
    assert d("gateway_django_request_duration_seconds_count", endpoint="profile") == 3
    assert after[("gateway_ready", ())] == 1
    await clients["cliente"].close()


async def test_no_label_carries_a_user_or_a_room(
    redis_server: RedisServer, make_node: Any, http: aiohttp.ClientSession
) -> None:
    node = await make_node(redis_server.url)
    clients = await _traffic(node, http)
    text = await scrape(http, node.http_url)
    values = all_label_values(text)
    assert "ws" in values and "success" in values  # the walk does see label values
    leaks = [
        v
        for v in values
        if any(s in v for s in (CLIENTE, PROVEEDOR, ROOM, "cliente_", "proveedor_", "service_"))
    ]
    assert leaks == []
    for client in clients.values():
        await client.close()


async def test_exposition_is_valid_prometheus_text(
    redis_server: RedisServer, make_node: Any, http: aiohttp.ClientSession
) -> None:
    node = await make_node(redis_server.url)
    clients = await _traffic(node, http)
    async with http.get(f"{node.http_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["gateway_connects"].type == "counter"
    assert families["gateway_connections"].type == "gauge"
    assert families["gateway_delivery_latency_seconds"].type == "histogram"
    assert "process_resident_memory_bytes" in families
    for family in families.values():
        assert family.documentation, f"{family.name} has no HELP text"
    for client in clients.values():
        await client.close()


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package 'prometheus')"
)
async def test_promtool_finds_no_problem(
    redis_server: RedisServer, make_node: Any, http: aiohttp.ClientSession
) -> None:
    assert PROMTOOL is not None
    node = await make_node(redis_server.url)
    clients = await _traffic(node, http)
    text = await scrape(http, node.http_url)
    result = await asyncio.to_thread(
        subprocess.run,
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # exit 0 and no lint line: names, units, HELP texts and types all pass
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip() == ""
    for client in clients.values():
        await client.close()


@pytest.mark.parametrize("path", ["/ws", "/socket.io/?EIO=4&transport=websocket"])
async def test_close_codes_sent_by_clients_do_not_become_label_values(
    make_node: Any, http: aiohttp.ClientSession, path: str
) -> None:
    """Issue 18 item 12: the code of a client's close frame was a label value: an
    unauthenticated client could create ~2,000 series (3000-4999). Codes the gateway does not
    know are counted under ``other``."""
    from tests.security.helpers import RawWebSocket
    from tests.unit.test_frame_reader import client_frame

    node = await make_node()
    before = samples(await scrape(http, node.http_url))
    port = int(node.http_url.rsplit(":", 1)[1])
    # each client sends its close frame and reads the answer (the code is the client's)
    codes = [*range(3000, 3050), 4999, 1000, 1001]
    for code in codes:
        client = await RawWebSocket.connect("127.0.0.1", port, path)
        await client.send_frame(client_frame(code.to_bytes(2, "big"), 0x8))
        assert await asyncio.wait_for(client.reader.read(), 5) != b""  # answered, then FIN
        client.close()
    async with asyncio.timeout(5):
        while node.node.sessions:
            await asyncio.sleep(0.02)
    after = samples(await scrape(http, node.http_url))
    assert _delta(before, after, "gateway_disconnects_total", code="other") == len(codes) - 2
    assert _delta(before, after, "gateway_disconnects_total", code="1000") == 1
    assert _delta(before, after, "gateway_disconnects_total", code="1001") == 1
    codes_seen = {
        dict(labels)["code"] for name, labels in after if name == "gateway_disconnects_total"
    }
    assert codes_seen == {"other", "1000", "1001"}
