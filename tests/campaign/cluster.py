"""Redis Cluster for the campaign: 3 masters + 3 replicas (AOF always), and its own faults.

Clients of a cluster follow ``CLUSTER SLOTS`` to every node's real address, so the fault proxies
cannot sit in between: cluster runs have no proxy faults, and Redis faults aim at one shard.
Every fault here keeps acknowledged writes (contract v3 §2: no new epoch, nothing missing):

- ``cluster_failover``: ``CLUSTER FAILOVER`` on a replica (a manual failover waits until the
  replica has caught up);
- ``master_crash``: writes paused (``CLIENT PAUSE WRITE``) until the replica has every write,
  then SIGKILL of the master; its replica is promoted, the old master comes back as a replica;
- ``slot_migration``: a shared room's slot moves to another master while it is published to
  (``SETSLOT IMPORTING/MIGRATING``, ``MIGRATE``, ``SETSLOT NODE`` on every master);
- ``pubsub_kill`` on every node, ``redis_stall`` (``DEBUG SLEEP``) of one master, shorter than
  the cluster's node timeout (a longer one would fail the master over with writes in flight).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tests.support.redis_server import RedisCluster, RedisServer

AOF_ALWAYS = ("--appendonly", "yes", "--appendfsync", "always")
MIGRATE_BATCH = 100
SYNC_TIMEOUT_S = 10.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterRedis:
    def __init__(self, directory: Path) -> None:
        try:
            self.cluster = RedisCluster(
                directory,
                masters=3,
                replicas=1,
                extra_args=[*AOF_ALWAYS, "--enable-debug-command", "yes"],
            )
        except TypeError:  # tests/support's RedisCluster without replicas
            raise RuntimeError("the cluster variant needs RedisCluster(replicas=...)") from None

    # --- lifecycle (blocking: call before the run's tasks start) -------------------------------
    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.cluster.ports)

    @property
    def servers(self) -> list[RedisServer]:
        return list(self.cluster.nodes)

    def client(self) -> AsyncRedisCluster:
        nodes = [ClusterNode("127.0.0.1", port) for port in self.cluster.ports]
        return AsyncRedisCluster(startup_nodes=nodes, socket_timeout=5, socket_connect_timeout=3)

    # --- asking the nodes ---------------------------------------------------------------------
    @staticmethod
    def admin(server: RedisServer, timeout_s: float = 5.0) -> aioredis.Redis:
        return aioredis.Redis(
            host="127.0.0.1", port=server.port, socket_timeout=timeout_s, socket_connect_timeout=3
        )

    async def _ask(self, server: RedisServer, *command: Any, timeout_s: float = 5.0) -> Any:
        admin = self.admin(server, timeout_s)
        try:
            return await admin.execute_command(*command)
        finally:
            await admin.aclose()

    async def role(self, server: RedisServer) -> list[Any]:
        if not server.alive:
            return ["down"]
        try:
            reply: list[Any] = await self._ask(server, "ROLE")
        except (OSError, aioredis.RedisError):
            return ["down"]
        return [_text(reply[0]), *reply[1:]]

    async def masters(self) -> list[RedisServer]:
        return [s for s in self.servers if (await self.role(s))[0] == "master"]

    async def replica_of(self, master: RedisServer) -> RedisServer | None:
        for server in self.servers:
            role = await self.role(server)
            if role[0] == "slave" and int(role[2]) == master.port:
                return server
        return None

    async def node_id(self, server: RedisServer) -> str:
        return _text(await self._ask(server, "CLUSTER", "MYID"))

    # --- faults -------------------------------------------------------------------------------
    async def pubsub_kill(self) -> int:
        killed = 0
        for server in self.servers:
            if server.alive:
                killed += int(await self._ask(server, "CLIENT", "KILL", "TYPE", "pubsub"))
        return killed

    async def stall(self, master_index: int, seconds: float) -> str:
        masters = await self.masters()
        master = masters[master_index % len(masters)]
        await self._ask(master, "DEBUG", "SLEEP", f"{seconds:.2f}", timeout_s=seconds + 10)
        return f"master :{master.port} slept"

    async def failover(self, master_index: int) -> str:
        masters = await self.masters()
        master = masters[master_index % len(masters)]
        replica = await self.replica_of(master)
        if replica is None:
            return f"master :{master.port} has no live replica: skipped"
        await self._ask(replica, "CLUSTER", "FAILOVER")
        await self._until_role(replica, "master", 30.0)
        return f":{replica.port} took over from :{master.port}"

    async def crash_master(self, master_index: int, down_s: float) -> str:
        """Pause writes, wait until the replica has them all, SIGKILL the master; restart it
        after ``down_s`` (it rejoins as a replica of its successor)."""
        masters = await self.masters()
        master = masters[master_index % len(masters)]
        replica = await self.replica_of(master)
        if replica is None:
            return f"master :{master.port} has no live replica: skipped"
        await self._ask(master, "CLIENT", "PAUSE", str(int(SYNC_TIMEOUT_S * 1000)), "WRITE")
        await self._until_synced(master, replica)
        os.kill(master.pid, signal.SIGKILL)
        await self._until_role(replica, "master", 30.0)
        await asyncio.sleep(down_s)
        master.spawn()
        await master.wait_ready_async(30.0)
        return f":{master.port} crashed (caught up), :{replica.port} promoted"

    async def migrate(self, key: str) -> str:
        """Move ``key``'s slot to the next master."""
        slot = int(await self._ask(self.servers[0], "CLUSTER", "KEYSLOT", key))
        masters = await self.masters()
        source = await self._owner(slot, masters)
        target = masters[(masters.index(source) + 1) % len(masters)]
        source_id, target_id = await self.node_id(source), await self.node_id(target)
        await self._ask(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await self._ask(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while keys := await self._ask(source, "CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH):
            await self._ask(
                source, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys,
                timeout_s=10.0,
            )  # fmt: skip
            moved += len(keys)
        for server in [target, source, *[m for m in masters if m not in (source, target)]]:
            await self._ask(server, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return f"slot {slot} ({moved} keys) :{source.port} -> :{target.port}"

    async def heal(self) -> list[str]:
        restarted = []
        for server in self.servers:
            if not server.alive:
                server.spawn()
                await server.wait_ready_async(30.0)
                restarted.append(server.name)
        return restarted

    # --- waiting ------------------------------------------------------------------------------
    async def _owner(self, slot: int, masters: list[RedisServer]) -> RedisServer:
        for start, end, owner, *_ in await self._ask(masters[0], "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return next(m for m in masters if m.port == int(owner[1]))
        raise LookupError(f"no master serves slot {slot}")

    async def _until_role(self, server: RedisServer, role: str, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (await self.role(server))[0] != role:
            if loop.time() > deadline:
                raise TimeoutError(f":{server.port} did not become {role} in {timeout_s:g} s")
            await asyncio.sleep(0.05)

    async def _until_synced(self, master: RedisServer, replica: RedisServer) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SYNC_TIMEOUT_S
        while True:
            master_offset = int((await self.role(master))[1])
            replica_role = await self.role(replica)
            if replica_role[0] == "slave" and int(replica_role[4]) >= master_offset:
                return
            if loop.time() > deadline:
                raise TimeoutError(f":{replica.port} did not catch up with :{master.port}")
            await asyncio.sleep(0.02)
