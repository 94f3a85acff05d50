"""gateway.config: the contract's defaults, environment parsing, and one clear line (naming
the variable, never a secret) for every bad value."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No GATEWAY_* variable from the outer shell, and a working directory without .env."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config_error(**env: str) -> str:
    """The ConfigError message load_settings gives for these environment variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with pytest.raises(ConfigError) as info:
            load_settings()
    message = str(info.value)
    assert "\n" not in message, "the error must be one line"
    return message


def test_defaults_are_the_contracts() -> None:
    settings = load_settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 4000
    assert settings.redis_url is None
    assert settings.embedded is True
    assert settings.cluster_mode is False
    assert settings.node_id == f"{socket.gethostname()}-{os.getpid()}"
    assert settings.django_base_url == "http://localhost:8000/api/v1/"
    assert settings.django_auth_scheme == "Token"
    assert settings.django_timeout == 5
    assert settings.django_events_path == "events/"
    assert settings.dashboard_token is None
    assert settings.publish_api_key is None
    assert settings.allowed_origins == []
    assert settings.max_message_bytes == 65536
    assert settings.send_queue_bytes == 1048576
    assert (settings.rate_limit, settings.rate_burst) == (50, 100)
    assert (settings.history_size, settings.history_ttl_seconds) == (100, 600)
    assert settings.drain_seconds == 10
    assert settings.worker_port == 9100
    assert settings.log_format == "text"


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "4100")
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://redis.internal:6380/2")
    monkeypatch.setenv("GATEWAY_DJANGO_AUTH_SCHEME", "Bearer")
    monkeypatch.setenv("GATEWAY_DJANGO_TIMEOUT", "2.5")
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "json")
    monkeypatch.setenv("GATEWAY_NODE_ID", "node-a")
    settings = load_settings()
    assert settings.port == 4100
    assert settings.redis_url == "redis://redis.internal:6380/2"
    assert settings.embedded is False
    assert settings.django_auth_scheme == "Bearer"
    assert settings.django_timeout == 2.5
    assert settings.log_format == "json"
    assert settings.node_id == "node-a"


def test_keyword_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "4100")
    assert load_settings(port=4200).port == 4200


def test_dotenv_file_is_read_and_environment_wins(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / ".env").write_text("GATEWAY_PORT=4321\nGATEWAY_NODE_ID=from-dotenv\n")
    assert load_settings().port == 4321
    monkeypatch.setenv("GATEWAY_PORT", "4322")
    settings = load_settings()
    assert (settings.port, settings.node_id) == (4322, "from-dotenv")


@pytest.mark.parametrize("value", ["abc", "70000", "-1", "4000.5"])
def test_bad_port_names_the_variable(value: str) -> None:
    message = config_error(GATEWAY_PORT=value)
    assert "GATEWAY_PORT" in message
    assert value in message


@pytest.mark.parametrize(
    "url",
    ["http://localhost:6379/0", "redis://localhost:notaport/0", "redis://", "localhost:6379"],
)
def test_unparsable_redis_url_names_the_variable(url: str) -> None:
    assert "GATEWAY_REDIS_URL" in config_error(GATEWAY_REDIS_URL=url)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://user:pw@redis.example:6380/1",
        "unix:///run/redis.sock",
        "redis+cluster://127.0.0.1:7000",
    ],
)
def test_valid_redis_urls_are_kept(url: str) -> None:
    assert load_settings(redis_url=url).redis_url == url


def test_empty_redis_url_means_embedded() -> None:
    settings = load_settings(redis_url="  ")
    assert settings.redis_url is None
    assert settings.embedded is True


def test_cluster_mode_from_url_or_flag() -> None:
    assert load_settings(redis_url="redis+cluster://127.0.0.1:7000").cluster_mode is True
    assert load_settings(redis_url="redis://127.0.0.1:7000").cluster_mode is False
    assert load_settings(redis_url="redis://127.0.0.1:7000", redis_cluster=True).cluster_mode


def test_comma_separated_allowed_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "GATEWAY_ALLOWED_ORIGINS", " https://app.example.com ,https://admin.example.com,, "
    )
    assert load_settings().allowed_origins == [
        "https://app.example.com",
        "https://admin.example.com",
    ]


def test_single_origin_and_keyword_list() -> None:
    assert load_settings(allowed_origins="https://a.example").allowed_origins == [
        "https://a.example"
    ]
    assert load_settings(allowed_origins=["https://b.example"]).allowed_origins == [
        "https://b.example"
    ]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("http://django:8000/api/v1", "http://django:8000/api/v1/"),
        ("https://shop.example.com/api/v1/", "https://shop.example.com/api/v1/"),
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000/"),
    ],
)
def test_django_base_url_gets_a_trailing_slash(
    monkeypatch: pytest.MonkeyPatch, raw: str, normalised: str
) -> None:
    monkeypatch.setenv("GATEWAY_DJANGO_BASE_URL", raw)
    assert load_settings().django_base_url == normalised


