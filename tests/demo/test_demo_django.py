"""The demo Django project, wired to a real gateway node and a real Redis, both ways."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.ports import REPO_ROOT, free_port
from tests.support.processes import ManagedProcess, child_env
from tests.support.redis_server import RedisServer

DEMO = REPO_ROOT / "deploy" / "demo"


class DemoSite(ManagedProcess):
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.port = free_port()
        self.env = child_env({"DEMO_DB": str(tmp / "demo.sqlite3"), "GATEWAY_REDIS_URL": redis_url})
        super().__init__(
            name=f"demo-{self.port}",
            argv=[sys.executable, "manage.py", "runserver", f"127.0.0.1:{self.port}", "--noreload"],
            env=self.env,
            log_dir=tmp,
            cwd=DEMO,
        )

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=DEMO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout

    def ready(self) -> bool:
        return _answers(self.base_url + "profile/")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/"


@pytest.fixture
def demo(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[DemoSite, dict[str, Any]]]:
    site = DemoSite(tmp_path, redis_server.url)
    site.manage("migrate", "-v", "0")
    users = json.loads(site.manage("seed_demo", "--clientes", "2", "--proveedores", "2"))
    site.start()
    yield site, users
    site.stop()


def _answers(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=1)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


async def _post(http: aiohttp.ClientSession, url: str, token: str, body: Any) -> Any:
    headers = {"Authorization": f"Token {token}"}
    async with http.post(url, json=body, headers=headers) as resp:
        assert resp.status < 300, await resp.text()
        return await resp.json()


@pytest.mark.slow
async def test_websocket_reservation_becomes_a_row_and_reaches_the_proveedor(
    demo: Any, make_node: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    site, users = demo
    node = await make_node(redis_server.url, django_base_url=site.base_url)
    cliente, proveedor = users["cliente"][0], users["proveedor"][0]
    c = await node.client(http, token=cliente["token"])
    await c.expect("auth_success")
    p = await node.client(http, token=proveedor["token"])
    auth = await p.expect("auth_success")
    assert auth["data"]["role"] == "proveedor"
    ack = await c.request(
        "reservation_created",
        {
            "clienteId": cliente["id"],
            "proveedorId": proveedor["id"],
            "servicioId": "9",
            "fecha": "2031-05-01T10:00:00Z",
            "estado": "aceptada",  # the client cannot decide this: Django sets "pendiente"
        },
    )
    assert ack["event"] == "ack", ack
    [event] = await p.events(1, room=f"proveedor_{proveedor['id']}")
    assert event["payload"]["estado"] == "pendiente"
    assert event["id"] == ack["data"]["eventId"]
    count = site.manage(
        "shell", "-c", "from marketplace.models import Reservation as R; print(R.objects.count())"
    )
    assert count.strip().splitlines()[-1] == "1"
    # a cliente may not create a reservation for another cliente: Django is never asked
    other = users["cliente"][1]
    reply = await c.request(
        "reservation_created",
        {
            "clienteId": other["id"],
            "proveedorId": proveedor["id"],
            "servicioId": "9",
            "fecha": "2031-05-01T10:00:00Z",
        },
    )
    assert reply["data"]["code"] == "forbidden"


@pytest.mark.slow
async def test_rest_api_publishes_after_commit(
    demo: Any, make_node: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    site, users = demo
    node = await make_node(redis_server.url, django_base_url=site.base_url)
    cliente, proveedor = users["cliente"][0], users["proveedor"][0]
    p = await node.client(http, token=proveedor["token"])
    await p.expect("auth_success")
    c = await node.client(http, token=cliente["token"])
    await c.expect("auth_success")
    created = await _post(
        http,
        site.base_url + "reservations/",
        cliente["token"],
        {"proveedorId": proveedor["id"], "servicioId": "4", "fecha": "2031-06-01T09:00:00Z"},
    )
    [event] = await p.events(1)
    assert event["type"] == "reservation_created"
    assert event["source"] == "publisher"
    assert event["payload"]["id"] == created["id"]
    await _post(
        http, site.base_url + f"reservations/{created['id']}/accept/", proveedor["token"], {}
    )
    accepted = await c.wait_for(
        lambda f: f.get("event") == "event" and f["data"]["type"] == "reservation_accepted"
    )
    assert accepted["data"]["payload"]["estado"] == "aceptada"
    assert accepted["data"]["room"] == f"cliente_{cliente['id']}"


@pytest.mark.slow
def test_publish_on_commit_rolled_back_publishes_nothing(
    demo: Any, redis_server: RedisServer
) -> None:
    site, _ = demo
    script = (
        "from django.db import transaction\n"
        "from gateway.contrib.django import publish_on_commit\n"
        "try:\n"
        "    with transaction.atomic():\n"
        "        publish_on_commit('service_77', 'rolled_back', {'n': 1})\n"
        "        raise RuntimeError('rollback')\n"
        "except RuntimeError:\n"
        "    pass\n"
        "with transaction.atomic():\n"
        "    publish_on_commit('service_78', 'committed', {'n': 2})\n"
    )
    site.manage("shell", "-c", script)
    from gateway.backend.keys import Keys

    r = redis_server.client()
    keys = Keys()
    assert r.exists(keys.room_history("service_77")) == 0
    assert r.hget(keys.room_meta("service_78"), "offset") == b"1"


@pytest.mark.slow
async def test_simplejwt_bearer_tokens_and_logout_disconnects(
    demo: Any, make_node: Any, redis_server: RedisServer, http: aiohttp.ClientSession
) -> None:
    site, users = demo
    node = await make_node(
        redis_server.url, django_base_url=site.base_url, django_auth_scheme="Bearer"
    )
    cliente = users["cliente"][0]
    async with http.post(
        site.base_url + "token/",
        json={"username": cliente["username"], "password": cliente["username"]},
    ) as resp:
        assert resp.status == 200
        jwt = (await resp.json())["access"]
    c = await node.client(http, token=jwt)
    auth = await c.expect("auth_success")
    assert auth["data"]["userId"] == cliente["id"]
    # logging out in Django closes the user's sockets everywhere with 4403
    token_node = await make_node(redis_server.url, django_base_url=site.base_url)
    t = await token_node.client(http, token=cliente["token"])
    await t.expect("auth_success")
    result = await _post(http, site.base_url + "logout/", cliente["token"], {})
    assert result["disconnected"] == 2
    assert await t.wait_closed() == 4403
    assert await c.wait_closed() == 4403
