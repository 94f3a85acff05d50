"""Applying the schedule: each fault against the real processes, with a log of when it held.

``FaultLog`` answers "which faults were in effect around t" for a violation's trace. Faults on
one resource run one after the other (a per-resource lock, taken in schedule order), so a slow
restart delays the next fault on that resource instead of stacking outages.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from tests.campaign.client import CampaignClient
from tests.campaign.oracle import Violation
from tests.campaign.schedule import Fault, Kind
from tests.campaign.topology import DRAIN_S, EXIT_MARGIN_S, ProcessStartError, Topology

NODE_RESTART_ATTEMPTS = 3
DRAIN_MARGIN_S = DRAIN_S + 1.0  # closes up to this long after SIGTERM belong to the drain
ABNORMAL = frozenset({"1006", "None"})


@dataclass
class Applied:
    fault: Fault
    start_s: float
    end_s: float | None = None
    outcome: str = ""

    @property
    def done(self) -> bool:
        return self.end_s is not None and not self.outcome.startswith("failed")

    def describe(self) -> str:
        end = f"{self.end_s:.2f}" if self.end_s is not None else "..."
        outcome = f" -> {self.outcome}" if self.outcome else ""
        return f"{self.start_s:8.2f}-{end:>8} {self.fault.describe()}{outcome}"


class FaultLog:
    def __init__(self) -> None:
        self.applied: list[Applied] = []

    def around(self, t: float, before_s: float = 5.0) -> list[str]:
        """The faults that held at some point in ``[t - before_s, t]``."""
        return [
            a.describe()
            for a in self.applied
            if a.start_s <= t and (a.end_s is None or a.end_s >= t - before_s)
        ]

    def counts(self) -> Counter[str]:
        """Faults that ran to their end, by kind (a fault whose command failed is not one)."""
        return Counter(str(a.fault.kind) for a in self.applied if a.done)


class Injector:
    def __init__(
        self,
        topology: Topology,
        clients: Sequence[CampaignClient],
        clock: Callable[[], float],
        report: Callable[[Violation], None],
    ) -> None:
        self.topology = topology
        self.clients = clients
        self.clock = clock
        self.report = report  # a fault that broke a promise of its own (a drain's exit code)
        self.log = FaultLog()
        self._locks: dict[str, asyncio.Lock] = {}

    async def run(self, schedule: Sequence[Fault], stop: asyncio.Event) -> None:
        """Start each fault at its time (relative to now), in order per resource."""
        start = self.clock()
        tasks = [asyncio.create_task(self._at(fault, start, stop)) for fault in schedule]
        await asyncio.gather(*tasks)

    async def _at(self, fault: Fault, start: float, stop: asyncio.Event) -> None:
        lock = self._locks.setdefault(fault.resource, asyncio.Lock())
        await asyncio.sleep(max(0.0, start + fault.at_s - self.clock()))
        async with lock:
            if stop.is_set():
                return
            applied = Applied(fault, self.clock())
            self.log.applied.append(applied)
            try:
                applied.outcome = await self.apply(fault)
            except (RedisError, OSError, ProcessStartError) as exc:
                applied.outcome = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
            applied.end_s = self.clock()

    async def apply(self, fault: Fault) -> str:
        handler = {
            Kind.PUBSUB_KILL: self._pubsub_kill,
            Kind.NODE_KILL: self._node_restart,
            Kind.NODE_TERM: self._node_restart,
            Kind.REDIS_STALL: self._redis_stall,
            Kind.REDIS_RESTART: self._redis_restart,
            Kind.PROXY_DELAY: self._proxy_delay,
            Kind.PROXY_STALL: self._proxy_stall,
            Kind.PROXY_CUT: self._proxy_cut,
            Kind.STORM: self._storm,
            Kind.WORKER_KILL: self._worker_restart,
            Kind.CLUSTER_FAILOVER: self._cluster_failover,
            Kind.MASTER_CRASH: self._master_crash,
            Kind.SLOT_MIGRATION: self._slot_migration,
        }[fault.kind]
        return await handler(fault)

    # --- Redis --------------------------------------------------------------------------------
    async def _pubsub_kill(self, fault: Fault) -> str:
        if self.topology.cluster is not None:
            return f"killed {await self.topology.cluster.pubsub_kill()}"
        admin = self.topology.admin()
        try:
            killed = await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        finally:
            await admin.aclose()
        return f"killed {killed}"

    async def _redis_stall(self, fault: Fault) -> str:
        if self.topology.cluster is not None:
            master = int(fault.params.get("master", 0))
            return await self.topology.cluster.stall(master, fault.duration_s)
        admin = self.topology.admin(timeout_s=fault.duration_s + 10)
        try:
            await admin.execute_command("DEBUG", "SLEEP", f"{fault.duration_s:.2f}")
        finally:
            await admin.aclose()
        return "slept"

    async def _redis_restart(self, fault: Fault) -> str:
        sig = signal.SIGKILL if fault.params.get("signal") == "KILL" else signal.SIGTERM
        await self.topology.stop_redis(sig)
        await asyncio.sleep(fault.duration_s)
        await self.topology.start_redis()
        return f"{sig.name}, back"

    # --- Redis Cluster ------------------------------------------------------------------------
    async def _cluster_failover(self, fault: Fault) -> str:
        assert self.topology.cluster is not None
        return await self.topology.cluster.failover(int(fault.params["master"]))

    async def _master_crash(self, fault: Fault) -> str:
        assert self.topology.cluster is not None
        master = int(fault.params["master"])
        return await self.topology.cluster.crash_master(master, fault.duration_s)

    async def _slot_migration(self, fault: Fault) -> str:
        assert self.topology.cluster is not None
        return await self.topology.cluster.migrate(str(fault.params["room"]))

    # --- nodes --------------------------------------------------------------------------------
    async def _node_restart(self, fault: Fault) -> str:
        sig = signal.SIGKILL if fault.kind is Kind.NODE_KILL else signal.SIGTERM
        code = await self.topology.stop_node(fault.target, sig)
        outcome = f"exit {code}"
        if sig is signal.SIGTERM and code != 0:
            self.report(
                Violation(
                    "drain_exit",
                    "-",
                    "-",
                    self.clock(),
                    f"{fault.target} exited with {code} after SIGTERM (contract: close 1012 "
                    f"within the drain, then exit 0; None: still running {EXIT_MARGIN_S:g} s "
                    f"after the drain, as long as k8s/ allows)",
                )
            )
        await asyncio.sleep(fault.duration_s)
        for attempt in range(NODE_RESTART_ATTEMPTS):
            try:
                await self.topology.start_node(fault.target)
                return f"{outcome}, back"
            except ProcessStartError as exc:
                if attempt == NODE_RESTART_ATTEMPTS - 1:
                    raise
                self.report(
                    Violation("node_start_failed", "-", "-", self.clock(), str(exc).splitlines()[0])
                )
        return outcome

    async def _worker_restart(self, fault: Fault) -> str:
        code = await self.topology.stop_worker(signal.SIGKILL)
        await asyncio.sleep(fault.duration_s)
        await self.topology.start_worker()
        return f"exit {code}, back"

    # --- proxies ------------------------------------------------------------------------------
    async def _proxy_delay(self, fault: Fault) -> str:
        proxy = self.topology.proxies[fault.target]
        pubsub_only = fault.params.get("scope") == "pubsub"
        proxy.set_delay(float(fault.params["latency_s"]), pubsub_only=pubsub_only)
        try:
            await asyncio.sleep(fault.duration_s)
        finally:
            proxy.set_delay(0.0, pubsub_only=pubsub_only)
        return "delayed"

    async def _proxy_stall(self, fault: Fault) -> str:
        proxy = self.topology.proxies[fault.target]
        pubsub_only = fault.params.get("scope") == "pubsub"
        held = proxy.pubsub_connections if pubsub_only else proxy.open_connections
        proxy.stall(True, pubsub_only=pubsub_only)
        try:
            await asyncio.sleep(fault.duration_s)
        finally:
            proxy.stall(False, pubsub_only=pubsub_only)
        return f"stalled {held} connections"

    async def _proxy_cut(self, fault: Fault) -> str:
        proxy = self.topology.proxies[fault.target]
        if fault.params.get("mode") == "refuse":  # connecting is refused, as to a dead Redis
            await proxy.unlisten()
            cut = proxy.cut()
            try:
                await asyncio.sleep(fault.duration_s)
            finally:
                await proxy.listen()
        else:  # accepted and closed at once, as through a proxy to a dead Redis
            cut = proxy.cut(refuse_s=fault.duration_s)
            await asyncio.sleep(fault.duration_s)
        return f"cut {cut}"

    # --- clients ------------------------------------------------------------------------------
    async def _storm(self, fault: Fault) -> str:
        fraction = float(fault.params.get("fraction", 0.5))
        count = max(1, round(len(self.clients) * fraction))
        chosen = random.Random(f"storm {fault.at_s}").sample(list(self.clients), count)
        dropped = sum(client.drop() for client in chosen)
        return f"{dropped} clients reconnect at once"


def drain_violations(log: FaultLog, clients: Sequence[CampaignClient]) -> list[Violation]:
    """Contract §2: a node shutting down (SIGTERM) closes its clients with 1012 within the drain.
    A client of the draining node closed abnormally (the node went away without closing it) is a
    violation; 1013 (an authentication that failed, retry later) and 1011 (counted as an
    ``unexpected_close``) are not counted here."""
    found = []
    for applied in log.applied:
        if applied.fault.kind is not Kind.NODE_TERM or applied.end_s is None:
            continue
        node = applied.fault.target
        for client in clients:
            for t, name, code in client.close_log:
                if name != node or code not in ABNORMAL or not _during_drain(applied, t):
                    continue
                detail = f"{node} closed {client.name} with {code} while draining after SIGTERM"
                violation = Violation("drain_close", client.name, "-", t, detail)
                violation.faults = log.around(t)
                found.append(violation)
    return found


def _during_drain(applied: Applied, t: float) -> bool:
    exited = applied.start_s + DRAIN_MARGIN_S
    return applied.start_s <= t <= min(exited, applied.end_s or exited)
