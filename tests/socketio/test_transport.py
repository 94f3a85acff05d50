"""Engine.IO and Socket.IO transport behaviour (docs/socketio.md): heartbeat, refusals of what
the gateway does not serve (Engine.IO 3, binary, other namespaces, foreign Origins), and the
disconnect reasons socket.io-client sees. Memory backend: none of this depends on the backend.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.socketio.conftest import EngineSocket, connected, engine_url
from tests.support.nodes import API_KEY

pytestmark = pytest.mark.node


async def wait_sessions(node: Any, count: int, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while len(node.node.sessions) != count:
            await asyncio.sleep(0.02)


# --- heartbeat --------------------------------------------------------------------------------
async def test_a_client_that_stops_answering_pings_is_dropped(make_node: Any, http: Any) -> None:
    node = await make_node(socketio_ping_interval_s=0.3, socketio_ping_timeout_s=0.3)
    raw = await EngineSocket.connect(http, engine_url(node))
    assert raw.open["pingInterval"] == 300 and raw.open["pingTimeout"] == 300
    assert raw.open["upgrades"] == [] and raw.open["maxPayload"] == node.settings.max_message_bytes
    await raw.send('40{"token":"cliente-7"}')
    assert orjson.loads((await raw.receive_text())[2:])["sid"]
    assert '"auth_success"' in await raw.receive_text()
    assert len(node.node.sessions) == 1

    # answer two pings, then fall silent
    for _ in range(2):
        assert await raw.receive_text(skip_pings=False) == "2"
        await raw.send("3")
    started = time.monotonic()
    assert await raw.receive_text(skip_pings=False) == "2"
    end = await raw.receive_close(timeout_s=3)
    assert end.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), end
    assert time.monotonic() - started < 1.5  # ping timeout (0.3 s), not some later cleanup
    await wait_sessions(node, 0)
    assert "7" not in node.node.by_user


async def test_pongs_keep_a_client_alive_while_django_is_slow_and_stop_pong_drops_it(
    make_node: Any, sio: Any, django_site: Any
) -> None:
    node = await make_node(socketio_ping_interval_s=0.3, socketio_ping_timeout_s=0.3)
    client = await sio(node, token="cliente-7")
    first_id = (await connected(client, token="cliente-7"))["connectionId"]

    # a business event waits ~1 s on Django, over three ping rounds: the pongs still go out
    await django_site.acontrol(events_mode="slow", slow_seconds=1.0)
    started = time.monotonic()
    ack = await client.request("comment_created", {"servicioId": "1", "text": "slow"})
    assert ack["event"] == "comment_created", ack
    assert time.monotonic() - started >= 1.0
    assert await client.request("ping") == {}
    assert not [line for line in client.lines if line["kind"] == "disconnect"]
    assert list(node.node.sessions) == [first_id]

    # a client that stops answering pings: the server drops it, the client reconnects
    await client.send(op="stop_pong")
    await client.expect("pong_stopped")
    assert (await client.expect("disconnect", 5))["reason"] == "transport close"
    second_id = (await connected(client, token="cliente-7"))["connectionId"]
    assert second_id != first_id
    await wait_sessions(node, 1)
    assert list(node.node.sessions) == [second_id]


# --- what is not served -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "query", "code", "needles"),
    [
        ("POST", "EIO=4&transport=polling", 2, ["Bad handshake method"]),
        ("PUT", "EIO=4&transport=polling&sid=x", 2, ["Bad handshake method"]),
        ("GET", "EIO=3&transport=polling", 5, ["EIO=3", "Engine.IO 4"]),
        ("GET", "EIO=3&transport=websocket", 5, ["EIO=3", "Engine.IO 4"]),
        ("GET", "transport=websocket", 5, ["no EIO parameter"]),
        ("GET", "EIO=4&transport=carrier-pigeon", 0, ["Transport unknown"]),
        ("GET", "EIO=4&transport=polling&sid=abc", 1, ["Session ID unknown"]),
        ("POST", "EIO=4&transport=polling&sid=abc", 1, ["Session ID unknown"]),
        ("GET", "EIO=4&transport=websocket", 3, ["WebSocket upgrade"]),
    ],
)
async def test_http_requests_get_engineio_errors(
    make_node: Any, http: Any, method: str, query: str, code: int, needles: list[str]
) -> None:
    node = await make_node()
    async with http.request(method, f"{node.http_url}/socket.io/?{query}", data="40") as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["code"] == code and set(body) == {"code", "message"}
    for needle in needles:
        assert needle in body["message"]
    assert node.node.sessions == {}


async def test_real_client_refusals_engineio_3_namespace_and_origin(
    make_node: Any, sio: Any, http: Any
) -> None:
    node = await make_node(allowed_origins="http://good.example")
    admin, foreign, foreign_polling = await asyncio.gather(
        sio(f"{node.http_url}/admin", reconnection=False),
        sio(node, reconnection=False, extraHeaders={"Origin": "http://evil.example"}),
        sio(
            node,
            transports=["polling"],
            reconnection=False,
            extraHeaders={"Origin": "http://evil.example"},
        ),
    )

    error = await admin.expect("connect_error")
    assert error["message"] == "Invalid namespace: this gateway serves only '/'"

    error = await foreign.expect("connect_error")
    assert error["message"] == "websocket error"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(engine_url(node), origin="http://evil.example")
    assert refused.value.status == 403
    error = await foreign_polling.expect("connect_error")
    assert (error["message"], error["description"]) == ("xhr poll error", 403)
    good = await EngineSocket.connect(http, engine_url(node), origin="http://good.example")
    await good.send("40")
    assert (await good.receive_text()).startswith('40{"sid":')
    await good.close()
    # socket.io-client sends its own EIO=4 whatever the query says: the refusal of Engine.IO 3
    # is for socket.io-client 2.x (a raw request stands for it)
    async with http.get(f"{node.http_url}/socket.io/?EIO=3&transport=polling") as response:
        assert response.status == 400
        assert "Engine.IO 4" in (await response.json())["message"]
    for client in (admin, foreign, foreign_polling):
        assert not [line for line in client.lines if line["kind"] == "connect"]


# --- malformed and binary packets ---------------------------------------------------------------
async def test_binary_and_malformed_packets_get_bad_request_and_the_connection_stays(
    make_node: Any, sio: Any, http: Any
) -> None:
    node = await make_node()
    client = await sio(node, token="cliente-7")
    await connected(client, token="cliente-7")

    seq = await client.emit("comment_created", "file bytes", ack=True, binary=True)
    refused = (await client.expect("ack", seq=seq))["data"]
    assert refused["error"]["code"] == "bad_request"
    assert refused["error"]["message"] == (
        "binary payloads are not supported: send JSON (encode bytes as base64 strings)"
    )
    await client.emit("comment_created", "more bytes", binary=True)  # no callback: an event
    assert (await client.expect("event", name="error"))["data"]["code"] == "bad_request"
    seq = await client.emit("ping", ack=True, args=[{"a": 1}, 2])
    several = (await client.expect("ack", seq=seq))["data"]
    assert (
        several["error"]["code"] == "bad_request"
        and "one data argument" in several["error"]["message"]
    )
    # still connected and usable, on the same connection
    assert await client.request("ping") == {}
    # one refusal per packet: the discarded attachments got none of their own
    assert not [line for line in client.unread() if line.get("name") == "error"]
    assert (await client.request("join_room", {"room": "service_1"}))["room"] == "service_1"
    assert [line["kind"] for line in client.lines].count("connect") == 1
    assert not [line for line in client.lines if line["kind"] == "disconnect"]

    # what socket.io-client never sends, over a raw socket
    raw = await EngineSocket.connect(http, engine_url(node))
    await raw.send('40{"token":"cliente-8"}')
    await raw.receive_text()  # 40{"sid"}
    await raw.receive_text()  # auth_success
    for packet, ack_id in [
        ('425["ping",', 5),
        ("4", None),
        ("x", None),
        ('42/chat,["ping"]', None),
    ]:
        await raw.send(packet)
        reply = await raw.receive_text()
        if ack_id is None:
            name, data = orjson.loads(reply[2:])
            assert name == "error", reply
        else:
            assert reply.startswith(f"43{ack_id}["), reply
            data = orjson.loads(reply[2 + len(str(ack_id)) :])[0]["error"]
        assert data["code"] == "bad_request", (packet, reply)
    await raw.ws.send_bytes(b"\x00stray")
    assert '"bad_request"' in await raw.receive_text()
    await raw.send('427["ping"]')
    assert await raw.receive_text() == "437[{}]"
    await raw.close()


async def test_an_event_before_connect_is_a_connect_error_then_a_close(
    make_node: Any, http: Any
) -> None:
    node = await make_node()
    raw = await EngineSocket.connect(http, engine_url(node))
    await raw.send('42["ping"]')
    reply = await raw.receive_text()
    assert reply.startswith("44") and "CONNECT" in orjson.loads(reply[2:])["message"]
    end = await raw.receive_close()
    assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, 1002)
    await wait_sessions(node, 0)


# --- disconnect reasons -------------------------------------------------------------------------
async def test_4401_and_4403_are_io_server_disconnect_without_reconnection(
    make_node: Any, sio: Any, http: Any
) -> None:
    node = await make_node()
    bogus, victim = await asyncio.gather(sio(node, token="bogus"), sio(node, token="cliente-7"))
    # a token refused in the CONNECT: connect_error with the code, `connect` never fires
    error = await bogus.expect("connect_error")
    assert error["message"] == "invalid_token"
    assert error["data"] == {"code": "invalid_token", "message": "invalid token"}

    await connected(victim, token="cliente-7")
    async with http.post(
        f"{node.http_url}/api/disconnect",
        json={"userId": "7"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        assert (await response.json()) == {"disconnected": 1}
    assert (await victim.expect("disconnect"))["reason"] == "io server disconnect"

    # socket.io-client would retry within 1.5 s (reconnectionDelay 1 s, randomization 0.5)
    await asyncio.gather(
        bogus.expect_nothing("connect", 2.0), victim.expect_nothing("connect", 2.0)
    )
    assert not [line for line in bogus.lines if line["kind"] in ("event", "reconnect_attempt")]
    assert node.node.sessions == {}


async def test_retryable_closes_are_transport_close_and_the_client_comes_back(
    make_node: Any, sio: Any, django_site: Any
) -> None:
    node = await make_node(auth_timeout_s=1.0)
    await django_site.acontrol(profile_mode="fail")  # Django down: auth_unavailable, 1013
    flaky, idle = await asyncio.gather(sio(node, token="cliente-7"), sio(node, reconnection=False))
    # auth_unavailable in the CONNECT: a transport close, never a connect or a connect_error
    assert (await flaky.expect("disconnect"))["reason"] == "transport close"
    assert not [line for line in flaky.lines if line["kind"] in ("connect", "connect_error")]
    await django_site.acontrol(profile_mode="ok")
    me = await connected(flaky, token="cliente-7")  # reconnected and authenticated by itself
    assert node.node.sessions[me["connectionId"]].identity.user_id == "7"

    # connected but never authenticated: 4408 after auth_timeout_s, a transport close
    await idle.expect("connect")
    assert (await idle.expect("disconnect", 5))["reason"] == "transport close"
    assert list(node.node.sessions) == [me["connectionId"]]

    # a draining node (1012): a transport close, and the client tries again (elsewhere)
    await node.node.drain(0)
    assert (await flaky.expect("disconnect"))["reason"] == "transport close"
    refused = await flaky.expect("connect_error", 5)  # this node refuses while draining
    assert refused["message"] == "websocket error"
