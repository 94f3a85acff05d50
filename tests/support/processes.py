"""Child processes the tests own: started with logs in files, stopped by pid, never leaked.

``ManagedProcess`` is the common part (spawn, term, kill, wait, logs). ``GatewayProcess`` runs
``python -m gateway`` and ``WorkerProcess`` runs ``python -m worker``; both wait until their
``/healthz`` answers 200. Neither imports the ``gateway`` package.

Every child gets ``PR_SET_PDEATHSIG`` (Linux): if the pytest process dies without running its
teardown, the kernel sends the child SIGTERM. The signal follows the *thread* that spawned the
child, so start processes from the test's main thread (the ``astart`` helpers do), not from
``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from tests.support.ports import REPO_ROOT, free_port, http_status_or_none

READY_TIMEOUT_S = 15.0
STOP_GRACE_S = 3.0


class ProcessStartError(RuntimeError):
    """A child process did not become ready; the message carries its logs."""


def _pdeathsig_preexec() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


_PREEXEC = _pdeathsig_preexec()


def child_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment for a child: ours without any ``GATEWAY_*`` variable (a developer's
    shell must not leak into tests), the repo on ``PYTHONPATH``, then ``overrides``, where a
    ``None`` value removes the variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    extra = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{REPO_ROOT}{os.pathsep}{extra}" if extra else str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class ManagedProcess:
    """One child process, restartable, with stdout and stderr appended to files in ``log_dir``.

    ``start()`` spawns it, ``term()``/``kill()`` signal it, ``wait()`` returns the exit code
    (negative for a signal, like ``subprocess``), ``stop()`` is SIGTERM then SIGKILL after a
    grace period, ``logs()`` is everything it wrote so far.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_dir = log_dir
        self.cwd = cwd or log_dir
        self.stdout_path = log_dir / f"{name}.stdout.log"
        self.stderr_path = log_dir / f"{name}.stderr.log"
        self._proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle ------------------------------------------------------------------------
    def spawn(self) -> None:
        """Start the child without waiting for it to be ready."""
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.stdout_path.open("ab") as out, self.stderr_path.open("ab") as err:
            self._proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                preexec_fn=_PREEXEC,
            )

    def ready(self) -> bool:
        """Whether the child serves; subclasses override. The default: it is running."""
        return self.alive

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until ``ready()``; raise ``ProcessStartError`` with the logs when the child
        exits first or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.alive:
                self._fail(f"exited with code {self.returncode} before it was ready")
            if time.monotonic() >= deadline:
                self._fail(f"was not ready within {timeout_s:g} s")
            time.sleep(0.05)

    async def wait_ready_async(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """``wait_ready`` for async tests: the event loop keeps running while we poll."""
        deadline = time.monotonic() + timeout_s
        while not await asyncio.to_thread(self.ready):
            if not self.alive:
                self._fail(f"exited with code {self.returncode} before it was ready")
            if time.monotonic() >= deadline:
                self._fail(f"was not ready within {timeout_s:g} s")
            await asyncio.sleep(0.05)

    def start(self, wait: bool = True) -> None:
        """Spawn, then (by default) wait until ready."""
        self.spawn()
        if wait:
            self.wait_ready()

    def term(self) -> None:
        """Send SIGTERM (the graceful stop)."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL and reap the child (a crash)."""
        self._signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the child to exit and return its exit code (``-N`` for signal N)."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.wait(timeout)

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to ``grace_s``, then SIGKILL. Safe to call on a dead process."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self.term()
            try:
                self._proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._proc.returncode

    # --- state ----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stdout(self) -> str:
        return _read(self.stdout_path)

    def stderr(self) -> str:
        return _read(self.stderr_path)

    def logs(self) -> str:
        """stdout then stderr, as text (each file in the order the child wrote it)."""
        return self.stdout() + self.stderr()

    # --- helpers --------------------------------------------------------------------------
    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)

    def _fail(self, why: str) -> None:
        self.stop(grace_s=1.0)
        raise ProcessStartError(
            f"{self.name} {why}\n$ {' '.join(self.argv)}\n"
            f"--- stdout ---\n{self.stdout()}--- stderr ---\n{self.stderr()}"
        )

    def __repr__(self) -> str:
        state = f"pid {self._proc.pid}" if self._proc else "not started"
        return f"<{type(self).__name__} {self.name} {state}>"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


