"""Errors, their order, request ids and limits over ``/ws`` (CONTRACT section 2: the error order,
"Limits and close codes"), on both backends."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support import DjangoSite

MALFORMED = [
    "not json",
    "{",
    "[1, 2]",
    '"ping"',
    "42",
    "null",
    '{"data": {}}',
    '{"event": 5, "data": {}}',
    '{"event": null}',
    '{"event": "ping", "data": [1]}',
    '{"event": "ping", "data": "x"}',
    '{"event": "join_room", "data": 3}',
    '{"event": "ping", "id": 1.5}',
    '{"event": "ping", "id": true}',
    '{"event": "ping", "id": [1]}',
    '{"event": "ping", "id": {"a": 1}}',
]


async def next_error(client: Any) -> dict[str, Any]:
    frame = await client.wait_for(lambda f: True)
    assert frame["event"] == "error", frame
    return dict(frame["data"])


async def assert_bad_requests_keep_the_connection_open(client: Any) -> None:
    for text in MALFORMED:
        await client.send_raw(text)
        error = await next_error(client)
        assert error["code"] == "bad_request", (text, error)
        assert error["message"], text
    await client.ws.send_bytes(b'{"event": "ping"}')  # binary frames are not the protocol
    assert (await next_error(client))["code"] == "bad_request"
    pong = await client.request("ping")
    assert pong["event"] == "pong"
    assert client.close_code is None


async def test_malformed_frames_are_bad_request_before_and_after_auth(node: Any, http: Any) -> None:
    client = await node.client(http)
    # bad_request is judged before unauthenticated
    await assert_bad_requests_keep_the_connection_open(client)
    await client.authenticate("cliente-1")
    await assert_bad_requests_keep_the_connection_open(client)
    assert (await client.join("service_1"))["room"] == "service_1"
    await client.close()


async def test_error_order_unauthenticated_unknown_event_validation(
    node: Any, http: Any, django_site: DjangoSite
) -> None:
    client = await node.client(http)
    for event, data in [("no_such_event", {"x": 1}), ("join_room", {}), ("payment_created", {})]:
        reply = await client.request(event, data)
        assert reply["data"]["code"] == "unauthenticated", (event, reply)
    await client.authenticate("cliente-1")
    reply = await client.request("no_such_event", {"room": 5})
    assert (reply["event"], reply["data"]["code"]) == ("error", "unknown_event")
    reply = await client.request("join_room", {})
    assert (reply["data"]["code"], reply["data"]["field"]) == ("validation_error", "room")
    reply = await client.request("join_room", {"room": "service_1", "since": {"offset": "1"}})
    assert reply["data"]["code"] == "validation_error"
    assert reply["data"]["field"].startswith("since")
    reply = await client.request("authenticate", {})
    assert reply["data"]["code"] in {"validation_error", "already_authenticated"}
    assert (await django_site.acalls())["events"] == []
    assert (await client.request("ping"))["event"] == "pong"
    await client.close()


@pytest.mark.parametrize("frame_id", [7, "req-7"], ids=["int", "str"])
async def test_replies_echo_the_request_id(node: Any, http: Any, frame_id: Any) -> None:
    client = await node.client(http)

    async def reply_to(event: str, data: dict[str, Any]) -> dict[str, Any]:
        await client.send(event, data, frame_id=frame_id)
        frame = await client.wait_for(lambda f: "id" in f)
        assert frame["id"] == frame_id, frame
        assert type(frame["id"]) is type(frame_id)
        return frame

    assert (await reply_to("ping", {}))["event"] == "pong"
    assert (await reply_to("join_room", {"room": "service_1"}))["data"]["code"] == (
        "unauthenticated"
    )
    assert (await reply_to("authenticate", {"token": "cliente-1"}))["event"] == "auth_success"
    assert (await reply_to("join_room", {"room": "service_1"}))["event"] == "room_joined"
    assert (await reply_to("presence", {"room": "service_1"}))["event"] == "presence"
    assert (await reply_to("leave_room", {"room": "service_1"}))["event"] == "room_left"
    assert (await reply_to("join_room", {"room": "cliente_2"}))["data"]["code"] == "forbidden"
    assert (await reply_to("join_room", {"room": "x"}))["data"]["code"] == "invalid_room"
    assert (await reply_to("nope", {}))["data"]["code"] == "unknown_event"
    assert (await reply_to("comment_created", {"text": "x"}))["data"]["code"] == (
        "validation_error"
    )
    assert (await reply_to("join_room", {"room": "service_1"}))["event"] == "room_joined"
    ack = await reply_to("comment_created", {"servicioId": "1", "text": "hola"})
    assert ack["event"] == "ack"
    # the delivered event is not a reply: it carries no request id
    event = await client.expect("event")
    assert "id" not in event
    assert event["data"]["id"] == ack["data"]["eventId"]
    await client.close()


async def test_frame_over_max_message_bytes_closes_1009(node_with: Any, http: Any) -> None:
    node = await node_with(max_message_bytes=1024)
    client = await node.client(http)
    await client.authenticate("cliente-1")
    fits = orjson.dumps({"event": "ping", "data": {"pad": "x" * 900}, "id": 1}).decode()
    assert len(fits) < 1024
    await client.send_raw(fits)
    assert (await client.wait_for(lambda f: f.get("id") == 1))["event"] == "pong"
    too_big = orjson.dumps({"event": "ping", "data": {"pad": "x" * 1100}}).decode()
    await client.send_raw(too_big)
    assert await client.wait_closed() == 1009


async def test_rate_limit_answers_rate_limited_then_closes_4429(node_with: Any, http: Any) -> None:
    node = await node_with(rate_limit=5, rate_burst=5, rate_limit_strikes=3)
    client = await node.client(http)
    for i in range(20):
        await client.send("ping", {}, frame_id=i)
    assert await client.wait_closed() == 4429
    pongs = [f for f in client.inbox if f["event"] == "pong"]
    limited = [f for f in client.inbox if f["event"] == "error"]
    assert 5 <= len(pongs) < 17  # the burst, plus what refilled while the frames arrived
    assert limited, client.inbox
    assert {f["data"]["code"] for f in limited} == {"rate_limited"}
    assert len(limited) == 2  # strikes 1 and 2 answer; strike 3 closes


async def test_sender_within_the_rate_is_never_limited(node_with: Any, http: Any) -> None:
    node = await node_with(rate_limit=50, rate_burst=2, rate_limit_strikes=1)
    client = await node.client(http)
    for _ in range(10):  # 10 frames, 5 times the burst, one per 30 ms: under 50/s
        assert (await client.request("ping"))["event"] == "pong"
        await asyncio.sleep(0.03)
    assert client.close_code is None
    await client.close()


async def test_a_closing_connection_waits_for_the_clients_close_frame(
    node_with: Any, http: Any
) -> None:
    """The server closes with the WebSocket closing handshake: after its close frame it keeps
    the TCP connection until the client answers (frames the client still sends are dropped
    unanswered), so nothing the server wrote before its close frame can be lost to a reset."""
    node = await node_with(rate_limit=1, rate_burst=1, rate_limit_strikes=2)
    ws = await http.ws_connect(node.ws_url, autoclose=False, autoping=True)
    for i in range(3):  # one within the burst, strike 1 (an error), strike 2 (4429)
        await ws.send_str(orjson.dumps({"event": "ping", "id": i}).decode())
    frames = [orjson.loads((await ws.receive(timeout=5)).data) for _ in range(2)]
    assert [f["event"] for f in frames] == ["pong", "error"]
    end = await ws.receive(timeout=5)
    assert (end.type, end.data) == (aiohttp.WSMsgType.CLOSE, 4429)

    (session,) = node.node.sessions.values()
    await ws.send_str(orjson.dumps({"event": "ping", "id": 9}).decode())  # dropped, no reset
    await asyncio.sleep(0.3)
    # still connected, waiting for our close frame (a reset here could have cost the client
    # the frames above); the frame sent after the close was not handled
    assert list(node.node.sessions.values()) == [session] and session.closed
    assert node.node.frames_out == 2
    await ws.close()  # our close frame: now the server ends the TCP connection
    async with asyncio.timeout(5):
        while node.node.sessions:
            await asyncio.sleep(0.02)
