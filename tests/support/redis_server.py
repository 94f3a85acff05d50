"""Private ``redis-server`` processes on free ports: single servers, Redis Cluster (with or
without replicas) and Redis Sentinel.

The shared Redis on 6379 is never touched. Each server has its own directory, so an AOF
server stopped and started again (same port, same directory) comes back with its data.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.ports import free_port, wait_until
from tests.support.processes import ManagedProcess, ProcessStartError, child_env

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


def _answers_ping(port: int) -> bool:
    """Whether a Redis on ``port`` answers PING with anything but LOADING. A NOAUTH error
    counts as up: servers with ACL users are ready before anyone authenticates."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(256)
    except OSError:
        return False
    return bool(reply) and not reply.startswith(b"-LOADING")


class RedisServer(ManagedProcess):
    """One ``redis-server`` bound to 127.0.0.1 on a free port, data in ``directory``.

    ``appendonly=True`` turns AOF on with ``appendfsync always``, so data written before a
    ``stop()``/``kill()`` is there after ``start()``. ``extra_args`` go to the command line
    (e.g. ``["--user", "app", "on", ">pw", "~*", "+@all"]`` or ``["--aclfile", path]``).
    ``client()`` gives a sync ``redis.Redis`` (bytes replies); clients are closed at ``stop()``.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.directory = directory
        self.appendonly = appendonly
        self._clients: list[redis.Redis] = []
        self._admin: redis.Redis | None = None
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "yes" if appendonly else "no",
            "--daemonize", "no",
            "--logfile", "",  # stdout, which ManagedProcess sends to a file
        ]  # fmt: skip
        if appendonly:
            argv += ["--appendfsync", "always"]
        argv += list(extra_args)
        super().__init__(name=f"redis-{self.port}", argv=argv, env=child_env(), log_dir=directory)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        return self.alive and _answers_ping(self.port)

    def start(self, wait: bool = True) -> None:
        """Start (again) on the same port and directory; by default wait until PING answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        super().start(wait=wait)

    def restart(self) -> None:
        """Graceful stop (SIGTERM: AOF is flushed) then start on the same port."""
        self.stop()
        self.start()

    def client(self, **kwargs: Any) -> redis.Redis:
        """A sync client on db 0 (``decode_responses=False`` unless given). It retries a
        failed command once, at once: redis-py's default backoff would make every "server is
        down" assertion take seconds."""
        kwargs.setdefault("decode_responses", False)
        kwargs.setdefault("socket_timeout", 5)
        kwargs.setdefault("retry", Retry(NoBackoff(), 1))
        client = redis.Redis(host="127.0.0.1", port=self.port, **kwargs)
        self._clients.append(client)
        return client

    def admin(self) -> redis.Redis:
        """One cached client for the helpers' own commands (not for tests to close)."""
        if self._admin is None:
            self._admin = self.client()
        return self._admin

    def stop(self, grace_s: float = 5.0) -> int | None:
        self._close_clients()
        return super().stop(grace_s)

    def kill(self) -> None:
        self._close_clients()
        super().kill()

    def _close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self._admin = None


