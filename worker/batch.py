"""Publish a batch of ingest events in one round trip (one pipeline) on a single Redis.

Each event becomes one publish-script call per room, built by ``redis_publish.build_calls`` —
the same atomic call nodes and Django's ``Publisher`` make — so history, offsets, fan-out and
idempotency behave exactly as for any other publish. Unlike ``redis_publish.run_async``, a
command error in one call fails only that event: the others of the batch are still published.
A connection error, or a command error that means "not now" (OOM, READONLY during a failover,
a busy script), fails the whole batch; retrying it is safe because every call carries an
idempotency key.

On a Redis Cluster, redis-py refuses EVALSHA in a pipeline: the calls of each room run one
after another (so a room's events keep their stream order), and different rooms run
concurrently, each on its slot's master.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from gateway.backend import redis_publish, redis_receipts, scripts
from gateway.backend.event_log import AsyncEventLog
from gateway.backend.keys import Keys
from gateway.backend.redis_publish import HistoryPolicy, PublishCall
from worker.entries import IngestEvent
from worker.retry import is_transient

SOURCE = "ingest"
CLUSTER_CONCURRENCY = 32  # rooms published at once on a cluster


@dataclass(slots=True)
class BatchOutcome:
    published: list[IngestEvent] = field(default_factory=list)  # first time
    duplicates: list[IngestEvent] = field(default_factory=list)  # idempotent repeats
    failed: list[tuple[IngestEvent, str]] = field(default_factory=list)  # (event, error)


async def publish_batch(
    client: Any,
    keys: Keys,
    policy: HistoryPolicy,
    events: Sequence[IngestEvent],
    *,
    sharded: bool,
    event_log: AsyncEventLog,
) -> BatchOutcome:
    plans: list[tuple[IngestEvent, list[PublishCall]]] = []
    for event in events:
        _, calls = redis_publish.build_calls(
            keys,
            policy,
            event.rooms,
            event.type,
            event.payload_json,
            SOURCE,
            sharded=sharded,
            event_id=event.event_id,
            idempotency_key=event.idempotency_key,
            receipts=event.receipts,
        )
        plans.append((event, calls))
    flat = [call for _, calls in plans for call in calls]
    results = await (_execute_cluster if sharded else _execute)(client, flat)
    # the dashboard's summary (written once per interval) of what was published, before a
    # retry of the batch: the calls that ran are duplicates then, and not counted again
    event_log.record(flat, results)
    for result in results:
        if isinstance(result, Exception) and is_transient(result):
            raise result  # e.g. OOM or a failover: retry the whole batch later (idempotent)
    outcome = BatchOutcome()
    i = 0
    for event, calls in plans:
        mine = results[i : i + len(calls)]
        i += len(calls)
        errors = [r for r in mine if isinstance(r, Exception)]
        if errors:
            outcome.failed.append((event, str(errors[0])))
        elif all(int(r[2]) for r in mine):
            outcome.duplicates.append(event)
        else:
            outcome.published.append(event)
    await _index_receipts(client, keys, policy, plans, results)
    return outcome


async def _index_receipts(
    client: Any,
    keys: Keys,
    policy: HistoryPolicy,
    plans: list[tuple[IngestEvent, list[PublishCall]]],
    results: list[Any],
) -> None:
    """Events with receipts: their rooms' index, so ``receipts(eventId)`` finds them."""
    i = 0
    for event, calls in plans:
        mine = results[i : i + len(calls)]
        i += len(calls)
        if event.receipts and not any(isinstance(r, Exception) for r in mine):
            offsets = {call.room: int(r[0]) for call, r in zip(calls, mine, strict=True)}
            await redis_receipts.write_index_async(
                client, keys, event.event_id, offsets, policy.ttl_s
            )


async def _execute(client: Any, calls: list[PublishCall]) -> list[Any]:
    """One pipeline of EVALSHA calls; results are replies or per-call ``ResponseError``s."""
    script = scripts.load(scripts.PUBLISH)
    pipe = client.pipeline(transaction=False)
    for call in calls:
        pipe.evalsha(script.sha, len(call.keys), *call.keys, *call.args)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    for i, result in enumerate(results):
        if isinstance(result, NoScriptError):
            # Redis restarted and lost its script cache: run just this call again (EVAL)
            try:
                results[i] = await script.run(client, calls[i].keys, calls[i].args)
            except ResponseError as exc:
                results[i] = exc
    return results


async def _execute_cluster(client: Any, calls: list[PublishCall]) -> list[Any]:
    """Per room in order, rooms concurrently; results as for ``_execute``."""
    script = scripts.load(scripts.PUBLISH)
    results: list[Any] = [None] * len(calls)
    by_room: dict[str, list[int]] = {}
    for i, call in enumerate(calls):
        by_room.setdefault(call.room, []).append(i)
    limit = asyncio.Semaphore(CLUSTER_CONCURRENCY)

    async def publish_room(indexes: list[int]) -> None:
        async with limit:
            for i in indexes:
                try:
                    results[i] = await script.run(client, calls[i].keys, calls[i].args)
                except ResponseError as exc:
                    results[i] = exc

    outcomes = await asyncio.gather(
        *(publish_room(ix) for ix in by_room.values()), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome  # a connection error: the batch is retried (idempotent)
    return results
