"""The presence feed: the ``gateway:presence`` stream, POSTed to Django in batches.

Nodes append an entry when a user's first connection opens or, after the grace period, the last one
closes. The worker reads the stream through the consumer group ``gateway-presence`` and POSTs each
batch to ``{GATEWAY_DJANGO_BASE_URL}{GATEWAY_DJANGO_PRESENCE_PATH}`` (gateway/presence_feed.py),
acknowledging it only after Django's 2xx; until then the same batch is retried with backoff.

Order per user needs one reader at a time: the feed runs under the ``presence`` lease, and every
holder reads as the same consumer (``poster``), so after a worker dies or restarts the next holder
first re-reads what was delivered but never acknowledged, then goes on with new entries. A batch
that Django accepted but that was not acknowledged (the worker died between the two) is sent
again; ``changeId``s only grow, so the receiver drops the repeat.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import ResponseError

from gateway.backend.keys import Keys
from gateway.config import Settings
from gateway.presence_feed import PresencePoster, changes_from_stream, presence_url
from worker.leases import Lease, LeaseLost, run_under_lease
from worker.metrics import WorkerMetrics
from worker.retry import REDIS_ERRORS, Backoff, sleep_unless

log = logging.getLogger("worker.presence")

CONSUMER = "poster"
LEASE_S = 10.0
READ_BLOCK_MS = 1000


class PresenceFeed:
    def __init__(
        self, client: Any, settings: Settings, metrics: WorkerMetrics, stopping: asyncio.Event
    ) -> None:
        self.client = client
        self.keys = Keys(settings.redis_prefix)
        self.settings = settings
        self.metrics = metrics
        self.stopping = stopping
        self.url = presence_url(settings)
        self.lease = Lease(client, self.keys.lease("presence"), settings.worker_id, LEASE_S)
        self._group_ready = False

    async def run(self) -> None:
        if self.url is None or self.settings.publish_api_key is None:
            await self.stopping.wait()
            return
        key = self.settings.publish_api_key.get_secret_value()
        poster = PresencePoster(self.url, key, self.settings.django_timeout)
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        try:
            while not self.stopping.is_set():
                try:
                    ran, _ = await run_under_lease(self.lease, lambda: self._consume(poster))
                    backoff.reset()
                except LeaseLost as exc:
                    log.warning("%s; another worker goes on", exc)
                    continue
                except REDIS_ERRORS as exc:
                    self.metrics.errors.labels("presence").inc()
                    log.debug("presence feed: Redis error %s", exc)
                    self._group_ready = False
                    await backoff.wait(self.stopping)
                    continue
                if not ran:  # another worker holds the feed
                    await sleep_unless(self.stopping, 1.0)
        finally:
            await poster.close()

    async def _consume(self, poster: PresencePoster) -> None:
        await self._ensure_group()
        backlog = True  # first what an earlier holder read but did not acknowledge
        while not self.stopping.is_set():
            entries = await self._read(backlog)
            if not entries:
                backlog = False
                continue
            # entries trimmed from the stream while pending have no fields: acknowledged too
            changes = changes_from_stream([e for e in entries if e[1]])
            backoff = Backoff(base_s=0.5, cap_s=10.0)
            while changes and not await poster.post(changes):
                self.metrics.errors.labels("presence_post").inc()
                if await backoff.wait(self.stopping):
                    return  # stopping: the batch stays pending for the next holder
            ids = [entry_id for entry_id, _ in entries]
            await self.client.xack(self.keys.presence_stream, self.keys.presence_group, *ids)
            self.metrics.presence_posted.inc(len(changes))

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(
                self.keys.presence_stream, self.keys.presence_group, id="0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self, backlog: bool) -> list[tuple[Any, Any]]:
        try:
            reply = await self.client.xreadgroup(
                self.keys.presence_group,
                CONSUMER,
                {self.keys.presence_stream: "0" if backlog else ">"},
                count=self.settings.presence_batch,
                block=None if backlog else READ_BLOCK_MS,
            )
        except ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted empty: the group is created again
                self._group_ready = False
                await self._ensure_group()
                return []
            raise
        if not reply:
            return []
        return list(reply[0][1])
