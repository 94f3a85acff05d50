"""The ``gateway`` process: bad configuration stops it with one clear line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.support.ports import REPO_ROOT
from tests.support.processes import child_env


def run_gateway(env: dict[str, str], module: str = "gateway") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module],
        env=child_env(env),  # this checkout on PYTHONPATH, whatever is installed
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO_ROOT / "deploy",  # no stray .env, and no tests/worker to shadow `worker`
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"GATEWAY_PORT": "abc"}, "GATEWAY_PORT"),
        ({"GATEWAY_REDIS_URL": "http://nope"}, "GATEWAY_REDIS_URL"),
        ({"GATEWAY_REDIS_URL": "redis://user:hunter2@host:12x4/0"}, "GATEWAY_REDIS_URL"),
        ({"GATEWAY_DJANGO_AUTH_SCHEME": "Basic"}, "GATEWAY_DJANGO_AUTH_SCHEME"),
        ({"GATEWAY_LOG_FORMAT": "xml"}, "GATEWAY_LOG_FORMAT"),
        ({"GATEWAY_MAX_MESSAGE_BYTES": "-1"}, "GATEWAY_MAX_MESSAGE_BYTES"),
        ({"GATEWAY_HANDSHAKE_TIMEOUT_S": "0"}, "GATEWAY_HANDSHAKE_TIMEOUT_S"),
        ({"GATEWAY_DJANGO_BASE_URL": "http://u:hunter2/x@django/api/"}, "GATEWAY_DJANGO_BASE_URL"),
    ],
)
def test_bad_value_stops_with_one_line(env: dict[str, str], names: str) -> None:
    result = run_gateway(env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_gateway({"GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1"})
    assert result.returncode == 2
    assert "GATEWAY_PORT" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["gateway", "worker"])
@pytest.mark.parametrize(
    "url", ["http://admin:hunter2@django:8000/api/v1/", "https://hunter2@django/api/v1/"]
)
def test_credentials_in_the_django_url_are_refused_at_startup(module: str, url: str) -> None:
    """Issue 18 item 10: credentials in GATEWAY_DJANGO_BASE_URL were logged at INFO and made
    every authentication fail with 1011 (each call to Django carries the user's own
    Authorization header, which URL credentials cannot be sent with). Refused at startup."""
    result = run_gateway({"GATEWAY_DJANGO_BASE_URL": url}, module)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "GATEWAY_DJANGO_BASE_URL" in lines[0] and "must not contain credentials" in lines[0]
    assert "hunter2" not in result.stderr + result.stdout


def run_module(module: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO_ROOT / "deploy",  # no stray .env, and no tests/worker to shadow `worker`
    )


@pytest.mark.parametrize(("module", "prog"), [("gateway", "gateway"), ("worker", "gateway-worker")])
def test_help_and_version_print_and_exit_without_starting(module: str, prog: str) -> None:
    """Both answer at once and start nothing: the port they would use stays free, and a
    worker without GATEWAY_REDIS_URL (which it needs to start) still answers."""
    from gateway import __version__
    from tests.support.ports import free_port

    port = free_port()
    env = {"GATEWAY_PORT": str(port), "GATEWAY_WORKER_PORT": str(port)}
    version = run_module(module, "--version", env=env)
    assert (version.returncode, version.stdout.strip()) == (0, f"{prog} {__version__}")
    for flag in ("--help", "-h"):
        shown = run_module(module, flag, env=env)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: {prog} [-h] [--version]")
        assert "GATEWAY_REDIS_URL" in shown.stdout and "GATEWAY_WORKER_PORT" in shown.stdout
        assert shown.stderr == ""
    assert port_is_free(port)
    wrong = run_module(module, "--bogus")
    assert wrong.returncode == 2 and "unrecognized arguments: --bogus" in wrong.stderr


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_port_in_use_says_so_before_anything_starts() -> None:
    """One line naming the port, and no "node … ready" (nor anything else) logged before it."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_gateway({"GATEWAY_PORT": str(port), "GATEWAY_HOST": "127.0.0.1"})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} (GATEWAY_PORT)" in lines[0]
    assert "already in use" in lines[0]
    assert " ready (" not in result.stderr and "dashboard token" not in result.stderr


def test_redis_that_does_not_answer_is_named_in_one_line(tmp_path: Any) -> None:
    """GATEWAY_REDIS_URL pointing at nothing: one line names Redis by host and port and the
    variable (never the URL's password); no traceback, no "Unclosed client session". Where the
    node starts without Redis (CONTRACT v3 section 1) it answers /readyz 503 meanwhile; where
    it cannot, it exits 2 after that line."""
    import signal
    import time

    from tests.support.ports import free_port, http_status_or_none

    redis_port, port = free_port(), free_port()
    env = {
        "GATEWAY_REDIS_URL": f"redis://user:hunter2@127.0.0.1:{redis_port}/0",
        "GATEWAY_PORT": str(port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_DASHBOARD_TOKEN": "t" * 24,
    }
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"],
            env=child_env(env),
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    readyz = None
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        readyz = http_status_or_none(f"http://127.0.0.1:{port}/readyz")
        if readyz is not None:
            break
        time.sleep(0.2)
    if proc.poll() is None:  # started without Redis: not ready while Redis is away
        assert readyz == 503
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    else:
        assert proc.returncode == 2
    text = stderr.read_text()
    assert "Traceback" not in text and "Unclosed client session" not in text
    assert "hunter2" not in text
    problems = [line for line in text.splitlines() if " WARNING " in line or " ERROR " in line]
    naming = [line for line in problems if f"127.0.0.1:{redis_port}" in line]
    assert any("GATEWAY_REDIS_URL" in line for line in naming), text
