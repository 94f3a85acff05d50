"""The dashboard's summary of published events, written once per interval, not once per publish.

``/dashboard/events`` (the cluster's recent events) and ``eventsPerMinute`` (per-minute counters by
type) used to be written by the publish script itself: two more writes per publish, all into the
``{g}`` slot, so on a Redis Cluster a second round trip per publish to one master and ~20 % of the
script's Redis CPU (docs/benchmarks.md, "Publishing to many rooms"). Now each publishing process
(node, worker, Django's ``Publisher`` and ``AsyncPublisher``) keeps what it published since its
last flush — counts per minute and type, and its newest ``PER_FLUSH`` summaries — and writes them
in one script call (``lua/event_log.lua``) at most every ``FLUSH_S``:

- staleness: an event shows on the dashboard (events list and counters) up to ``FLUSH_S`` (plus
  one round trip) after its publish; the events list stays ordered by publish time (the log is a
  sorted set keyed by the publish timestamp), whatever order the processes flush in;
- the counters count every event; the list (``LOG_SIZE`` newest) lists every event as long as a
  process publishes at most ``PER_FLUSH`` per ``FLUSH_S``; above that it lists the newest
  ``PER_FLUSH`` of each second of each process: a sample, where the capped stream it replaces
  held only the last ~1,000 (an eighth of a second at 8,000 publishes/s). Writing every summary
  into a sorted set would cost Redis about what the per-publish writes did (docs/benchmarks.md);
- a flush that fails (Redis away) is retried as it was, with the same mark, so a flush that
  reached Redis before its answer was lost is not counted twice; what was published meanwhile
  waits for the next one;
- an idempotent repeat is not summarised again; so an event whose first publish ran but whose
  answer was lost (a timeout retried by redis-py or by the caller with the same event id) is
  delivered and in history but not counted, as in Cluster mode before;
- a process that closes its publisher (``close``/``aclose``, a node's or worker's shutdown, and
  ``atexit`` for the sync ``Publisher``) flushes what it holds; one that is killed loses at most
  its last ``FLUSH_S`` of summaries (the events themselves are delivered and in history: only the
  dashboard's counts and list miss them), and a failed last flush is logged with its counts.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import contextlib
import itertools
import logging
import os
import threading
import uuid
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.backend import scripts
from gateway.backend.keys import Keys

log = logging.getLogger("gateway.events")

FLUSH_S = 1.0
LOG_SIZE = 1000  # summaries the log keeps
PER_FLUSH = 100  # summaries one process writes per flush at most: its newest
MARK_TTL_S = 600  # how long a flush's mark is remembered (a retry later than that counts again)
MAX_COUNTERS = 10_000  # (minute, type) pairs held while Redis is away; the oldest go first
US_DIGITS = 16
SEQ_DIGITS = 8
PREFIX = US_DIGITS + SEQ_DIGITS


def member(at_us: int, seq: int, event_id: str, room: str, type_: str, source: str) -> bytes:
    """A log entry: sorts by publish time in microseconds (two processes publishing one after
    the other within a millisecond keep their order), then by the publishing process's own
    order. The event's ``ts`` (ms) is ``at_us // 1000``."""
    head = b"%016d%08x" % (at_us, seq & 0xFFFFFFFF)
    return head + orjson.dumps([event_id, room, type_, source])


def summary(entry: bytes) -> dict[str, Any]:
    """``{"room", "type", "id", "ts", "source"}`` of a log entry (CONTRACT section 4)."""
    event_id, room, type_, source = orjson.loads(entry[PREFIX:])
    return {
        "room": room,
        "type": type_,
        "id": event_id,
        "ts": int(entry[:US_DIGITS]) // 1000,
        "source": source,
    }


def encode_cursor(entry: bytes) -> str:
    return base64.urlsafe_b64encode(entry).decode().rstrip("=")


def decode_cursor(cursor: str) -> bytes:
    """The log entry a page ended with; a cursor no page gave is a bound like any string (as
    the embedded backend's), not an error."""
    with contextlib.suppress(binascii.Error, ValueError):
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    return cursor.encode()


