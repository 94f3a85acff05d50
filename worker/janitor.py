"""The janitor: removes what dead nodes left in Redis, once per ``GATEWAY_JANITOR_INTERVAL_S``
across all workers.

Liveness is by leases (a node's lease expires ``GATEWAY_NODE_LEASE_S`` after its last
heartbeat); the sweep is the second line of defence that clears a dead node's connections,
memberships and presence, at a cost of what the dead node held (``redis_janitor``). It is
``RedisState.cleanup()`` — the same call ``POST /dashboard/cleanup`` makes on a node — run under
the ``janitor`` lease, which the dashboard's cleanup takes too, so no two sweeps overlap. The
lease is held only while a sweep runs; the other workers skip the rest of the period on the
``job_period`` key. It also forgets ingest consumers that have been idle for an hour with nothing
pending (each worker restart adds a consumer named after its ``GATEWAY_WORKER_ID``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.exceptions import ResponseError

from gateway.backend.keys import Keys
from gateway.backend.redis_state import RedisState
from gateway.config import Settings
from worker.leases import Lease, LeasedTicks
from worker.metrics import WorkerMetrics
from worker.retry import REDIS_ERRORS, sleep_unless

log = logging.getLogger("worker.janitor")

CONSUMER_IDLE_MS = 3600 * 1000


def lease_ttl_s(interval_s: float) -> float:
    """Long enough for a sweep between two renewals; renewals keep longer sweeps covered."""
    return max(10.0, 3 * interval_s)


class Janitor:
    def __init__(
        self, client: Any, settings: Settings, metrics: WorkerMetrics, stopping: asyncio.Event
    ) -> None:
        self.client = client
        self.keys = Keys(settings.redis_prefix)
        self.state = RedisState(
            client, self.keys, node_lease_s=settings.node_lease_s, cluster=settings.cluster_mode
        )
        self.interval_s = settings.janitor_interval_s
        self.lease = Lease(
            client, self.keys.lease("janitor"), settings.worker_id, lease_ttl_s(self.interval_s)
        )
        self.consumer = settings.worker_id
        self.metrics = metrics
        self.stopping = stopping
        self._ticks = LeasedTicks(
            "janitor", self.lease, metrics, self.interval_s, REDIS_ERRORS, linger=False
        )
        self.period_key = self.keys.job_period("janitor")
        self.period_ms = max(1, int(0.8 * self.interval_s * 1000))

    async def run(self) -> None:
        while not await sleep_unless(self.stopping, self.interval_s):
            await self.tick()

    async def tick(self) -> dict[str, int] | None:
        """One sweep if no other worker swept this period or is sweeping: what was removed,
        or None."""
        try:
            swept = await self.client.exists(self.period_key)
        except REDIS_ERRORS:
            swept = 0  # the tick reports the outage
        if swept:
            self.metrics.lease_skips.labels("janitor").inc()
            return None
        return await self._ticks.tick(self.sweep)

    async def sweep(self) -> dict[str, int]:
        removed = await self.state.cleanup()
        # this period is done: the other workers skip it (set while we still hold the lease)
        await self.client.set(self.period_key, self.consumer, px=self.period_ms)
        removed["consumers"] = await self._forget_idle_consumers()
        self.metrics.janitor_sweeps.inc()
        for kind, n in removed.items():
            if n:
                self.metrics.janitor_removed.labels(kind).inc(n)
        if any(removed.values()):
            log.info("janitor removed %s", removed)
        else:
            log.debug("janitor sweep: nothing to remove")
        return removed

    async def _forget_idle_consumers(self) -> int:
        try:
            consumers = await self.client.xinfo_consumers(self.keys.ingest, self.keys.ingest_group)
        except ResponseError:
            return 0  # no stream or no group yet
        removed = 0
        for consumer in consumers:
            name = consumer["name"].decode()
            if name == self.consumer or consumer["pending"] or consumer["idle"] < CONSUMER_IDLE_MS:
                continue
            # DELCONSUMER drops the consumer's pending entries: only ever with none pending
            removed += 1
            await self.client.xgroup_delconsumer(self.keys.ingest, self.keys.ingest_group, name)
        return removed
