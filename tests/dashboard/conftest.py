"""Fixtures of the dashboard tests: two in-process nodes on one Redis, through a user that may
not scan the keyspace (see ``support.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.dashboard.support import ACL_ARGS, Cluster, acl_url
from tests.support.redis_server import RedisServer


@pytest.fixture
def acl_redis(redis_factory: Any) -> RedisServer:
    """A fresh redis-server with the user ``gw`` that may do anything but KEYS/SCAN/RANDOMKEY."""
    server: RedisServer = redis_factory(extra_args=ACL_ARGS)
    return server


@pytest.fixture
async def cluster(
    acl_redis: RedisServer, make_node: Any, http: aiohttp.ClientSession
) -> AsyncIterator[Cluster]:
    """Two nodes (``node_heartbeat_s`` 0.5) sharing ``acl_redis`` as the restricted user."""
    url = acl_url(acl_redis)
    nodes = [await make_node(url), await make_node(url)]
    state = Cluster(redis=acl_redis, url=url, nodes=nodes)
    yield state
    await state.close_clients()
