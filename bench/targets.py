"""The three systems under test, each started from nothing on free ports in a temp directory.

``start_target(name, ...)`` returns a ``Stack``: the WebSocket URLs of its server processes,
their pids (whose CPU and RSS are measured), the helper processes (Redis, Django, worker)
measured apart, how to publish to it, and the exact commands used. ``Stack.stop()`` stops all.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import (
    BENCH_DIR,
    REPO_ROOT,
    HttpServerProcess,
    channels_server,
    reference_server,
    shell_command,
    socketio_server,
)
from tests.support.django_site import DjangoSite
from tests.support.processes import (
    GatewayProcess,
    ManagedProcess,
    ProcessStartError,
    WorkerProcess,
    child_env,
)
from tests.support.redis_server import RedisServer

TARGETS = ("reference", "gateway", "channels", "socketio")
CHANNELS_PACKAGES = ("channels>=4,<5", "channels_redis>=4,<5", "uvicorn>=0.30")
DEFAULT_CHANNELS_ENV = Path.home() / ".cache" / "gateway-bench" / "channels-venv"

# Limits of the gateway that a benchmark from one address would hit: every connection comes
# from 127.0.0.1, so the per-IP cap goes up; nothing else is changed from the defaults.
# Every client comes from 127.0.0.1, and thousands of fresh users verify their tokens with the
# small test Django site at once: give that site time instead of timing out and tripping the
# circuit breaker (a real deployment's clients would retry after 1013 with backoff).
GATEWAY_BENCH_ENV = {
    "GATEWAY_MAX_CONNECTIONS_PER_IP": "1000000",
    "GATEWAY_DJANGO_TIMEOUT": "30",
    "GATEWAY_DJANGO_BREAKER_FAILURES": "1000",
}


class TargetUnavailable(RuntimeError):
    """The target cannot be run here (e.g. its packages failed to install)."""


@dataclass
class Stack:
    name: str
    protocol: str  # the load generator's adapter
    urls: list[str]
    server_pids: list[int]
    aux_pids: dict[str, int]
    redis_url: str
    publish_methods: list[str]  # publisher.py methods this target takes, the first is the main
    python: str  # the interpreter publisher.py runs with
    publish_env: dict[str, str]
    publisher: list[str] = field(default_factory=list)  # argv of the publisher (default: python)
    missing_methods: dict[str, str] = field(default_factory=dict)  # method -> why not
    concurrent_method: str | None = None  # the publisher method with many in flight
    api_url: str | None = None
    api_key: str | None = None
    jwt_secret: str | None = None  # the gateway verifies HS256 JWTs signed with it locally
    commands: list[str] = field(default_factory=list)
    processes: list[ManagedProcess] = field(default_factory=list)

    def publish_config(self, method: str | None = None, **kw: Any) -> dict[str, Any]:
        config: dict[str, Any] = {"method": method or self.publish_methods[0]}
        config["redis_url"] = self.redis_url
        if self.api_url:
            config.update(api_url=self.api_url, api_key=self.api_key)
        return {**config, **kw}

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def start_target(
    name: str,
    log_dir: Path,
    nodes: int,
    *,
    gateway_env: Mapping[str, str] | None = None,
    channels_python: str | None = None,
    channels_layer: str = "core",
) -> Stack:
    """Start ``name`` with ``nodes`` server processes; on any failure stop what was started."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[ManagedProcess] = []
    try:
        redis = _start(RedisServer(log_dir / "redis"), started)
        commands = [shell_command(redis.argv)]
        if name == "reference":
            return _reference(log_dir, nodes, redis, started, commands)
        if name == "gateway":
            return _gateway(log_dir, nodes, redis, started, commands, gateway_env or {})
        if name == "socketio":
            return _socketio(log_dir, nodes, redis, started, commands)
        if name == "channels":
            if channels_python is None:
                raise TargetUnavailable("channels: no interpreter with Channels installed")
            return _channels(
                log_dir, nodes, redis, started, commands, channels_python, channels_layer
            )
        raise ValueError(f"unknown target {name!r}; one of {TARGETS}")
    except BaseException:
        for proc in reversed(started):
            proc.stop()
        raise


def _start(proc: ManagedProcess, started: list[ManagedProcess]) -> Any:
    started.append(proc)
    proc.start()
    return proc


def _reference(
    log_dir: Path,
    nodes: int,
    redis: RedisServer,
    started: list[ManagedProcess],
    commands: list[str],
) -> Stack:
    servers = [_start(reference_server(log_dir, redis.url), started) for _ in range(nodes)]
    return Stack(
        name="reference",
        protocol="reference",
        urls=[s.ws_url for s in servers],
        server_pids=[s.pid for s in servers],
        aux_pids={"redis": redis.pid},
        redis_url=redis.url,
        publish_methods=["redis-publish"],
        concurrent_method="redis-publish-async",
        python=sys.executable,
        publish_env=child_env(),
        commands=commands + [shell_command(s.argv) for s in servers],
        processes=started,
    )


