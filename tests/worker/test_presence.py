"""The presence feed (contract §8): the worker POSTs online/offline changes to the real Django test
site, whose view is ``gateway.contrib.django.presence_view`` with a ``@presence_changed`` hook.
Django receives each change once, in order per user, across a Django outage and worker restarts
(SIGKILL and SIGTERM). And an ingest entry with ``receipts 1`` asks for receipts."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from gateway.backend.keys import Keys
from tests.support.nodes import API_KEY
from tests.support.ports import eventually
from tests.support.wsclient import WsClient

KEYS = Keys("gateway")
GRACE_S = 0.2


async def visit(http: aiohttp.ClientSession, node: Any, token: str) -> None:
    """One connection that opens and closes: online, then offline once the grace period ends."""
    client = await WsClient.connect(http, node.ws_url)
    await client.authenticate(token)
    await client.close()


def stream_changes(redis_server: Any) -> list[dict[str, Any]]:
    return [
        {
            "changeId": entry_id.decode(),
            "userId": f[b"userId"].decode(),
            "role": f[b"role"].decode(),
            "online": f[b"online"] == b"1",
            "ts": int(f[b"ts"]),
        }
        for entry_id, f in redis_server.admin().xrange(KEYS.presence_stream)
    ]


async def handled(django_site: Any) -> list[dict[str, Any]]:
    return list((await django_site.acalls())["presence"])


async def until_django_has(django_site: Any, redis_server: Any, n: int) -> None:
    async def done() -> bool:
        return len(stream_changes(redis_server)) >= n and len(await handled(django_site)) >= n

    await eventually(done, 40, f"{n} changes to reach Django", interval_s=0.1)


@pytest.mark.slow
async def test_django_gets_each_change_once_in_order_across_an_outage_and_worker_restarts(
    redis_server: Any, django_site: Any, make_node: Any, worker_process: Any, http: Any
) -> None:
    node = await make_node(redis_server.url, presence_grace_s=GRACE_S)
    env = {
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_DJANGO_PRESENCE_PATH": "presence/",
        "GATEWAY_PUBLISH_API_KEY": API_KEY,
        "GATEWAY_PRESENCE_BATCH": "3",  # several batches, so order across batches counts too
    }
    worker = await worker_process.astart(env)
    for token in ("cliente-1", "proveedor-2", "cliente-1"):
        await visit(http, node, token)
        await asyncio.sleep(GRACE_S * 3)  # each visit ends offline before the next
    await until_django_has(django_site, redis_server, 6)

    # Django is down: nothing is handled, the same batch keeps being retried
    django_site.control(presence_mode="fail")
    posts_before = (await django_site.acalls())["presence_posts"]
    await visit(http, node, "cliente-3")

    async def retried() -> bool:
        return (await django_site.acalls())["presence_posts"] >= posts_before + 2

    await eventually(retried, 20, "the worker to retry while Django fails")
    assert len(await handled(django_site)) == 6
    django_site.control(presence_mode="ok")
    await until_django_has(django_site, redis_server, 8)

    # the worker is killed; changes made meanwhile reach Django from the next worker
    worker.kill()
    await visit(http, node, "proveedor-4")
    await visit(http, node, "cliente-1")
    worker = await worker_process.astart(env)
    await until_django_has(django_site, redis_server, 12)

    # and a graceful restart
    worker.term()
    assert await asyncio.to_thread(worker.wait, 15) == 0
    await visit(http, node, "proveedor-2")
    worker = await worker_process.astart(env)
    await until_django_has(django_site, redis_server, 14)

    await asyncio.sleep(0.5)  # nothing more arrives (no repeat after the last batch)
    got = await handled(django_site)
    assert got == stream_changes(redis_server)  # each once, in the stream's order
    assert len({c["changeId"] for c in got}) == len(got) == 14
    for user in {c["userId"] for c in got}:
        states = [c["online"] for c in got if c["userId"] == user]
        assert states == [True, False] * (len(states) // 2), user  # alternating, none missed
    assert {(c["userId"], c["role"]) for c in got} == {
        ("1", "cliente"),
        ("2", "proveedor"),
        ("3", "cliente"),
        ("4", "proveedor"),
    }


async def test_presence_view_wants_the_key_and_drops_repeated_changes(
    django_site: Any, http: Any
) -> None:
    url = django_site.base_url + "presence/"
    batch = {
        "changes": [
            {
                "changeId": "1700000000000-0",
                "userId": "7",
                "role": "cliente",
                "online": True,
                "ts": 1700000000000,
            },
            {
                "changeId": "1700000000500-0",
                "userId": "7",
                "role": "cliente",
                "online": False,
                "ts": 1700000000400,
            },
        ]
    }
    good = {"Authorization": f"Bearer {API_KEY}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with http.post(url, json=batch, headers=headers) as response:
            assert response.status == 401
    async with http.post(url, json=batch, headers=good) as response:
        assert (response.status, (await response.json())["handled"]) == (200, 2)
    # the same batch again (an answer lost on the way back): handled once only
    async with http.post(url, json=batch, headers=good) as response:
        assert (response.status, (await response.json())["handled"]) == (200, 0)
    async with http.post(url, json={"changes": [{"userId": "7"}]}, headers=good) as response:
        assert response.status == 400
    assert [c["online"] for c in await handled(django_site)] == [True, False]


async def test_an_ingest_entry_with_receipts_1_is_acknowledged_by_its_receivers(
    redis_server: Any, make_node: Any, start_worker: Any, http: Any
) -> None:
    node = await make_node(redis_server.url)
    await start_worker(redis_server.url)
    client = await WsClient.connect(http, node.ws_url)
    await client.authenticate("proveedor-6")
    admin = redis_server.admin()
    admin.xadd(
        KEYS.ingest,
        {
            "room": "proveedor_6",
            "type": "reminder",
            "payload": "{}",
            "receipts": "1",
            "event_id": "ingest-receipt-1",
        },
    )
    admin.xadd(KEYS.ingest, {"room": "proveedor_6", "type": "plain", "payload": "{}"})
    first, second = await client.events(2, "proveedor_6", timeout=15)
    assert (first["id"], first["receipts"]) == ("ingest-receipt-1", True)
    assert "receipts" not in second
    await client.send(
        "received", {"room": "proveedor_6", "offset": first["offset"], "epoch": first["epoch"]}
    )
    assert (await client.request("ping"))["event"] == "pong"
    async with http.get(
        f"{node.http_url}/api/receipts/ingest-receipt-1",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        body = await response.json()
    assert set(body["rooms"]["proveedor_6"]["users"]) == {"6"}
    admin.xadd(KEYS.ingest, {"room": "proveedor_6", "type": "t", "payload": "{}", "receipts": "2"})
    await eventually(lambda: admin.xlen(KEYS.ingest_dead) == 1, 10, "the bad entry dead-lettered")
    await client.close()
