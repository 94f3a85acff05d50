"""The ``gateway-worker`` process: configuration errors, /metrics, /healthz, JSON logs."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ProcessFactory, RedisServer, WorkerProcess
from tests.support.ports import eventually
from tests.support.processes import child_env
from tests.worker.helpers import KEYS, parse_metrics, value

NEEDS_REDIS = (
    "gateway-worker: the worker needs GATEWAY_REDIS_URL; in embedded mode the node runs the "
    "janitor itself and there is no ingest stream"
)


def test_the_console_script_without_a_redis_url_exits_with_one_clear_line() -> None:
    script = shutil.which("gateway-worker")
    assert script, "the package is not installed (pip install -e .)"
    done = subprocess.run(
        [script],
        env=child_env({"GATEWAY_WORKER_PORT": "0"}),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == NEEDS_REDIS
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"GATEWAY_REDIS_URL": None}, NEEDS_REDIS),
        (
            {"GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0", "GATEWAY_WORKER_PORT": "abc"},
            "gateway-worker: invalid configuration: GATEWAY_WORKER_PORT: Input should be a valid "
            "integer, unable to parse string as an integer (got 'abc')",
        ),
        (
            {"GATEWAY_REDIS_URL": "http://127.0.0.1:1/0"},
            "gateway-worker: invalid configuration: GATEWAY_REDIS_URL: Value error, must be a "
            "redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// URL "
            "(got 'http://127.0.0.1:1/0')",
        ),
        (
            {"GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0", "GATEWAY_INGEST_BATCH": "0"},
            "gateway-worker: invalid configuration: GATEWAY_INGEST_BATCH: Input should be "
            "greater than or equal to 1 (got '0')",
        ),
    ],
    ids=["no-redis-url", "bad-port", "bad-redis-url", "bad-batch"],
)
def test_bad_configuration_exits_non_zero_with_one_line(
    worker_process: ProcessFactory[WorkerProcess], env: dict[str, str | None], line: str
) -> None:
    proc = worker_process(env, wait=False)
    assert proc.wait(30) == 2
    assert proc.stderr().strip() == line
    assert "Traceback" not in proc.logs()


def test_a_port_in_use_is_one_line_naming_the_variable(
    redis_server: RedisServer, worker_process: ProcessFactory[WorkerProcess]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = worker_process({"GATEWAY_REDIS_URL": redis_server.url}, port=port, wait=False)
        assert proc.wait(30) == 2
    lines = proc.stderr().strip().splitlines()
    assert len(lines) == 1
    assert f"cannot listen on 127.0.0.1:{port} (GATEWAY_WORKER_PORT)" in lines[0]


FAMILIES = {
    "gateway_worker_ingested",
    "gateway_worker_ingest_duplicates",
    "gateway_worker_dead_letters",
    "gateway_worker_claimed",
    "gateway_worker_ingest_batches",
    "gateway_worker_ingest_pending",
    "gateway_worker_ingest_lag",
    "gateway_worker_ingest_lag_seconds",
    "gateway_worker_janitor_sweeps",
    "gateway_worker_janitor_removed",
    "gateway_worker_rollups",
    "gateway_worker_lease_busy",
    "gateway_worker_errors",
    "process_resident_memory_bytes",
}


async def test_metrics_move_healthz_answers_and_json_logs_are_one_object_per_line(
    redis_server: RedisServer,
    worker_process: ProcessFactory[WorkerProcess],
    aredis: Any,
    http: Any,
) -> None:
    worker = await worker_process.astart(
        {
            "GATEWAY_REDIS_URL": redis_server.url,
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_LOG_LEVEL": "DEBUG",
            "GATEWAY_JANITOR_INTERVAL_S": "0.3",
        }
    )
    async with http.get(f"{worker.http_url}/healthz") as response:
        assert response.status == 200
        health = await response.json()
    assert health["status"] == "ok" and health["worker"] == worker.worker_id
    assert health["jobs"] == {
        "ingest": True,
        "ingest-stats": True,
        "janitor": True,
        "rollups": True,
    }

    async def metrics() -> tuple[str, dict[Any, float]]:
        async with http.get(f"{worker.http_url}/metrics") as response:
            assert response.status == 200
            text = await response.text()
        return text, parse_metrics(text)

    text, before = await metrics()
    assert {f.name for f in text_string_to_metric_families(text)} >= FAMILIES
    assert value(before, "gateway_worker_ingested_total") == 0
    for n in range(3):
        await aredis.xadd(KEYS.ingest, {"room": "service_1", "type": "t", "payload": str(n)})
    await aredis.xadd(KEYS.ingest, {"room": "service_1", "type": "t"})

    async def moved() -> bool:
        _, now = await metrics()
        return (
            value(now, "gateway_worker_ingested_total") == 3
            and value(now, "gateway_worker_dead_letters_total") == 1
            and value(now, "gateway_worker_rollups_total") >= 1
            and value(now, "gateway_worker_janitor_sweeps_total") >= 1
        )

    await eventually(moved, 10, "the counters to move")
    worker.term()
    assert await asyncio.to_thread(worker.wait, 10) == 0
    lines = worker.stderr().splitlines()
    records = [orjson.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(r, dict) and {"ts", "level", "msg"} <= r.keys() for r in records)
    messages = [r["msg"] for r in records]
    assert any(m.startswith(f"worker {worker.worker_id} started") for m in messages)
    batches = [re.match(r"ingest batch: (\d+) entries, (\d+) published", m) for m in messages]
    sizes = [(int(b[1]), int(b[2])) for b in batches if b]
    assert sum(n for n, _ in sizes) == 4 and sum(p for _, p in sizes) == 3  # DEBUG summaries
    assert "SIGTERM: finishing the batch in hand, then stopping" in messages
    assert messages[-1] == "stopped"
    dead = [r for r in records if r["level"] == "warning" and "moved to" in r["msg"]]
    assert len(dead) == 1 and "missing field 'payload'" in dead[0]["msg"]
