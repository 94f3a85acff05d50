"""Redis Sentinel (``redis+sentinel://…/<service-name>``).

Commands go through redis-py's ``Sentinel.master_for``: each new connection asks the sentinels
for the current master, and a connection that finds a replica there (``READONLY``, after a
failover) is dropped, so the next command reaches the new master. The pub/sub links ask the
sentinels too (``SentinelMaster``): after every lost link, and every probe interval, so a node
whose old master is still up (demoted to a replica) moves its subscriptions within seconds.
"""

from __future__ import annotations

from typing import Any

from gateway.backend.endpoint import Endpoint
from gateway.backend.urls import RedisUrl

SENTINEL_OPTIONS = ("socket_timeout", "socket_connect_timeout")


def master_client(url: RedisUrl, *, sentinel_class: Any, redis_class: Any, **options: Any) -> Any:
    """A ``redis_class`` client of the master of ``url.service`` (sync or asyncio)."""
    sentinel_kwargs = {k: v for k, v in options.items() if k in SENTINEL_OPTIONS}
    if url.sentinel_password is not None:
        sentinel_kwargs["password"] = url.sentinel_password
        if url.sentinel_username:
            sentinel_kwargs["username"] = url.sentinel_username
    sentinel = sentinel_class(url.hosts, sentinel_kwargs=sentinel_kwargs)
    return sentinel.master_for(
        url.service,
        redis_class=redis_class,
        username=url.username,
        password=url.password,
        db=url.db,
        **options,
    )


def sentinel_of(client: Any) -> Any | None:
    """The ``Sentinel`` behind a ``master_client`` (None for any other client)."""
    pool = getattr(client, "connection_pool", None)
    return getattr(pool, "sentinel_manager", None)


async def aclose_sentinels(client: Any) -> None:
    """Close the connections to the sentinels themselves (``aclose()`` of the client closes
    only its connections to the master)."""
    sentinel = sentinel_of(client)
    for conn in getattr(sentinel, "sentinels", ()):
        await conn.aclose()


def close_sentinels(client: Any) -> None:
    sentinel = sentinel_of(client)
    for conn in getattr(sentinel, "sentinels", ()):
        conn.close()


class SentinelMaster:
    """Every channel lives on the current master of the service."""

    changes = True

    def __init__(self, client: Any, template: Endpoint) -> None:
        self._sentinel: Any = sentinel_of(client)
        self._service = client.connection_pool.service_name
        self._template = template
        self._master: Endpoint | None = None

    async def refresh(self) -> None:
        """Ask the sentinels (the first that knows a master in good standing answers);
        ``MasterNotFoundError`` when none does."""
        host, port = await self._sentinel.discover_master(self._service)
        self._master = self._template.with_address(str(host), int(port))

    def endpoint_for(self, channel: str) -> Endpoint | None:
        return self._master

    async def moved(self, error: str) -> None:
        return None
