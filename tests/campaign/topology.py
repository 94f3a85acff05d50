"""The processes of a campaign run: Redis (AOF always) — one server behind one fault proxy per
Redis client process, or a Redis Cluster of 3 masters + 3 replicas — the gateway nodes and the
worker. Django is the caller's (the session's test site, or the CLI's own).

Everything here is async-friendly: processes are spawned from the event loop's thread (so
``PR_SET_PDEATHSIG`` follows the test's main thread) and waited for without blocking the loop,
because the fault proxies run in the same loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import asyncio as aioredis

from tests.campaign.cluster import ClusterRedis
from tests.support.fault_proxy import FaultProxy
from tests.support.processes import GatewayProcess, ManagedProcess, ProcessStartError, WorkerProcess
from tests.support.redis_server import RedisServer

API_KEY = "campaign-publish-key"
DRAIN_S = 2.0
# a node must have exited this long after its drain: k8s/ gives it 45 s - 5 s preStop - 20 s drain
EXIT_MARGIN_S = 20.0
START_TIMEOUT_S = 30.0
PUBLISHER_PROXY = "publishers"
WORKER_PROXY = "worker"


@dataclass(frozen=True)
class Settings:
    nodes: int = 3
    history_size: int = 2000
    cluster: bool = False


async def wait_exit(proc: ManagedProcess, timeout_s: float) -> int | None:
    """Poll until the child exits; its exit code, or None if it still runs after the timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while proc.alive and loop.time() < deadline:
        await asyncio.sleep(0.05)
    return proc.returncode


