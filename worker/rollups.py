"""Events-per-minute rollups for consumers that want one key instead of 60.

Every event is counted in a per-minute hash (``epm:<minute>``: type -> count) by the event log
of the process that published it (gateway/backend/event_log.py, flushed once a second).
Nodes read those hashes directly for ``/dashboard/stats``; the worker additionally folds the
last 60 minutes into ``epm:series`` (minute -> total) and ``epm:series:types`` (type -> total
over the window), trimming minutes that left the window. The fold writes absolute values
computed from the per-minute hashes in one atomic script, so it is idempotent: two workers
running it (the lease makes that rare) never double count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.backend import scripts
from gateway.backend.keys import Keys
from gateway.config import Settings
from worker.leases import Lease, LeasedTicks
from worker.metrics import WorkerMetrics
from worker.retry import REDIS_ERRORS, sleep_unless

log = logging.getLogger("worker.rollups")

ROLLUP = "rollup"
WINDOW_MINUTES = 60
MAX_INTERVAL_S = 5.0
SERIES_TTL_S = 7200


def rollup_interval_s(settings: Settings) -> float:
    """Every 5 s, or every janitor period when that is shorter."""
    return min(MAX_INTERVAL_S, settings.janitor_interval_s)


class Rollups:
    def __init__(
        self, client: Any, settings: Settings, metrics: WorkerMetrics, stopping: asyncio.Event
    ) -> None:
        self.client = client
        self.keys = Keys(settings.redis_prefix)
        self.interval_s = rollup_interval_s(settings)
        self.lease = Lease(client, self.keys.lease("rollup"), settings.worker_id, 10.0)
        self.metrics = metrics
        self.stopping = stopping
        self._ticks = LeasedTicks("rollup", self.lease, metrics, self.interval_s, REDIS_ERRORS)

    async def run(self) -> None:
        while not await sleep_unless(self.stopping, self.interval_s):
            await self.tick()

    async def tick(self) -> int | None:
        """One rollup unless another worker is rolling up: the window's total, or None."""
        return await self._ticks.tick(self.rollup)

    async def rollup(self, now_ms: int | None = None) -> int:
        minute = (now_ms if now_ms is not None else time.time_ns() // 1_000_000) // 60000
        first = minute - WINDOW_MINUTES + 1
        keys = [self.keys.events_series, self.keys.events_series_by_type]
        keys += [self.keys.events_minute(m) for m in range(first, minute + 1)]
        script = scripts.load(ROLLUP)
        total = int(await script.run(self.client, keys, [first, SERIES_TTL_S]))
        self.metrics.rollups.inc()
        log.debug("rollup: %d events in the last %d minutes", total, WINDOW_MINUTES)
        return total
