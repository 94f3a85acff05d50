"""The protocol as data (issue 19, item 10): ``GET /asyncapi.json``.

- The official AsyncAPI parser (``@asyncapi/parser`` from npm, tests/js/asyncapi_check.mjs)
  accepts the document a node serves, with no error and no warning, and it names every event of
  the contract's sections 2 (``/ws``), 7 (Socket.IO) and 8 (receipts, online status).
- The document is true: every frame a real node sends in a session that touches every reply
  validates against the document's schema of that message, and so does every frame the client
  sent; payloads the node refuses with ``validation_error`` are refused by the schema too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.dashboard.support import api_publish
from tests.protocol_doc.support import FrameSchemas, check_asyncapi
from tests.support.wsclient import WsClient

# CONTRACT section 2
CLIENT_EVENTS = {
    "authenticate",
    "join_room",
    "leave_room",
    "presence",
    "reservation_created",
    "reservation_accepted",
    "payment_created",
    "comment_created",
    "ping",
}
SERVER_EVENTS = {
    "auth_success",
    "auth_error",
    "room_joined",
    "room_left",
    "event",
    "rejoin",
    "ack",
    "pong",
    "presence",
    "error",
}
SOCKETIO = {"connect", "connect_error", "disconnect"}  # section 7
RECEIPTS_AND_PRESENCE = {"received", "presence_change", "presence_webhook"}  # section 8
STREAMS = {"gateway:ingest", "gateway:ingest:dead", "gateway:presence"}


async def fetch_document(http: aiohttp.ClientSession, base_url: str) -> dict[str, Any]:
    async with http.get(f"{base_url}/asyncapi.json") as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.content_type == "application/json"
        document: dict[str, Any] = await response.json()
    return document


@pytest.mark.node
async def test_the_official_parser_accepts_the_served_document(
    make_node: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    node = await make_node()
    # in a thread: the parser fetches the document from the node running in this event loop
    code, report = await asyncio.to_thread(check_asyncapi, f"{node.http_url}/asyncapi.json")
    assert code == 0, report["diagnostics"]
    assert report["valid"] and report["diagnostics"] == []
    assert report["version"].startswith("3.")
    names = set(report["messages"])
    missing = (CLIENT_EVENTS | SERVER_EVENTS | SOCKETIO | RECEIPTS_AND_PRESENCE) - names
    assert missing == set()
    assert {"/ws", "/socket.io/"} | STREAMS <= set(report["channels"])
    assert {"receive_received", "send_presence_change", "send_presence_webhook"} <= set(
        report["operations"]
    )

    # the check fails on a broken document: an operation naming a message that is not there
    broken = await fetch_document(http, node.http_url)
    del broken["channels"]["ws"]["messages"]["ack"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    code, report = await asyncio.to_thread(check_asyncapi, tmp_path / "broken.json")
    assert code == 1 and not report["valid"]
    assert any(d["severity"] == 0 for d in report["diagnostics"])


class RecordingClient(WsClient):
    """A WsClient that also keeps every frame it sent and received."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        super().__init__(ws)

    async def send(self, event: str, data: Any = None, frame_id: Any = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data if data is not None else {}}
        if frame_id is not None:
            frame["id"] = frame_id
        self.sent.append(frame)
        await super().send(event, data, frame_id)

    async def wait_for(self, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        frame = await super().wait_for(pred, timeout)
        self.received.append(frame)
        return frame


async def recording(node: Any, http: aiohttp.ClientSession) -> RecordingClient:
    ws = await http.ws_connect(node.ws_url)
    return RecordingClient(ws)


RESERVATION = {"clienteId": "7", "proveedorId": "8", "servicioId": "3", "fecha": "2030-05-04"}


async def a_session_touching_every_reply(
    node: Any, http: aiohttp.ClientSession
) -> list[RecordingClient]:
    refused = await recording(node, http)
    assert (await refused.request("authenticate", {"token": "nobody"}))["event"] == "auth_error"
    cliente = await recording(node, http)
    await cliente.authenticate("cliente-7")
    joined = await cliente.join("service_3")
    for n in range(2):
        await api_publish(http, node.http_url, "service_3", "price_changed", {"n": n})
    await cliente.events(2, room="service_3")
    again = await recording(node, http)
    await again.authenticate("cliente-7")
    since = {"offset": joined["offset"], "epoch": joined["epoch"]}
    recovered = await again.join("service_3", since=since)
    assert recovered["recovered"] is True and len(recovered["missed"]) == 2
    replies = [
        await cliente.request("presence", {"room": "service_3"}),
        await cliente.request("presence", {"room": "all_clientes"}),
        await cliente.request("ping", {}),
        await cliente.request("leave_room", {"room": "service_3"}),
        await cliente.request("reservation_created", RESERVATION),
        await cliente.request("reservation_created", {**RESERVATION, "fecha": "1999-05-04"}),
        await cliente.request("comment_created", {"servicioId": "3"}),
        await cliente.request("join_room", {"room": "proveedor_8"}),
    ]
    events = [frame["event"] for frame in replies]
    assert events == ["presence", "presence", "pong", "room_left", "ack", "error", "error", "error"]
    assert replies[5]["data"]["fields"] and replies[6]["data"]["field"] == "text"
    await cliente.events(1, room="cliente_7")  # the reservation, delivered
    return [refused, cliente, again]


async def test_frames_of_a_real_session_match_the_document(
    make_node: Any, http: aiohttp.ClientSession
) -> None:
    node = await make_node()
    schemas = FrameSchemas(await fetch_document(http, node.http_url))
    clients = await a_session_touching_every_reply(node, http)
    received = [frame for c in clients for frame in c.received]
    sent = [frame for c in clients for frame in c.sent]
    assert {f["event"] for f in received} >= SERVER_EVENTS - {"rejoin"}
    for frame in received:
        assert schemas.errors(frame, from_server=True) == [], frame
    for frame in sent:
        if frame["data"] == {"servicioId": "3"}:  # the one the node refused
            assert schemas.errors(frame, from_server=False) != []
        else:
            assert schemas.errors(frame, from_server=False) == [], frame
    for client in clients:
        await client.close()


@pytest.mark.parametrize(
    ("event", "data"),
    [
        ("payment_created", {"clienteId": "7", "proveedorId": "8", "amount": 25}),
        ("reservation_created", {**RESERVATION, "clienteId": "7 OR 1=1"}),
        ("comment_created", {"servicioId": "3", "text": "ok", "rating": 6}),
        ("join_room", {"room": "service_3", "since": {"offset": -1, "epoch": "e"}}),
        ("authenticate", {"token": ""}),
    ],
)
async def test_what_the_node_refuses_the_schema_refuses(
    make_node: Any, http: aiohttp.ClientSession, event: str, data: dict[str, Any]
) -> None:
    node = await make_node()
    schemas = FrameSchemas(await fetch_document(http, node.http_url))
    client = await WsClient.connect(http, node.ws_url)
    if event != "authenticate":
        await client.authenticate("cliente-7")
    reply = await client.request(event, data)
    assert reply["event"] == "error" and reply["data"]["code"] == "validation_error", reply
    assert schemas.errors({"event": event, "data": data}, from_server=False) != []
    await client.close()
