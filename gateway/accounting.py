"""The node's side of connection accounting: cluster-wide caps, online status, dead-node sweeps.

Every connection is counted in the ``OnlineStore`` (gateway/backend/online.py) under its client
address when the upgrade is admitted and under its user when it authenticates, and released when
it closes. ``GATEWAY_MAX_CONNECTIONS_PER_IP`` / ``_PER_USER`` are checked against those
cluster-wide counts in the same atomic step that counts the connection.

When Redis is unreachable (an error, or no answer within ``GATEWAY_LIMITS_TIMEOUT_S``) the node
falls back to its own per-node caps, which it checks anyway before asking Redis: the connection is
admitted, remembered as owed, and its count is written to Redis once Redis answers again
(``reconcile``). Authentication itself needs Redis (the connection's registration), so a user
cannot get in during an outage; the per-IP cap is then per node. The node logs the outage and
the recovery once each.

Locally the node keeps two counters per key (``("u", userId)`` or ``("i", ip)``): ``want``, the
connections that should be counted, and ``held``, what it knows Redis counts for it. They differ
only after a failed call; the maintenance loop then sets Redis to ``want``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import Counter
from typing import Any

from gateway.backend.online import IP, USER, OnlineStore, PresenceChange
from gateway.events import now_ms

log = logging.getLogger("gateway.accounting")

ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)
try:  # a Redis Cluster that cannot be reached raises RedisClusterException, not a RedisError
    from redis.exceptions import RedisClusterException, RedisError

    ERRORS = (*ERRORS, RedisError, RedisClusterException)
except ImportError:  # pragma: no cover
    pass

PROXY_WARN_MIN_CONNECTIONS = 20  # below this, one address holding most connections is normal
REGISTRATION_CHECK_S = 5.0

Key = tuple[str, str]


class Accounting:
    def __init__(
        self,
        store: OnlineStore,
        node_id: str,
        *,
        max_per_user: int,
        max_per_ip: int,
        cluster_wide: bool,
        trusted_proxies: list[str],
        lease_s: float,
        timeout_s: float = 1.0,
        metrics: Any = None,
    ) -> None:
        self.store = store
        self.node_id = node_id
        self.max_per_user = max_per_user
        self.max_per_ip = max_per_ip
        self.cluster_wide = cluster_wide  # False: embedded, the node's own checks are the caps
        self.trusted_proxies = trusted_proxies
        self.lease_s = lease_s
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.want: Counter[Key] = Counter()
        self.held: Counter[Key] = Counter()
        self.roles: dict[str, str] = {}
        self.dirty = False
        self.failing_since: float | None = None
        self.proxy_warned = False
        # a dead node's users go offline within lease + grace: looked for often enough for that
        self.sweep_every_s = min(lease_s / 3, max(1.0, store.grace_ms / 2000))

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Register the node's record (clearing what a previous life left); with Redis
        unreachable, ``reconcile`` registers it once Redis answers."""
        try:
            await self.store.register(self.node_id)
        except ERRORS as exc:
            self._failed(exc)
            self.dirty = True

    async def stop(self) -> None:
        """Shutdown: what this node still counts is released (normally nothing: its sessions
        closed first), with the grace period, so clients reconnecting elsewhere do not flap."""
        with contextlib.suppress(*ERRORS):
            for (kind, key), count in list(self.held.items()):
                await self.store.release(self.node_id, kind, key, count)
            self.held.clear()
            await self.store.sweep_node(self.node_id)
        await self.store.close()

    # --- admission ----------------------------------------------------------------------------
    @property
    def gates_ips(self) -> bool:
        """Whether an upgrade must wait for ``admit_ip`` (Redis: the cap is cluster-wide)."""
        return self.cluster_wide

    async def admit_ip(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False when the cluster-wide cap is reached. Every
        way in calls it before the upgrade (and ``release_ip`` if it then gives up)."""
        if not self.cluster_wide:
            return True
        return await self._acquire(IP, ip, self.max_per_ip, "")

    async def admit_user(self, user_id: str, role: str) -> bool:
        """Count an authenticated connection of ``user_id``; False over the per-user cap."""
        self.roles[user_id] = role
        cap = self.max_per_user if self.cluster_wide else 0  # embedded: the node's own check
        return await self._acquire(USER, user_id, cap, role)

    async def _acquire(self, kind: str, key: str, cap: int, role: str) -> bool:
        k = (kind, key)
        try:
            async with asyncio.timeout(self.timeout_s):
                admission = await self.store.acquire(self.node_id, kind, key, cap=cap, role=role)
        except ERRORS as exc:
            self._failed(exc)
            self.want[k] += 1  # admitted on the node's own cap; counted when Redis is back
            self.dirty = True
            return True
        self._recovered()
        if not admission.admitted:
            if self.metrics is not None:
                self.metrics.caps_refused.labels("user" if kind == USER else "ip").inc()
            return False
        self.want[k] += 1
        self.held[k] += 1
        if admission.came_online:
            self._announce(PresenceChange("", key, role, True, now_ms()))
        return True

    # --- release ------------------------------------------------------------------------------
    async def closed(self, user_id: str | None, ip: str) -> None:
        """A connection closed: its user (when it was counted) and its address are released
        together (one shared round trip)."""
        if user_id is None:
            await self._release((IP, ip))
        else:
            await asyncio.gather(self._release((USER, user_id)), self._release((IP, ip)))

    async def release_ip(self, ip: str) -> None:
        await self._release((IP, ip))

    async def release_user(self, user_id: str) -> None:
        await self._release((USER, user_id))

    async def _release(self, k: Key) -> None:
        if self.want[k] <= 0:
            self.want.pop(k, None)
            return
        self.want[k] -= 1
        if self.want[k] <= 0:
            del self.want[k]
            if k[0] == USER:
                self.roles.pop(k[1], None)
        if self.held[k] <= self.want[k]:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.store.release(self.node_id, k[0], k[1], 1)
        except ERRORS as exc:
            self._failed(exc)
            self.dirty = True
            return
        self._recovered()
        self.held[k] -= 1
        if self.held[k] <= 0:
            del self.held[k]

    # --- the proxy warning --------------------------------------------------------------------
    def note_address(self, ip: str, from_ip: int, total: int) -> None:
        """Warn once when most connections come from one untrusted private address: behind a
        balancer that is the balancer, and every client then shares one per-IP cap."""
        if self.proxy_warned or total < PROXY_WARN_MIN_CONNECTIONS or from_ip * 2 <= total:
            return
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return
        if address.is_private and not address.is_loopback:  # loopback: a local test or bench
            self.proxy_warned = True
            log.warning(
                "%d of %d connections come from %s, a private address that is not in "
                "GATEWAY_TRUSTED_PROXIES: if a proxy or balancer is in front of the gateway, "
                "add its address so the per-IP cap applies to the real clients (X-Forwarded-For)",
                from_ip,
                total,
                ip,
            )

    # --- maintenance: due offlines, dead nodes, restoring counts ------------------------------
    async def run(self, tick_s: float) -> None:
        """Every ``tick_s``: settle grace periods that ended; every third of a lease: sweep dead
        nodes; after a failure or a lost registration: write this node's counts again."""
        loop = asyncio.get_running_loop()
        next_sweep = next_check = loop.time()
        task = asyncio.current_task()
        while task is None or not task.cancelling():
            await asyncio.sleep(tick_s)
            try:
                for change in await self.store.settle_due(now_ms()):
                    self._announce(change)
                now = loop.time()
                if now >= next_sweep:
                    next_sweep = now + self.sweep_every_s
                    await self.sweep_dead()
                if self.dirty or now >= next_check:
                    next_check = now + REGISTRATION_CHECK_S
                    await self.reconcile()
            except ERRORS as exc:
                self._failed(exc)
                self.dirty = True

    async def sweep_dead(self) -> int:
        swept = 0
        for node in await self.store.dead_nodes():
            if node == self.node_id:
                continue
            n = await self.store.sweep_node(node)
            log.info("released the connection counts of dead node %s (%d users/addresses)", node, n)
            swept += n
        return swept

    async def reconcile(self) -> None:
        """Make Redis count exactly ``want`` for this node (after an outage, a failed release or
        a lost registration: Redis restarted empty, or a partition got the node swept)."""
        if not await self.store.registered(self.node_id):
            if self.held or self.want:
                log.warning("connection counts of this node were lost in Redis: restoring them")
            await self.store.register(self.node_id)
            self.held.clear()
            self.dirty = True
        if not self.dirty:
            return
        moved = False  # a connection came or went meanwhile: another pass next tick
        for k in list(self.want.keys() | self.held.keys()):
            want, held = self.want.get(k, 0), self.held.get(k, 0)
            if want == held:
                continue
            kind, key = k
            if want > 0:
                admission = await self.store.acquire(
                    self.node_id, kind, key, role=self.roles.get(key, ""), set_count=want
                )
                if admission.came_online:
                    self._announce(PresenceChange("", key, self.roles.get(key, ""), True, now_ms()))
                self.held[k] = want
            else:
                await self.store.release(self.node_id, kind, key, held)
                self.held.pop(k, None)
            moved = moved or self.want.get(k, 0) != want
        self.dirty = moved
        self._recovered()

    # --- outage logging and presence changes --------------------------------------------------
    def _failed(self, exc: BaseException) -> None:
        if self.metrics is not None:
            self.metrics.redis_errors.labels("accounting").inc()
        if self.failing_since is None:
            self.failing_since = time.monotonic()
            log.warning(
                "connection counts unavailable (%s): caps are per node until Redis answers",
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info(
                "connection counts available again after %.1fs",
                time.monotonic() - self.failing_since,
            )
            self.failing_since = None

    def _announce(self, change: PresenceChange) -> None:
        if self.metrics is not None:
            self.metrics.presence_changes.labels("online" if change.online else "offline").inc()
