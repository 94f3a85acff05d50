"""The reconnect-storm harness end to end, small: ``python -m bench.storm`` with 400 clients on two
real gateway nodes (real redis-server, the Django test site counting its token checks, the Node
load generator in recover mode), one node killed. Checked on counts, never on timings: every
client of the killed node comes back with what it missed (0 lost, 0 dup), and Django is asked
once per reconnecting client only when the cluster-wide token cache has expired — not when the
tokens were verified on the other node moments before, and never for JWTs the nodes verify."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support import REPO_ROOT

CLIENTS = 400


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("storm") / "storm.json"
    argv = [sys.executable, "-m", "bench.storm", "--clients", str(CLIENTS), "--signal", "kill"]
    argv += ["--cache", "both", "--auth", "both", "--seconds", "6", "--events-per-s", "200"]
    argv += ["--cache-ttl-s", "3", "--loadgens", "2", "--json", str(out)]
    done = subprocess.run(
        argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=420, check=False
    )
    assert done.returncode == 0 and out.exists(), f"exit {done.returncode}\n{done.stderr[-4000:]}"
    return {(r["auth"], r["cache"]): r for r in json.loads(out.read_text())}


@pytest.mark.slow
@pytest.mark.node
@pytest.mark.timeout(480)
def test_every_client_of_the_killed_node_recovers_exactly_what_it_missed(
    runs: dict[tuple[str, str], dict[str, Any]],
) -> None:
    assert set(runs) == {
        ("django", "warm"),
        ("django", "expired"),
        ("jwt", "warm"),
        ("jwt", "expired"),
    }
    for key, run in runs.items():
        assert run["connect"]["connected"] == CLIENTS, key
        assert run["victims"] >= CLIENTS // 2, key  # the killed node's half, at least
        assert run["recovered"] == run["victims"] and run["not_recovered"] == 0, key
        assert run["published"] == 1200 and run["deliveries"] == 1200, key
        assert (run["lost"], run["dup"], run["unexpected"]) == (0, 0, 0), key


@pytest.mark.slow
@pytest.mark.node
@pytest.mark.timeout(480)
def test_django_is_asked_only_when_the_shared_cache_expired(
    runs: dict[tuple[str, str], dict[str, Any]],
) -> None:
    # verified on the killed node, found in Redis by the survivor
    assert runs["django", "warm"]["django_requests"] == 0
    # more than twice the TTL later: one check per reconnecting client, no more
    expired = runs["django", "expired"]
    assert expired["django_requests"] == expired["victims"]
    # JWTs: the nodes verify them, cache or not
    assert runs["jwt", "warm"]["django_requests"] == 0
    assert runs["jwt", "expired"]["django_requests"] == 0
