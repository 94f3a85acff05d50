"""Fixtures for the Socket.IO transport tests: the real ``socket.io-client`` (a Node process per
client, driven through ``tests/js/sio_driver.py``) and raw Engine.IO WebSockets over aiohttp.

Every test module here carries ``pytestmark = pytest.mark.node``. A driver costs 0.3 s or more
to start (seconds on a busy machine): tests reuse clients, and start the ones they need together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from tests.js.sio_driver import SioDriver
from tests.support.nodes import RunningNode

SIO_QUERY = "/socket.io/?EIO=4&transport=websocket"


def engine_url(node: RunningNode, query: str = SIO_QUERY) -> str:
    """The raw Engine.IO WebSocket URL of a node."""
    return node.http_url.replace("http://", "ws://") + query


@pytest.fixture
async def sio(make_node: Any) -> AsyncIterator[Any]:
    """``await sio(node_or_url, token=None, **options)`` starts the real socket.io-client:
    ``io(url, {transports: ["websocket"], auth: {token}, ...options})``. Every driver is closed
    (its Node process ended) at teardown, before the nodes stop."""
    drivers: list[SioDriver] = []

    async def start(target: RunningNode | str, token: str | None = None, **options: Any) -> Any:
        url = target if isinstance(target, str) else target.http_url
        driver = await SioDriver.start(url, token=token, options=options or None)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        await driver.close()


async def connected(driver: SioDriver, token: str | None = None) -> dict[str, Any]:
    """Wait for the client's ``connect``; with the ``auth`` option, for ``auth_success`` too,
    and return its data (the ``connect`` line when there is no token)."""
    line = await driver.expect("connect")
    if token is None:
        return line
    data = (await driver.expect("event", name="auth_success"))["data"]
    assert data["connectionId"] == line["id"], (data, line)  # socket.id is the connection id
    return dict(data)


class EngineSocket:
    """A raw Engine.IO 4 WebSocket: what socket.io-client would not send, and a client that
    never answers pings. ``open`` is the handshake packet's data."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, open_packet: dict[str, Any]) -> None:
        self.ws = ws
        self.open = open_packet

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, **kw: Any) -> EngineSocket:
        ws = await http.ws_connect(url, autoping=True, **kw)
        first = await ws.receive(timeout=5)
        assert first.type is aiohttp.WSMsgType.TEXT and first.data.startswith("0"), first
        return cls(ws, orjson.loads(first.data[1:]))

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def receive_text(self, timeout_s: float = 5.0, skip_pings: bool = True) -> str:
        """The next text packet (Engine.IO pings skipped unless asked)."""
        while True:
            msg = await self.ws.receive(timeout=timeout_s)
            assert msg.type is aiohttp.WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
            if skip_pings and msg.data == "2":
                await self.ws.send_str("3")
                continue
            return str(msg.data)

    async def receive_close(self, timeout_s: float = 5.0) -> aiohttp.WSMessage:
        """Read on until the connection ends; the message that ended it."""
        while True:
            msg = await self.ws.receive(timeout=timeout_s)
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                return msg

    async def close(self) -> None:
        await self.ws.close()
