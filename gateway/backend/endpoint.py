"""Where a pub/sub link connects: importable without hiredis (publishers use it for Sentinel)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.backend.urls import RedisUrl


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a link connects, with the deployment's credentials."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    use_ssl: bool = False
    unix_path: str | None = None

    @classmethod
    def of(cls, url: RedisUrl) -> Endpoint:
        """The first host of ``url`` (a template: ``with_address`` points it elsewhere)."""
        if url.unix_path:
            return cls("", 0, url.username, url.password, unix_path=url.unix_path)
        host, port = url.hosts[0]
        return cls(host, port, url.username, url.password, use_ssl=url.tls)

    def with_address(self, host: str, port: int) -> Endpoint:
        return replace(self, host=host, port=port, unix_path=None)

    @property
    def name(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"
