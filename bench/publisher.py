"""The publishing side of a benchmark run, in its own process.

    python bench/publisher.py '<json config>'

Publishes ``rounds`` rounds; a round is one event to each room of ``rooms`` (or of
``personal``: ``{"first": i, "count": n}`` = rooms cliente_i … cliente_{i+n-1}); the sequence
number is the round. ``rate`` is rounds per second (0: as fast as one sequential publisher
goes); ``events``, when given, stops after that many. Each event's payload is
``{"seq": n, "t": <wall clock µs at publish>, "pad": "..."}``, about 200 bytes as a frame.
``method`` chooses the way in:

- ``redis-publish``: ``PUBLISH room:<room> <frame>`` (the reference server's protocol);
- ``publisher``: ``gateway.publish.Publisher.publish`` (sync, one call per event);
- ``api``: ``POST /api/publish`` with the Bearer key, ``concurrency`` requests in flight;
- ``async-publisher``: ``gateway.publish.AsyncPublisher.publish``, ``concurrency`` in flight;
- ``redis-publish-async``: the reference's ``PUBLISH``, ``concurrency`` in flight;
- ``ingest``: ``XADD <prefix>:ingest`` (pipelined, ``batch`` per round trip), for the worker;
- ``channels``: ``channel_layer.group_send`` (Django Channels; needs its settings module).

Once connected it prints ``ready`` and waits for a line on stdin (so the harness can start its
CPU meters just then), publishes, and prints one JSON line:
``{"published", "start_us", "end_us", "errors", "first_error"}``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

PAD = "x" * 90  # brings the reference frame to ~200 bytes


_cpu_at_go = [0.0]


def go() -> None:
    """Tell the harness we are connected; wait for its go-ahead (CPU is counted from then)."""
    print("ready", flush=True)
    sys.stdin.readline()
    _cpu_at_go[0] = time.process_time()


def now_us() -> int:
    return time.time_ns() // 1000


def payload(seq: int) -> dict[str, Any]:
    return {"seq": seq, "t": now_us(), "pad": PAD}


def frame(room: str, seq: int) -> str:
    """The frame the reference and Channels servers pass through unchanged."""
    event = {"room": room, "type": "bench", "payload": payload(seq)}
    return json.dumps({"event": "event", "data": event}, separators=(",", ":"))


def rooms_of(cfg: dict[str, Any]) -> list[str]:
    """``rooms`` as given, or ``personal: {"first": i, "count": n}`` for cliente_i … i+n-1."""
    if "personal" in cfg:
        first, count = cfg["personal"]["first"], cfg["personal"]["count"]
        return [f"cliente_{first + i}" for i in range(count)]
    return list(cfg["rooms"])


def schedule(cfg: dict[str, Any]) -> Iterator[tuple[int, str]]:
    """(seq, room) in publishing order, sleeping between rounds to hold ``rate``; at most
    ``events`` in all when given (the last round then reaches only the first rooms)."""
    rate: float = cfg.get("rate", 0)
    rooms = rooms_of(cfg)
    left = cfg.get("events") or len(rooms) * cfg["rounds"]
    start = time.monotonic()
    for seq in range(cfg["rounds"]):
        if rate > 0:
            delay = start + seq / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for room in rooms:
            if left <= 0:
                return
            left -= 1
            yield seq, room


def summary(
    published: int, start_us: int, errors: int = 0, first_error: str | None = None
) -> dict[str, Any]:
    """What every method reports: counts, the first error, and the publishing window."""
    return {
        "published": published,
        "start_us": start_us,
        "end_us": now_us(),
        "errors": errors,
        "first_error": first_error,
    }


def run_sync(cfg: dict[str, Any], publish: Callable[[str, int], object]) -> dict[str, Any]:
    published, errors, first_error = 0, 0, None
    go()
    start = now_us()
    for seq, room in schedule(cfg):
        try:
            publish(room, seq)
            published += 1
        except Exception as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
    return summary(published, start, errors, first_error)


def redis_publish(cfg: dict[str, Any]) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(cfg["redis_url"])
    client.ping()
    try:
        return run_sync(cfg, lambda room, seq: client.publish(f"room:{room}", frame(room, seq)))
    finally:
        client.close()


def gateway_publisher(cfg: dict[str, Any]) -> dict[str, Any]:
    from gateway.publish import Publisher

    publisher = Publisher.from_url(cfg["redis_url"])
    try:
        return run_sync(cfg, lambda room, seq: publisher.publish(room, "bench", payload(seq)))
    finally:
        close = getattr(publisher, "close", None)
        if close is not None:
            close()


def ingest(cfg: dict[str, Any]) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(cfg["redis_url"])
    stream = f"{cfg.get('prefix', 'gateway')}:ingest"
    batch: int = cfg.get("batch", 100)
    client.ping()
    go()
    published, start = 0, now_us()
    pipe = client.pipeline(transaction=False)
    try:
        for seq, room in schedule(cfg):
            fields = {"room": room, "type": "bench", "payload": json.dumps(payload(seq))}
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
            if len(pipe) >= batch:
                published += len(pipe.execute())
        published += len(pipe.execute())
    finally:
        client.close()
    return summary(published, start)


async def run_concurrent(
    cfg: dict[str, Any], publish: Callable[[str, int], Awaitable[object]]
) -> dict[str, Any]:
    """``concurrency`` publishes in flight (default 32), from one asyncio loop."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in schedule({**cfg, "rate": 0}):
        queue.put_nowait(item)
    result: dict[str, Any] = {"published": 0, "errors": 0, "first_error": None}

    per_s: float = cfg.get("events_per_s", 0)  # paced when given (a storm's steady load)
    loop = asyncio.get_running_loop()
    sent = [0]

    async def worker() -> None:
        while not queue.empty():
            seq, room = queue.get_nowait()
            if per_s:
                sent[0] += 1
                delay = t0 + sent[0] / per_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            try:
                await publish(room, seq)
                result["published"] += 1
            except Exception as exc:
                result["errors"] += 1
                result["first_error"] = result["first_error"] or f"{type(exc).__name__}: {exc}"

    await asyncio.to_thread(go)
    start, t0 = now_us(), loop.time()
    await asyncio.gather(*(worker() for _ in range(cfg.get("concurrency", 32))))
    return {**result, "start_us": start, "end_us": now_us()}


