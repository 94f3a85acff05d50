"""deploy/docker-compose.yml against the Compose Specification schema, and its wiring: the
balancer config, Prometheus targets, secrets, Redis persistence and shutdown timing."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

import jsonschema
import pytest
import yaml

from tests.deploy.support import DEPLOY, load_launch, yaml_docs

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
SCHEMA_FILE = DEPLOY.parent / "tests" / "deploy" / "schemas" / "compose-spec.json"
REQUIRED_SECRETS = ("GATEWAY_DASHBOARD_TOKEN", "GATEWAY_PUBLISH_API_KEY")
GATEWAY_NODES = ("gateway-1", "gateway-2", "gateway-3")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(COMPOSE_FILE)  # PyYAML resolves the << merge keys as compose does
    return dict(doc)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text())
    # The file says "$schema": "https://json-schema.org/draft-07/schema", a spelling jsonschema
    # does not map to a draft: name the draft explicitly.
    assert "draft-07" in schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    errors = sorted(compose_validator().iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_the_schema_check_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["redis"]["restart_policy"] = "always"  # not a service key
    broken["services"]["nginx"]["depends_on"]["gateway-1"]["condition"] = "service_ready"
    errors = list(compose_validator().iter_errors(broken))
    assert any("restart_policy" in e.message for e in errors)
    assert ["services", "nginx", "depends_on"] in [list(e.absolute_path) for e in errors]


def test_the_cluster_has_every_part(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {*GATEWAY_NODES, "redis", "worker", "django", "nginx", "prometheus"}
    node_ids = {services[n]["environment"]["GATEWAY_NODE_ID"] for n in GATEWAY_NODES}
    assert node_ids == set(GATEWAY_NODES)
    assert services["worker"]["command"] == ["gateway-worker"]
    for name in (*GATEWAY_NODES, "worker", "django"):
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert services["django"]["build"]["target"] == "demo"
    command = " ".join(services["django"]["command"])
    assert re.search(r"manage\.py migrate .*&&.* manage\.py runserver 0\.0\.0\.0:8000", command)


def test_redis_persists_with_aof_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][-1] == "ping"


def test_secrets_are_required_not_defaulted(services: dict[str, dict[str, Any]]) -> None:
    text = COMPOSE_FILE.read_text()
    for secret in REQUIRED_SECRETS:
        assert re.search(rf"{secret}: \$\{{{secret}:\?[^}}]+\}}", text), secret
        assert not re.search(rf"\$\{{{secret}:?-", text), f"{secret} must not have a default"
    for name in (*GATEWAY_NODES, "worker"):
        env = services[name]["environment"]
        assert all(env[s] == f"${{{s}:?set {s} to a long random string}}" for s in REQUIRED_SECRETS)


def test_nodes_get_time_to_drain(services: dict[str, dict[str, Any]]) -> None:
    for name in (*GATEWAY_NODES, "worker"):
        service = services[name]
        drain_s = float(service["environment"]["GATEWAY_DRAIN_SECONDS"])
        assert seconds(service["stop_grace_period"]) > drain_s + 5
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        proxies = service["environment"]["GATEWAY_TRUSTED_PROXIES"].split(",")
        assert all(ipaddress.ip_network(p).is_private for p in proxies)


def test_dependencies_exist_and_nginx_waits_for_healthy_nodes(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    nginx_deps = services["nginx"]["depends_on"]
    assert {n: nginx_deps[n]["condition"] for n in GATEWAY_NODES} == dict.fromkeys(
        GATEWAY_NODES, "service_healthy"
    )
    worker_check = services["worker"]["healthcheck"]["test"]
    assert worker_check[-1] == "http://127.0.0.1:9100/healthz"


def test_bind_mounted_files_exist(services: dict[str, dict[str, Any]]) -> None:
    mounts = [v for s in services.values() for v in s.get("volumes", []) if v.startswith("./")]
    assert len(mounts) == 2
    for mount in mounts:
        assert (DEPLOY / mount.split(":")[0]).is_file(), mount


def test_nginx_conf_is_the_rendered_balancer_config(services: dict[str, dict[str, Any]]) -> None:
    """deploy/nginx/nginx.conf is generated by render_nginx_conf; it must not drift."""
    upstreams = [f"{name}:4000" for name in GATEWAY_NODES]
    expected = load_launch().render_nginx_conf(upstreams, 80)
    assert (DEPLOY / "nginx" / "nginx.conf").read_text() == expected
    assert services["nginx"]["ports"] == ["8080:80"]


def test_prometheus_scrapes_every_node_and_the_worker() -> None:
    (config,) = yaml_docs(DEPLOY / "prometheus" / "prometheus.yml")
    targets = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "gateway": [f"{n}:4000" for n in GATEWAY_NODES],
        "gateway-worker": ["worker:9100"],
    }
    assert all(job["metrics_path"] == "/metrics" for job in config["scrape_configs"])


def test_compose_yaml_has_no_tabs_or_latest_tags() -> None:
    text = COMPOSE_FILE.read_text()
    assert "\t" not in text
    images = re.findall(r"image: (\S+)", text)
    assert images and all(":" in i and not i.endswith(":latest") for i in images)
    assert yaml.safe_load(text)["name"] == "django-ws-gateway"
