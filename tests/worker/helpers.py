"""Small helpers of the worker tests: metrics, and reading what the worker wrote (polling:
``tests.support.ports.eventually``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway.backend.keys import Keys

KEYS = Keys("gateway")


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(http: aiohttp.ClientSession, base_url: str) -> dict[Any, float]:
    async with http.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse_metrics(await response.text())


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


async def room_offset(client: Any, room: str) -> int:
    return int(await client.hget(KEYS.room_meta(room), "offset") or 0)


async def history_numbers(client: Any, room: str) -> list[int]:
    """The ``n`` of each event payload in the room's history, in offset order."""
    entries = await client.xrange(KEYS.room_history(room), "-", "+")
    return [orjson.loads(fields[b"d"])["payload"]["n"] for _, fields in entries]


async def add_entries(client: Any, room: str, numbers: range, type_: str = "test.n") -> list[str]:
    """XADD one entry per number (payload ``{"n": n}``) in one pipeline; the entry ids."""
    pipe = client.pipeline(transaction=False)
    for n in numbers:
        pipe.xadd(KEYS.ingest, {"room": room, "type": type_, "payload": orjson.dumps({"n": n})})
    return [i.decode() for i in await pipe.execute()]


async def pending_by_consumer(client: Any) -> dict[str, int]:
    summary = await client.xpending(KEYS.ingest, KEYS.ingest_group)
    return {c["name"].decode(): int(c["pending"]) for c in summary["consumers"] or []}


async def until_holding(client: Any, consumer: str, timeout_s: float = 10.0) -> None:
    """Until ``consumer`` holds entries it read and has not acknowledged yet. Feed it enough
    entries (tens of thousands) that it is still at work when this starts looking."""
    deadline = time.monotonic() + timeout_s
    while (await pending_by_consumer(client)).get(consumer, 0) == 0:
        assert time.monotonic() < deadline, f"{consumer} never held pending entries"
        await asyncio.sleep(0.002)


async def pending_total(client: Any) -> int:
    summary = await client.xpending(KEYS.ingest, KEYS.ingest_group)
    return int(summary["pending"])
