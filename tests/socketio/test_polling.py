"""Engine.IO long-polling on one node (contract §7, "Polling limits"), with raw HTTP where the
client library would never do what is tested, and the real socket.io-client otherwise: the
handshake, the text encoding, the limits, and the upgrade to a WebSocket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.socketio.conftest import connected
from tests.socketio.test_client import api_publish, event_in

pytestmark = pytest.mark.node

POLLING = "/socket.io/?EIO=4&transport=polling"
UNKNOWN = {"code": 1, "message": "Session ID unknown"}


class Poller:
    """A raw long-polling client: ``open`` is the handshake's OPEN packet."""

    def __init__(self, http: aiohttp.ClientSession, base: str, open_packet: dict[str, Any]) -> None:
        self.http = http
        self.open = open_packet
        self.url = f"{base}{POLLING}&sid={open_packet['sid']}"

    @classmethod
    async def handshake(cls, http: aiohttp.ClientSession, base: str) -> Poller:
        async with http.get(base + POLLING) as response:
            assert response.status == 200, await response.text()
            assert response.content_type == "text/plain"
            body = await response.text()
        assert body.startswith("0"), body
        return cls(http, base, orjson.loads(body[1:]))

    async def get(self) -> tuple[int, str]:
        async with self.http.get(self.url) as response:
            return response.status, await response.text()

    async def post(self, body: str | bytes, **kw: Any) -> tuple[int, str]:
        async with self.http.post(self.url, data=body, **kw) as response:
            return response.status, await response.text()

    async def packets(self) -> list[str]:
        """The packets of the next long-poll (pings answered and left out)."""
        while True:
            status, body = await self.get()
            assert status == 200, body
            packets = body.split("\x1e")
            if "2" in packets:
                assert await self.post("3") == (200, "ok")
            packets = [p for p in packets if p != "2"]
            if packets:
                return packets


