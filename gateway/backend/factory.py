"""Choose the backend from the settings: embedded memory, or Redis (single or Cluster)."""

from __future__ import annotations

from typing import Any

from gateway.backend.base import Backend
from gateway.backend.keys import Keys
from gateway.backend.memory import MemoryBackend
from gateway.backend.online import OnlineStore
from gateway.backend.online_memory import MemoryOnline
from gateway.backend.receipts import MemoryReceipts, ReceiptStore
from gateway.backend.redis_publish import HistoryPolicy
from gateway.config import Settings


def history_policy(settings: Settings) -> HistoryPolicy:
    return HistoryPolicy(
        size=settings.history_size,
        ttl_s=settings.history_ttl_seconds,
        meta_ttl_s=settings.history_meta_ttl_s,
    )


def make_backend(settings: Settings) -> Backend:
    if settings.redis_url is None:
        return MemoryBackend(
            history_size=settings.history_size,
            history_ttl_s=settings.history_ttl_seconds,
            history_meta_ttl_s=settings.history_meta_ttl_s,
        )
    from gateway.backend.redis import RedisBackend

    return RedisBackend(
        settings.redis_url,
        prefix=settings.redis_prefix,
        cluster=settings.cluster_mode,
        history=history_policy(settings),
        node_lease_s=settings.node_lease_s,
        probe_s=settings.pubsub_probe_s,
        unsubscribe_delay_s=settings.unsubscribe_delay_s,
    )


def make_online_store(settings: Settings, backend: Backend) -> OnlineStore:
    """Connection counts and online status on the same Redis as ``backend`` (or in memory)."""
    grace_ms = int(settings.presence_grace_s * 1000)
    maxlen = settings.presence_stream_maxlen
    if backend.name == "memory":
        return MemoryOnline(grace_ms=grace_ms, stream_maxlen=maxlen)
    from gateway.backend.redis_online import RedisOnline

    client: Any = getattr(backend, "client")  # noqa: B009 - RedisBackend's, not in the Protocol
    return RedisOnline(
        client,
        getattr(backend, "keys", None) or Keys(settings.redis_prefix),
        batch=getattr(getattr(backend, "state", None), "batch", None),
        cluster=settings.cluster_mode,
        grace_ms=grace_ms,
        stream_maxlen=maxlen,
    )


def make_receipt_store(settings: Settings, backend: Backend) -> ReceiptStore:
    """Delivery receipts on the same Redis as ``backend`` (or in memory), kept as long as the
    rooms' history."""
    ttl_s = settings.history_ttl_seconds
    if backend.name == "memory":
        return MemoryReceipts(ttl_s)
    from gateway.backend.redis_receipts import RedisReceipts

    client: Any = getattr(backend, "client")  # noqa: B009 - RedisBackend's, not in the Protocol
    return RedisReceipts(
        client,
        getattr(backend, "keys", None) or Keys(settings.redis_prefix),
        ttl_s=ttl_s,
        batch=getattr(getattr(backend, "state", None), "batch", None),
        cluster=settings.cluster_mode,
    )
