"""The two ways into ``/ws``: the fast path (gateway.wsconn) for a connection whose first request
is the upgrade, and aiohttp's route for an upgrade that follows other requests on a kept-alive
connection. Both serve the same protocol; raw sockets check what a library client never sends."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from typing import Any

import aiohttp
import orjson

from gateway.wsconn import WsConnection
from tests.security.helpers import RawWebSocket
from tests.support import DjangoSite
from tests.support.nodes import API_KEY
from tests.unit.test_frame_reader import client_frame

UPGRADE = (
    "GET /ws{query} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
)


def protocol_of(node: Any) -> list[str]:
    return [
        type(s.transport._transport.get_protocol()).__name__ for s in node.node.sessions.values()
    ]


async def raw_client(node: Any, query: str = "", after: bytes = b"") -> RawWebSocket:
    host, port = node.http_url.removeprefix("http://").split(":")
    client: RawWebSocket = await RawWebSocket.connect(
        host, int(port), f"/ws{query}", rcvbuf=65536, after=after
    )
    return client


async def next_json(client: RawWebSocket) -> dict[str, Any]:
    opcode, payload = await asyncio.wait_for(client.read_frame(), 5)
    assert opcode == 1, (opcode, payload)
    return dict(orjson.loads(payload))


async def closed_with(client: RawWebSocket) -> int:
    """The code of the server's close frame (answered); then the server must end TCP."""
    while True:
        opcode, payload = await asyncio.wait_for(client.read_frame(), 5)
        if opcode == 8:
            break
    client.writer.write(client_frame(payload[:2], 8))
    assert await asyncio.wait_for(client.reader.read(), 5) == b""  # FIN, not a hang
    return int.from_bytes(payload[:2], "big")


