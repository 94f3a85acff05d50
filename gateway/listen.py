"""Start-up failures a person must be able to read in one line: the port, and Redis.

A port in use is found before the app starts (so the log never says the node is ready first);
a Redis that does not answer while the node starts is named with its host and port only (never
the URL's credentials), without a traceback.
"""

from __future__ import annotations

import errno
import socket
from urllib.parse import urlparse

import redis.exceptions

from gateway.config import ConfigError, Settings

REDIS_FAILURES = (redis.exceptions.RedisError, OSError, TimeoutError)


def check_port_free(host: str, port: int) -> None:
    """Raise ``ConfigError`` when nothing could listen on ``host:port`` now. Binds and closes
    a socket per address the host resolves to, with SO_REUSEADDR as the server itself binds
    (a port in TIME_WAIT is free); port 0 (any free port) is always fine."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port} (GATEWAY_HOST): {exc}") from None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise ConfigError(_bind_message(host, port, exc)) from None


def _bind_message(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        why = "the port is already in use (another gateway?); choose another GATEWAY_PORT"
    else:
        why = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port} (GATEWAY_PORT): {why}"


def redis_location(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL, without credentials."""
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return parsed.path
    hosts = parsed.netloc.rpartition("@")[2]  # cluster URLs may list several host:port
    return hosts or "?"


def startup_failure(settings: Settings, exc: BaseException) -> ConfigError | None:
    """The one line for a start that failed because Redis did not answer, or ``None`` when
    the failure is something else (a bug: its traceback is worth seeing)."""
    if settings.redis_url is None or not isinstance(exc, REDIS_FAILURES):
        return None
    if isinstance(exc, TimeoutError) or not str(exc):
        why = "no answer in time"
    else:
        why = str(exc).splitlines()[0]
    return ConfigError(
        f"cannot reach Redis at {redis_location(settings.redis_url)} (GATEWAY_REDIS_URL): "
        f"{why}; start Redis or correct the URL"
    )