@pytest.mark.parametrize("url", ["ftp://django/api/v1/", "django:8000/api/v1/", "http://"])
def test_bad_django_base_url_names_the_variable(url: str) -> None:
    assert "GATEWAY_DJANGO_BASE_URL" in config_error(GATEWAY_DJANGO_BASE_URL=url)


def test_events_path_is_relative_to_the_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DJANGO_EVENTS_PATH", "/realtime/events/")
    assert load_settings().django_events_path == "realtime/events/"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_DJANGO_AUTH_SCHEME", "Basic"),
        ("GATEWAY_LOG_FORMAT", "xml"),
        ("GATEWAY_DJANGO_TIMEOUT", "0"),
        ("GATEWAY_MAX_MESSAGE_BYTES", "12"),
        ("GATEWAY_RATE_BURST", "zero"),
        ("GATEWAY_WORKER_PORT", "99999"),
        ("GATEWAY_DRAIN_SECONDS", "-3"),
    ],
)
def test_other_bad_values_name_their_variable(name: str, value: str) -> None:
    assert name in config_error(**{name: value})


def test_redis_password_never_appears_in_the_error() -> None:
    message = config_error(GATEWAY_REDIS_URL="redis://app:Sup3rS3cret@redis.internal:63x9/0")
    assert "GATEWAY_REDIS_URL" in message
    assert "Sup3rS3cret" not in message


def test_django_url_password_never_appears_in_the_error() -> None:
    message = config_error(GATEWAY_DJANGO_BASE_URL="ftp://svc:Sup3rS3cret@django/api/v1/")
    assert "GATEWAY_DJANGO_BASE_URL" in message
    assert "Sup3rS3cret" not in message


@pytest.mark.parametrize("field", ["dashboard_token", "publish_api_key"])
def test_secret_values_never_appear_in_the_error(field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**{field: ["Sup3rS3cret"]})
    assert f"GATEWAY_{field.upper()}" in str(info.value)
    assert "Sup3rS3cret" not in str(info.value)


def test_secrets_are_hidden_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DASHBOARD_TOKEN", "dash-Sup3rS3cret")
    monkeypatch.setenv("GATEWAY_PUBLISH_API_KEY", "pub-Sup3rS3cret")
    settings = load_settings()
    assert settings.dashboard_token is not None
    assert settings.dashboard_token.get_secret_value() == "dash-Sup3rS3cret"
    assert settings.publish_api_key is not None
    assert settings.publish_api_key.get_secret_value() == "pub-Sup3rS3cret"
    assert "Sup3rS3cret" not in repr(settings)
    assert "Sup3rS3cret" not in str(settings.model_dump())


def test_settings_class_reads_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "1234")  # unprefixed variables are not ours
    monkeypatch.setenv("GATEWAY_HISTORY_SIZE", "7")
    settings = Settings()
    assert settings.port == 4000
    assert settings.history_size == 7


# --- Redis Sentinel and multi-host Cluster URLs (contract section 1) ---------------------------
@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/mymaster",
        "redis+sentinel://app:pw@sentinel-a:26379,sentinel-b/mymaster/2",
        "redis+sentinel://s:26379/mymaster?sentinel_password=x",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7000,[::1]:7001",
    ],
)
def test_sentinel_and_multi_host_cluster_urls_are_kept(url: str) -> None:
    assert load_settings(redis_url=url).redis_url == url


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://s1:26379,s2:26379", "service name"),
        ("redis+sentinel://s1:26379/mymaster/zero", "database must be a number"),
        ("redis+sentinel://s1:2x/mymaster", "bad port"),
        ("redis+sentinel://s1:26379,,s2/mymaster", "empty host"),
        ("redis+sentinel://s1/m/1/extra", "/<service-name>[/db]"),
        ("redis://a:6379,b:6379/0", "redis+cluster:// or redis+sentinel://"),
        ("redis+cluster://a:7000/3", "only database 0"),
        ("redis+sentnel://a:26379/m", "redis+sentinel://"),
    ],
)
def test_bad_sentinel_and_cluster_urls_say_what_is_wrong_in_one_line(url: str, reason: str) -> None:
    message = config_error(GATEWAY_REDIS_URL=url)
    assert message.startswith("invalid configuration: GATEWAY_REDIS_URL: ")
    assert reason in message
    assert "\n" not in message


def test_sentinel_passwords_never_appear_in_the_error() -> None:
    message = config_error(
        GATEWAY_REDIS_URL="redis+sentinel://app:Sup3rS3cret@s:2x/m?sentinel_password=An0therS3cret"
    )
    assert "GATEWAY_REDIS_URL" in message
    assert "Sup3rS3cret" not in message and "An0therS3cret" not in message


def test_sentinel_mode_and_the_cluster_flag() -> None:
    url = "redis+sentinel://127.0.0.1:26379/mymaster"
    settings = load_settings(redis_url=url)
    assert (settings.sentinel_mode, settings.cluster_mode) == (True, False)
    message = config_error(GATEWAY_REDIS_URL=url, GATEWAY_REDIS_CLUSTER="true")
    assert "GATEWAY_REDIS_CLUSTER" in message and "redis+sentinel" in message
