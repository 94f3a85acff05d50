"""Kubernetes manifests, offline: YAML and yamllint, kustomization references, the Kubernetes
JSON schemas (kubernetes-validate, strict), the ServiceMonitor CRD by hand, and the invariants
that keep rolling upgrades and shutdowns clean."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.deploy.support import (
    BASE,
    DEPLOY,
    K8S,
    OVERLAYS,
    REPO_ROOT,
    YAMLLINT_CONFIG,
    find,
    kustomize_build,
    yaml_docs,
)

YAML_FILES = sorted(
    p
    for root in (K8S, DEPLOY)
    for p in [*root.rglob("*.yaml"), *root.rglob("*.yml")]
    if "demo" not in p.relative_to(root).parts
)
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))
# Oldest Kubernetes minor we support, and the newest the schemas know.
K8S_VERSIONS = ["1.28", kubernetes_validate.latest_version()]
BUILDS = [BASE, *OVERLAYS]
GATEWAY_UID = 10001


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


@pytest.fixture(scope="module", params=BUILDS, ids=rel)
def built(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """The rendered output of the base and of every overlay."""
    return kustomize_build(request.param)  # cached: the docs are shared, do not modify them


def config_value(docs: list[dict[str, Any]], key: str) -> str:
    return str(find(docs, "ConfigMap", "gateway-config")["data"][key])


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    containers = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


# --- YAML ------------------------------------------------------------------------------------


def test_the_yaml_files_are_found() -> None:
    names = {rel(p) for p in YAML_FILES}
    assert {"k8s/base/kustomization.yaml", "deploy/docker-compose.yml"} <= names
    assert any(n.startswith("k8s/overlays/") for n in names)


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yaml_parses(path: Path) -> None:
    docs = yaml_docs(path)
    assert docs, f"{rel(path)} has no YAML document"
    assert all(isinstance(d, dict | list) for d in docs)


@pytest.mark.parametrize("path", YAML_FILES, ids=rel)
def test_yamllint_is_clean(path: Path) -> None:
    config = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    problems = list(linter.run(path.read_text(), config, str(path)))
    assert not problems, "\n".join(f"{rel(path)}:{p.line}:{p.column} {p}" for p in problems)


def test_yamllint_config_catches_problems() -> None:
    config = YamlLintConfig(file=str(YAMLLINT_CONFIG))
    bad = "a: yes\nb:  1\nc: [1,2]\n"
    rules = {p.rule for p in linter.run(bad, config)}
    assert {"truthy", "colons", "commas"} <= rules


# --- kustomizations --------------------------------------------------------------------------


def referenced_files(kustomization: Path) -> list[Path]:
    """Every file or directory a kustomization.yaml names."""
    k = yaml_docs(kustomization)[0]
    names: list[str] = [*k.get("resources", []), *k.get("components", []), *k.get("crds", [])]
    names += k.get("patchesStrategicMerge", [])
    names += [
        p["path"] for p in [*k.get("patches", []), *k.get("patchesJson6902", [])] if "path" in p
    ]
    for generator in [*k.get("configMapGenerator", []), *k.get("secretGenerator", [])]:
        names += generator.get("envs", []) + ([generator["env"]] if "env" in generator else [])
        names += [f.split("=", 1)[-1] for f in generator.get("files", [])]
    return [kustomization.parent / name for name in names]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=rel)
def test_every_referenced_file_exists(kustomization: Path) -> None:
    refs = referenced_files(kustomization)
    assert refs
    for ref in refs:
        assert ref.is_file() or (ref / "kustomization.yaml").is_file(), f"missing {ref}"


def test_base_lists_every_manifest_in_its_folder() -> None:
    listed = {p.resolve() for p in referenced_files(BASE / "kustomization.yaml")}
    on_disk = {p.resolve() for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk - listed == set(), "manifests in k8s/base that kustomization.yaml forgets"


def base_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in referenced_files(BASE / "kustomization.yaml"):
        if path.suffix == ".yaml":
            for doc in yaml_docs(path):
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


@pytest.mark.parametrize("overlay", OVERLAYS, ids=rel)
def test_overlay_patches_target_base_objects(overlay: Path) -> None:
    k = yaml_docs(overlay / "kustomization.yaml")[0]
    known = set(base_objects())
    assert k.get("patches"), "the example overlay is expected to patch the base"
    for patch in k["patches"]:
        if "target" in patch:
            target = (patch["target"]["kind"], patch["target"]["name"])
        else:
            doc = yaml_docs(overlay / patch["path"])[0]
            target = (doc["kind"], doc["metadata"]["name"])
        assert target in known, f"{patch['path']} targets {target}, which the base lacks"
    base_images = {c["image"] for (kind, _), o in base_objects().items() if kind == "Deployment"
                   for c in o["spec"]["template"]["spec"]["containers"]}  # fmt: skip
    assert {i["name"] for i in k.get("images", [])} <= base_images
    base_generators = {
        g["name"] for g in yaml_docs(BASE / "kustomization.yaml")[0]["configMapGenerator"]
    }
    for generator in k.get("configMapGenerator", []):
        if generator.get("behavior") in {"merge", "replace"}:
            assert generator["name"] in base_generators


@pytest.mark.parametrize("overlay", OVERLAYS, ids=rel)
def test_the_overlay_changes_what_it_claims(overlay: Path) -> None:
    built = kustomize_build(overlay)
    namespace = next(d["metadata"]["name"] for d in built if d["kind"] == "Namespace")
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    images = {c["image"] for c in (container(built, "gateway"), container(built, "gateway-worker"))}
    assert all("ghcr.io/example" not in image and ":" in image for image in images)
    # The placeholder Secret must never be applied over the real one.
    assert not [d for d in built if d["kind"] == "Secret"]


# --- Kubernetes schemas ----------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_built_objects_match_the_kubernetes_schema(
    built: list[dict[str, Any]], version: str
) -> None:
    checked = 0
    for doc in built:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: see test_service_monitors_are_well_formed
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} ({version}): {exc.message}")
        checked += 1
    assert checked >= 10


def test_the_schema_check_rejects_a_broken_manifest() -> None:
    deployment = yaml_docs(BASE / "gateway-deployment.yaml")[0]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = (
        "/"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def test_service_monitors_are_well_formed(built: list[dict[str, Any]]) -> None:
    """ServiceMonitor is a CRD (no schema here): check the fields the operator needs, and
    that every endpoint names a port of a Service the selector matches."""
    monitors = [d for d in built if d["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {"gateway", "gateway-worker"}
    services = [d for d in built if d["kind"] == "Service"]
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        selector = spec["selector"]["matchLabels"]
        assert selector
        matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, f"{monitor['metadata']['name']} selects {len(matched)} Services"
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
            assert DURATION.match(endpoint["interval"])
            assert DURATION.match(endpoint["scrapeTimeout"])
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}


# --- invariants ------------------------------------------------------------------------------


def prestop_sleep_s(c: dict[str, Any]) -> int:
    pre_stop = c["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return int(command[1])


def test_shutdown_fits_in_the_grace_period(built: list[dict[str, Any]]) -> None:
    pod = find(built, "Deployment", "gateway")["spec"]["template"]["spec"]
    drain_s = float(config_value(built, "GATEWAY_DRAIN_SECONDS"))
    sleep_s = prestop_sleep_s(container(built, "gateway"))
    assert sleep_s >= 3, "the preStop sleep lets endpoints and balancers forget the pod first"
    assert pod["terminationGracePeriodSeconds"] > drain_s + sleep_s


def test_gateway_probes_hit_the_health_endpoints(built: list[dict[str, Any]]) -> None:
    c = container(built, "gateway")
    (port,) = c["ports"]
    assert port["containerPort"] == int(config_value(built, "GATEWAY_PORT"))
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in (port["name"], port["containerPort"])


def test_worker_probes_hit_its_own_port(built: list[dict[str, Any]]) -> None:
    c = container(built, "gateway-worker")
    assert c["command"] == ["gateway-worker"]
    (port,) = c["ports"]
    assert port["containerPort"] == int(config_value(built, "GATEWAY_WORKER_PORT")) == 9100
    assert find(built, "Deployment", "gateway-worker")["spec"]["replicas"] == 2
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"
        assert c[probe]["httpGet"]["port"] in (port["name"], 9100)


@pytest.mark.parametrize("deployment", ["gateway", "gateway-worker"])
def test_pods_are_locked_down(built: list[dict[str, Any]], deployment: str) -> None:
    pod = find(built, "Deployment", deployment)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == GATEWAY_UID  # the Dockerfile's USER
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    security = container(built, deployment)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    resources = container(built, deployment)["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_node_id_comes_from_the_pod_name(built: list[dict[str, Any]]) -> None:
    env = {e["name"]: e for e in container(built, "gateway")["env"]}
    assert env["GATEWAY_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    sources = container(built, "gateway")["envFrom"]
    assert {"secretRef": {"name": "gateway-secrets"}} in sources
    assert any(
        s.get("configMapRef", {}).get("name", "").startswith("gateway-config") for s in sources
    )


def test_gateway_pods_spread_and_roll_without_downtime(built: list[dict[str, Any]]) -> None:
    deployment = find(built, "Deployment", "gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = deployment["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["topologySpreadConstraints"]
    for spread in pod["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    pdb = find(built, "PodDisruptionBudget", "gateway")
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(built, "HorizontalPodAutoscaler", "gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gateway",
    }
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert hpa["spec"]["minReplicas"] >= 2


def test_service_and_ingress_reach_the_pods_without_affinity(built: list[dict[str, Any]]) -> None:
    deployment = find(built, "Deployment", "gateway")
    service = find(built, "Service", "gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"].get("sessionAffinity", "None") == "None"
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] == container(built, "gateway")["ports"][0]["name"]
    ingress = find(built, "Ingress", "gateway")
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert not [a for a in annotations if "affinity" in a or "session-cookie" in a]
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == "gateway" and backend["port"]["name"] == service_port["name"]


def test_network_policy_opens_only_what_is_needed(built: list[dict[str, Any]]) -> None:
    policy = find(built, "NetworkPolicy", "gateway")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    sources = {
        (
            peer.get("namespaceSelector", {})
            .get("matchLabels", {})
            .get("kubernetes.io/metadata.name")
        )
        for rule in policy["ingress"]
        for peer in rule["from"]
    }
    assert {"ingress-nginx", "monitoring"} <= sources
    ingress_ports = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {4000}
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 6379, 8000} <= egress_ports
    worker = find(built, "NetworkPolicy", "gateway-worker")["spec"]
    assert {p["port"] for rule in worker["ingress"] for p in rule["ports"]} == {9100}


def test_the_base_secret_holds_only_placeholders() -> None:
    (secret,) = yaml_docs(BASE / "secret.yaml")
    assert set(secret["stringData"]) == {
        "GATEWAY_REDIS_URL",
        "GATEWAY_DASHBOARD_TOKEN",
        "GATEWAY_PUBLISH_API_KEY",
    }
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())
    config = (BASE / "gateway.env").read_text()
    assert not re.search(r"TOKEN|API_KEY|REDIS_URL", config), "secrets belong in the Secret"


def test_forwarded_for_is_believed_only_from_the_pod_network(built: list[dict[str, Any]]) -> None:
    networks = config_value(built, "GATEWAY_TRUSTED_PROXIES").split(",")
    assert networks
    for network in networks:
        assert ipaddress.ip_network(network).is_private, network
