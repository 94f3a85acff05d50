"""Prometheus metrics of one worker, in their own registry. Labels have bounded cardinality."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.process_collector import ProcessCollector

JANITOR_KINDS = ("nodes", "connections", "memberships", "presence", "consumers")


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.ingested = Counter(
            "gateway_worker_ingested_total",
            "Ingest stream entries published (first time; repeats are counted as duplicates)",
            registry=r,
        )
        self.duplicates = Counter(
            "gateway_worker_ingest_duplicates_total",
            "Ingest entries whose publish was an idempotent repeat and delivered nothing",
            registry=r,
        )
        self.dead_letters = Counter(
            "gateway_worker_dead_letters_total",
            "Malformed or unpublishable entries moved to the dead-letter stream",
            registry=r,
        )
        self.claimed = Counter(
            "gateway_worker_claimed_total",
            "Pending entries of idle consumers claimed with XAUTOCLAIM",
            registry=r,
        )
        self.batches = Counter(
            "gateway_worker_ingest_batches_total", "Batches of ingest entries handled", registry=r
        )
        self.pending = Gauge(
            "gateway_worker_ingest_pending",
            "Entries read by the consumer group but not yet acknowledged (XPENDING)",
            registry=r,
        )
        self.lag = Gauge(
            "gateway_worker_ingest_lag",
            "Entries in the stream not yet read by the consumer group (XINFO GROUPS lag)",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "gateway_worker_ingest_lag_seconds",
            "Age of the oldest entry not yet acknowledged (0 when the stream is caught up)",
            registry=r,
        )
        self.janitor_sweeps = Counter(
            "gateway_worker_janitor_sweeps_total", "Janitor sweeps run by this worker", registry=r
        )
        self.janitor_removed = Counter(
            "gateway_worker_janitor_removed_total",
            "State removed by the janitor, by kind",
            ["kind"],
            registry=r,
        )
        self.rollups = Counter(
            "gateway_worker_rollups_total", "Events-per-minute rollups computed", registry=r
        )
        self.lease_skips = Counter(
            "gateway_worker_lease_busy_total",
            "Job runs skipped because another worker held the job's lease",
            ["job"],
            registry=r,
        )
        self.errors = Counter(
            "gateway_worker_errors_total",
            "Failed operations by operation (Redis unavailable, rejected commands, crashes)",
            ["op"],
            registry=r,
        )
        self.presence_posted = Counter(
            "gateway_worker_presence_posted_total",
            "Online/offline changes accepted by Django (2xx) and acknowledged",
            registry=r,
        )
        for kind in JANITOR_KINDS:
            self.janitor_removed.labels(kind)
        for job in ("janitor", "rollup"):
            self.lease_skips.labels(job)