class _HealthzProcess(ManagedProcess):
    """A ``python -m <module>`` child that is ready when ``GET /healthz`` on ``port`` is 200."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        return self.alive and http_status_or_none(f"{self.http_url}/healthz") == 200


class GatewayProcess(_HealthzProcess):
    """``python -m gateway`` on ``127.0.0.1:<port>``.

    The environment is ours minus any ``GATEWAY_*`` variable, then ``GATEWAY_HOST``,
    ``GATEWAY_PORT``, ``GATEWAY_NODE_ID`` and ``GATEWAY_DJANGO_BASE_URL``, then ``env``
    (which wins; a ``None`` value removes a variable). The working directory is the log
    directory, so no stray ``.env`` file is read. ``start()`` after a stop reuses the port:
    that is a node restart.
    """

    def __init__(
        self,
        log_dir: Path,
        django_base_url: str,
        env: Mapping[str, str | None] | None = None,
        port: int | None = None,
        node_id: str | None = None,
        module: str = "gateway",
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.node_id = node_id or f"node-{self.port}"
        base: dict[str, str | None] = {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_NODE_ID": self.node_id,
            "GATEWAY_DJANGO_BASE_URL": django_base_url,
        }
        super().__init__(
            name=self.node_id,
            argv=[sys.executable, "-m", module, *args],
            env=child_env({**base, **(env or {})}),
            log_dir=log_dir,
        )

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


class WorkerProcess(_HealthzProcess):
    """``python -m worker`` with ``/healthz`` and ``/metrics`` on ``GATEWAY_WORKER_PORT``.

    Environment as for ``GatewayProcess``, with ``GATEWAY_WORKER_HOST``,
    ``GATEWAY_WORKER_PORT`` and ``GATEWAY_WORKER_ID`` instead of the node variables.
    """

    def __init__(
        self,
        log_dir: Path,
        django_base_url: str,
        env: Mapping[str, str | None] | None = None,
        port: int | None = None,
        worker_id: str | None = None,
        module: str = "worker",
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.worker_id = worker_id or f"worker-{self.port}"
        base: dict[str, str | None] = {
            "GATEWAY_WORKER_HOST": "127.0.0.1",
            "GATEWAY_WORKER_PORT": str(self.port),
            "GATEWAY_WORKER_ID": self.worker_id,
            "GATEWAY_DJANGO_BASE_URL": django_base_url,
        }
        super().__init__(
            name=self.worker_id,
            argv=[sys.executable, "-m", module, *args],
            env=child_env({**base, **(env or {})}),
            log_dir=log_dir,
        )


P = TypeVar("P", bound=ManagedProcess)


class ProcessFactory(Generic[P]):
    """Makes processes of one kind for one test and stops them all at teardown.

    ``factory(env, **kw)`` builds, starts and waits (``wait=False`` returns right after the
    spawn, e.g. to assert on a startup failure). ``await factory.astart(env, **kw)`` does the
    same without blocking the event loop while waiting.
    """

    def __init__(self, make: Callable[..., P]) -> None:
        self._make = make
        self.started: list[P] = []

    def __call__(
        self, env: Mapping[str, str | None] | None = None, *, wait: bool = True, **kw: object
    ) -> P:
        proc = self._make(env=env, **kw)
        self.started.append(proc)
        proc.start(wait=wait)
        return proc

    async def astart(self, env: Mapping[str, str | None] | None = None, **kw: object) -> P:
        proc = self._make(env=env, **kw)
        self.started.append(proc)
        proc.spawn()
        await proc.wait_ready_async()
        return proc

    def stop_all(self) -> None:
        """SIGTERM every live process first, so their drains overlap, then reap each."""
        for proc in self.started:
            proc.term()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.started:
            proc.stop(grace_s=max(0.1, deadline - time.monotonic()))
