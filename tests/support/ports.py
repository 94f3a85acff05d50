"""Free ports, polling and a proxy-free HTTP GET: the small tools every process helper needs."""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# Ports handed out in this session. The OS may offer a port again once the probe socket is
# closed; remembering them keeps two helpers of one test run from racing for the same port.
_handed_out: set[int] = set()

# Never use the environment's proxies: every URL the tests fetch is on 127.0.0.1.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now and that no earlier call of this session returned."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found after 100 attempts")


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
) -> None:
    """Poll ``predicate`` until it returns true; raise ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def http_get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """GET ``url``: (status, body) for any HTTP answer, 4xx/5xx included; raises ``OSError``
    when nothing answers."""
    try:
        with _opener.open(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def http_status_or_none(url: str, timeout_s: float = 1.0) -> int | None:
    """The HTTP status of a GET, or ``None`` when the connection fails."""
    try:
        return http_get(url, timeout_s)[0]
    except (OSError, http.client.HTTPException):
        return None


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout_s: float,
    what: str,
    interval_s: float = 0.02,
) -> float:
    """``wait_until`` for async tests: poll ``predicate`` (sync or async) until it is true;
    fail naming ``what``. Returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(interval_s)
