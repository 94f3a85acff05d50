"""The cutover of the release without per-connection user sets and clients hashes
(docs/deployment.md): a node and a ``Publisher`` of the release before it (this repository at
``BEFORE``) beside a node of this tree on one Redis.

Every ``disconnect`` closes the user's connections on both releases' nodes; what it counts
differs by release (an old one counts its set, which new nodes do not write). A killed old node
leaves its clients hash and user set entries: this release's janitor removes them.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.backend.keys import Keys
from gateway.backend.redis_online import connections_of
from gateway.publish import Publisher
from tests.support.ports import eventually
from tests.support.processes import child_env
from tests.support.releases import extract_release
from tests.support.wsclient import WsClient

BEFORE = "65e8475"  # the last commit whose nodes wrote user:{id}:connections and node:{N}:clients
KEYS = Keys("gateway")
DASHBOARD = "cutover-dashboard"
API_KEY = "cutover-key"


@pytest.fixture(scope="module")
def release_before(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_release(BEFORE, tmp_path_factory.mktemp("release-before"))


async def old_publisher_disconnect(release: Path, url: str, user_id: str) -> int:
    """``Publisher.disconnect`` of the release before, in its own process (Django still on the
    previous ``gateway`` package)."""
    script = (
        "from gateway.publish import Publisher\n"
        f"p = Publisher.from_url({url!r})\n"
        f"print(p.disconnect({user_id!r}))\n"
        "p.close()\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        env=child_env({"PYTHONPATH": str(release)}),
        cwd=release,  # ``-c`` puts the working directory first on sys.path
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return int(out.decode().split()[-1])


async def connect_with_id(http: Any, node: Any, token: str) -> tuple[WsClient, str]:
    client = await WsClient.connect(http, node.ws_url, token)
    return client, (await client.expect("auth_success"))["data"]["connectionId"]


async def connect(http: Any, node: Any, token: str) -> WsClient:
    return (await connect_with_id(http, node, token))[0]


async def all_closed_4403(clients: list[WsClient]) -> None:
    for client in clients:
        assert await client.wait_closed(timeout=5) == 4403


@pytest.mark.slow
async def test_disconnect_across_releases_closes_everything_and_counts_by_release(
    release_before: Path, redis_server: Any, gateway_process: Any, http: Any
) -> None:
    env = {
        "GATEWAY_REDIS_URL": redis_server.url,
        "GATEWAY_PUBLISH_API_KEY": API_KEY,
        "GATEWAY_DASHBOARD_TOKEN": DASHBOARD,
        "GATEWAY_NODE_LEASE_S": "2",
        "GATEWAY_NODE_HEARTBEAT_S": "0.5",
    }
    old = await gateway_process.astart({**env, "PYTHONPATH": str(release_before)})
    new = await gateway_process.astart(env)
    redis = redis_server.client()
    publisher = Publisher.from_url(redis_server.url)

    def counted(user_id: str) -> int:
        return connections_of(redis.hgetall(KEYS.user_online(user_id)))

    async def api_disconnect(node: Any, user_id: str) -> int:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        url = f"{node.http_url}/api/disconnect"
        async with http.post(url, json={"userId": user_id}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            return int((await resp.json())["disconnected"])

    try:
        # the old release's Publisher counts its set: the old node's connection only
        first, on_old = await connect_with_id(http, old, "cliente-5")
        clients = [
            first,
            await connect(http, new, "cliente-5"),
            await connect(http, new, "cliente-5"),
        ]
        assert counted("5") == 3  # both releases keep user_online
        assert redis.smembers(KEYS.user_connections("5")) == {on_old.encode()}
        assert await old_publisher_disconnect(release_before, redis_server.url, "5") == 1
        await all_closed_4403(clients)
        await eventually(lambda: counted("5") == 0, 5, "the closes counted")

        # this release's Publisher and API count both releases' connections
        clients = [await connect(http, old, "cliente-5"), await connect(http, new, "cliente-5")]
        assert await asyncio.to_thread(publisher.disconnect, "5") == 2
        await all_closed_4403(clients)
        await eventually(lambda: counted("5") == 0, 5, "the closes counted")
        clients = [await connect(http, old, "cliente-5"), await connect(http, new, "cliente-5")]
        assert await api_disconnect(new, "5") == 2
        await all_closed_4403(clients)
        await eventually(lambda: counted("5") == 0, 5, "the closes counted")
        # the old node's API counts the set: its own connection only, and closes both
        clients = [await connect(http, old, "cliente-5"), await connect(http, new, "cliente-5")]
        assert await api_disconnect(old, "5") == 1
        await all_closed_4403(clients)

        # an old node killed leaves its clients hash and the user's set; the new janitor
        # (POST /dashboard/cleanup) removes them, the new node's accounting its count
        _, victim = await connect_with_id(http, old, "cliente-6")
        survivor = await connect(http, new, "cliente-6")
        assert redis.hgetall(KEYS.node_clients(old.node_id)) == {victim.encode(): b"6"}
        assert redis.smembers(KEYS.user_connections("6")) == {victim.encode()}
        old.kill()
        await eventually(lambda: counted("6") == 1, 15, "the dead node's count swept")
        headers = {"Authorization": f"Bearer {DASHBOARD}"}
        async with http.post(f"{new.http_url}/dashboard/cleanup", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            removed = (await resp.json())["removed"]
        assert removed["nodes"] == 1 and removed["connections"] == 1, removed
        assert redis.exists(KEYS.node_clients(old.node_id), KEYS.user_connections("6")) == 0
        assert redis.exists(KEYS.node_memberships(old.node_id)) == 0
        assert await asyncio.to_thread(publisher.disconnect, "6") == 1
        await all_closed_4403([survivor])
    finally:
        publisher.close()
    assert "Traceback" not in new.logs()
