"""The ``gateway`` process: bad configuration stops it with one clear line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.ports import REPO_ROOT


def run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run(
        [sys.executable, "-m", "gateway"],
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
