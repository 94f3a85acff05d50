"""Paths and child-process helpers of the harness.

The process classes come from ``tests/support`` (the same launchers the test suite uses for
redis-server, the Django test site, the gateway and the worker); this module adds the servers
only the benchmark starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.ports import REPO_ROOT, free_port, http_status_or_none
from tests.support.processes import ManagedProcess, child_env

BENCH_DIR = REPO_ROOT / "bench"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def preexec() -> None:
    """In the child: get SIGTERM if the harness dies, so no server outlives a crashed run."""
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class HttpServerProcess(ManagedProcess):
    """A server on ``127.0.0.1:<port>`` that is ready when ``GET /healthz`` answers 200."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        port: int,
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.port = port
        super().__init__(name, argv, child_env(env), log_dir, cwd=REPO_ROOT)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def ready(self) -> bool:
        return self.alive and http_status_or_none(f"http://127.0.0.1:{self.port}/healthz") == 200


def reference_server(log_dir: Path, redis_url: str) -> HttpServerProcess:
    port = free_port()
    argv = [
        sys.executable,
        str(BENCH_DIR / "reference_server.py"),
        "--port",
        str(port),
        "--redis-url",
        redis_url,
    ]
    return HttpServerProcess(f"reference-{port}", argv, log_dir, port)


def socketio_server(log_dir: Path, redis_url: str) -> HttpServerProcess:
    port = free_port()
    argv = [
        "node",
        str(BENCH_DIR / "sio_server.mjs"),
        "--port",
        str(port),
        "--redis-url",
        redis_url,
    ]
    return HttpServerProcess(f"socketio-{port}", argv, log_dir, port)


def channels_server(log_dir: Path, python: str, redis_url: str, layer: str) -> HttpServerProcess:
    port = free_port()
    argv = [
        python,
        "-m",
        "uvicorn",
        "bench.channels_app.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--ws",
        "websockets-sansio",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.channels_app.settings",
        "BENCH_REDIS_URL": redis_url,
        "BENCH_CHANNEL_LAYER": layer,
    }
    return HttpServerProcess(f"channels-{port}", argv, log_dir, port, env)


def shell_command(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """``argv`` as one line to paste in a shell, ``GATEWAY_*``/``BENCH_*`` variables first,
    secrets masked, paths made relative to the repository."""
    shown = []
    for key, value in sorted((env or {}).items()):
        if key.startswith(("GATEWAY_", "BENCH_", "DJANGO_SETTINGS")):
            masked = "<secret>" if any(w in key for w in ("KEY", "TOKEN", "SECRET")) else value
            shown.append(f"{key}={shlex.quote(masked)}")
    words = [shlex.quote(_relative(_masked_json(word))) for word in argv]
    if words and Path(argv[0]).name.startswith("python"):
        words[0] = "python" if argv[0] == sys.executable else words[0]
    return " ".join(shown + words)


def _masked_json(word: str) -> str:
    """A JSON config argument with its secrets (``api_key``, ``jwtSecret``, tokens) masked."""
    if not word.startswith("{"):
        return word
    try:
        config = json.loads(word)
    except ValueError:
        return word
    if not isinstance(config, dict):
        return word
    for key, value in config.items():
        if value and any(w in key.lower() for w in ("key", "secret", "token")):
            config[key] = "<secret>"
    return json.dumps(config)


def _relative(word: str) -> str:
    root = str(REPO_ROOT) + "/"
    return word[len(root) :] if word.startswith(root) else word
