"""Gateway nodes running in the test's own event loop on real sockets (aiohttp TestServer)."""

from __future__ import annotations

import itertools
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.app import DASHBOARD_TOKEN, NODE, create_app
from gateway.config import Settings, load_settings
from gateway.node import Node
from gateway.wsconn import GatewayRunner
from tests.support.wsclient import WsClient

_seq = itertools.count(1)

DASHBOARD = "test-dashboard-token"
API_KEY = "test-publish-key"


class RunningNode:
    def __init__(self, server: TestServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings

    @property
    def node(self) -> Node:
        return self.server.app[NODE]

    @property
    def http_url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def ws_url(self) -> str:
        return self.http_url.replace("http://", "ws://") + "/ws"

    @property
    def dashboard_token(self) -> str:
        return self.server.app[DASHBOARD_TOKEN]

    async def client(
        self, session: aiohttp.ClientSession, token: str | None = None, **kw: Any
    ) -> WsClient:
        return await WsClient.connect(session, self.ws_url, token, **kw)

    async def stop(self) -> None:
        await self.server.close()


def node_settings(django_base_url: str, redis_url: str | None = None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "port": 0,
        "host": "127.0.0.1",
        "node_id": f"test-node-{next(_seq)}",
        "django_base_url": django_base_url,
        "redis_url": redis_url,
        "dashboard_token": DASHBOARD,
        "publish_api_key": API_KEY,
        "node_heartbeat_s": 0.5,
        "django_probe_s": 2.0,
        "unsubscribe_delay_s": 0.2,
        "pubsub_probe_s": 1.0,
    }
    values.update(overrides)
    return load_settings(**values)


class GatewayTestServer(TestServer):
    """aiohttp's TestServer with the gateway's runner, as ``python -m gateway`` serves."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return GatewayRunner(self.app, **kwargs)


async def start_node(settings: Settings) -> RunningNode:
    server = GatewayTestServer(create_app(settings), host="127.0.0.1", port=0)
    await server.start_server()
    return RunningNode(server, settings)
