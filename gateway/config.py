"""Settings: every option is a ``GATEWAY_*`` environment variable (a ``.env`` file is honoured).

Durations are seconds unless the name says otherwise. ``load_settings()`` turns a bad value into
one clear line naming the variable, so ``__main__`` can exit without a traceback.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.backend.urls import parse_redis_url

ENV_PREFIX = "GATEWAY_"


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    # --- network -------------------------------------------------------------------------
    host: str = "0.0.0.0"
    port: int = Field(4000, ge=0, le=65535)
    node_id: str = Field(default_factory=_default_node_id, min_length=1, max_length=128)

    # --- Redis (unset = embedded backend) ---------------------------------------------------
    redis_url: str | None = None
    redis_prefix: str = Field("gateway", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    redis_cluster: bool = False  # also switched on by a redis+cluster:// URL
    node_heartbeat_s: float = Field(3.0, gt=0, le=60)
    node_lease_s: float = Field(15.0, gt=0, le=300)
    pubsub_probe_s: float = Field(5.0, gt=0, le=300)
    unsubscribe_delay_s: float = Field(2.0, ge=0, le=60)

    # --- Django -----------------------------------------------------------------------------
    django_base_url: str = "http://localhost:8000/api/v1/"
    django_auth_scheme: Literal["Token", "Bearer"] = "Token"
    django_timeout: float = Field(5.0, gt=0, le=120)
    django_events_path: str = "events/"
    django_probe_s: float = Field(15.0, gt=0, le=3600)
    auth_cache_s: float = Field(30.0, ge=0, le=3600)
    django_breaker_failures: int = Field(5, ge=1, le=1000)
    django_breaker_reset_s: float = Field(5.0, gt=0, le=600)

    # --- secrets ----------------------------------------------------------------------------
    dashboard_token: SecretStr | None = None
    publish_api_key: SecretStr | None = None

    # --- limits -----------------------------------------------------------------------------
    allowed_origins: CsvList = Field(default_factory=list)
    cors_origins: CsvList = Field(default_factory=list)
    trusted_proxies: CsvList = Field(default_factory=list)
    max_message_bytes: int = Field(65536, ge=256, le=16 * 1024 * 1024)
    send_queue_bytes: int = Field(1048576, ge=1024)
    rate_limit: float = Field(50.0, gt=0)
    rate_burst: int = Field(100, ge=1)
    rate_limit_strikes: int = Field(20, ge=1)
    auth_timeout_s: float = Field(10.0, gt=0, le=600)
    ws_heartbeat_s: float = Field(25.0, gt=0, le=600)
    max_connections: int = Field(50000, ge=1)
    max_connections_per_user: int = Field(20, ge=1)
    max_connections_per_ip: int = Field(1000, ge=1)
    max_rooms_per_connection: int = Field(100, ge=1)

    # --- history ----------------------------------------------------------------------------
    history_size: int = Field(100, ge=0, le=100_000)
    history_ttl_seconds: int = Field(600, ge=1)
    history_meta_ttl_s: int = Field(86400, ge=1)

    # --- lifecycle --------------------------------------------------------------------------
    drain_seconds: float = Field(10.0, ge=0, le=3600)

    # --- worker -----------------------------------------------------------------------------
    worker_host: str = "0.0.0.0"
    worker_port: int = Field(9100, ge=0, le=65535)
    worker_id: str = Field(default_factory=_default_node_id, min_length=1, max_length=128)
    ingest_batch: int = Field(200, ge=1, le=10_000)
    ingest_claim_idle_s: float = Field(30.0, gt=0)
    janitor_interval_s: float = Field(5.0, gt=0)

    # --- Socket.IO ----------------------------------------------------------------------------
    socketio_ping_interval_s: float = Field(25.0, gt=0, le=600)
    socketio_ping_timeout_s: float = Field(20.0, gt=0, le=600)

    # --- logging ----------------------------------------------------------------------------
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # --- hardening ----------------------------------------------------------------------------
    # a TCP connection whose request head is not complete in this time is closed
    handshake_timeout_s: float = Field(10.0, gt=0, le=600)

    # --- connection accounting, online status, receipts (presence) --------------------------
    limits_timeout_s: float = Field(1.0, gt=0, le=30)
    presence_grace_s: float = Field(5.0, ge=0, le=3600)
    presence_stream_maxlen: int = Field(100_000, ge=100, le=100_000_000)
    django_presence_path: str | None = None
    presence_batch: int = Field(100, ge=1, le=10_000)
    receipts_pending: int = Field(256, ge=1, le=100_000)

    # --- Socket.IO (appended) -------------------------------------------------------------------
    # Socket.IO connection state recovery: a pid in the CONNECT answer and an offset with each
    # event, so socket.io-client restores its rooms and missed events on any node.
    socketio_recovery: bool = True

    _split = field_validator("allowed_origins", "cors_origins", "trusted_proxies", mode="before")(
        _split_csv
    )

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        parse_redis_url(value)  # ValueError: one line saying what is wrong
        return value

    @field_validator("redis_cluster")
    @classmethod
    def _check_cluster_flag(cls, value: bool, info: ValidationInfo) -> bool:
        url = info.data.get("redis_url")
        if value and url and parse_redis_url(url).kind == "sentinel":
            raise ValueError("cannot be true with a redis+sentinel:// GATEWAY_REDIS_URL")
        return value

    @field_validator("django_base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ValueError("must be an http:// or https:// URL")
        try:
            parsed.port  # noqa: B018 - raises on a non-numeric port
        except ValueError:
            raise ValueError("bad port in URL") from None  # (the port may be a password's end)
        if "@" in parsed.netloc:
            # every call to Django carries the user's own Authorization header (CONTRACT
            # section 2): credentials in the URL could not be sent with it, and would be logged
            raise ValueError(
                "must not contain credentials (user:password@): the gateway calls Django with "
                "each user's own token; protect Django's network instead"
            )
        return value if value.endswith("/") else value + "/"

    @field_validator("django_events_path")
    @classmethod
    def _check_events_path(cls, value: str) -> str:
        return value.lstrip("/")

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @property
    def cluster_mode(self) -> bool:
        return self.redis_cluster or bool(self.redis_url and "+cluster" in self.redis_url)

    @property
    def sentinel_mode(self) -> bool:
        return bool(self.redis_url and parse_redis_url(self.redis_url).kind == "sentinel")

    # --- authentication: shared token cache, local JWT verification (appended) -----------------
    # how long disconnect(user) refuses the user's JWTs issued before it; keep >= the lifetime
    # of your access tokens
    auth_revocation_ttl_s: int = Field(86400, ge=1, le=366 * 86400)
    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None  # PEM text, or the path of a PEM file
    jwt_jwks_url: str | None = None
    jwt_algorithms: CsvList = Field(default_factory=list)  # empty: follows the key
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_user_claim: str = Field("user_id", min_length=1, max_length=128)
    jwt_role_claim: str = Field("role", min_length=1, max_length=128)

    @field_validator(
        "jwt_secret", "jwt_public_key", "jwt_jwks_url", "jwt_audience", "jwt_issuer", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            # RFC 7518 3.2: an HS256 key is at least as long as its hash
            raise ValueError("must be at least 32 bytes long (RFC 7518 section 3.2)")
        return value

    @field_validator("jwt_public_key")
    @classmethod
    def _check_jwt_public_key(cls, value: str | None) -> str | None:
        from gateway.auth.keyfiles import read_public_key

        return None if value is None else read_public_key(value)[0]

    @field_validator("jwt_jwks_url")
    @classmethod
    def _check_jwks_url(cls, value: str | None) -> str | None:
        if value is not None and urlparse(value).scheme not in {"http", "https"}:
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("jwt_algorithms")
    @classmethod
    def _check_jwt_algorithms(cls, value: list[str], info: ValidationInfo) -> list[str]:
        from gateway.auth.keyfiles import check_algorithms

        return check_algorithms(
            value,
            secret=info.data.get("jwt_secret") is not None,
            public=info.data.get("jwt_public_key") is not None
            or info.data.get("jwt_jwks_url") is not None,
        )


class ConfigError(Exception):
    """A bad setting; ``str()`` is the one line to print."""


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    loc = first.get("loc") or ("?",)
    name = ENV_PREFIX + str(loc[0]).upper()
    raw = first.get("input")
    secret = "TOKEN" in name or "KEY" in name or "SECRET" in name or isinstance(raw, dict)
    if isinstance(raw, str) and "://" in raw:
        raw = re.sub(r"//[^@\s]*@", "//***@", raw)  # never echo credentials in URLs
        raw = re.sub(r"(password=)[^&]*", r"\1***", raw)
    shown = "" if secret else f" (got {raw!r})"
    return f"invalid configuration: {name}: {first.get('msg')}{shown}"


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
