"""The balancer config from render_nginx_conf, run by Debian's real nginx: `nginx -t`, the
access-log format, and its behaviour in front of two small aiohttp upstreams (WebSocket
upgrade on /ws and /socket.io/, forwarded headers, failover, hidden /metrics, no query
strings in the log). The gateway itself is not needed here; test_launcher.py runs the real one.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.deploy.support import NGINX, load_launch

pytestmark = pytest.mark.nginx
launch = load_launch()
FORBIDDEN_LOG_VARIABLES = re.compile(
    r"\$(request|request_uri|args|query_string|arg_\w+|http_referer)\b"
)


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    command = [
        str(NGINX),
        "-t",
        "-p",
        f"{prefix}/",
        "-c",
        str(conf),
        "-e",
        str(prefix / "error.log"),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def log_formats(conf: str) -> list[str]:
    return re.findall(r"log_format\s+\w+\s+((?:'[^']*'\s*)+);", conf)


def location_block(conf: str, location: str) -> str:
    match = re.search(rf"location {re.escape(location)} \{{(.*?)\}}", conf, re.DOTALL)
    assert match, f"no location {location}"
    return match.group(1)


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(launch.render_nginx_conf([4001, 4002, "127.0.0.1:4003"], 18080, tmp_path))
    done = nginx_test(conf, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr


def test_container_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(launch.render_nginx_conf(["127.0.0.1:4000"], 18080))
    done = nginx_test(conf, tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_broken_config_fails_nginx_t(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        launch.render_nginx_conf([4001], 18080, tmp_path).replace("least_conn;", "least_conn")
    )
    assert nginx_test(conf, tmp_path).returncode != 0


def test_access_log_never_records_query_strings() -> None:
    conf = launch.render_nginx_conf([4001], 8080)
    (fmt,) = log_formats(conf)
    assert "$uri" in fmt
    assert not FORBIDDEN_LOG_VARIABLES.search(fmt), fmt
    assert FORBIDDEN_LOG_VARIABLES.search("'$request_uri'") and not FORBIDDEN_LOG_VARIABLES.search(
        "'$request_method $request_time'"
    )
    assert re.findall(r"access_log\s+\S+\s+(\w+);", conf) == ["gateway"]  # no default format


def test_websocket_locations_have_long_timeouts_and_no_affinity() -> None:
    conf = launch.render_nginx_conf([4001, 4002], 8080)
    for location in ("= /ws", "/socket.io/"):
        block = location_block(conf, location)
        assert "proxy_read_timeout 1h;" in block and "proxy_send_timeout 1h;" in block
    upstream = re.search(r"upstream gateway \{(.*?)\}", conf, re.DOTALL)
    assert upstream and "least_conn;" in upstream.group(1)
    assert re.findall(r"server (\S+) max_fails=3 fail_timeout=10s;", upstream.group(1)) == [
        "127.0.0.1:4001",
        "127.0.0.1:4002",
    ]
    directives = [
        line.split()[0] for line in conf.splitlines() if line.strip() and line.strip()[0] != "#"
    ]
    assert not {"ip_hash", "hash", "sticky"} & set(directives)


def test_render_rejects_an_empty_upstream_list() -> None:
    with pytest.raises(ValueError, match="upstream"):
        launch.render_nginx_conf([], 8080)


# --- behaviour, through a real nginx --------------------------------------------------------


@dataclass
class Balancer:
    url: str
    upstream_ports: list[int]
    access_log: Path


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Balancer]:
    """nginx in front of two upstream ports (the test starts the upstreams) and a dead one."""
    ports = launch.free_ports(4)
    listen, upstreams, dead = ports[0], ports[1:3], ports[3]
    conf = tmp_path / "nginx.conf"
    conf.write_text(launch.render_nginx_conf([dead, *upstreams], f"127.0.0.1:{listen}", tmp_path))
    command = [str(NGINX), "-p", f"{tmp_path}/", "-c", str(conf), "-e", str(tmp_path / "error.log")]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while launch.port_is_free(listen):
            assert proc.poll() is None, (tmp_path / "error.log").read_text()
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield Balancer(f"http://127.0.0.1:{listen}", upstreams, tmp_path / "access.log")
    finally:
        proc.terminate()
        proc.wait(10)


def upstream_app(name: str) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for message in socket:
            await socket.send_json(
                {"upstream": name, "echo": message.data, "query": request.query_string}
            )
        return socket

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({"upstream": name, **{k: v for k, v in request.headers.items()}})

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/socket.io/", ws)
    app.router.add_get("/headers", headers)
    app.router.add_get("/metrics", headers)
    return app


async def start_upstreams(balancer: Balancer) -> list[web.AppRunner]:
    runners = []
    for i, port in enumerate(balancer.upstream_ports, start=1):
        runner = web.AppRunner(upstream_app(f"up-{i}"))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    return runners


async def test_websocket_and_http_through_nginx(balancer: Balancer) -> None:
    runners = await start_upstreams(balancer)
    try:
        async with aiohttp.ClientSession() as session:
            # WebSocket upgrade on both transports' paths; the query string reaches the node.
            for path in ("/ws?token=s3cret-token-value", "/socket.io/?EIO=4&transport=websocket"):
                async with session.ws_connect(balancer.url.replace("http", "ws") + path) as ws:
                    await ws.send_str("hello")
                    answer = await ws.receive_json(timeout=5)
                    assert answer["echo"] == "hello" and answer["query"] == path.split("?")[1]
            # Forwarded headers; the dead first upstream is skipped (passive failover).
            seen = set()
            for _ in range(6):
                async with session.get(
                    f"{balancer.url}/headers", headers={"X-Forwarded-For": "10.9.8.7"}
                ) as r:
                    assert r.status == 200
                    body = await r.json()
                    seen.add(body["upstream"])
                    assert body["X-Forwarded-For"] == "10.9.8.7, 127.0.0.1"
                    assert body["X-Real-IP"] == "127.0.0.1" and body["X-Forwarded-Proto"] == "http"
            assert seen == {"up-1", "up-2"}
            async with session.get(f"{balancer.url}/metrics") as r:
                assert r.status == 404
    finally:
        for runner in runners:
            await runner.cleanup()
    deadline = time.monotonic() + 5  # nginx logs a WebSocket request when it closes
    while "GET /socket.io/" not in (log := balancer.access_log.read_text()):
        assert time.monotonic() < deadline, log
        await asyncio.sleep(0.05)
    assert "GET /ws HTTP/1.1" in log and "GET /socket.io/ HTTP/1.1" in log
    assert "s3cret" not in log and "token=" not in log and "EIO" not in log