def _gateway(
    log_dir: Path,
    nodes: int,
    redis: RedisServer,
    started: list[ManagedProcess],
    commands: list[str],
    extra_env: Mapping[str, str],
) -> Stack:
    django = _start(DjangoSite(log_dir / "django"), started)
    commands.append(shell_command(django.argv, django.env))
    api_key = secrets.token_urlsafe(24)
    jwt_secret = secrets.token_urlsafe(32)
    env: dict[str, str | None] = {
        "GATEWAY_REDIS_URL": redis.url,
        "GATEWAY_PUBLISH_API_KEY": api_key,
        "GATEWAY_JWT_SECRET": jwt_secret,  # only the connect_auth scenario sends JWTs
        **GATEWAY_BENCH_ENV,
        **extra_env,
    }
    servers = [
        _start(GatewayProcess(log_dir / "gateway", django.base_url, env=env), started)
        for _ in range(nodes)
    ]
    commands += [shell_command(s.argv, s.env) for s in servers]
    aux = {"redis": redis.pid, "django": django.pid}
    methods, missing = ["publisher", "api", "ingest"], {}
    worker = WorkerProcess(log_dir / "worker", django.base_url, env=env)
    try:
        _start(worker, started)
        aux["worker"] = worker.pid
    except ProcessStartError as exc:  # the gateway is still measured; ingest is reported failed
        methods.remove("ingest")
        missing["ingest"] = "the worker did not start: " + str(exc).splitlines()[-1][:300]
    commands.append(shell_command(worker.argv, worker.env))
    return Stack(
        name="gateway",
        protocol="gateway",
        urls=[s.ws_url for s in servers],
        server_pids=[s.pid for s in servers],
        aux_pids=aux,
        redis_url=redis.url,
        publish_methods=methods,
        missing_methods=missing,
        concurrent_method="async-publisher",
        python=sys.executable,
        publish_env=child_env(),
        api_url=f"{servers[0].http_url}/api/publish",
        api_key=api_key,
        jwt_secret=jwt_secret,
        commands=commands,
        processes=started,
    )


def _channels(
    log_dir: Path,
    nodes: int,
    redis: RedisServer,
    started: list[ManagedProcess],
    commands: list[str],
    python: str,
    layer: str,
) -> Stack:
    servers: list[HttpServerProcess] = [
        _start(channels_server(log_dir, python, redis.url, layer), started) for _ in range(nodes)
    ]
    env = child_env(
        {
            "DJANGO_SETTINGS_MODULE": "bench.channels_app.settings",
            "BENCH_REDIS_URL": redis.url,
            "BENCH_CHANNEL_LAYER": layer,
        }
    )
    return Stack(
        name="channels",
        protocol="channels",
        urls=[s.ws_url for s in servers],
        server_pids=[s.pid for s in servers],
        aux_pids={"redis": redis.pid},
        redis_url=redis.url,
        publish_methods=["channels"],
        python=python,
        publish_env=env,
        commands=commands + [shell_command(s.argv, s.env) for s in servers],
        processes=started,
    )


def _socketio(
    log_dir: Path,
    nodes: int,
    redis: RedisServer,
    started: list[ManagedProcess],
    commands: list[str],
) -> Stack:
    servers = [_start(socketio_server(log_dir, redis.url), started) for _ in range(nodes)]
    return Stack(
        name="socketio",
        protocol="socketio",
        urls=[f"ws://127.0.0.1:{s.port}/socket.io/?EIO=4&transport=websocket" for s in servers],
        server_pids=[s.pid for s in servers],
        aux_pids={"redis": redis.pid},
        redis_url=redis.url,
        publish_methods=["sio-emitter"],
        concurrent_method="sio-emitter",
        python=sys.executable,
        publish_env=child_env(),
        publisher=["node", str(BENCH_DIR / "sio_publisher.mjs")],
        commands=commands + [shell_command(s.argv) for s in servers],
        processes=started,
    )


# --- Django Channels, installed on demand --------------------------------------------------------
def ensure_channels(env_dir: Path, log: Path) -> str:
    """A Python with Channels, channels_redis and uvicorn: a venv at ``env_dir`` that sees the
    system packages (aiohttp, redis, uvloop, Django); created and filled on first use. Returns
    its interpreter; raises ``TargetUnavailable`` with pip's output when the install fails."""
    python = env_dir / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], log)
    probe = [str(python), "-c", "import channels, channels_redis, uvicorn"]
    if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
        _run([str(python), "-m", "pip", "install", "--quiet", *CHANNELS_PACKAGES], log)
    return str(python)


def _run(argv: Sequence[str], log: Path) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise TargetUnavailable(f"`{' '.join(argv)}` failed: " + " / ".join(tail))


# --- versions -------------------------------------------------------------------------------------
def python_versions(python: str, packages: Sequence[str]) -> dict[str, str]:
    """``{package: version}`` as seen by ``python`` (``"not installed"`` when missing)."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: out[name] = 'not installed'\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [python, "-c", code, *packages], capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        return {name: "unknown" for name in packages}
    result: dict[str, str] = json.loads(done.stdout)
    return result


def tool_version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


def ws_version(package_name: str = "ws") -> str:
    package = BENCH_DIR / "node_modules" / package_name / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "not installed"


def git_revision() -> str:
    head = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode != 0:
        return "unknown"
    changed = [line[3:] for line in dirty.stdout.splitlines() if line.strip()]
    if not changed:
        return head.stdout.strip()
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return f"{head.stdout.strip()} (with uncommitted changes to {shown})"


def machine_info() -> dict[str, str]:
    info = {"cores": str(os.cpu_count())}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            info["cpu"] = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    uname = os.uname()
    info["kernel"] = f"{uname.sysname} {uname.release} {uname.machine}"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return info
