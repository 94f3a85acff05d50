"""The atomic publish on Redis, shared by nodes, the worker and Django's ``Publisher``.

On a single Redis one pipeline carries one script call per room (one round trip for any number of
rooms); in Cluster mode each room's call goes to its own master. Each call is atomic for its room,
and touches only its room's slot: the dashboard's summary of the event goes to the caller's event
log (``gateway.backend.event_log``), written once per interval. Imports no aiohttp; works with sync
and asyncio redis clients alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from gateway.backend import scripts
from gateway.backend.base import (
    GENERATED_EVENT_DEDUPE_TTL_S,
    IDEMPOTENCY_TTL_S,
    PublishResult,
)
from gateway.backend.event_log import AsyncEventLog, SyncEventLog
from gateway.backend.keys import Keys
from gateway.events import build_body, new_epoch, new_event_id

MAX_IDEMPOTENCY_KEY = 200


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    size: int = 100
    ttl_s: int = 600
    meta_ttl_s: int = 86400
    # how long an idempotency key is remembered; the worker raises it to cover its reclaims
    idempotency_ttl_s: int = IDEMPOTENCY_TTL_S


@dataclass(frozen=True, slots=True)
class PublishCall:
    room: str
    keys: list[str]
    args: list[Any]
    summary: tuple[str, str, str, int, str, int]  # room, type, id, ts (ms), source, ts (µs)


def build_calls(
    keys: Keys,
    policy: HistoryPolicy,
    rooms: Sequence[str],
    type_: str,
    payload_json: bytes,
    source: str,
    *,
    sharded: bool,
    event_id: str | None = None,
    idempotency_key: str | None = None,
    receipts: bool = False,
) -> tuple[str, list[PublishCall]]:
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
        raise ValueError(f"idempotency key must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    # A caller's event id (or idempotency key) may be retried by the caller for as long as an
    # idempotency key; one we make is only retried by redis-py, within seconds.
    # (the worker's policy lengthens it to cover its reclaims: worker.ingest.idempotency_window_s)
    caller_ttl = policy.idempotency_ttl_s
    dedupe_ttl = caller_ttl if event_id or idempotency_key else GENERATED_EVENT_DEDUPE_TTL_S
    event_id = event_id or new_event_id()
    at_us = time.time_ns() // 1000
    ts = at_us // 1000
    epoch = new_epoch()
    calls = []
    for room in rooms:
        body = build_body(room, type_, payload_json, event_id, ts, source, receipts)
        dedupe = (
            keys.room_idempotency(room, idempotency_key)
            if idempotency_key
            else keys.room_event(room, event_id)
        )
        call_keys = [keys.room_meta(room), keys.room_history(room), dedupe]
        args: list[Any] = [
            keys.room_channel(room),
            body,
            policy.size,
            policy.ttl_s,
            max(policy.meta_ttl_s, policy.ttl_s),
            epoch,
            "1",  # always deduplicated: a retried call must not give the event a second offset
            dedupe_ttl,
            "SPUBLISH" if sharded else "PUBLISH",
            event_id,
        ]
        if receipts:  # appended: publishes without receipts pass exactly what they did
            args += [policy.ttl_s, keys.receipts(room, event_id)]
        calls.append(PublishCall(room, call_keys, args, (room, type_, event_id, ts, source, at_us)))
    return event_id, calls


def _queue(pipe: Any, calls: list[PublishCall]) -> None:
    script = scripts.load(scripts.PUBLISH)
    for call in calls:
        pipe.evalsha(script.sha, len(call.keys), *call.keys, *call.args)


def _result(event_id: str, calls: list[PublishCall], results: list[Any]) -> PublishResult:
    offsets: dict[str, int] = {}
    duplicate = False
    for call, result in zip(calls, results, strict=True):
        offsets[call.room] = int(result[0])
        if int(result[2]):
            duplicate = True
            first_id = result[3]
            event_id = first_id.decode() if isinstance(first_id, bytes) else str(first_id)
    return PublishResult(event_id=event_id, offsets=offsets, duplicate=duplicate)


def _needs_reload(results: list[Any]) -> bool:
    for r in results:
        if isinstance(r, NoScriptError):
            return True
        if isinstance(r, ResponseError):
            raise r
    return False


async def run_async(
    client: Any,
    event_log: AsyncEventLog,
    event_id: str,
    calls: list[PublishCall],
    sharded: bool,
    batcher: Any = None,
) -> PublishResult:
    """``batcher`` (single Redis): a group commit (``gateway.backend.batch``) shared by the
    caller's concurrent publishes, so N publishes in flight cost one round trip and no
    redis-py pipeline each (docs/benchmarks.md, "Publishing to many rooms")."""
    if not sharded:
        if batcher is not None:
            results = await batcher.run(lambda buffer: _queue(buffer, calls))
        else:
            results = await _execute_async(client, calls)
    else:
        # Cluster: redis-py refuses EVALSHA in a cluster pipeline, so one call per room, each
        # routed to its slot's master (a call touches only its room's slot: atomic per room).
        script = scripts.load(scripts.PUBLISH)
        results = [await script.run(client, call.keys, call.args) for call in calls]
    result = _result(event_id, calls, results)
    event_log.record(calls, results)
    return result


async def _execute_async(client: Any, calls: list[PublishCall]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    _queue(pipe, calls)
    results: list[Any] = await pipe.execute(raise_on_error=False)
    if _needs_reload(results):
        # Redis restarted and lost its script cache: re-run only the calls that did not run.
        script = scripts.load(scripts.PUBLISH)
        for i, r in enumerate(results):
            if isinstance(r, NoScriptError):
                results[i] = await script.run(client, calls[i].keys, calls[i].args)
    return results


def run_sync(
    client: Any, event_log: SyncEventLog, event_id: str, calls: list[PublishCall], sharded: bool
) -> PublishResult:
    script = scripts.load(scripts.PUBLISH)
    if sharded:  # as in run_async: no EVALSHA in a cluster pipeline
        results = [script.run_sync(client, call.keys, call.args) for call in calls]
    else:
        pipe = client.pipeline(transaction=False)
        _queue(pipe, calls)
        results = pipe.execute(raise_on_error=False)
        if _needs_reload(results):
            for i, r in enumerate(results):
                if isinstance(r, NoScriptError):
                    results[i] = script.run_sync(client, calls[i].keys, calls[i].args)
    result = _result(event_id, calls, results)
    event_log.record(calls, results)
    return result
