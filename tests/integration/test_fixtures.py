"""The test infrastructure itself: redis-server processes, the Redis Cluster, the Django test
site and the subprocess fixtures behave as the rest of the suite relies on."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis

from tests.support import (
    DjangoSite,
    GatewayProcess,
    ProcessFactory,
    ProcessStartError,
    RedisCluster,
    RedisServer,
    WorkerProcess,
    free_port,
    http_get,
)

RESERVATION = {
    "clienteId": "7",
    "proveedorId": "3",
    "servicioId": "12",
    "fecha": "2031-05-04T10:00:00Z",
}


# --- helpers ----------------------------------------------------------------------------------
async def get_profile(
    site: DjangoSite, token: str | None, scheme: str = "Token"
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"{scheme} {token}"} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{site.base_url}profile/", headers=headers) as response,
    ):
        return response.status, await response.json()


async def post_event(
    site: DjangoSite,
    token: str,
    event_type: str,
    payload: dict[str, Any],
    key: str | None = None,
    scheme: str = "Token",
) -> tuple[int, dict[str, Any] | None]:
    headers = {"Authorization": f"{scheme} {token}"}
    if key:
        headers["Idempotency-Key"] = key
    body = {"eventId": key or "no-key", "type": event_type, "payload": payload}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{site.base_url}events/", json=body, headers=headers) as response,
    ):
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


# --- redis-server -----------------------------------------------------------------------------
def test_redis_server_is_private_and_stops_by_pid(redis_server: RedisServer) -> None:
    assert redis_server.port != 6379
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis_server.client()
    assert client.ping() is True
    assert client.dbsize() == 0
    client.set(b"k", b"v")
    assert client.get(b"k") == b"v"  # bytes: decode_responses=False
    pid = redis_server.pid
    redis_server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(redis.ConnectionError):
        redis_server.client().ping()


@pytest.mark.parametrize("crash", [False, True], ids=["sigterm", "sigkill"])
def test_appendonly_server_keeps_data_across_restarts(
    redis_factory: Callable[..., RedisServer], crash: bool
) -> None:
    server = redis_factory(appendonly=True)
    server.client().set(b"survivor", b"1")
    old_pid, port = server.pid, server.port
    if crash:
        server.kill()
        assert server.returncode == -9
        server.start()
    else:
        server.restart()
    assert (server.port, server.alive) == (port, True)
    assert server.pid != old_pid
    assert server.client().get(b"survivor") == b"1"


def test_server_without_appendonly_comes_back_empty(
    redis_factory: Callable[..., RedisServer],
) -> None:
    server = redis_factory()
    server.client().set(b"gone", b"1")
    server.restart()
    assert server.client().get(b"gone") is None


def test_acl_users_from_extra_args(redis_factory: Callable[..., RedisServer]) -> None:
    server = redis_factory(
        extra_args=["--user", "default", "off", "--user", "app", "on", ">app-pw", "~*", "+@all"]
    )
    with pytest.raises(redis.AuthenticationError):
        server.client().ping()
    assert server.client(username="app", password="app-pw").ping() is True


# --- Redis Cluster ----------------------------------------------------------------------------
@pytest.mark.cluster
def test_cluster_has_three_masters_and_keyslot_node_finds_the_owner(
    redis_cluster: RedisCluster,
) -> None:
    assert len(set(redis_cluster.ports)) == 3
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    nodes = redis_cluster.nodes[0].client().execute_command("CLUSTER", "NODES").decode()
    assert sum("master" in line for line in nodes.splitlines()) == 3
    owners = {key: redis_cluster.keyslot_node(key) for key in (f"k{i}" for i in range(30))}
    assert set(owners.values()) == set(redis_cluster.ports)
    for key, port in list(owners.items())[:6]:
        owner = redis_cluster.nodes[redis_cluster.ports.index(port)].client()
        assert owner.set(key, b"here") is True
        other = redis_cluster.nodes[(redis_cluster.ports.index(port) + 1) % 3].client()
        with pytest.raises(redis.exceptions.MovedError) as moved:
            other.get(key)
        assert moved.value.port == port


@pytest.mark.cluster
def test_cluster_fixture_starts_empty_and_heals(redis_cluster: RedisCluster) -> None:
    assert all(node.client().dbsize() == 0 for node in redis_cluster.nodes)
    client = redis_cluster.client()
    try:
        client.set(b"{user:1}a", b"1")
        client.set(b"{user:2}b", b"2")
    finally:
        client.close()
    redis_cluster.nodes[2].kill()
    redis_cluster.flush()  # what the function-scoped fixture does before each test
    assert all(node.alive for node in redis_cluster.nodes)
    assert all(node.client().dbsize() == 0 for node in redis_cluster.nodes)


# --- Django site: profile ---------------------------------------------------------------------
async def test_profile_follows_the_token_rule(django_site: DjangoSite) -> None:
    assert django_site.base_url == f"http://127.0.0.1:{django_site.port}/api/v1/"
    assert await get_profile(django_site, "cliente-7") == (
        200,
        {"id": 7, "role": "cliente", "username": "cliente7", "email": "cliente7@example.test"},
    )
    status, body = await get_profile(django_site, "proveedor-123456789", scheme="Bearer")
    assert (status, body["id"], body["role"]) == (200, 123456789, "proveedor")
    status, body = await get_profile(django_site, "admin-1")
    assert (status, body["role"]) == (200, "admin")


@pytest.mark.parametrize(
    "token", [None, "bad", "cliente-", "cliente-1234567890", "root-1", "cliente-7x"]
)
async def test_profile_answers_401_for_bad_or_missing_tokens(
    django_site: DjangoSite, token: str | None
) -> None:
    assert await get_profile(django_site, token) == (401, {"detail": "Invalid token."})


async def test_revoked_token_is_401_and_calls_are_counted(django_site: DjangoSite) -> None:
    assert (await get_profile(django_site, "cliente-5"))[0] == 200
    await django_site.acontrol(revoke=["cliente-5"])
    assert (await get_profile(django_site, "cliente-5"))[0] == 401
    assert (await get_profile(django_site, "cliente-6", scheme="Bearer"))[0] == 200
    assert (await get_profile(django_site, None))[0] == 401
    calls = await django_site.acalls()
    assert calls["profile_calls"] == 3
    assert calls["profile_probes"] == 1
    assert calls["profile_calls_by_token"] == {"cliente-5": 2, "cliente-6": 1}
    assert calls["profile_schemes"] == {"Token": 2, "Bearer": 1}


def test_state_is_reset_before_each_test(django_site: DjangoSite) -> None:
    # The previous tests revoked cliente-5 and made calls; the autouse fixture undid that.
    calls = django_site.calls()
    assert (calls["profile_calls"], calls["profile_probes"], calls["events"]) == (0, 0, [])
    assert http_get(f"{django_site.base_url}profile/")[0] == 401


async def test_profile_fail_and_slow_modes(django_site: DjangoSite) -> None:
    await django_site.acontrol(profile_mode="fail")
    assert (await get_profile(django_site, "cliente-7"))[0] == 500
    await django_site.acontrol(profile_mode="slow", slow_seconds=0.4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await get_profile(django_site, "cliente-7"))[0] == 200
    assert loop.time() - started >= 0.4


def test_control_rejects_unknown_settings(django_site: DjangoSite) -> None:
    with pytest.raises(ValueError, match="events_mode"):
        django_site.control(events_mode="sometimes")
    with pytest.raises(ValueError, match="unknown keys"):
        django_site.control(evnts_mode="ok")


# --- Django site: events ----------------------------------------------------------------------
async def test_reservation_gets_id_and_estado_from_django(django_site: DjangoSite) -> None:
    status, body = await post_event(
        django_site, "cliente-7", "reservation_created", {**RESERVATION, "estado": "aceptada"}
    )
    assert status == 201
    assert body == {**RESERVATION, "id": 1, "estado": "pendiente", "createdBy": 7}
    status, body = await post_event(django_site, "cliente-7", "reservation_created", RESERVATION)
    assert (status, body and body["id"]) == (201, 2)
    status, body = await post_event(
        django_site,
        "proveedor-3",
        "reservation_accepted",
        {"reservationId": 2, "clienteId": "7", "proveedorId": "3"},
        scheme="Bearer",
    )
    assert status == 201
    assert body is not None
    assert (body["id"], body["estado"], body["createdBy"]) == (2, "aceptada", 3)


async def test_events_are_validated_like_a_django_app(django_site: DjangoSite) -> None:
    assert await post_event(django_site, "cliente-8", "reservation_created", RESERVATION) == (
        403,
        {"detail": "clienteId must be your own id."},
    )
    status, body = await post_event(
        django_site, "cliente-7", "reservation_created", {**RESERVATION, "fecha": "1999-12-31"}
    )
    assert status == 400
    assert body is not None
    assert list(body) == ["fecha"]
    assert isinstance(body["fecha"], list)
    status, body = await post_event(
        django_site, "cliente-7", "reservation_created", {"clienteId": "7"}
    )
    assert status == 400
    assert body is not None
    assert set(body) == {"proveedorId", "servicioId", "fecha"}
    status, _ = await post_event(django_site, "admin-1", "reservation_created", RESERVATION)
    assert status == 201  # admins may act for anyone
    status, _ = await post_event(django_site, "bad-token", "reservation_created", RESERVATION)
    assert status == 401


@pytest.mark.parametrize(
    ("mode", "status", "body"),
    [
        ("reject", 400, {"detail": "Rejected by test"}),
        ("fail", 500, {"detail": "Server error (test)."}),
        ("empty", 204, None),
    ],
)
async def test_events_modes(
    django_site: DjangoSite, mode: str, status: int, body: dict[str, Any] | None
) -> None:
    await django_site.acontrol(events_mode=mode)
    assert await post_event(django_site, "cliente-7", "reservation_created", RESERVATION) == (
        status,
        body,
    )


async def test_events_rooms_and_slow_modes(django_site: DjangoSite) -> None:
    await django_site.acontrol(events_mode="rooms", rooms=["service_9", "location_2"])
    status, body = await post_event(
        django_site, "cliente-1", "comment_created", {"servicioId": "9", "text": "bien"}
    )
    assert status == 201
    assert body is not None
    assert body["rooms"] == ["service_9", "location_2"]
    assert body["text"] == "bien"
    await django_site.acontrol(events_mode="slow", slow_seconds=0.4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    payment = {"clienteId": "1", "proveedorId": "2", "amount": "25.00"}
    status, _ = await post_event(django_site, "cliente-1", "payment_created", payment)
    assert status == 201
    assert loop.time() - started >= 0.4


async def test_idempotency_key_replays_the_first_answer(django_site: DjangoSite) -> None:
    first = await post_event(django_site, "cliente-7", "reservation_created", RESERVATION, "ev-1")
    again = await post_event(django_site, "cliente-7", "reservation_created", RESERVATION, "ev-1")
    other = await post_event(django_site, "cliente-7", "reservation_created", RESERVATION, "ev-2")
    assert first[0] == 201
    assert again == first
    assert other[1] is not None
    assert first[1] is not None
    assert other[1]["id"] == first[1]["id"] + 1
    events = (await django_site.acalls())["events"]
    assert [(e["idempotency_key"], e["replayed"]) for e in events] == [
        ("ev-1", False),
        ("ev-1", True),
        ("ev-2", False),
    ]


async def test_calls_record_what_django_received(django_site: DjangoSite) -> None:
    await post_event(
        django_site, "cliente-7", "reservation_created", RESERVATION, "ev-9", scheme="Bearer"
    )
    await post_event(django_site, "cliente-9", "reservation_created", RESERVATION, "ev-10")
    first, second = (await django_site.acalls())["events"]
    assert first["auth_scheme"] == "Bearer"
    assert first["token"] == "cliente-7"
    assert first["user_id"] == 7
    assert first["body"] == {
        "eventId": "ev-9",
        "type": "reservation_created",
        "payload": RESERVATION,
    }
    assert first["status"] == 201
    assert first["response"]["estado"] == "pendiente"
    assert (second["auth_scheme"], second["status"]) == ("Token", 403)


def test_private_django_site_restarts_on_the_same_port(
    django_factory: Callable[[], DjangoSite],
) -> None:
    site = django_factory()
    site.control(events_mode="fail")
    site.stop()
    with pytest.raises(OSError):
        http_get(f"{site.base_url}profile/", timeout_s=1)
    site.start()
    assert http_get(f"{site.base_url}profile/")[0] == 401
    assert site.calls()["events_mode"] == "ok"  # a new process: fresh state


# --- gateway / worker subprocess fixtures -----------------------------------------------------
FAKE_NODE = textwrap.dedent(
    """
    # Stands in for `python -m gateway` / `python -m worker` to test the fixtures alone.
    import http.server, json, os, signal, sys

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({k: v for k, v in os.environ.items() if k.startswith("GATEWAY_")})
            self.send_response(200 if self.path in ("/healthz", "/env") else 404)
            self.end_headers()
            self.wfile.write(body.encode())

    def on_term(*_):
        print("draining", flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("fake node up", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    http.server.HTTPServer(("127.0.0.1", int(os.environ[sys.argv[1]])), Handler).serve_forever()
    """
)


@pytest.fixture
def fake_module(tmp_path: Path) -> dict[str, str | None]:
    """Put ``fake_node.py`` on the child's path; returns the env entry that does it."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "fake_node.py").write_text(FAKE_NODE)
    return {"PYTHONPATH": str(tmp_path / "fake")}


def test_gateway_process_env_term_kill_and_restart(
    gateway_process: ProcessFactory[GatewayProcess],
    django_site: DjangoSite,
    fake_module: dict[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_PUBLISH_API_KEY", "from-the-outer-shell")
    node = gateway_process(
        {**fake_module, "GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0"},
        module="fake_node",
        args=["GATEWAY_PORT"],
    )
    assert node.ws_url == f"ws://127.0.0.1:{node.port}/ws"
    status, body = http_get(f"{node.http_url}/env")
    env = json.loads(body)
    assert status == 200
    assert env == {
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(node.port),
        "GATEWAY_NODE_ID": node.node_id,
        "GATEWAY_DJANGO_BASE_URL": django_site.base_url,
        "GATEWAY_REDIS_URL": "redis://127.0.0.1:1/0",
    }
    node.term()
    assert node.wait(5) == 0
    assert "fake node up\ndraining\n" in node.logs()
    assert "to stderr" in node.stderr()
    node.start()  # same port: a node restart
    assert http_get(f"{node.http_url}/healthz")[0] == 200
    node.kill()
    assert node.wait(5) == -9


async def test_gateway_process_astart_and_none_removes_a_variable(
    gateway_process: ProcessFactory[GatewayProcess], fake_module: dict[str, str | None]
) -> None:
    node = await gateway_process.astart(
        {**fake_module, "GATEWAY_NODE_ID": None}, module="fake_node", args=["GATEWAY_PORT"]
    )
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{node.http_url}/env") as response,
    ):
        env = json.loads(await response.text())
    assert "GATEWAY_NODE_ID" not in env
    assert env["GATEWAY_PORT"] == str(node.port)


def test_failed_start_reports_the_logs(gateway_process: ProcessFactory[GatewayProcess]) -> None:
    with pytest.raises(ProcessStartError) as info:
        gateway_process(module="no_such_module_here")
    message = str(info.value)
    assert "exited with code 1 before it was ready" in message
    assert "No module named no_such_module_here" in message


def test_worker_process_waits_for_its_healthz(
    worker_process: ProcessFactory[WorkerProcess], fake_module: dict[str, str | None]
) -> None:
    port = free_port()
    worker = worker_process(
        fake_module, module="fake_node", args=["GATEWAY_WORKER_PORT"], port=port
    )
    assert worker.port == port
    env = json.loads(http_get(f"{worker.http_url}/env")[1])
    assert env["GATEWAY_WORKER_PORT"] == str(port)
    assert env["GATEWAY_WORKER_HOST"] == "127.0.0.1"
    assert "GATEWAY_PORT" not in env
