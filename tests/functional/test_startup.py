"""The ``gateway`` process: bad configuration stops it with one clear line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.ports import REPO_ROOT


def run_gateway(env: dict[str, str], module: str = "gateway") -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    clean["PYTHONPATH"] = str(REPO_ROOT)  # this checkout's code, whatever is installed
    return subprocess.run(
        [sys.executable, "-m", module],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO_ROOT / "tests",  # no stray .env
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
