"""The campaign's publishers, at a steady rate, each retrying a failed publish with the same key.

Four ways in, as users publish: ``POST /api/publish`` on a random node, Django's
``gateway.publish.AsyncPublisher`` straight to Redis, one ``XADD`` to the ingest stream (the worker
publishes it), and business events sent by clients (``comment_created``, confirmed by the Django
test site). Every publish carries its own tag in the payload and is written to the ``Ledger``; a
publish is *acknowledged* when its publisher got a success answer. A retry reuses the tag as the
idempotency key (and as the event id where the gateway accepts one), so it is one publish.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from redis.exceptions import RedisError

from gateway.backend.keys import Keys
from gateway.publish import AsyncPublisher
from tests.campaign.ledger import Ledger, Published


class GiveUp(Exception):
    """The publish was refused as given: not retried, not acknowledged."""


RETRY_FOR_S = 45.0  # a publish is retried this long before it counts as not acknowledged
ATTEMPT_TIMEOUT_S = 8.0
MAX_IN_FLIGHT = 64  # per publisher: past this the steady rate waits (bounded)


@dataclass(frozen=True)
class Target:
    rooms: tuple[str, ...]


def payload(pub: Published) -> dict[str, Any]:
    return {"tag": pub.tag, "source": pub.source}


async def retrying(pub: Published, attempt: Callable[[], Awaitable[bool]]) -> None:
    """Call ``attempt`` until it returns True or ``RETRY_FOR_S`` passes (backoff 0.1..2 s)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETRY_FOR_S
    delay = 0.1
    while True:
        pub.attempts += 1
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT_S):
                if await attempt():
                    pub.acked = True
                    pub.error = ""
                    return
        except TimeoutError:
            pub.error = "timeout"
        if loop.time() + delay > deadline:
            return
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)


class ApiPublisher:
    """``POST /api/publish`` to a random node; a failed attempt goes to another node."""

    source = "api"

    def __init__(
        self, http_urls: Sequence[str], api_key: str, session: aiohttp.ClientSession
    ) -> None:
        self.urls = list(http_urls)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.session = session
        self.event_ids = "eventId" in _api_fields()

    async def publish(self, pub: Published, rng: random.Random) -> None:
        body: dict[str, Any] = {"type": "campaign", "payload": payload(pub)}
        body["idempotencyKey"] = pub.tag
        if self.event_ids:
            body["eventId"] = pub.tag
        if len(pub.rooms) == 1:
            body["room"] = pub.rooms[0]
        else:
            body["rooms"] = list(pub.rooms)

        async def attempt() -> bool:
            url = f"{rng.choice(self.urls)}/api/publish"
            try:
                async with self.session.post(url, json=body, headers=self.headers) as response:
                    text = await response.read()
            except (aiohttp.ClientError, OSError) as exc:
                pub.error = type(exc).__name__
                return False
            if response.status != 200:
                pub.error = f"HTTP {response.status} {text[:80]!r}"
                if response.status == 400:
                    raise GiveUp(pub.error)  # retrying a refused body cannot help
                return False
            answer = orjson.loads(text)
            pub.event_id = str(answer.get("eventId") or "")
            pub.offsets = {str(k): int(v) for k, v in (answer.get("offsets") or {}).items()}
            return True

        await retrying(pub, attempt)


def _api_fields() -> set[str]:
    from gateway.api import PublishRequest

    return set(PublishRequest.model_fields)


class DirectPublisher:
    """Django's ``AsyncPublisher`` (the documented default client), through its own proxy."""

    source = "publisher"

    def __init__(self, redis_url: str, history_size: int) -> None:
        self.publisher = AsyncPublisher.from_url(redis_url, history_size=history_size)
        self.event_ids = "event_id" in inspect.signature(self.publisher.publish_many).parameters

    async def publish(self, pub: Published, rng: random.Random) -> None:
        kwargs: dict[str, Any] = {"idempotency_key": pub.tag}
        if self.event_ids:
            kwargs["event_id"] = pub.tag

        async def attempt() -> bool:
            try:
                result = await self.publisher.publish_many(
                    list(pub.rooms), "campaign", payload(pub), **kwargs
                )
            except (RedisError, OSError) as exc:
                pub.error = type(exc).__name__
                return False
            pub.event_id, pub.offsets = result.event_id, dict(result.offsets)
            return True

        await retrying(pub, attempt)

    async def aclose(self) -> None:
        await self.publisher.aclose()


class IngestPublisher:
    """One ``XADD gateway:ingest`` per publish (contract §3.2); the worker publishes it."""

    source = "ingest"

    def __init__(self, client: Any) -> None:
        self.client = client  # redis.asyncio Redis (through a proxy) or RedisCluster
        self.stream = Keys("gateway").ingest
        self.event_ids = "event_id" in _ingest_fields()

    async def publish(self, pub: Published, rng: random.Random) -> None:
        fields: dict[str, str] = {
            "type": "campaign",
            "payload": orjson.dumps(payload(pub)).decode(),
            "idempotency_key": pub.tag,
        }
        if self.event_ids:
            fields["event_id"] = pub.tag
        if len(pub.rooms) == 1:
            fields["room"] = pub.rooms[0]
        else:
            fields["rooms"] = orjson.dumps(list(pub.rooms)).decode()

        async def attempt() -> bool:
            try:
                await self.client.xadd(self.stream, fields)  # type: ignore[arg-type]
            except (RedisError, OSError) as exc:
                pub.error = type(exc).__name__
                return False
            return True

        await retrying(pub, attempt)

    async def aclose(self) -> None:
        await self.client.aclose()


def _ingest_fields() -> frozenset[str]:
    from worker.entries import FIELDS

    return FIELDS


Publish = Callable[[Published, random.Random], Awaitable[None]]


async def steady(
    ledger: Ledger,
    source: str,
    publish: Publish,
    rate: float,
    pick: Callable[[random.Random], tuple[str, ...]],
    rng: random.Random,
    stop: asyncio.Event,
) -> None:
    """Start one publish every ``1/rate`` seconds (each in its own task, at most
    ``MAX_IN_FLIGHT`` at once) until ``stop``; then wait for the ones in flight."""
    if rate <= 0:
        return
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task[None]] = set()
    next_at = loop.time()

    async def one(pub: Published) -> None:
        try:
            await publish(pub, rng)
        except GiveUp:
            pass
        finally:
            slots.release()

    while not stop.is_set():
        await slots.acquire()
        pub = ledger.new(source, pick(rng))
        task = asyncio.create_task(one(pub))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += 1.0 / rate
        try:
            async with asyncio.timeout(max(0.0, next_at - loop.time())):
                await stop.wait()
        except TimeoutError:
            pass
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