async def start(proc: ManagedProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    proc.spawn()
    await proc.wait_ready_async(timeout_s)


class Topology:
    def __init__(self, run_dir: Path, django_base_url: str, settings: Settings) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.settings = settings
        self.django_base_url = django_base_url
        self.node_names = [f"node-{i + 1}" for i in range(settings.nodes)]
        self.redis: RedisServer | None = None
        self.cluster: ClusterRedis | None = None
        self.proxies: dict[str, FaultProxy] = {}
        if settings.cluster:
            self.cluster = ClusterRedis(run_dir / "redis-cluster")
        else:
            self.redis = RedisServer(
                run_dir / "redis", appendonly=True, extra_args=["--enable-debug-command", "yes"]
            )
            for name in [*self.node_names, WORKER_PROXY, PUBLISHER_PROXY]:
                self.proxies[name] = FaultProxy(name, self.redis.port)
        self.nodes: dict[str, GatewayProcess] = {}
        self.worker: WorkerProcess | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        if self.cluster is not None:
            self.cluster.start()  # blocking, before anything else runs in the loop
        if self.redis is not None:
            self.redis.directory.mkdir(parents=True, exist_ok=True)
            await start(self.redis)
        for proxy in self.proxies.values():
            await proxy.start()
        for name in self.node_names:
            self.nodes[name] = GatewayProcess(
                self.run_dir / "nodes", self.django_base_url, env=self._env(name), node_id=name
            )
        self.worker = WorkerProcess(
            self.run_dir / "worker",
            self.django_base_url,
            # a killed worker's entries are re-claimed after 5 s, not 30: bounded runs
            env={**self._env(WORKER_PROXY), "GATEWAY_INGEST_CLAIM_IDLE_S": "5"},
            worker_id="campaign-worker",
        )
        await asyncio.gather(*(start(p) for p in [*self.nodes.values(), self.worker]))

    def redis_url(self, name: str) -> str:
        """The URL the process ``name`` reaches Redis by (its proxy, or the cluster)."""
        if self.cluster is not None:
            return self.cluster.url
        return self.proxies[name].url

    def _env(self, name: str) -> dict[str, str | None]:
        return {
            "GATEWAY_REDIS_URL": self.redis_url(name),
            "GATEWAY_HISTORY_SIZE": str(self.settings.history_size),
            "GATEWAY_PUBLISH_API_KEY": API_KEY,
            "GATEWAY_DRAIN_SECONDS": str(DRAIN_S),
        }

    async def stop(self) -> None:
        processes: list[ManagedProcess] = [*self.nodes.values()]
        if self.worker is not None:
            processes.append(self.worker)
        for proc in processes:
            proc.term()
        for proc in processes:
            if await wait_exit(proc, DRAIN_S + 5) is None:
                proc.kill()
        for proxy in self.proxies.values():
            await proxy.close()
        if self.cluster is not None:
            self.cluster.stop()
        if self.redis is not None:
            self.redis.term()
            if await wait_exit(self.redis, 10) is None:
                self.redis.kill()

    # --- views --------------------------------------------------------------------------------
    @property
    def ws_urls(self) -> dict[str, str]:
        return {name: node.ws_url for name, node in self.nodes.items()}

    @property
    def http_urls(self) -> list[str]:
        return [node.http_url for node in self.nodes.values()]

    @property
    def publisher_url(self) -> str:
        return self.redis_url(PUBLISHER_PROXY)

    def redis_servers(self) -> list[RedisServer]:
        if self.cluster is not None:
            return self.cluster.servers
        return [self.redis] if self.redis is not None else []

    def processes(self) -> list[ManagedProcess]:
        found: list[ManagedProcess] = [*self.redis_servers(), *self.nodes.values()]
        if self.worker is not None:
            found.append(self.worker)
        return found

    def admin(self, timeout_s: float = 5.0) -> Any:
        """A direct client of Redis (not through a proxy) for the campaign's own commands."""
        if self.cluster is not None:
            return self.cluster.client()
        assert self.redis is not None
        return aioredis.Redis(
            host="127.0.0.1",
            port=self.redis.port,
            socket_timeout=timeout_s,
            socket_connect_timeout=3,
        )

    def publisher_client(self) -> Any:
        """A client for the ingest publisher: through its proxy, or of the cluster."""
        if self.cluster is not None:
            return self.cluster.client()
        return aioredis.Redis.from_url(
            self.publisher_url, socket_timeout=5, socket_connect_timeout=3
        )

    # --- faults on processes ------------------------------------------------------------------
    async def stop_node(self, name: str, sig: signal.Signals) -> int | None:
        """Signal the node and wait for its exit; its exit code (None: still running after
        the drain and a margin, then it is SIGKILLed)."""
        node = self.nodes[name]
        os.kill(node.pid, sig)
        code = await wait_exit(node, DRAIN_S + EXIT_MARGIN_S)
        if code is None:
            node.kill()
        return code

    async def start_node(self, name: str) -> None:
        await start(self.nodes[name])

    async def stop_worker(self, sig: signal.Signals) -> int | None:
        assert self.worker is not None
        os.kill(self.worker.pid, sig)
        code = await wait_exit(self.worker, 15)
        if code is None:
            self.worker.kill()
        return code

    async def start_worker(self) -> None:
        assert self.worker is not None
        await start(self.worker)

    async def stop_redis(self, sig: signal.Signals) -> None:
        assert self.redis is not None
        os.kill(self.redis.pid, sig)
        if await wait_exit(self.redis, 15) is None:
            self.redis.kill()

    async def start_redis(self) -> None:
        assert self.redis is not None
        await start(self.redis)

    async def heal(self) -> list[str]:
        """Everything back up and forwarding; returns what had to be restarted (and what
        could not be)."""
        restarted = []
        for proxy in self.proxies.values():
            proxy.heal()
            await proxy.listen()
        dead: list[ManagedProcess] = [p for p in self.processes() if not p.alive]
        for proc in dead:  # Redis first: the others need it
            try:
                await start(proc)
                restarted.append(proc.name)
            except ProcessStartError as exc:
                restarted.append(f"{proc.name} FAILED: {str(exc).splitlines()[0]}")
        return restarted


__all__ = ["API_KEY", "DRAIN_S", "EXIT_MARGIN_S", "ProcessStartError", "Settings", "Topology"]
