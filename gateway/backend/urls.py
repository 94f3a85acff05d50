"""``GATEWAY_REDIS_URL``: the three deployments it names, parsed once, checked with clear errors.

- one server: ``redis://[user:password@]host:port[/db]``, ``rediss://…`` (TLS), ``unix:///path``;
- Redis Cluster: ``redis+cluster://[user:password@]host:port[,host:port…]`` (any nodes as seeds;
  ``rediss+cluster://`` for TLS);
- Redis Sentinel: ``redis+sentinel://[user:password@]host:port[,host:port…]/<service-name>[/db]``:
  the hosts are sentinels; the current master of ``service-name`` is asked of them and followed.
  The credentials are the data nodes'; sentinels that want their own password take
  ``?sentinel_password=…`` (and ``sentinel_username``).

Imports nothing of redis-py, so ``gateway.config`` can validate without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

Kind = Literal["single", "cluster", "sentinel"]

SINGLE_SCHEMES = {"redis", "rediss", "unix"}
CLUSTER_SCHEMES = {"redis+cluster", "rediss+cluster"}
SENTINEL_SCHEMES = {"redis+sentinel"}
FORMS = "a redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL"


@dataclass(frozen=True, slots=True)
class RedisUrl:
    kind: Kind
    scheme: str
    hosts: list[tuple[str, int]] = field(default_factory=list)
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False
    service: str | None = None  # Sentinel: the monitored master's name
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    unix_path: str | None = None

    def single_url(self, host: str | None = None, port: int | None = None) -> str:
        """A plain ``redis://`` URL for one server of this deployment (the first host unless
        another is given), with the same credentials and database."""
        if self.unix_path:
            return f"unix://{self._userinfo()}{self.unix_path}?db={self.db}"
        h, p = (host, port) if host is not None and port is not None else self.hosts[0]
        shown = f"[{h}]" if ":" in h else h
        return f"{'rediss' if self.tls else 'redis'}://{self._userinfo()}{shown}:{p}/{self.db}"

    def _userinfo(self) -> str:
        if self.password is None and self.username is None:
            return ""
        user = quote(self.username or "", safe="")
        password = quote(self.password or "", safe="")
        return f"{user}:{password}@" if self.password is not None else f"{user}@"


def _host_port(part: str, default_port: int) -> tuple[str, int]:
    if not part:
        raise ValueError("empty host in the host list")
    if part.startswith("["):  # [IPv6]:port
        end = part.find("]")
        if end < 0:
            raise ValueError(f"bad host {part!r}")
        host, rest = part[1:end], part[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad host {part!r}")
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"no host in {part!r}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {part!r}")
    return host, int(port_text)


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"the database must be a number, not {text!r}")
    return int(text)


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def parse_redis_url(url: str) -> RedisUrl:
    """Parse ``url``; ``ValueError`` with a one-line reason when it is not a usable form."""
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SINGLE_SCHEMES | CLUSTER_SCHEMES | SENTINEL_SCHEMES:
        raise ValueError(f"must be {FORMS}")
    parts = urlsplit(url)
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    query = parse_qs(parts.query)
    if scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs a socket path")
        db = _db((query.get("db") or [""])[0])
        return RedisUrl("single", scheme, [], username, password, db, unix_path=parts.path)
    hosts = [_host_port(p.strip(), 6379) for p in hostlist.split(",")] if hostlist else []
    if not hosts:
        raise ValueError("the URL has no host")
    segments = [s for s in parts.path.split("/") if s]
    tls = scheme.startswith("rediss")
    if scheme in SENTINEL_SCHEMES:
        if not segments:
            raise ValueError("a redis+sentinel:// URL needs the service name: …/<service-name>")
        if len(segments) > 2:
            raise ValueError("a redis+sentinel:// path is /<service-name>[/db]")
        return RedisUrl(
            "sentinel",
            scheme,
            hosts,
            username,
            password,
            _db(segments[1] if len(segments) > 1 else ""),
            tls,
            service=unquote(segments[0]),
            sentinel_username=_first(query, "sentinel_username"),
            sentinel_password=_first(query, "sentinel_password"),
        )
    if len(segments) > 1:
        raise ValueError("the URL path is at most /<db>")
    kind: Kind = "cluster" if scheme in CLUSTER_SCHEMES else "single"
    if kind == "single" and len(hosts) > 1:
        raise ValueError("several hosts need redis+cluster:// or redis+sentinel://")
    db = _db(segments[0] if segments else "")
    if kind == "cluster" and db:
        raise ValueError("Redis Cluster has only database 0")
    return RedisUrl(kind, scheme, hosts, username, password, db, tls)
