"""Prometheus metrics of one node. Labels have bounded cardinality: never a user or a room."""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.process_collector import ProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _cached_labels(self: Any, *values: str) -> Any:
    """``labels()`` remembered per label values: prometheus_client validates and locks on every
    call (~2 µs), and the connect path asks for about ten children. Children are never removed
    here, so a remembered one stays the registered one."""
    children: dict[tuple[str, ...], Any] = self.__dict__.setdefault("_cached_children", {})
    child = children.get(values)
    if child is None:
        child = children[values] = MetricWrapperBase.labels(self, *values)
    return child


class Counter(prometheus_client.Counter):
    labels = _cached_labels  # type: ignore[assignment]


class Gauge(prometheus_client.Gauge):
    labels = _cached_labels  # type: ignore[assignment]


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.connections = Gauge(
            "gateway_connections", "Open WebSocket connections", ["role", "transport"], registry=r
        )
        self.connects = Counter(
            "gateway_connects_total", "Accepted WebSocket upgrades", ["transport"], registry=r
        )
        self.disconnects = Counter(
            "gateway_disconnects_total", "Closed connections by close code", ["code"], registry=r
        )
        self.rejected_upgrades = Counter(
            "gateway_rejected_upgrades_total",
            "Upgrades refused before a session existed",
            ["reason"],
            registry=r,
        )
        self.frames_in = Counter(
            "gateway_frames_received_total", "Client frames by event", ["event"], registry=r
        )
        self.frames_out = Counter(
            "gateway_frames_sent_total", "Server frames by event", ["event"], registry=r
        )
        self.errors = Counter(
            "gateway_errors_sent_total", "Error replies by code", ["code"], registry=r
        )
        self.publishes = Counter(
            "gateway_publishes_total", "Events published by this node", ["source"], registry=r
        )
        self.deliveries = Counter(
            "gateway_deliveries_total", "Event frames queued to local sockets", registry=r
        )
        self.delivery_latency = Histogram(
            "gateway_delivery_latency_seconds",
            "Publish to local fan-out latency",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slow_consumers = Counter(
            "gateway_slow_consumer_closes_total",
            "Connections closed because their send queue overflowed",
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited_frames_total", "Frames refused by the rate limit", registry=r
        )
        self.auth = Counter(
            "gateway_auth_total", "Authentication attempts by result", ["result"], registry=r
        )
        self.django_latency = Histogram(
            "gateway_django_request_duration_seconds",
            "Calls to Django by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.business_events = Counter(
            "gateway_business_events_total",
            "Client business events by outcome",
            ["type", "outcome"],
            registry=r,
        )
        self.redis_errors = Counter(
            "gateway_backend_errors_total",
            "Backend (Redis) errors by operation",
            ["op"],
            registry=r,
        )
        self.pubsub_reconnects = Gauge(
            "gateway_pubsub_reconnects", "Pub/sub reconnections since start", registry=r
        )
        self.rejoins = Counter(
            "gateway_rejoin_sent_total", "rejoin frames sent by reason", ["reason"], registry=r
        )
        self.rooms = Gauge("gateway_rooms", "Rooms with local members", registry=r)
        self.ready = Gauge("gateway_ready", "1 when the node can serve", registry=r)
        self.auth_sources = Counter(
            "gateway_auth_token_checks_total",
            "Token checks by where they were answered: memory, redis, jwt, django",
            ["source"],
            registry=r,
        )
        # --- connection accounting, online status, receipts (appended) ----------------------
        self.presence_changes = Counter(
            "gateway_presence_changes_total",
            "Users who came online or went offline, decided by this node",
            ["change"],
            registry=r,
        )
        self.caps_refused = Counter(
            "gateway_caps_refused_total",
            "Connections refused by a cluster-wide cap",
            ["cap"],
            registry=r,
        )
        self.receipts = Counter(
            "gateway_receipts_total",
            "received frames: accepted, ignored (not sent, repeated, malformed), expired, failed",
            ["outcome"],
            registry=r,
        )
