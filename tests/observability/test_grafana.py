"""deploy/grafana/gateway-dashboard.json: a well-formed Grafana dashboard whose every query names
metrics that a node or the worker really exposes, and that shows every gateway metric."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics import MetricWrapperBase

from gateway.metrics import Metrics
from tests.observability.scrape import scrape, series_names
from tests.support.ports import REPO_ROOT
from worker.metrics import WorkerMetrics

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"}
# PromQL words that look like metric names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
KEYWORDS |= {"and", "or", "unless", "inf", "nan"}
TARGET_LABELS = {"instance", "job", "le"}
PROMTOOL = shutil.which("promtool")


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels() -> list[dict[str, Any]]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _instance_query() -> str:
    [variable] = [v for v in _dashboard()["templating"]["list"] if v["name"] == "instance"]
    query: str = variable["query"]["query"]
    assert variable["definition"] == query
    return query


def _exprs() -> list[str]:
    return [t["expr"] for p in _panels() for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # a unit or exponent: 5m, 1e3
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() in KEYWORDS:
            continue
        names.add(match.group())
    return names


def grouping_labels(expr: str) -> set[str]:
    groups = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
    return {label.strip() for group in groups for label in group.split(",") if label.strip()}


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, endpoint) (rate(gateway_x_bucket{instance=~"$i",'
        ' job="a b"}[$__rate_interval]))) / on (instance) group_left () up offset 5m > bool 1e3'
    )
    assert metric_names(expr) == {"gateway_x_bucket", "up"}
    assert grouping_labels(expr) == {"le", "endpoint"}


def test_dashboard_is_well_formed() -> None:
    data = _dashboard()
    assert data["title"] and data["uid"] and isinstance(data["schemaVersion"], int)
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    cells: dict[tuple[int, int], int] = {}
    for panel in data["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"], panel
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
    for panel in _panels():
        # the data source comes from the variable, never a uid of someone's Grafana
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    # the node variable lists the instances of a metric every node (and only nodes) has
    node_query = re.fullmatch(r"label_values\((\w+),\s*instance\)", _instance_query())
    assert node_query is not None and node_query.group(1) == "gateway_ready"


async def _exposed_names(make_node: Any, http: aiohttp.ClientSession) -> tuple[set[str], set[str]]:
    node = await make_node()
    node_names = series_names(await scrape(http, node.http_url))
    worker_names = series_names(generate_latest(WorkerMetrics().registry).decode())
    return node_names, worker_names


async def test_every_query_uses_exposed_metrics(
    make_node: Any, http: aiohttp.ClientSession
) -> None:
    node_names, worker_names = await _exposed_names(make_node, http)
    exposed = node_names | worker_names
    assert "gateway_ready" in node_names and "gateway_ready" not in worker_names
    used: set[str] = set()
    for expr in _exprs():
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exposed, f"{expr!r} uses {sorted(names - exposed)}, which nothing exposes"
        used |= names
    # every gateway metric and every worker metric is on the dashboard
    families = {n for n in exposed if n.startswith("gateway_")}
    shown = {_family(n) for n in used}
    missing = {_family(n) for n in families} - shown
    assert not missing, f"metrics without a panel: {sorted(missing)}"


def test_grouping_labels_exist() -> None:
    labels = _declared_labels()
    assert labels["gateway_connections"] == {"role", "transport"}  # the walk finds them
    for expr in _exprs():
        known = set(TARGET_LABELS)
        for name in metric_names(expr):
            known |= labels.get(_family(name), set())
        assert grouping_labels(expr) <= known, f"{expr!r} groups by a label its metrics lack"


def _declared_labels() -> dict[str, set[str]]:
    """Family name -> label names, read from the metric objects of the node and the worker (a
    labelled metric with no sample yet shows no label in a scrape)."""
    out: dict[str, set[str]] = {}
    for owner in (Metrics(), WorkerMetrics()):
        for metric in vars(owner).values():
            if isinstance(metric, MetricWrapperBase):
                out[_family(metric._name)] = set(metric._labelnames)
    return out


def _family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_created", "_total"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package 'prometheus')"
)
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = []
    for i, expr in enumerate(_exprs()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        assert "$" not in concrete, f"unknown variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "rules.json"  # promtool reads YAML, and JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
