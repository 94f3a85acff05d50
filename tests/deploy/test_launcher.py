"""deploy/launch.py for real: redis-server, gateway nodes, the worker and Debian's nginx as
local processes; a WebSocket client through the balancer; then everything is gone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.deploy.support import DEPLOY, load_launch
from tests.support import DjangoSite

pytestmark = [pytest.mark.slow, pytest.mark.nginx]
launch = load_launch()


def pid_alive(pid: int) -> bool:
    """Running (a zombie is not: where PID 1 does not reap orphans, a process that ``up
    --detach`` left behind stays a zombie after it exits)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


async def through_the_balancer(topo: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(topo.ws_url) as ws:
            await ws.send_json({"event": "ping", "data": {}, "id": 7})
            reply = await ws.receive_json(timeout=5)
            assert reply["event"] == "pong" and reply.get("id") == 7
        # A token on the URL authenticates; it must not reach nginx's access log.
        nodes = set()
        for _ in range(2):
            async with session.ws_connect(f"{topo.ws_url}?token=cliente-7") as ws:
                first = await ws.receive_json(timeout=10)
                assert first["event"] == "auth_success", first
                assert first["data"]["userId"] == "7" and first["data"]["role"] == "cliente"
                nodes.add(first["data"]["node"])
        assert nodes <= {"node-1", "node-2"} and nodes
        async with session.get(f"{topo.lb_url}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{topo.lb_url}/metrics") as response:
            assert response.status == 404  # nodes are scraped directly, not through the LB


def healthcheck(url: str) -> int:
    command = [sys.executable, str(DEPLOY / "healthcheck.py"), url]
    return subprocess.run(command, capture_output=True, timeout=10).returncode


def test_topology_serves_through_nginx_and_stops_everything(django_site: DjangoSite) -> None:
    with launch.Topology(nodes=2, django_url=django_site.base_url, drain_seconds=1) as topo:
        pids, ports, workdir = dict(topo.pids), list(topo.ports), topo.dir
        assert set(pids) == {"redis", "node-1", "node-2", "worker", "nginx"}
        assert all(pid_alive(pid) for pid in pids.values())
        assert topo.node_ports[1] == topo.node_ports[0] + 1
        assert topo.redis_url.startswith("redis://127.0.0.1:")
        asyncio.run(through_the_balancer(topo))
        for url in topo.node_urls:
            assert healthcheck(f"{url}/readyz") == 0
        assert healthcheck(f"{topo.worker_url}/healthz") == 0
        log = topo.dir / "nginx" / "access.log"
        deadline = time.monotonic() + 5  # nginx logs a WebSocket request once it is closed
        while log.read_text().count("GET /ws HTTP/1.1") < 3:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert "cliente-7" not in log.read_text() and "token" not in log.read_text()
        assert (topo.dir / "redis" / "appendonlydir").is_dir()  # AOF on
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert all(launch.port_is_free(port) for port in ports)
    assert not workdir.exists()


def test_a_node_that_cannot_start_is_reported_and_nothing_is_left() -> None:
    topo = launch.Topology(nodes=1, worker=False, env={"GATEWAY_MAX_MESSAGE_BYTES": "abc"})
    with pytest.raises(launch.LaunchError, match=r"(?s)node-1 exited .*GATEWAY_MAX_MESSAGE_BYTES"):
        topo.start()
    assert [p.name for p in topo.procs] == ["redis", "node-1"]
    assert not [p.name for p in topo.procs if pid_alive(p.pid)]
    assert not topo.dir.exists()


def test_command_line_check_and_sigterm() -> None:
    script = str(DEPLOY / "launch.py")
    port = launch.free_ports(1)[0]
    check = [sys.executable, script, "up", "--nodes", "1", "--no-worker", "--port", str(port)]
    done = subprocess.run([*check, "--check"], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "check: OK" in done.stdout and "dashboard token: " in done.stdout

    up = subprocess.Popen(check, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert up.stdout is not None
    output = ""
    deadline = time.monotonic() + 60
    while "Ctrl-C to stop" not in output:
        assert time.monotonic() < deadline and up.poll() is None, output
        output += up.stdout.readline()
    assert launch.http_status(f"http://127.0.0.1:{port}/healthz") == 200
    node_pid = int(re.search(r"pid (\d+)", output).group(1))  # type: ignore[union-attr]
    up.send_signal(signal.SIGTERM)
    assert up.wait(30) == 0
    assert "stopped" in up.stdout.read()
    up.stdout.close()
    assert not pid_alive(node_pid) and launch.port_is_free(port)


def _launch(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(DEPLOY / "launch.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)


def test_detach_testclients_out_of_the_box_then_down() -> None:
    """The README's path: ``up --detach --test-django``, ``gateway-testclients`` with its
    default tokens against the balancer (exit 0), then ``down`` from another command stops
    every process and frees every port."""
    port = launch.free_ports(1)[0]
    up = _launch("up", "--detach", "--nodes", "2", "--test-django", "--port", str(port))
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"down --port {port}" in up.stdout
    state = json.loads(launch.state_path(port).read_text())
    pids = [state["launcher"], *state["pids"].values()]
    assert set(state["pids"]) == {"redis", "django", "node-1", "node-2", "worker", "nginx"}
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        run = subprocess.run(
            [sys.executable, "-m", "gateway.testclients", "--url", url, "--rounds", "1", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads(run.stdout)
        assert report["acked"] == report["sent"] > 0 and report["lost"] == 0
    finally:
        down = _launch("down", "--port", str(port), timeout_s=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [pid for pid in pids if pid_alive(pid)]
    assert launch.port_is_free(port)
    assert not launch.state_path(port).exists()
    assert not Path(state["dir"]).exists()
    again = _launch("down", "--port", str(port))
    assert again.returncode == 1 and "no topology was started" in again.stderr
    launch.state_path(port).with_suffix(".log").unlink()  # --detach's output, kept for people


def test_down_cleans_up_after_a_launcher_that_was_killed() -> None:
    port = launch.free_ports(1)[0]
    up = _launch("up", "--detach", "--nodes", "1", "--no-worker", "--port", str(port))
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads(launch.state_path(port).read_text())
    os.kill(state["launcher"], signal.SIGKILL)  # the launcher is gone; its children are not
    deadline = time.monotonic() + 10
    while pid_alive(state["launcher"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = list(state["pids"].values())
    assert all(pid_alive(pid) for pid in children)
    down = _launch("down", "--port", str(port), timeout_s=60)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped 3 processes" in down.stdout
    assert not [pid for pid in children if pid_alive(pid)]
    assert launch.port_is_free(port)
    launch.state_path(port).with_suffix(".log").unlink()
