"""The benchmark harness end to end: ``python bench/run.py --smoke`` against the reference server,
the real gateway (real redis-server, Django test site, Node load generator) and Socket.IO on Node
(socket.io + its Redis adapter and emitter from bench/node_modules), checked through the report it
writes. Channels is left out (it needs a pip install)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support import REPO_ROOT

SCENARIOS = (
    "idle",
    "connect",
    "connect_auth",
    "fanout",
    "fixed_rate",
    "personal",
    "publish",
    "rooms_publish",
)
TARGETS = ("reference", "gateway", "socketio")
CONNECT_AUTH_VARIANTS = {"Django": None, "Redis cache, other node": None, "JWT": None}
PUBLISH_METHODS = {
    "reference": {"redis-publish"},
    "gateway": {"publisher", "api", "ingest"},
    "socketio": {"sio-emitter"},
}


def expected_deliveries(scenario: str, sizes: dict[str, Any]) -> int:
    """Every subscriber gets every event of its room exactly once."""
    n = sizes["connections"]
    if scenario == "fanout":
        return n * sizes["fanout_events"]
    if scenario == "fixed_rate":
        return n * round(sizes["rate_per_s"] * sizes["rate_seconds"])
    if scenario == "personal":
        return n * sizes["personal_rounds"]
    raise AssertionError(scenario)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "smoke.md"
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert out.exists(), f"no report; exit {done.returncode}\n{done.stderr[-4000:]}"
    return {
        "returncode": done.returncode,
        "stderr": done.stderr,
        "markdown": out.read_text(),
        "data": json.loads(out.with_suffix(".json").read_text()),
    }


@pytest.mark.slow
@pytest.mark.node
@pytest.mark.timeout(300)
def test_smoke_run_succeeds_and_reports_every_scenario(smoke: dict[str, Any]) -> None:
    assert smoke["returncode"] == 0, smoke["stderr"][-4000:]
    text = smoke["markdown"]
    for scenario in SCENARIOS:
        assert f"(`{scenario}`)" in text, f"scenario {scenario} missing from the report"
    versions = ("python:", "aiohttp:", "redis-py:", "redis-server:", "node:", "ws (npm):")
    for word in (*versions, "socket.io (npm): 4.8.1", "@socket.io/redis-adapter (npm): 8.3.0"):
        assert word in text, f"version line {word!r} missing"
    assert "python -m gateway" in text and "python bench/reference_server.py" in text
    assert "node bench/loadgen.mjs" in text
    assert "gateway ÷ reference" in text
    assert "gateway ÷ socketio" in text and "socketio ÷ reference" in text
    assert "node bench/sio_server.mjs" in text and "sio_publisher.mjs" in text


@pytest.mark.slow
@pytest.mark.node
@pytest.mark.timeout(300)
def test_smoke_run_loses_and_duplicates_nothing(smoke: dict[str, Any]) -> None:
    data = smoke["data"]
    sizes = data["meta"]["sizes"]
    for target in TARGETS:
        summary = data["summary"][target]
        for scenario in SCENARIOS:
            assert summary[scenario]["errors"] == [], (target, scenario)
        for scenario in ("fanout", "fixed_rate", "personal"):
            row = summary[scenario]["rows"][""]
            where = f"{target} {scenario}"
            assert row["lost"] == 0 and row["dup"] == 0, (where, row)
            assert row["unexpected"] == 0 and row["closed"] == 0, (where, row)
            assert row["deliveries"] == expected_deliveries(scenario, sizes), (where, row)
            assert row["p99_ms"] is not None and row["p99_ms"] > 0, (where, row)
            # CPU is read in 10 ms ticks: a smoke-sized run may round to 0
            assert row["cpu_us_per_delivery"] >= 0, (where, row)
        rows = summary["publish"]["rows"]
        assert set(rows) == PUBLISH_METHODS[target]
        for method, row in rows.items():
            assert row["lost"] == 0 and row["dup"] == 0, (target, method, row)
            assert row["delivered_per_s"] > 0, (target, method, row)
        idle = summary["idle"]["rows"][""]
        assert idle["rss_after_mib"] > idle["rss_before_mib"] > 0, (target, idle)
        connect = summary["connect"]["rows"][""]
        assert connect["connects_per_s"] > 0, (target, connect)
        many = summary["rooms_publish"]["rows"][""]
        assert many["lost"] == 0 and many["dup"] == 0 and many["unexpected"] == 0, (target, many)
        assert many["publishes_per_s"] > 0 and many["delivered_per_s"] > 0, (target, many)
        # every connection of every round authenticated: Django, the Redis cache, a local JWT
        auth_rows = summary["connect_auth"]["rows"]
        variants = CONNECT_AUTH_VARIANTS if target == "gateway" else {"": None}
        assert set(auth_rows) == set(variants), (target, auth_rows)
        for variant, row in auth_rows.items():
            assert row["connects_per_s"] > 0, (target, variant, row)
