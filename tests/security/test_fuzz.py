"""Hostile frames (CONTRACT section 2, "Limits and close codes"): property-based fuzzing of the
frame handler over a real socket, before and after authentication, and of ``decode_frame``.

Every fuzz frame is followed by a ``ping`` probe with a fresh id. Frames of one connection are
handled in order, so the probe's ``pong`` proves the node processed the fuzz frame and kept the
connection; the frames between them are the node's answer to the fuzz frame: exactly one reply
(an ``error`` or a normal reply). The only closes allowed are those the contract gives for an
authentication failure. Afterwards a fresh client is served end to end.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.closecodes import AuthErrorCode, ErrorCode
from gateway.protocol import (
    BUSINESS_EVENTS,
    CONTROL_EVENTS,
    ProtocolError,
    decode_frame,
    validate_payload,
)
from tests.support.wsclient import WsClient

EXAMPLES = 200
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

EVENTS = sorted({*BUSINESS_EVENTS, *CONTROL_EVENTS})
ERROR_CODES = {str(code) for code in ErrorCode}
AUTH_CLOSES = {4401, 1013, 4429}  # invalid/mismatch, unavailable, too many connections
REPLY_EVENTS = {
    "error",
    "pong",
    "auth_success",
    "auth_error",
    "room_joined",
    "room_left",
    "presence",
    "ack",
}

VALID = {
    "authenticate": {"token": "cliente-1", "userId": "1", "role": "cliente"},
    "join_room": {"room": "service_1", "since": {"offset": 0, "epoch": "e"}},
    "leave_room": {"room": "service_1"},
    "presence": {"room": "service_1"},
    "ping": {},
    "reservation_created": {
        "clienteId": "1",
        "proveedorId": "2",
        "servicioId": "3",
        "fecha": "2030-01-01T10:00:00Z",
        "estado": "x",
    },
    "reservation_accepted": {"reservationId": "1", "clienteId": "1", "proveedorId": "2"},
    "payment_created": {"clienteId": "1", "proveedorId": "2", "amount": "25.00", "currency": "EUR"},
    "comment_created": {"servicioId": "3", "text": "hola", "clienteId": "1", "rating": 5},
}

# --- strategies -------------------------------------------------------------------------------
BIG = 2**80
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-BIG, max_value=BIG)
    | st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63) - 1, BIG, -BIG])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", "cliente-1", "admin_dashboard", "cliente_2", "service_1", "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


class Nested:
    """A value nested ``depth`` times; serialised by ``as_text`` without recursion (the
    standard library's encoder stops at Python's recursion limit)."""

    def __init__(self, depth: int, leaf: Any, kinds: list[bool]) -> None:
        self.depth = depth
        self.leaf = leaf
        self.kinds = kinds  # True: {"k": ...}, False: [...]

    def text(self) -> str:
        opening = "".join('{"k": ' if kind else "[" for kind in self.kinds)
        closing = "".join("}" if kind else "]" for kind in reversed(self.kinds))
        return opening + json.dumps(self.leaf) + closing


@st.composite
def deep(draw: st.DrawFn) -> Nested:
    """Nesting around the limits of orjson (255 to encode, 1024 to decode)."""
    depth = draw(st.sampled_from([200, 253, 254, 255, 256, 300, 1022, 1023, 1024, 1025, 3000]))
    kind = draw(st.sampled_from(["list", "dict", "mixed"]))
    kinds = [bool(i % 2) for i in range(depth)] if kind == "mixed" else [kind == "dict"] * depth
    return Nested(depth, draw(scalars), kinds)


@st.composite
def mutated_frames(draw: st.DrawFn) -> dict[str, Any]:
    """A valid frame of a known event with one field replaced, removed or added."""
    event = draw(st.sampled_from(EVENTS))
    data = dict(VALID[event])
    field = draw(st.sampled_from([*data, "extra"]))
    action = draw(st.sampled_from(["replace", "delete", "deep"]))
    if action == "delete":
        data.pop(field, None)
    elif action == "deep":
        data[field] = draw(deep())
    else:
        data[field] = draw(json_values)
    frame: dict[str, Any] = {"event": event, "data": data}
    if draw(st.booleans()):
        frame["id"] = draw(st.integers(-BIG, BIG) | st.text(max_size=130) | json_values)
    return frame


@st.composite
def shaped_frames(draw: st.DrawFn) -> dict[str, Any]:
    """Frame-like objects: any subset of the keys, any value in each."""
    frame: dict[str, Any] = {}
    if draw(st.booleans()):
        frame["event"] = draw(st.sampled_from(EVENTS) | st.text(max_size=80) | json_values)
    if draw(st.booleans()):
        # NaN and Infinity serialise to invalid JSON: bad_request
        frame["data"] = draw(json_values | deep() | st.sampled_from([math.nan, -math.inf]))
    if draw(st.booleans()):
        frame["id"] = draw(json_values | st.text(min_size=120, max_size=140))
    return frame


@st.composite
def escaped_texts(draw: st.DrawFn) -> str:
    """JSON text with raw ``\\uXXXX`` escapes in a string value: lone surrogates (invalid
    JSON for orjson), valid pairs, NUL and other edge characters."""
    lone = st.integers(0xD800, 0xDFFF).map(lambda c: f"\\u{c:04x}")
    pair = st.tuples(st.integers(0xD800, 0xDBFF), st.integers(0xDC00, 0xDFFF)).map(
        lambda p: f"\\u{p[0]:04x}\\u{p[1]:04x}"
    )
    other = st.sampled_from(["\\u0000", "\\u202e", "\\ufeff", "\\uffff", "\\n", "\\r\\n"])
    escape = draw(lone | pair | other)
    event = draw(st.sampled_from(EVENTS))
    data = dict(VALID[event])
    field = draw(st.sampled_from([*data, "extra"])) if data else "extra"
    data[field] = "@@"
    frame = {"event": event, "data": data, "id": "@@" if draw(st.booleans()) else 1}
    if draw(st.booleans()):
        frame["event"] = "@@"
    text = json.dumps(frame)
    return text.replace("@@", f"x{escape}y" if draw(st.booleans()) else escape, 1)


def as_text(value: Any) -> str:
    nested: list[Nested] = []

    def placeholder(obj: Any) -> Any:
        if isinstance(obj, Nested):
            nested.append(obj)
            return f"@nested-{len(nested) - 1}@"
        raise TypeError(type(obj).__name__)

    text = json.dumps(value, ensure_ascii=False, default=placeholder)
    for i, obj in enumerate(nested):
        text = text.replace(f'"@nested-{i}@"', obj.text(), 1)
    return text


raw_payloads = st.one_of(
    st.binary(max_size=600),
    st.text(max_size=300),
    json_values.map(as_text),
    shaped_frames().map(as_text),
    deep().map(as_text),
)
frame_payloads = st.one_of(mutated_frames().map(as_text), escaped_texts())
payloads = st.one_of(raw_payloads, frame_payloads)


# --- unit level -------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None, database=None)
@given(raw=payloads)
def test_decode_frame_only_raises_protocol_error(raw: str | bytes) -> None:
    for candidate in (raw, raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw):
        try:
            frame = decode_frame(candidate)
        except ProtocolError as exc:
            assert exc.code == ErrorCode.BAD_REQUEST
            assert exc.message
        else:
            assert isinstance(frame.event, str) and frame.event
            assert isinstance(frame.data, dict)
            assert frame.id is None or (
                isinstance(frame.id, int | str) and not isinstance(frame.id, bool)
            )


@settings(max_examples=300, deadline=None, database=None)
@given(frame=mutated_frames())
def test_payload_validation_only_raises_validation_error(frame: dict[str, Any]) -> None:
    model = {**BUSINESS_EVENTS, **CONTROL_EVENTS}[frame["event"]]
    try:
        data = decode_frame(as_text(frame)).data
    except ProtocolError as exc:  # NaN, too deep for orjson, data not an object, a bad id
        assert exc.code == ErrorCode.BAD_REQUEST
        return
    try:
        validate_payload(model, data)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.VALIDATION_ERROR
        assert exc.field, exc.message


def test_lone_surrogate_escapes_and_nesting_limits_are_bad_request() -> None:
    for text in ['{"event": "ping", "id": "\\ud800"}', '{"event": "\\udc00x"}']:
        with pytest.raises(ProtocolError) as info:
            decode_frame(text)
        assert info.value.code == ErrorCode.BAD_REQUEST
    # a valid surrogate pair is a normal astral character
    assert decode_frame('{"event": "\\ud83d\\ude00"}').event == "\U0001f600"
    nested = "[" * 1025 + "]" * 1025
    with pytest.raises(ProtocolError):
        decode_frame('{"event": "ping", "data": {"a": ' + nested + "}}")
    assert decode_frame('{"event": "ping", "id": 18446744073709551615}').id == 2**64 - 1
    with pytest.raises(ProtocolError):  # beyond 64 bits orjson reads a float: not an id
        decode_frame('{"event": "ping", "id": 1208925819614629174706176}')


# --- over a real socket -----------------------------------------------------------------------
class FuzzConnection:
    """One connection reused while it stays open; a new one (authenticated with ``token``
    when given) after the node closed it for a reason the contract allows."""

    def __init__(self, node: Any, http: Any, token: str | None) -> None:
        self.node = node
        self.http = http
        self.token = token
        self.client: WsClient | None = None
        self.probes = itertools.count(1)
        self.reconnects = 0
        self.replies: dict[str, int] = {}

    async def current(self) -> WsClient:
        if self.client is None or self.client.close_code is not None or self.client.ws.closed:
            if self.client is not None:
                await self.client.close()
                self.reconnects += 1
            self.client = await self.node.client(self.http)
            if self.token is not None:
                await self.client.authenticate(self.token)
        return self.client

    async def exchange(self, raw: str | bytes) -> None:
        client = await self.current()
        client.inbox.clear()
        if isinstance(raw, bytes):
            try:
                await client.ws.send_str(raw.decode("utf-8"))
            except UnicodeDecodeError:
                await client.ws.send_bytes(raw)
        else:
            await client.ws.send_str(raw)
        probe = f"probe-{next(self.probes)}"
        try:
            await client.send("ping", {}, frame_id=probe)
            await client.wait_for(lambda f: f.get("id") == probe, timeout=10)
        except ConnectionError:
            self.check_allowed_close(client, raw)
            return
        answers = [f for f in client.inbox if f.get("event") not in {"event", "rejoin"}]
        assert len(answers) == 1, (raw, client.inbox)
        self.check_reply(answers[0], raw)

    def check_reply(self, frame: dict[str, Any], raw: str | bytes) -> None:
        assert frame.get("event") in REPLY_EVENTS, (raw, frame)
        assert isinstance(frame.get("data"), dict), (raw, frame)
        if frame["event"] == "error":
            assert frame["data"]["code"] in ERROR_CODES, (raw, frame)
            assert frame["data"]["message"], (raw, frame)
        key = frame["data"]["code"] if frame["event"] == "error" else frame["event"]
        self.replies[key] = self.replies.get(key, 0) + 1

    def check_allowed_close(self, client: WsClient, raw: str | bytes) -> None:
        assert client.close_code in AUTH_CLOSES, (raw, client.close_code, client.inbox)
        errors = [f for f in client.inbox if f.get("event") == "auth_error"]
        assert len(errors) == 1, (raw, client.inbox)
        code = errors[0]["data"]["code"]
        assert code in {str(c) for c in AuthErrorCode}, errors
        assert AuthErrorCode(code).close_code == client.close_code
        self.replies[code] = self.replies.get(code, 0) + 1


@pytest.fixture
async def fuzz_node(redis_server: Any, make_node: Any) -> Any:
    # the rate limit is not under test here; every other limit is the default
    return await make_node(redis_server.url, rate_limit=1e6, rate_burst=1_000_000)


async def served_end_to_end(node: Any, http: Any) -> None:
    """A fresh client authenticates, joins a room and receives a confirmed event."""
    listener = await node.client(http)
    await listener.authenticate("proveedor-77")
    await listener.join("service_77")
    sender = await node.client(http)
    await sender.authenticate("cliente-78")
    ack = await sender.request("comment_created", {"servicioId": "77", "text": "still alive"})
    assert ack["event"] == "ack", ack
    (event,) = await listener.events(1, room="service_77")
    assert event["id"] == ack["data"]["eventId"]
    assert event["payload"]["text"] == "still alive"
    await listener.close()
    await sender.close()


@pytest.mark.parametrize("token", [None, "cliente-1", "admin-1"], ids=["anon", "cliente", "admin"])
async def test_fuzzed_frames_get_one_reply_and_the_node_keeps_serving(
    fuzz_node: Any, http: Any, token: str | None
) -> None:
    conn = FuzzConnection(fuzz_node, http, token)
    loop = asyncio.get_running_loop()

    def run(strategy: st.SearchStrategy[str | bytes], examples: int) -> None:
        # Hypothesis drives the examples from a worker thread; each one runs in this event
        # loop, where the node and the connection live, and the thread waits for it. Two valid
        # frames always run among the random ones (random mutations rarely leave one valid).
        @settings(FUZZ_SETTINGS, max_examples=examples)
        @given(raw=strategy)
        @example(raw='{"event": "ping", "data": {}, "id": "valid-ping"}')
        @example(raw='{"event": "join_room", "data": {"room": "service_1"}, "id": 7}')
        def fuzz(raw: str | bytes) -> None:
            asyncio.run_coroutine_threadsafe(conn.exchange(raw), loop).result(timeout=30)

        fuzz()

    await asyncio.to_thread(run, frame_payloads, EXAMPLES * 2 // 3)
    await asyncio.to_thread(run, raw_payloads, EXAMPLES // 3)
    if conn.client is not None:
        await conn.client.close()
    # the fuzzing reached the node's judgement, not just the JSON parser
    assert conn.replies.get("bad_request", 0) > 10, conn.replies
    if token is None:
        assert conn.replies.get("unauthenticated", 0) > 0, conn.replies
    else:
        assert conn.replies.get("validation_error", 0) > 10, conn.replies
        assert conn.replies.get("pong", 0) + conn.replies.get("room_joined", 0) > 0, conn.replies
    await served_end_to_end(fuzz_node, http)