class RedisCluster:
    """A Redis Cluster of local ``redis-server`` processes: ``masters`` masters, each with
    ``replicas`` replicas (``redis-cli --cluster create``).

    ``url`` points at the first node; ``ports`` lists all. Roles change when a test fails a
    master over: ``masters()`` / ``replicas()`` ask the live nodes. ``keyslot_node(key)`` is
    the port of the master that owns the key's slot. ``flush()`` restarts any node that died
    (it comes back from its ``nodes.conf``, a killed master as a replica of its successor),
    waits for the cluster and empties every master.
    """

    def __init__(
        self,
        directory: Path,
        masters: int = 3,
        replicas: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.replicas_per_master = replicas
        self.nodes: list[RedisServer] = []
        for _ in range(masters * (1 + replicas)):
            port = free_port()
            cluster_args = {
                "--cluster-enabled": "yes",
                "--cluster-config-file": "nodes.conf",
                "--cluster-node-timeout": "3000",
                "--cluster-port": str(free_port()),  # the bus port, else port + 10000
            }
            if replicas:  # a replica (re)syncs at once, not after the default 5 s delay
                cluster_args["--repl-diskless-sync-delay"] = "0"
            args = [part for pair in cluster_args.items() for part in pair] + list(extra_args)
            self.nodes.append(RedisServer(directory / str(port), port=port, extra_args=args))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    @property
    def cluster_url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        try:
            self._create()
        except BaseException:
            self.stop()
            raise

    def _create(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create"]
            + [f"127.0.0.1:{port}" for port in self.ports]
            + ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            raise ProcessStartError(f"redis-cli --cluster create failed:\n{created.stdout}")
        self.wait_ok()

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        """Until every node reports ``cluster_state:ok``, knows all the others, and every
        replica's link to its master is up."""
        wait_until(self._all_ok, timeout_s, "cluster_state:ok on every node")

    def _all_ok(self) -> bool:
        synced = 0
        for node in self.nodes:
            try:
                info = _text(node.admin().execute_command("CLUSTER", "INFO"))
                replication = node.admin().info("replication")
            except redis.RedisError:
                return False
            if "cluster_state:ok" not in info:
                return False
            if f"cluster_known_nodes:{len(self.nodes)}" not in info:
                return False
            if replication["role"] == "slave":
                if replication.get("master_link_status") != "up":
                    return False
                synced += 1
        replicas = len(self.nodes) - len(self.nodes) // (1 + self.replicas_per_master)
        return synced == replicas and all(self._sees_replicas(n, replicas) for n in self.nodes)

    @staticmethod
    def _sees_replicas(node: RedisServer, replicas: int) -> bool:
        """Whether ``node`` knows every replica as one, with no node failing (a manual
        failover needs masters and replicas to agree)."""
        lines = _text(node.admin().execute_command("CLUSTER", "NODES")).splitlines()
        flags = [set(line.split()[2].split(",")) for line in lines if line.strip()]
        seen = sum(1 for f in flags if "slave" in f)
        return seen == replicas and not any(f & {"fail", "fail?", "handshake"} for f in flags)

    def failover(self, replica: RedisServer, timeout_s: float = 30.0) -> float:
        """``CLUSTER FAILOVER`` on ``replica`` until it is a master (a request made while
        the cluster still converges times out after 5 s: then it is asked again). Returns the
        seconds from the first request to the promotion."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            replica.admin().execute_command("CLUSTER", "FAILOVER")
            asked = time.monotonic()
            while time.monotonic() - asked < 6:
                if self._role(replica) == "master":
                    return time.monotonic() - started
                time.sleep(0.02)
        raise TimeoutError(f"{replica.port} was not promoted within {timeout_s:g} s")

    def _role(self, node: RedisServer) -> str:
        try:
            return _text(node.admin().execute_command("ROLE")[0])
        except redis.RedisError:
            return "down"

    def masters(self) -> list[RedisServer]:
        """The live nodes that are masters now."""
        return [node for node in self.nodes if node.alive and self._role(node) == "master"]

    def replicas(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.alive and self._role(node) == "slave"]

    def node(self, port: int) -> RedisServer:
        [server] = [n for n in self.nodes if n.port == port]
        return server

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A live replica of ``master`` (by ROLE)."""
        for node in self.replicas():
            role = node.admin().execute_command("ROLE")
            if int(role[2]) == master.port:
                return node
        raise LookupError(f"no live replica of {master.port}")

    def flush(self) -> None:
        """Restart dead nodes, wait for the cluster, then FLUSHALL every master."""
        for node in self.nodes:
            if not node.alive:
                node.start()
        self.wait_ok()
        for node in self.masters():
            node.admin().flushall()
        for node in self.nodes:
            node.admin().script_flush()
        if self.replicas_per_master:
            wait_until(self._replicas_empty, 10, "replicas to apply FLUSHALL")

    def _replicas_empty(self) -> bool:
        return all(node.admin().dbsize() == 0 for node in self.replicas())

    def _live_admin(self) -> redis.Redis:
        return next(node for node in self.nodes if node.alive).admin()

    def keyslot(self, key: str | bytes) -> int:
        return int(self._live_admin().execute_command("CLUSTER", "KEYSLOT", key))

    def keyslot_node(self, key: str | bytes) -> int:
        """The port of the master that serves ``key`` (CLUSTER KEYSLOT + CLUSTER SLOTS)."""
        client = self._live_admin()
        slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
        for start, end, master, *_replicas in client.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(f"no master serves slot {slot}")

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A sync cluster client (the caller closes it)."""
        kwargs.setdefault("decode_responses", False)
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.ports[0], **kwargs)

    def stop(self) -> None:
        for node in self.nodes:
            node.term()
        for node in self.nodes:
            node.stop()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Sentinel(ManagedProcess):
    """One ``redis-server --sentinel`` watching ``service`` (its config file is its own: a
    sentinel rewrites it)."""

    def __init__(self, directory: Path, master_port: int, service: str, quorum: int = 2) -> None:
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "sentinel.conf"
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {service} 1000\n"
            f"sentinel failover-timeout {service} 5000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        argv = [REDIS_SERVER, str(conf), "--sentinel", "--logfile", "", "--daemonize", "no"]
        super().__init__(f"sentinel-{self.port}", argv, env=child_env(), log_dir=directory)

    def ready(self) -> bool:
        return self.alive and _answers_ping(self.port)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


class RedisSentinels:
    """Redis Sentinel: one master, one replica, three sentinels (quorum 2, master down after
    1 s), all local processes. ``url`` is the ``redis+sentinel://`` URL; ``master()`` asks the
    sentinels which server is the master now; ``heal()`` restarts what a test killed (an old
    master comes back and the sentinels make it a replica)."""

    SERVICE = "gwmaster"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        first = RedisServer(directory / "redis-a", extra_args=fast_sync)
        second = RedisServer(
            directory / "redis-b",
            extra_args=[*fast_sync, "--replicaof", "127.0.0.1", str(first.port)],
        )
        self.servers = [first, second]
        self.sentinels = [
            Sentinel(directory / f"sentinel-{i}", first.port, self.SERVICE) for i in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.SERVICE}"

    def start(self) -> None:
        try:
            for server in self.servers:
                server.start()
            for sentinel in self.sentinels:
                sentinel.start(wait=False)
            for sentinel in self.sentinels:
                sentinel.wait_ready()
            self.wait_settled()
        except BaseException:
            self.stop()
            raise

    def wait_settled(self, timeout_s: float = 30.0) -> None:
        """Until every sentinel names the same live master, knows the other sentinels and a
        replica in sync, and every data server is up with its replication link up."""
        wait_until(self._settled, timeout_s, "the sentinels to agree on a master with a replica")

    def _settled(self) -> bool:
        try:
            masters = set()
            for sentinel in self.sentinels:
                with sentinel.client() as client:
                    state = client.sentinel_master(self.SERVICE)
                masters.add(int(state["port"]))
                if int(state["num-other-sentinels"]) != len(self.sentinels) - 1:
                    return False
                if int(state["num-slaves"]) < 1 or state["is_sdown"] or state["is_odown"]:
                    return False
            if len(masters) != 1:
                return False
            [port] = masters
            for server in self.servers:
                role = _text(server.admin().execute_command("ROLE")[0])
                if server.port == port and role != "master":
                    return False
                if server.port != port:
                    replication = server.admin().info("replication")
                    if replication.get("master_link_status") != "up":
                        return False
        except (redis.RedisError, OSError, KeyError):
            return False
        return True

    def master(self) -> RedisServer:
        with self.sentinels[0].client() as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        [server] = [s for s in self.servers if s.port == int(port)]
        return server

    def heal(self) -> None:
        for process in [*self.servers, *self.sentinels]:
            if not process.alive:
                process.start()
        self.wait_settled()

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.term()
        for process in [*self.sentinels, *self.servers]:
            process.stop()
