"""Private ``redis-server`` processes on free ports: single servers and a 3-master cluster.

The shared Redis on 6379 is never touched. Each server has its own directory, so an AOF
server stopped and started again (same port, same directory) comes back with its data.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
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
    """A Redis Cluster of ``masters`` local ``redis-server`` processes, no replicas.

    ``url`` points at the first master; ``ports`` lists all; ``keyslot_node(key)`` is the
    port of the master that owns the key's slot. ``flush()`` empties every master and
    restarts any that died (a dead master comes back with its slots from ``nodes.conf``).
    """

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.directory = directory
        self.nodes: list[RedisServer] = []
        for _ in range(masters):
            port = free_port()
            cluster_args = {
                "--cluster-enabled": "yes",
                "--cluster-config-file": "nodes.conf",
                "--cluster-node-timeout": "3000",
                "--cluster-port": str(free_port()),  # the bus port, else port + 10000
            }
            args = [part for pair in cluster_args.items() for part in pair]
            self.nodes.append(RedisServer(directory / str(port), port=port, extra_args=args))

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            node.wait_ready()
        created = subprocess.run(
            [REDIS_CLI, "--cluster", "create"]
            + [f"127.0.0.1:{port}" for port in self.ports]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if created.returncode != 0:
            self.stop()
            raise ProcessStartError(f"redis-cli --cluster create failed:\n{created.stdout}")
        self.wait_ok()

    def wait_ok(self, timeout_s: float = 20.0) -> None:
        """Until every master reports ``cluster_state:ok`` and knows all the others."""
        wait_until(self._all_ok, timeout_s, "cluster_state:ok on every master")

    def _all_ok(self) -> bool:
        for node in self.nodes:
            try:
                info = node.admin().execute_command("CLUSTER", "INFO")
            except redis.RedisError:
                return False
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
            if f"cluster_known_nodes:{len(self.nodes)}" not in text:
                return False
        return True

    def flush(self) -> None:
        """Restart dead masters, wait for the cluster, then FLUSHALL every master."""
        dead = [node for node in self.nodes if not node.alive]
        for node in dead:
            node.start()
        self.wait_ok()
        for node in self.nodes:
            node.admin().flushall()
            node.admin().script_flush()

    def keyslot_node(self, key: str | bytes) -> int:
        """The port of the master that serves ``key`` (CLUSTER KEYSLOT + CLUSTER SLOTS)."""
        client = self.nodes[0].admin()
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
