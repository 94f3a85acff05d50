"""The ingest consumer: ``XADD gateway:ingest * room … type … payload …`` -> published events.

Every worker is a consumer (named ``GATEWAY_WORKER_ID``) of one consumer group on the ingest
stream, so each entry is handed to one worker. An entry is acknowledged only after it was
published (or moved to the dead-letter stream), so a worker that dies leaves its unacknowledged
entries pending; live workers claim entries that stayed pending longer than
``GATEWAY_INGEST_CLAIM_IDLE_S`` and handle them like new ones. Each publish carries an
idempotency key (the entry's own, else one derived from the entry id), so an entry published by
a worker that died before acknowledging it is not delivered twice when it is claimed again. The
key is remembered for ``idempotency_window_s``: at least as long as the longest reclaim.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from gateway.backend.base import IDEMPOTENCY_TTL_S
from gateway.backend.event_log import AsyncEventLog
from gateway.backend.keys import Keys
from gateway.backend.redis_publish import HistoryPolicy
from gateway.config import Settings
from worker.batch import BatchOutcome, publish_batch
from worker.entries import IngestEvent, InvalidEntry, parse_entry
from worker.metrics import WorkerMetrics
from worker.retry import REDIS_ERRORS, Backoff, is_transient, sleep_unless

log = logging.getLogger("worker.ingest")

READ_BLOCK_MS = 1000
MAX_DELIVERIES = 5  # an entry that failed to publish this many times goes to the dead letters
DEAD_MAXLEN = 100_000  # approximate cap of the dead-letter stream
STATS_EVERY_S = 5.0

CLAIM_SLACK_S = 60  # a claim round's own batches, a slow Redis: margin on top of the claims

Entry = tuple[str, dict[bytes, bytes]]
STOPPED: Any = object()  # what a retried step returns when the worker stops during an outage


def claim_every_s(claim_idle_s: float) -> float:
    """How often a worker looks for entries left pending by others."""
    return min(5.0, claim_idle_s / 2)


def idempotency_window_s(claim_idle_s: float) -> int:
    """How long an ingest publish's idempotency key must live, in seconds.

    An entry published by a worker that then died (or failed to acknowledge it) is published
    again when another worker claims it: at the earliest ``claim_idle_s`` after its last
    delivery, at the latest one claim round later. A multi-room entry that failed in one room is
    claimed again up to ``MAX_DELIVERIES`` times, and the rooms that succeeded on the first try
    must still recognise it on the last. So the key outlives ``MAX_DELIVERIES`` claims, plus a
    margin; never less than the contract's 5 minutes (``IDEMPOTENCY_TTL_S``)."""
    longest_reclaim = MAX_DELIVERIES * (claim_idle_s + claim_every_s(claim_idle_s))
    return max(IDEMPOTENCY_TTL_S, math.ceil(longest_reclaim + CLAIM_SLACK_S))


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Sequence[Any]) -> list[Entry]:
    """``[(id, fields)]`` from XREADGROUP/XAUTOCLAIM replies; deleted entries (fields None)
    are dropped: there is nothing left to publish."""
    return [(_s(entry_id), fields) for entry_id, fields in raw if fields]


