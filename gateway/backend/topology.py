"""Where each pub/sub channel must be subscribed, and how to learn it again after a change.

- ``SingleServer``: one Redis; every channel on it.
- ``ClusterSlots``: Redis Cluster; a channel lives on the master of its slot (sharded pub/sub). The
  slot map is redis-py's (the command client's ``nodes_manager``), so commands and pub/sub agree,
  and a ``MOVED`` seen by either updates both.
- ``sentinel.SentinelMaster``: Redis Sentinel; every channel on the current master, asked of the
  sentinels.

``refresh()`` asks the deployment again (raises when it cannot); ``endpoint_for(channel)`` answers
from what was learnt (None: nothing known yet); ``moved(error)`` applies a ``MOVED`` reply.
"""

from __future__ import annotations

from typing import Any, Protocol

from redis.crc import key_slot
from redis.exceptions import MovedError, RedisClusterException

from gateway.backend.endpoint import Endpoint


class Topology(Protocol):
    #: the owner of a channel can change while the servers stay up (failover, resharding):
    #: the owner of every channel is checked again every probe interval
    changes: bool

    async def refresh(self) -> None: ...

    def endpoint_for(self, channel: str) -> Endpoint | None: ...

    async def moved(self, error: str) -> None: ...


class SingleServer:
    changes = False

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def refresh(self) -> None:
        return None

    def endpoint_for(self, channel: str) -> Endpoint | None:
        return self._endpoint

    async def moved(self, error: str) -> None:
        return None


class ClusterSlots:
    changes = True

    def __init__(self, client: Any, template: Endpoint) -> None:
        self._client = client
        self._template = template
        self._known = False

    async def refresh(self) -> None:
        """Ask the cluster for its slot map (``CLUSTER SLOTS`` of the first node that answers
        with every slot covered)."""
        if not self._known:
            await self._client.initialize()  # the first time: also the client's own setup
            self._known = True
        else:
            await self._client.nodes_manager.initialize()

    def endpoint_for(self, channel: str) -> Endpoint | None:
        if not self._known:
            return None
        slot = key_slot(channel.encode())
        try:
            node = self._client.nodes_manager.get_node_from_slot(slot)
        except RedisClusterException:  # slot not covered (yet)
            return None
        return self._template.with_address(node.host, node.port)

    async def moved(self, error: str) -> None:
        """``MOVED <slot> <host>:<port>``: that slot is served there now."""
        if self._known and error.startswith("MOVED "):
            await self._client.nodes_manager.move_slot(MovedError(error.removeprefix("MOVED ")))
