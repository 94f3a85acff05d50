"""Backoff for Redis outages: grows to a cap, with jitter, and wakes up early on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import random

from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

# What an unreachable or failing Redis raises through redis-py's asyncio client.
REDIS_ERRORS: tuple[type[BaseException], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    TimeoutError,
)
# Command errors that say "not now" (full memory, a failover, a busy script), not "never".
_TRANSIENT = (ClusterDownError, MasterDownError, OutOfMemoryError, ReadOnlyError, TryAgainError)
_TRANSIENT_CODES = ("BUSY ", "NOREPLICAS ", "UNBLOCKED ")


def is_transient(exc: BaseException) -> bool:
    """Whether a failed command is worth retrying as it is: connection errors and the command
    errors of a Redis that is temporarily unable to write."""
    if isinstance(exc, _TRANSIENT):
        return True
    if isinstance(exc, ResponseError):
        return str(exc).startswith(_TRANSIENT_CODES)
    return isinstance(exc, REDIS_ERRORS)


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` or until ``stopping`` is set; True when stopping."""
    if seconds > 0 and not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)
    return stopping.is_set()


class Backoff:
    """Exponential backoff with full jitter over ``[base_s / 2, delay]``; ``reset()`` on success."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 2.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def next_delay(self) -> float:
        delay = min(self.cap_s, self.base_s * 2**self.failures)
        self.failures += 1
        return random.uniform(min(delay, self.base_s / 2), delay)

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, stopping: asyncio.Event) -> bool:
        """Sleep the next delay; True when the process is stopping."""
        return await sleep_unless(stopping, self.next_delay())