@dataclass(slots=True)
class Flush:
    mark: str
    members: list[bytes]
    counts: dict[tuple[int, str], int]

    def call(self, keys: Keys) -> tuple[list[str], list[Any]]:
        by_minute: dict[int, list[Any]] = {}
        for (minute, type_), count in self.counts.items():
            by_minute.setdefault(minute, []).extend((type_, count))
        call_keys = [keys.events_log, keys.events_flush(self.mark)]
        args: list[Any] = [LOG_SIZE, MARK_TTL_S, len(self.members), *self.members]
        for minute, pairs in by_minute.items():
            call_keys.append(keys.events_minute(minute))
            args += [len(pairs) // 2, *pairs]
        return call_keys, args

    @property
    def events(self) -> int:
        return sum(self.counts.values())


@dataclass(slots=True)
class Pending:
    """What one process published since its last flush (not thread-safe: callers lock)."""

    members: deque[bytes] = field(default_factory=lambda: deque(maxlen=PER_FLUSH))
    counts: dict[tuple[int, str], int] = field(default_factory=dict)
    seq: Any = field(default_factory=itertools.count)

    def add(
        self, room: str, type_: str, event_id: str, ts: int, source: str, at_us: int | None = None
    ) -> None:
        """``ts``: the event's (ms); ``at_us``: when it was published, the same in µs."""
        at_us = ts * 1000 if at_us is None else at_us
        self.members.append(member(at_us, next(self.seq), event_id, room, type_, source))
        key = (ts // 60000, type_)
        count = self.counts.get(key)
        if count is None and len(self.counts) >= MAX_COUNTERS:
            del self.counts[min(self.counts)]  # Redis away for long: keep the newest minutes
        self.counts[key] = (count or 0) + 1

    def take(self) -> Flush | None:
        if not self.counts:
            return None
        flush = Flush(uuid.uuid4().hex, list(self.members), self.counts)
        self.members.clear()
        self.counts = {}
        return flush


def record(pending: Pending, calls: Sequence[Any], results: Sequence[Any]) -> int:
    """Add the summaries of the calls that published something new (not an idempotent repeat,
    not an error); ``calls`` are ``redis_publish.PublishCall``s. Returns how many."""
    added = 0
    for call, result in zip(calls, results, strict=True):
        if isinstance(result, BaseException) or int(result[2]):
            continue
        pending.add(*call.summary)
        added += 1
    return added


def _lost(retry: Flush | None, pending: Pending, exc: BaseException) -> None:
    events = (retry.events if retry is not None else 0) + sum(pending.counts.values())
    log.warning(
        "dashboard summary of %d events not written (%s): they are delivered and in history, "
        "but missing from /dashboard/events and eventsPerMinute",
        events,
        exc,
    )


class AsyncEventLog:
    """Per process, for asyncio publishers (nodes, the worker, ``AsyncPublisher``)."""

    def __init__(self, client: Any, keys: Keys, flush_s: float = FLUSH_S) -> None:
        self.client = client
        self.keys = keys
        self.flush_s = flush_s
        self.pending = Pending()
        self._retry: Flush | None = None  # a flush that failed: sent again, as it was
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def record(self, calls: Sequence[Any], results: Sequence[Any]) -> None:
        if record(self.pending, calls, results) and self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="event log")

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.flush_s)
                with contextlib.suppress(Exception):  # logged below; the next round retries
                    await self.flush()
                if self._retry is None and not self.pending.counts:
                    return
        finally:
            self._task = None

    async def flush(self) -> None:
        """Write what is pending (and first a flush that failed); raises if Redis refuses."""
        script = scripts.load(scripts.EVENT_LOG)
        if self._retry is None:
            self._retry = self.pending.take()
        while self._retry is not None:
            call_keys, args = self._retry.call(self.keys)
            try:
                await script.run(self.client, call_keys, args)
            except Exception as exc:
                log.debug("event log flush failed: %s", exc)
                raise
            self._retry = self.pending.take()

    async def aclose(self) -> None:
        """Flush what is pending; said in the log if that fails."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.flush()
        except Exception as exc:
            _lost(self._retry, self.pending, exc)
            self._retry, self.pending = None, Pending()


class SyncEventLog:
    """Per process, for the synchronous ``Publisher`` (Django views, signals, commands): a
    timer thread flushes ``flush_s`` after the first summary it holds, and at exit."""

    def __init__(self, client: Any, keys: Keys, flush_s: float = FLUSH_S) -> None:
        self.client = client
        self.keys = keys
        self.flush_s = flush_s
        self.pending = Pending()
        self._retry: Flush | None = None
        self._lock = threading.Lock()  # pending and the timer
        self._flushing = threading.Lock()  # one flush at a time
        self._timer: threading.Timer | None = None
        self._pid = os.getpid()
        self._closed = False
        _at_exit.add(self)

    def record(self, calls: Sequence[Any], results: Sequence[Any]) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent flushes what it held
                self._pid, self.pending, self._retry, self._timer = (
                    os.getpid(),
                    Pending(),
                    None,
                    None,
                )
            if record(self.pending, calls, results) and self._timer is None and not self._closed:
                self._timer = threading.Timer(self.flush_s, self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        with contextlib.suppress(Exception):  # the next record or close retries
            self.flush()
        with self._lock:
            again = self._retry is not None or bool(self.pending.counts)
            if again and self._timer is None and not self._closed:
                self._timer = threading.Timer(self.flush_s, self._on_timer)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        script = scripts.load(scripts.EVENT_LOG)
        with self._flushing:
            with self._lock:
                if self._retry is None:
                    self._retry = self.pending.take()
            while self._retry is not None:
                call_keys, args = self._retry.call(self.keys)
                script.run_sync(self.client, call_keys, args)
                with self._lock:
                    self._retry = self.pending.take()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._pid != os.getpid():
            return
        try:
            self.flush()
        except Exception as exc:
            with self._lock:
                _lost(self._retry, self.pending, exc)
                self._retry, self.pending = None, Pending()
        _at_exit.discard(self)


_at_exit: weakref.WeakSet[SyncEventLog] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for event_log in list(_at_exit):
        with contextlib.suppress(Exception):
            event_log.close()
