"""Job leases: at most one process runs a once-only job (janitor sweep, rollup) at a time.

Shared by the worker and the nodes (``POST /dashboard/cleanup`` takes the janitor's lease).

A lease is a Redis string set with ``SET NX PX`` holding a random token. The holder renews it
while the job runs and releases it with a compare-and-delete script, so a worker never renews or
deletes a lease that expired and was taken by another worker. If the lease is lost mid-job (the
holder could not renew it in time), the job is cancelled before a second holder can overlap it
for long. Every job here is idempotent, so a cancelled job is simply run again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from gateway.backend import scripts

log = logging.getLogger("gateway.leases")

LEASE_UPDATE = "lease_update"
T = TypeVar("T")


class LeaseLost(Exception):
    """The lease expired or was taken while its job ran; the job was cancelled."""


class LeaseBusy(Exception):
    """Another process held the lease for longer than the caller would wait."""


class Lease:
    def __init__(self, client: Any, key: str, owner: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.owner = owner
        self.ttl_ms = max(100, int(ttl_s * 1000))
        self.token: str | None = None

    async def acquire(self) -> bool:
        token = f"{self.owner}:{secrets.token_hex(8)}"
        if await self.client.set(self.key, token, nx=True, px=self.ttl_ms):
            self.token = token
            return True
        return False

    async def renew(self) -> bool:
        return await self._update(self.ttl_ms)

    async def release(self, linger_s: float = 0.0) -> bool:
        """Give the lease up: delete it, or (``linger_s`` > 0) let it expire after that long so
        that other workers skip the job until the next period."""
        released = await self._update(max(0, int(linger_s * 1000)))
        self.token = None
        return released

    async def _update(self, ttl_ms: int) -> bool:
        if self.token is None:
            return False
        script = scripts.load(LEASE_UPDATE)
        return int(await script.run(self.client, [self.key], [self.token, ttl_ms])) == 1


async def run_under_lease(
    lease: Lease, job: Callable[[], Awaitable[T]], *, linger_s: float = 0.0
) -> tuple[bool, T | None]:
    """Run ``job`` if the lease is free: ``(True, result)``, or ``(False, None)`` when another
    worker holds it. Raises ``LeaseLost`` when the lease could not be kept while the job ran."""
    if not await lease.acquire():
        return False, None
    job_task: asyncio.Task[T] = asyncio.ensure_future(job())
    keeper = asyncio.create_task(_keep(lease), name=f"lease {lease.key}")
    try:
        await asyncio.wait({job_task, keeper}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        await _cancel(job_task, keeper)
        with contextlib.suppress(Exception):
            await asyncio.shield(lease.release())
        raise
    if not job_task.done():  # the keeper returned: the lease is gone
        await _cancel(job_task, keeper)
        lease.token = None
        raise LeaseLost(f"lost the lease {lease.key} while its job ran")
    await _cancel(keeper)
    try:
        result = job_task.result()
    except BaseException:
        with contextlib.suppress(Exception):
            await lease.release()
        raise
    await lease.release(linger_s)
    return True, result


async def _keep(lease: Lease) -> None:
    """Renew every third of the TTL; return when the lease is gone, or when renewals kept failing
    until the lease would have expired."""
    loop = asyncio.get_running_loop()
    period_s = lease.ttl_ms / 3000
    valid_until = loop.time() + lease.ttl_ms / 1000
    while True:
        await asyncio.sleep(period_s)
        started = loop.time()
        try:
            renewed = await lease.renew()
        except Exception as exc:
            if loop.time() + period_s >= valid_until:
                log.warning("could not renew lease %s: %s", lease.key, exc)
                return
            continue
        if not renewed:
            log.warning("lease %s expired while its job ran", lease.key)
            return
        valid_until = started + lease.ttl_ms / 1000


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