async def async_publisher(cfg: dict[str, Any]) -> dict[str, Any]:
    """``AsyncPublisher.publish``, ``concurrency`` calls in flight."""
    from gateway.publish import AsyncPublisher

    publisher = AsyncPublisher.from_url(cfg["redis_url"])
    await publisher.client.ping()
    try:
        return await run_concurrent(
            cfg, lambda room, seq: publisher.publish(room, "bench", payload(seq))
        )
    finally:
        await publisher.aclose()


async def async_redis_publish(cfg: dict[str, Any]) -> dict[str, Any]:
    """The reference's ``PUBLISH``, ``concurrency`` in flight."""
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(cfg["redis_url"])
    await client.ping()
    try:
        return await run_concurrent(
            cfg, lambda room, seq: client.publish(f"room:{room}", frame(room, seq))
        )
    finally:
        await client.aclose()


async def api(cfg: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    url = cfg["api_url"]
    headers = {"Authorization": f"Bearer {cfg['api_key']}"}
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in schedule({**cfg, "rate": 0}):
        queue.put_nowait(item)
    result = {"published": 0, "errors": 0, "first_error": None}

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            seq, room = queue.get_nowait()
            body = {"room": room, "type": "bench", "payload": payload(seq)}
            try:
                async with session.post(url, json=body, headers=headers) as response:
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
                result["published"] += 1
            except Exception as exc:
                result["errors"] += 1
                result["first_error"] = result["first_error"] or f"{type(exc).__name__}: {exc}"

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.to_thread(go)
        start = now_us()
        await asyncio.gather(*(worker(session) for _ in range(cfg.get("concurrency", 8))))
    return {**result, "start_us": start, "end_us": now_us()}


async def channels(cfg: dict[str, Any]) -> dict[str, Any]:
    import django

    django.setup()
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    published, errors, first_error = 0, 0, None
    rate: float = cfg.get("rate", 0)
    loop = asyncio.get_running_loop()
    rooms = rooms_of(cfg)
    await asyncio.to_thread(go)
    t0, start = loop.time(), now_us()
    for seq in range(cfg["rounds"]):
        if rate > 0:
            await asyncio.sleep(max(0.0, t0 + seq / rate - loop.time()))
        for room in rooms:
            try:
                await layer.group_send(room, {"type": "bench.event", "text": frame(room, seq)})
                published += 1
            except Exception as exc:
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
    return summary(published, start, errors, first_error)


METHODS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "redis-publish": redis_publish,
    "publisher": gateway_publisher,
    "ingest": ingest,
    "api": lambda cfg: asyncio.run(api(cfg)),
    "async-publisher": lambda cfg: asyncio.run(async_publisher(cfg)),
    "redis-publish-async": lambda cfg: asyncio.run(async_redis_publish(cfg)),
    "channels": lambda cfg: asyncio.run(channels(cfg)),
}


def main() -> None:
    cfg = json.loads(sys.argv[1])
    method = METHODS.get(cfg.get("method", ""))
    if method is None:
        sys.exit(f"publisher: unknown method {cfg.get('method')!r}; one of {sorted(METHODS)}")
    result = method(cfg)
    result["cpu_us"] = round((time.process_time() - _cpu_at_go[0]) * 1e6)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
