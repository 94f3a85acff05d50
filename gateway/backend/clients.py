"""redis-py clients for a ``GATEWAY_REDIS_URL``: one server, Redis Cluster, or Sentinel.

Used by the nodes and the worker (``make_client`` in ``redis.py``) and by Django's publishers
(``gateway.publish``), sync or asyncio alike, so every process reaches Redis the same way.
"""

from __future__ import annotations

from typing import Any

from gateway.backend.sentinel import master_client
from gateway.backend.urls import Kind, RedisUrl, parse_redis_url


def kind_of(url: RedisUrl, cluster: bool | None) -> Kind:
    """The deployment: the URL's own, or Cluster when asked (``GATEWAY_REDIS_CLUSTER``)."""
    if url.kind == "sentinel":
        if cluster:
            raise ValueError("a redis+sentinel:// URL cannot be used as a Redis Cluster")
        return "sentinel"
    if cluster or url.kind == "cluster":
        if url.unix_path:
            raise ValueError("Redis Cluster is not reached through a unix:// socket")
        return "cluster"
    return "single"


def async_client(url: str, *, cluster: bool | None = None, **options: Any) -> Any:
    from redis import asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.sentinel import Sentinel

    parsed = parse_redis_url(url)
    kind = kind_of(parsed, cluster)
    if kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in parsed.hosts]
        return RedisCluster(startup_nodes=nodes, **_cluster_options(parsed), **options)
    if kind == "sentinel":
        return master_client(parsed, sentinel_class=Sentinel, redis_class=aioredis.Redis, **options)
    return aioredis.Redis.from_url(url, **options)


def sync_client(url: str, *, cluster: bool | None = None, **options: Any) -> Any:
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.sentinel import Sentinel

    parsed = parse_redis_url(url)
    kind = kind_of(parsed, cluster)
    if kind == "cluster":
        nodes = [ClusterNode(host, port) for host, port in parsed.hosts]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **_cluster_options(parsed), **options)
    if kind == "sentinel":
        return master_client(parsed, sentinel_class=Sentinel, redis_class=redis.Redis, **options)
    return redis.Redis.from_url(url, **options)


def _cluster_options(url: RedisUrl) -> dict[str, Any]:
    options: dict[str, Any] = {"username": url.username, "password": url.password}
    if url.tls:
        options["ssl"] = True
    return options
