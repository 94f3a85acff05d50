"""Leased periodic jobs of the worker (janitor sweep, rollup): ``LeasedTicks``.

The lease itself (``Lease``, ``run_under_lease``) lives in ``gateway.backend.leases``: nodes take
the janitor's lease too, for ``POST /dashboard/cleanup``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.backend.leases import LEASE_UPDATE, Lease, LeaseLost, run_under_lease

__all__ = ["LEASE_UPDATE", "Lease", "LeaseLost", "LeasedTicks", "run_under_lease"]

log = logging.getLogger("worker.leases")
T = TypeVar("T")


class LeasedTicks:
    """A once-per-period job run under a lease: logs a failure once and its recovery once,
    counts errors and lease skips by job name. ``tick(job)`` returns the job's result, or None
    when it failed or another worker held the lease."""

    def __init__(
        self,
        name: str,
        lease: Lease,
        metrics: Any,
        interval_s: float,
        errors: tuple[type[BaseException], ...],
        *,
        linger: bool = True,
    ) -> None:
        self.name = name
        self.lease = lease
        self.metrics = metrics
        self.interval_s = interval_s
        # linger: the lease outlives the run by most of a period, so the other workers skip
        # their ticks of this period (one run per period); without, it is released at once
        self.linger_s = 0.8 * interval_s if linger else 0.0
        self.errors: tuple[type[BaseException], ...] = (LeaseLost, *errors)
        self.failing = False

    async def tick(self, job: Callable[[], Awaitable[T]]) -> T | None:
        try:
            ran, result = await run_under_lease(self.lease, job, linger_s=self.linger_s)
        except self.errors as exc:
            self.metrics.errors.labels(self.name).inc()
            if not self.failing:
                log.warning("%s failed (%s: %s); will retry", self.name, type(exc).__name__, exc)
            self.failing = True
            return None
        if self.failing:
            log.info("%s running again", self.name)
            self.failing = False
        if not ran:
            self.metrics.lease_skips.labels(self.name).inc()
        return result