async def gone(node: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while node.node.sessions:
            await asyncio.sleep(0.02)


async def test_the_whole_protocol_over_long_polling(make_node: Any, http: Any) -> None:
    node = await make_node(max_message_bytes=4096)
    poller = await Poller.handshake(http, node.http_url)
    assert poller.open["upgrades"] == ["websocket"]
    assert poller.open["maxPayload"] == 4096  # GATEWAY_MAX_MESSAGE_BYTES
    assert set(poller.open) == {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}

    # one POST carries several packets, separated by 0x1e, handled in order
    body = '40{"token":"cliente-7"}\x1e421["join_room",{"room":"service_1"}]\x1e422["ping"]'
    assert await poller.post(body) == (200, "ok")
    packets = await poller.packets()
    while len(packets) < 4:
        packets += await poller.packets()
    connect, auth, joined, pong = packets
    assert orjson.loads(connect[2:])["sid"] in node.node.sessions
    assert orjson.loads(connect[2:])["pid"]  # connection state recovery is offered
    assert auth.startswith('42["auth_success"')
    assert orjson.loads(joined[3:])[0]["room"] == "service_1" and joined.startswith("431[")
    assert pong == "432[{}]"

    # a publication arrives as an event, with the recovery offset as a last argument
    await api_publish(http, node, "service_1", "offer", {"n": 1})
    (event,) = await poller.packets()
    name, data, offset = orjson.loads(event[2:])
    assert (name, data["offset"], data["payload"]) == ("event", 1, {"n": 1})
    assert isinstance(offset, str) and offset.startswith("1;")

    # binary is refused clearly, and the session goes on
    status, text = await poller.post(
        b"\x00\x01", headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 400 and "binary" in orjson.loads(text)["message"]
    assert await poller.post('451-["comment_created",{"_placeholder":true,"num":0}]') == (200, "ok")
    (refusal,) = await poller.packets()
    assert orjson.loads(refusal[2:])[1]["code"] == "bad_request"
    assert await poller.post("bAQID") == (200, "ok")  # the base64 attachment: discarded
    assert await poller.post('42["ping"]') == (200, "ok")
    assert await poller.packets() == ['42["pong",{}]']

    # the client's CLOSE ends the session
    assert await poller.post("1") == (200, "ok")
    await gone(node)


async def test_polling_limits(make_node: Any, http: Any) -> None:
    node = await make_node(max_message_bytes=1024)
    # an unknown sid, on a GET and on a POST: Engine.IO's body
    for method in ("GET", "POST"):
        async with http.request(method, f"{node.http_url}{POLLING}&sid=nope.bm9k") as response:
            assert response.status == 400
            assert await response.json() == UNKNOWN

    # a POST body over GATEWAY_MAX_MESSAGE_BYTES: 413, and the session (whose packets were
    # lost) is closed
    big = await Poller.handshake(http, node.http_url)
    status, text = await big.post("4" + "x" * 1024)
    assert status == 413 and "1024" in orjson.loads(text)["message"]
    await gone(node)
    assert await big.get() == (200, "1")  # its last long-poll: the CLOSE
    status, text = await big.get()
    assert (status, orjson.loads(text)) == (400, UNKNOWN)

    # a body of exactly the limit is fine
    exact = await Poller.handshake(http, node.http_url)
    filler = "x" * (1024 - len('40{"token":"cliente-7","pad":""}'))
    assert await exact.post('40{"token":"cliente-7","pad":"' + filler + '"}') == (200, "ok")
    received = await exact.packets()
    assert received[0].startswith("40")
    while not any(p.startswith('42["auth_success"') for p in received):
        received += await exact.packets()

    # a second long-poll while one is pending: 400, and the session is closed
    pending = asyncio.create_task(exact.get())
    await asyncio.sleep(0.3)  # the first GET is waiting
    status, text = await exact.get()
    assert status == 400 and "already pending" in orjson.loads(text)["message"]
    assert (await pending)[0] == 200
    await gone(node)


async def test_a_silent_polling_session_is_closed_after_ping_interval_plus_timeout(
    make_node: Any, http: Any
) -> None:
    node = await make_node(socketio_ping_interval_s=0.5, socketio_ping_timeout_s=0.5)
    poller = await Poller.handshake(http, node.http_url)
    assert (poller.open["pingInterval"], poller.open["pingTimeout"]) == (500, 500)
    assert await poller.post('40{"token":"cliente-7"}') == (200, "ok")
    await asyncio.sleep(0.2)
    assert len(node.node.sessions) == 1
    # it answers pings for a while...
    for _ in range(2):
        status, body = await poller.get()
        assert status == 200
        if "2" in body.split("\x1e"):
            assert await poller.post("3") == (200, "ok")
    assert len(node.node.sessions) == 1
    # ...then falls silent: no poll, no pong
    await gone(node, timeout_s=3.0)


async def test_socketio_client_polling_only_and_upgraded_on_one_node(
    make_node: Any, sio: Any, http: Any
) -> None:
    node = await make_node()
    polling, upgraded = await asyncio.gather(
        sio(node, token="cliente-7", transports=["polling"]),
        sio(node, token="proveedor-3", transports=None),
    )
    assert (await polling.expect("connect"))["transport"] == "polling"
    await connected(upgraded, token="proveedor-3")
    assert (await upgraded.expect("upgrade"))["transport"] == "websocket"
    for client in (polling, upgraded):
        assert (await client.request("join_room", {"room": "service_1"}))["offset"] == 0
    await api_publish(http, node, "service_1", "offer", {"n": 1})
    assert (await event_in(polling, "service_1"))["offset"] == 1
    assert (await event_in(upgraded, "service_1"))["offset"] == 1
    ack = await polling.request("comment_created", {"servicioId": "1", "text": "by polling"})
    delivered = await event_in(upgraded, "service_1")
    assert (delivered["id"], delivered["offset"]) == (ack["eventId"], 2)
    assert (await event_in(polling, "service_1"))["id"] == ack["eventId"]
    assert not [line for line in polling.lines + upgraded.lines if line["kind"] == "disconnect"]


async def test_a_long_polling_client_that_stops_polling_is_closed_4503(
    make_node: Any, http: Any
) -> None:
    node = await make_node(send_queue_bytes=8192)
    poller = await Poller.handshake(http, node.http_url)
    body = '40{"token":"cliente-7"}\x1e421["join_room",{"room":"service_1"}]'
    assert await poller.post(body) == (200, "ok")
    received = await poller.packets()
    while not any(p.startswith("431[") for p in received):
        received += await poller.packets()
    # it stops polling; events wait for it, up to GATEWAY_SEND_QUEUE_BYTES
    for n in range(40):
        await api_publish(http, node, "service_1", "offer", {"n": n, "pad": "x" * 400})
        if not node.node.sessions:
            break
    await gone(node)
    # the packets queued before the close go with its next poll; then the CLOSE; then nothing
    status, body = await poller.get()
    assert status == 200 and body.startswith('42["event"')
    assert await poller.get() == (200, "1")
    status, body = await poller.get()
    assert (status, orjson.loads(body)) == (400, UNKNOWN)


async def test_a_long_poll_that_comes_again_closes_the_session(make_node: Any, http: Any) -> None:
    """A balancer that retries a long-poll whose answer was lost (nginx retries a GET whose
    node died before the answer's head) sends the same request, ``t`` included: the session
    cannot know whether the packets arrived, so it closes and the client recovers them."""
    node = await make_node()
    poller = await Poller.handshake(http, node.http_url)
    assert await poller.post('40{"token":"cliente-7"}') == (200, "ok")
    async with http.get(poller.url + "&t=Pabc1") as response:
        assert (await response.text()).startswith("40")
    async with http.get(poller.url + "&t=Pabc2") as response:  # a new request: served
        body = await response.text()
    if not body.startswith('42["auth_success"'):  # the CONNECT and auth_success came apart
        async with http.get(poller.url + "&t=Pabc3") as response:
            body = await response.text()
        assert body.startswith('42["auth_success"')
        stamp = "Pabc3"
    else:
        stamp = "Pabc2"
    async with http.get(poller.url + f"&t={stamp}") as response:  # the same one again
        assert (response.status, await response.text()) == (200, "1")
    await gone(node)