class IngestConsumer:
    def __init__(
        self,
        client: Any,
        settings: Settings,
        policy: HistoryPolicy,
        metrics: WorkerMetrics,
        stopping: asyncio.Event,
    ) -> None:
        self.client = client
        self.keys = Keys(settings.redis_prefix)
        self.stream = self.keys.ingest
        self.group = self.keys.ingest_group
        self.consumer = settings.worker_id
        self.batch = settings.ingest_batch
        self.claim_idle_ms = max(1, int(settings.ingest_claim_idle_s * 1000))
        self.claim_every_s = claim_every_s(settings.ingest_claim_idle_s)
        self.sharded = settings.cluster_mode
        window_s = idempotency_window_s(settings.ingest_claim_idle_s)
        self.policy = dataclasses.replace(policy, idempotency_ttl_s=window_s)
        self.metrics = metrics
        self.stopping = stopping
        self._group_ready = False
        self._next_claim = 0.0
        self._outage_since: float | None = None
        self.event_log = AsyncEventLog(client, self.keys)  # the dashboard's summaries

    # --- the loop -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Read, publish, acknowledge until ``stopping``; the batch in hand is finished first."""
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                await self._ensure_group()
                if time.monotonic() >= self._next_claim:
                    await self._claim_round()
                    self._next_claim = time.monotonic() + self.claim_every_s
                entries = await self._read()
                if entries:
                    await self.handle(entries)
                self._recovered()
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # the stream or group vanished (Redis restarted empty, someone deleted it)
                    log.warning("ingest consumer group is gone (%s); creating it again", exc)
                    self._group_ready = False
                    continue
                self._failed("ingest", exc)
                await backoff.wait(self.stopping)
            except REDIS_ERRORS as exc:
                self._failed("ingest", exc)
                await backoff.wait(self.stopping)
        log.info("ingest consumer %s stopped", self.consumer)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # id 0: entries added before the first worker ever started are processed too
            await self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %s on %s", self.group, self.stream)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _read(self) -> list[Entry]:
        reply = await self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch, block=READ_BLOCK_MS
        )
        return _entries(reply[0][1]) if reply else []

    async def _claim_round(self) -> None:
        """Claim what other (dead) consumers left pending for longer than the claim idle time,
        one batch at a time, and handle it. Stops at the end of the pending list."""
        cursor = "0-0"
        while not self.stopping.is_set():
            reply = await self.client.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=cursor,
                count=self.batch,
            )
            cursor = _s(reply[0])
            claimed = _entries(reply[1])
            if claimed:
                self.metrics.claimed.inc(len(claimed))
                log.info("claimed %d pending ingest entries", len(claimed))
                await self.handle(claimed)
            if cursor == "0-0":
                return

    # --- one batch ----------------------------------------------------------------------------
    async def handle(self, entries: list[Entry]) -> None:
        """Validate, publish, dead-letter and acknowledge one batch."""
        valid: list[IngestEvent] = []
        dead: list[tuple[Entry, str]] = []
        for entry in entries:
            try:
                valid.append(parse_entry(self.stream, entry[0], entry[1]))
            except InvalidEntry as exc:
                dead.append((entry, str(exc)))
        outcome = await self._retry(lambda: self._publish(valid)) if valid else BatchOutcome()
        if outcome is STOPPED:
            return  # stopping during an outage: the batch stays pending for a later claim
        if outcome.failed:
            dead += await self._give_up(entries, outcome.failed)
        if dead and await self._retry(lambda: self._dead_letter(dead)) is STOPPED:
            return
        done = [e.entry_id for e in outcome.published + outcome.duplicates]
        done += [entry[0] for entry, _ in dead]
        if done and await self._retry(lambda: self._ack(done)) is STOPPED:
            return  # published but not acknowledged: a claim republishes it as a duplicate
        self.metrics.ingested.inc(len(outcome.published))
        self.metrics.duplicates.inc(len(outcome.duplicates))
        self.metrics.dead_letters.inc(len(dead))
        self.metrics.batches.inc()
        log.debug(
            "ingest batch: %d entries, %d published, %d duplicates, %d dead, %d left pending",
            len(entries),
            len(outcome.published),
            len(outcome.duplicates),
            len(dead),
            len(entries) - len(done),
        )

    async def _ack(self, ids: list[str]) -> int:
        return int(await self.client.xack(self.stream, self.group, *ids))

    async def _publish(self, events: list[IngestEvent]) -> BatchOutcome:
        return await publish_batch(
            self.client,
            self.keys,
            self.policy,
            events,
            sharded=self.sharded,
            event_log=self.event_log,
        )

    async def _give_up(
        self, entries: list[Entry], failed: list[tuple[IngestEvent, str]]
    ) -> list[tuple[Entry, str]]:
        """Events Redis refused to publish stay pending (they are retried when claimed), unless
        they were already delivered ``MAX_DELIVERIES`` times: those go to the dead letters."""
        self.metrics.errors.labels("publish").inc(len(failed))
        by_id = dict(entries)
        ids = [event.entry_id for event, _ in failed]
        counts = await self._delivery_counts(ids)
        dead = []
        for event, error in failed:
            attempts = counts.get(event.entry_id, 1)
            if attempts >= MAX_DELIVERIES:
                reason = f"publish failed {attempts} times: {error}"
                dead.append(((event.entry_id, by_id[event.entry_id]), reason))
            else:
                log.warning(
                    "ingest entry %s not published (attempt %d of %d): %s",
                    event.entry_id,
                    attempts,
                    MAX_DELIVERIES,
                    error,
                )
        return dead

    async def _delivery_counts(self, ids: list[str]) -> dict[str, int]:
        rows = await self.client.xpending_range(
            self.stream,
            self.group,
            min=min(ids, key=_id_key),
            max=max(ids, key=_id_key),
            count=10 * self.batch + len(ids),
            consumername=self.consumer,
        )
        return {_s(row["message_id"]): int(row["times_delivered"]) for row in rows}

    async def _dead_letter(self, dead: list[tuple[Entry, str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for (entry_id, fields), reason in dead:
            record = dict(fields)
            if b"reason" in record:  # keep the entry's own field, under another name
                record[b"reason.original"] = record.pop(b"reason")
            record[b"reason"] = reason.encode()
            pipe.xadd(self.keys.ingest_dead, record, maxlen=DEAD_MAXLEN, approximate=True)
            log.warning("ingest entry %s moved to %s: %s", entry_id, self.keys.ingest_dead, reason)
        await pipe.execute()

    async def _retry(self, step: Any) -> Any:
        """Run ``step`` until it succeeds; ``STOPPED`` when the worker stops during an outage (the
        entries then stay pending and another worker, or this one after a restart, claims them).
        Every step is idempotent, so running it again after an unclear failure is safe."""
        backoff = Backoff()
        while True:
            try:
                result = await step()
            except REDIS_ERRORS as exc:
                if not is_transient(exc):
                    raise
                self._failed("ingest", exc)
                if await backoff.wait(self.stopping):
                    return STOPPED
                continue
            self._recovered()
            return result

    # --- outage logging -----------------------------------------------------------------------
    def _failed(self, op: str, exc: BaseException) -> None:
        self.metrics.errors.labels(op).inc()
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            log.warning(
                "Redis unavailable for ingest (%s: %s); retrying with backoff",
                type(exc).__name__,
                exc,
            )
        else:
            log.debug("ingest still failing: %s", exc)

    def _recovered(self) -> None:
        if self._outage_since is not None:
            log.info(
                "Redis reachable again for ingest after %.1fs",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None


class IngestStats:
    """Gauges of the consumer group (pending, lag, age of the oldest unacknowledged entry) and
    trimming of the stream: entries every consumer group has read and acknowledged are removed,
    so the stream does not grow forever. Safe to run on every worker at once."""

    def __init__(
        self, client: Any, settings: Settings, metrics: WorkerMetrics, stopping: asyncio.Event
    ) -> None:
        self.client = client
        self.keys = Keys(settings.redis_prefix)
        self.metrics = metrics
        self.stopping = stopping

    async def run(self) -> None:
        while not await sleep_unless(self.stopping, STATS_EVERY_S):
            try:
                await self.update()
            except REDIS_ERRORS as exc:
                self.metrics.errors.labels("ingest_stats").inc()
                log.debug("ingest stats failed: %s", exc)

    async def update(self) -> None:
        stream = self.keys.ingest
        try:
            groups = await self.client.xinfo_groups(stream)
        except ResponseError:
            return  # no stream yet
        oldest: str | None = None  # the oldest entry some group has not acknowledged
        for group in groups:
            name = _s(group["name"])
            summary = await self.client.xpending(stream, name)
            first_pending = _s(summary["min"]) if summary["pending"] else None
            unread = await self.client.xrange(
                stream, f"({_s(group['last-delivered-id'])}", "+", count=1
            )
            first_unread = _s(unread[0][0]) if unread else None
            for candidate in (first_pending, first_unread):
                if candidate and (oldest is None or _id_key(candidate) < _id_key(oldest)):
                    oldest = candidate
            if name == self.keys.ingest_group:
                self.metrics.pending.set(int(summary["pending"]))
                lag = group.get("lag")
                if lag is not None:  # None: Redis cannot tell (entries deleted mid-stream)
                    self.metrics.lag.set(int(lag))
        now_ms = time.time_ns() // 1_000_000
        self.metrics.lag_seconds.set(max(0, now_ms - _id_key(oldest)[0]) / 1000 if oldest else 0)
        # every entry older than ``oldest`` was read and acknowledged by every group
        if oldest is not None:
            await self.client.xtrim(stream, minid=oldest, approximate=True)
        elif groups:
            last = min((_s(g["last-delivered-id"]) for g in groups), key=_id_key)
            ms, seq = _id_key(last)
            await self.client.xtrim(stream, minid=f"{ms}-{seq + 1}", approximate=True)


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