async def open_tcp(node: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A bare TCP connection to the node and an upgrade request to send on it."""
    host, port = node.http_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    return reader, writer, UPGRADE.format(query="", key=key).encode()


async def test_both_paths_serve_the_whole_protocol(make_node: Any, http: Any) -> None:
    node = await make_node()
    fresh = await node.client(http, token="cliente-1")
    assert (await fresh.wait_for(lambda f: f["event"] == "auth_success"))["data"]["userId"] == "1"
    assert protocol_of(node) == ["WsConnection"]
    # the same kept-alive connection: a plain request first, then the upgrade (aiohttp's route)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
        async with one.get(f"{node.http_url}/healthz") as response:
            assert response.status == 200
        reused = await node.client(one, token="cliente-2")
        await reused.wait_for(lambda f: f["event"] == "auth_success")
        # upgraded by aiohttp's route, then read by the fast path's protocol (wstakeover);
        # aiohttp still counts the connection (its graceful shutdown waits for it)
        assert protocol_of(node) == ["WsConnection", "WsConnection"]
        aiohttp_server = node.server.runner.server
        [handler] = aiohttp_server.connections
        for client in (fresh, reused):
            assert (await client.join("service_9"))["room"] == "service_9"
        async with http.post(
            f"{node.http_url}/api/publish",
            json={"room": "service_9", "type": "notification", "payload": {"n": 1}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 200, await response.text()
        for client in (fresh, reused):
            frame = await client.wait_for(lambda f: f["event"] == "event")
            assert (frame["data"]["type"], frame["data"]["payload"]) == ("notification", {"n": 1})
        await reused.ws.close()
    await fresh.ws.close()
    await asyncio.sleep(0.1)
    assert node.node.sessions == {}
    assert handler not in aiohttp_server.connections  # told when the taken-over one ended


async def test_frames_that_arrive_with_the_upgrade_request_are_read(make_node: Any) -> None:
    node = await make_node()
    first = client_frame(b'{"event":"ping","id":1}') + client_frame(b'{"event":"ping","id":2}')
    client = await raw_client(node, after=first)
    assert await next_json(client) == {"event": "pong", "data": {}, "id": 1}
    assert await next_json(client) == {"event": "pong", "data": {}, "id": 2}
    client.close()


async def test_fragmented_messages_pings_and_binary_frames(make_node: Any) -> None:
    node = await make_node()
    client = await raw_client(node)
    client.writer.write(client_frame(b'{"event":"pi', fin=False))
    client.writer.write(client_frame(b"hello", 9))  # a ping between the fragments
    client.writer.write(client_frame(b'ng","id":7}', 0))
    assert await client.read_frame() == (0xA, b"hello")
    assert await next_json(client) == {"event": "pong", "data": {}, "id": 7}
    client.writer.write(client_frame(b'{"event":"ping"}', 2))
    error = await next_json(client)
    assert error["event"] == "error" and error["data"]["code"] == "bad_request"
    client.close()


async def test_protocol_violations_close_with_their_code(make_node: Any) -> None:
    node = await make_node(max_message_bytes=1024)
    cases = [
        (client_frame(b'{"event":"ping"}', mask=False), 1002),
        (client_frame(b"\xff\xfe"), 1007),
        (client_frame(b"x" * 5000), 1009),
    ]
    for frame, code in cases:
        client = await raw_client(node)
        client.writer.write(frame)
        assert await closed_with(client) == code
    await asyncio.sleep(0.1)
    assert node.node.sessions == {}


async def test_replies_queued_before_the_clients_close_go_out_first(make_node: Any) -> None:
    node = await make_node()
    client = await raw_client(node)
    client.writer.write(client_frame(b'{"event":"ping","id":1}') + client_frame(b"\x0f\xa0", 8))
    assert await next_json(client) == {"event": "pong", "data": {}, "id": 1}
    opcode, payload = await client.read_frame()
    assert (opcode, payload[:2]) == (8, b"\x0f\xa0")  # our answer echoes the client's code
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
    await asyncio.sleep(0.1)
    assert node.node.sessions == {}


async def test_refused_upgrades_are_answered_by_aiohttp(make_node: Any, http: Any) -> None:
    node = await make_node(max_connections=1)
    first = await node.client(http)
    response = await http.get(
        node.ws_url.replace("ws://", "http://"),
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        },
    )
    assert response.status == 503
    assert (await response.json()) == {"error": "node_full"}
    await first.ws.close()


def test_a_fast_path_connection_has_no_instance_dict() -> None:
    # thousands of idle connections: each is this object (slots only), a WsTransport, a Session
    assert not hasattr(WsConnection.__new__(WsConnection), "__dict__")


async def test_the_upgrade_waits_for_the_token_only_when_django_need_not_be_asked(
    make_node: Any, django_site: DjangoSite
) -> None:
    """A cached ``?token=`` is answered in one send (101 and auth_success together); a token
    Django must verify gets its 101 at once, and auth_success when Django answers."""
    node = await make_node()
    await django_site.acontrol(profile_mode="slow", slow_seconds=1.0)
    started = time.monotonic()
    cold = await raw_client(node, "?token=cliente-77")
    assert time.monotonic() - started < 0.8  # upgraded before Django answered
    assert (await next_json(cold))["event"] == "auth_success"
    assert time.monotonic() - started >= 1.0
    await django_site.acontrol(reset=True)
    # cached now: the first read holds the 101 and the frame, written in one send
    host, port = node.http_url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    with socket.create_connection((host, int(port))) as sock:
        sock.setblocking(False)
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, UPGRADE.format(query="?token=cliente-77", key=key).encode())
        first = await asyncio.wait_for(loop.sock_recv(sock, 65536), 5)
    assert first.startswith(b"HTTP/1.1 101 ")
    assert b'"event":"auth_success"' in first
    cold.close()


async def test_a_request_head_in_pieces_is_still_upgraded_here(make_node: Any) -> None:
    node = await make_node()
    reader, writer, request = await open_tcp(node)
    for cut in (5, 40, len(request) - 3, len(request) - 1):  # the blank line split as well
        writer.write(request[:cut])
        request = request[cut:]
        await writer.drain()
        await asyncio.sleep(0.02)
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert protocol_of(node) == ["WsConnection"]
    writer.close()


async def test_an_oversized_request_head_is_answered_by_aiohttp(make_node: Any) -> None:
    node = await make_node()
    reader, writer, request = await open_tcp(node)
    writer.write(request[:-2] + b"X-Filler: " + b"a" * 10_000 + b"\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), 5)
    assert status.split()[1] in (b"400", b"431"), status
    assert node.node.sessions == {}
    writer.close()


async def test_a_failing_frame_closes_1011_and_the_frames_after_it_are_still_read(
    make_node: Any,
) -> None:
    """A bug while handling one frame (injected here) closes the connection with 1011; the
    client's close frame queued behind it is still answered, so TCP ends at once."""
    node = await make_node()
    handle = node.node.handle

    async def failing(session: Any, raw: str | bytes) -> None:
        if raw == "boom":
            raise RuntimeError("injected")
        await handle(session, raw)

    node.node.handle = failing
    client = await raw_client(node)
    client.writer.write(
        client_frame(b'{"event":"ping","id":1}')
        + client_frame(b"boom")
        + client_frame(b"\x03\xe8", 8)
    )
    assert await next_json(client) == {"event": "pong", "data": {}, "id": 1}
    opcode, payload = await asyncio.wait_for(client.read_frame(), 5)
    assert (opcode, int.from_bytes(payload[:2], "big")) == (8, 1011)
    # not the 5 s wait for an answer: the client's close frame, queued behind, was read
    assert await asyncio.wait_for(client.reader.read(), 2) == b""
