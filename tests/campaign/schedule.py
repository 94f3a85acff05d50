"""The fault schedule: which fault, when, against what, for how long — a pure function of a seed.

The seed fixes the schedule, not the interleavings: the runner starts each fault at its time (or
later, when the previous fault on the same resource is still running) and the processes race as
they will. ``make_schedule`` guarantees ``min_each`` injections of every kind.
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from dataclasses import dataclass, field


class Kind(enum.StrEnum):
    PUBSUB_KILL = "pubsub_kill"  # CLIENT KILL TYPE pubsub on Redis
    NODE_KILL = "node_kill"  # SIGKILL a node, restart it
    NODE_TERM = "node_term"  # SIGTERM a node (drain, close 1012, exit 0), restart it
    REDIS_STALL = "redis_stall"  # DEBUG SLEEP
    REDIS_RESTART = "redis_restart"  # stop Redis (SIGTERM or SIGKILL; AOF always), start again
    PROXY_DELAY = "proxy_delay"  # added latency on one process's Redis connections
    PROXY_STALL = "proxy_stall"  # nothing forwarded, sockets open
    PROXY_CUT = "proxy_cut"  # connections aborted, new ones refused for a while
    STORM = "storm"  # many clients drop their connection and reconnect at once
    WORKER_KILL = "worker_kill"  # SIGKILL the worker mid-ingest, restart it
    # Redis Cluster only (tests/campaign/cluster.py)
    CLUSTER_FAILOVER = "cluster_failover"  # CLUSTER FAILOVER on a replica
    MASTER_CRASH = "master_crash"  # SIGKILL of a caught-up master; its replica takes over
    SLOT_MIGRATION = "slot_migration"  # a room's slot moves to another master


_CLUSTER_ONLY = (Kind.CLUSTER_FAILOVER, Kind.MASTER_CRASH, Kind.SLOT_MIGRATION)
# single Redis: every fault but the cluster's own
SINGLE_KINDS = tuple(k for k in Kind if k not in _CLUSTER_ONLY)
ALL_KINDS = SINGLE_KINDS  # the default run
# Redis Cluster: no proxy in the data path (clients follow CLUSTER SLOTS), no whole-Redis restart
CLUSTER_KINDS = tuple(
    k
    for k in Kind
    if k not in (Kind.PROXY_DELAY, Kind.PROXY_STALL, Kind.PROXY_CUT, Kind.REDIS_RESTART)
)

# Faults that hold one resource must not overlap: one node down at a time (so the clients
# always have somewhere to go), one Redis fault at a time, one fault per proxy.
_RESOURCE = {
    Kind.PUBSUB_KILL: "redis",
    Kind.REDIS_STALL: "redis",
    Kind.REDIS_RESTART: "redis",
    Kind.NODE_KILL: "nodes",
    Kind.NODE_TERM: "nodes",
    Kind.STORM: "clients",
    Kind.WORKER_KILL: "worker",
    Kind.CLUSTER_FAILOVER: "redis",
    Kind.MASTER_CRASH: "redis",
    Kind.SLOT_MIGRATION: "redis",
}


@dataclass(frozen=True)
class Fault:
    at_s: float  # planned start, seconds after the fault phase began
    kind: Kind
    target: str = ""  # a node name, a proxy name, or "" (Redis, the clients)
    duration_s: float = 0.0  # how long the fault holds (0: instantaneous)
    params: dict[str, float | str] = field(default_factory=dict)

    @property
    def resource(self) -> str:
        return _RESOURCE.get(self.kind) or f"proxy:{self.target}"

    def describe(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        target = f" {self.target}" if self.target else ""
        return f"{self.kind}{target} {self.duration_s:.1f}s {extra}".rstrip()


@dataclass(frozen=True)
class Targets:
    nodes: tuple[str, ...]
    proxies: tuple[str, ...]
    rooms: tuple[str, ...] = ()  # rooms whose slot may migrate
    cluster: bool = False


def _params(
    kind: Kind, rng: random.Random, targets: Targets
) -> tuple[float, dict[str, float | str]]:
    """(duration_s, params) for one fault of ``kind``."""
    if targets.cluster:
        found = _cluster_params(kind, rng, targets)
        if found is not None:
            return found
    if kind is Kind.NODE_KILL:
        return round(rng.uniform(0.5, 3.0), 2), {}
    if kind is Kind.NODE_TERM:
        return round(rng.uniform(0.5, 2.0), 2), {}
    if kind is Kind.REDIS_STALL:
        # some stalls outlast the nodes' 5 s socket timeout: retries must not duplicate
        return round(rng.choice([rng.uniform(0.3, 2.0), rng.uniform(4.0, 6.5)]), 2), {}
    if kind is Kind.REDIS_RESTART:
        return round(rng.uniform(0.2, 2.5), 2), {"signal": rng.choice(["TERM", "KILL"])}
    if kind is Kind.PROXY_DELAY:
        latency_s = round(rng.uniform(0.02, 0.4), 3)
        return round(rng.uniform(2.0, 8.0), 2), {"latency_s": latency_s, "scope": _scope(rng)}
    if kind is Kind.PROXY_STALL:
        return round(rng.uniform(0.5, 7.0), 2), {"scope": _scope(rng)}
    if kind is Kind.WORKER_KILL:
        return round(rng.uniform(0.5, 3.0), 2), {}
    if kind is Kind.PROXY_CUT:
        mode = rng.choice(["reset", "refuse"])
        return round(rng.choice([0.0, rng.uniform(0.5, 3.0)]), 2), {"mode": mode}
    if kind is Kind.STORM:
        return 0.0, {"fraction": round(rng.uniform(0.4, 1.0), 2)}
    return 0.0, {}


def _cluster_params(
    kind: Kind, rng: random.Random, targets: Targets
) -> tuple[float, dict[str, float | str]] | None:
    master = rng.randrange(3)
    if kind is Kind.REDIS_STALL:  # under the cluster's 3 s node timeout: no failover mid-write
        return round(rng.uniform(0.3, 2.0), 2), {"master": master}
    if kind is Kind.CLUSTER_FAILOVER:
        return 0.0, {"master": master}
    if kind is Kind.MASTER_CRASH:
        return round(rng.uniform(0.5, 3.0), 2), {"master": master}
    if kind is Kind.SLOT_MIGRATION:
        return 0.0, {"room": rng.choice(targets.rooms)}
    return None


def _scope(rng: random.Random) -> str:
    """``pubsub``: only the pub/sub connections behind the proxy (live events lag the history)."""
    return rng.choice(["all", "pubsub"])


def _target(kind: Kind, rng: random.Random, targets: Targets) -> str:
    if kind in (Kind.NODE_KILL, Kind.NODE_TERM):
        return rng.choice(targets.nodes)
    if kind in (Kind.PROXY_DELAY, Kind.PROXY_STALL, Kind.PROXY_CUT):
        return rng.choice(targets.proxies)
    return ""


def make_schedule(
    seed: int,
    duration_s: float,
    targets: Targets,
    *,
    min_each: int = 3,
    mean_gap_s: float = 3.0,
    kinds: tuple[Kind, ...] = ALL_KINDS,
) -> list[Fault]:
    """Faults sorted by start time, all starting within ``[2 s, duration_s - 2 s]``.

    ``min_each`` of every kind, then as many more (random kinds) as ``mean_gap_s`` allows.
    """
    rng = random.Random(seed)
    window = max(1.0, duration_s - 4.0)
    count = max(min_each * len(kinds), int(window / mean_gap_s))
    bag = [kind for kind in kinds for _ in range(min_each)]
    bag += [rng.choice(kinds) for _ in range(count - len(bag))]
    rng.shuffle(bag)
    times = sorted(rng.uniform(2.0, 2.0 + window) for _ in bag)
    faults = []
    for at_s, kind in zip(times, bag, strict=True):
        duration_s, params = _params(kind, rng, targets)
        faults.append(Fault(round(at_s, 2), kind, _target(kind, rng, targets), duration_s, params))
    return faults


def counts(faults: list[Fault]) -> Counter[str]:
    return Counter(str(f.kind) for f in faults)
