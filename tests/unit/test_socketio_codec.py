"""gateway.socketio.codec: every Engine.IO / Socket.IO packet type, malformed input, acks,
binary refusal and the HTTP handshake errors. The last tests check our bytes against the real
socket.io-parser (Node), in both directions."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.socketio.codec import (
    NOOP,
    PING,
    PONG,
    RESERVED_EVENTS,
    Ack,
    BinaryNotSupported,
    Connect,
    ConnectError,
    Disconnect,
    EngineErrorCode,
    EnginePacket,
    EngineType,
    Event,
    Handshake,
    PacketError,
    RequestKind,
    SocketPacket,
    classify_request,
    decode_frame,
    decode_payload,
    encode_ack,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_event,
    encode_payload,
    encode_reply,
)
from tests.js.sio_driver import JS_DIR, ensure_node_modules, node_executable

# --- Engine.IO --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("0", EnginePacket(EngineType.OPEN)),
        ("1", EnginePacket(EngineType.CLOSE)),
        ("2", EnginePacket(EngineType.PING)),
        ("2probe", EnginePacket(EngineType.PING, "probe")),
        ("3", EnginePacket(EngineType.PONG)),
        ("3probe", EnginePacket(EngineType.PONG, "probe")),
        ("5", EnginePacket(EngineType.UPGRADE)),
        ("6", EnginePacket(EngineType.NOOP)),
    ],
)
def test_engine_control_packets_decode(frame: str, expected: EnginePacket) -> None:
    assert decode_frame(frame) == expected
    assert expected.encode() == frame.encode()


def test_server_control_packets_are_single_digits() -> None:
    assert (PING, PONG, NOOP) == (b"2", b"3", b"6")


@pytest.mark.parametrize("frame", ["", "7", "9", "x", "{}", " 2", "-1"])
def test_unknown_engine_packets_are_refused(frame: str) -> None:
    with pytest.raises(PacketError) as info:
        decode_frame(frame)
    assert not isinstance(info.value, BinaryNotSupported)
    assert "Engine.IO" in info.value.message or "empty" in info.value.message


def test_open_packet_carries_the_handshake_in_milliseconds() -> None:
    frame = Handshake(
        sid="abc", ping_interval_ms=25000, ping_timeout_ms=20000, max_payload=65536
    ).encode()
    assert frame[:1] == b"0"
    assert orjson.loads(frame[1:]) == {
        "sid": "abc",
        "upgrades": [],
        "pingInterval": 25000,
        "pingTimeout": 20000,
        "maxPayload": 65536,
    }


def test_a_binary_frame_is_refused_without_attachments() -> None:
    with pytest.raises(BinaryNotSupported) as info:
        decode_frame(b"\x00\x01binary")
    assert info.value.attachments == 0
    assert info.value.ack_id is None
    assert "binary" in info.value.message


# --- Socket.IO: valid packets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("40", Connect()),
        ('40{"token":"abc"}', Connect("/", {"token": "abc"})),
        ("40/admin,", Connect("/admin")),
        ('40/admin,{"token":"abc"}', Connect("/admin", {"token": "abc"})),
        ("41", Disconnect()),
        ("41/admin,", Disconnect("/admin")),
        ("41/admin", Disconnect("/admin")),  # the reference parser accepts a namespace at the end
        ('42["ping"]', Event("ping")),
        ('42["join_room",{"room":"service_1"}]', Event("join_room", ({"room": "service_1"},))),
        ('4213["join_room",{"room":"r"}]', Event("join_room", ({"room": "r"},), 13)),
        ('420["ping",{}]', Event("ping", ({},), 0)),
        ('42/admin,7["a",1,"two",null]', Event("a", (1, "two", None), 7, "/admin")),
        ('42["ünï \\"quoted\\"",[1,2]]', Event('ünï "quoted"', ([1, 2],))),
        ("433[]", Ack(3)),
        ('4312[{"ok":true},2]', Ack(12, ({"ok": True}, 2))),
        ('43/admin,5["x"]', Ack(5, ("x",), "/admin")),
        ('44{"message":"nope"}', ConnectError("nope")),
        ('44{"message":"nope","data":{"why":1}}', ConnectError("nope", {"why": 1})),
        ('44"plain message"', ConnectError("plain message")),
        (
            '44/admin,{"message":"Invalid namespace"}',
            ConnectError("Invalid namespace", None, "/admin"),
        ),
    ],
)
def test_socket_packets_decode(frame: str, expected: SocketPacket) -> None:
    assert decode_frame(frame) == expected


@pytest.mark.parametrize(
    "packet",
    [
        Connect(),
        Connect("/", {"token": "abc"}),
        Connect("/admin", {"sid": "x"}),
        Disconnect(),
        Disconnect("/admin"),
        Event("ping"),
        Event("a", ({"b": [1, 2.5, None, True]},), 9),
        Event("a", (1, 2), None, "/chat"),
        Ack(0),
        Ack(77, ({"room": "r"},), "/chat"),
        ConnectError("no"),
        ConnectError("no", {"retry": False}, "/admin"),
    ],
)
def test_encode_then_decode_is_the_identity(packet: SocketPacket) -> None:
    frame = packet.encode()
    assert frame[:1] == b"4"
    assert decode_frame(frame.decode()) == packet


def test_the_largest_ack_id_fits_a_javascript_number() -> None:
    assert decode_frame('42999999999999999["x"]') == Event("x", (), 999_999_999_999_999)


# --- Socket.IO: malformed packets -------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message", "ack_id"),
    [
        ("4", "empty Socket.IO packet", None),
        ("47", "unknown Socket.IO packet type", None),
        ("4x", "unknown Socket.IO packet type", None),
        ("42", "non-empty array", None),
        ("42{}", "non-empty array", None),
        ("42[]", "non-empty array", None),
        ('42"ping"', "non-empty array", None),
        ("42[1]", "name must be a string", None),
        ('42[null,{"a":1}]', "name must be a string", None),
        ('42["connect"]', "reserved", None),
        ('42["disconnect",{}]', "reserved", None),
        ('425["join_room",', "not valid JSON", 5),
        ('42["a",{"b":}]', "not valid JSON", None),
        ('425["a",NaN]', "not valid JSON", 5),
        ('4211["ping"] trailing', "not valid JSON", 11),
        ('429999999999999999["x"]', "ack id longer", None),
        ("43[1]", "needs an ack id", None),
        ("43", "needs an ack id", None),
        ('437{"a":1}', "must be an array", 7),
        ('40"token"', "must be an object", None),
        ("40[]", "must be an object", None),
        ('4012{"token":"a"}', "takes no ack id", None),
        ("41{}", "takes no payload", None),
        ("413", "takes no ack id", None),
        ("44[1]", "CONNECT_ERROR payload", None),
        ('44{"data":1}', "CONNECT_ERROR payload", None),
        ('45["a"]', "attachment count", None),
        ('45-["a"]', "attachment count", None),
        ('450-["a"]', "attachment count", None),
        ('451x["a"]', "attachment count", None),
    ],
)
def test_malformed_packets_raise_packet_error(frame: str, message: str, ack_id: int | None) -> None:
    with pytest.raises(PacketError) as info:
        decode_frame(frame)
    assert not isinstance(info.value, BinaryNotSupported)
    assert message in info.value.message
    assert str(info.value) == info.value.message
    assert info.value.ack_id == ack_id


@pytest.mark.parametrize(
    ("frame", "attachments", "ack_id"),
    [
        ('451-["upload",{"_placeholder":true,"num":0}]', 1, None),
        ('4513-7["upload",{"_placeholder":true,"num":0}]', 13, 7),
        ('452-/admin,3["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', 2, 3),
        ('461-4[{"_placeholder":true,"num":0}]', 1, 4),
    ],
)
def test_binary_packets_are_refused_with_their_attachment_count(
    frame: str, attachments: int, ack_id: int | None
) -> None:
    with pytest.raises(BinaryNotSupported) as info:
        decode_frame(frame)
    assert info.value.attachments == attachments
    assert info.value.ack_id == ack_id
    assert "base64" in info.value.message


# --- encoding for fan-out and replies ---------------------------------------------------------


def test_encode_event_splices_preserialized_data() -> None:
    data = orjson.dumps({"room": "service_1", "payload": {"amount": "25.00"}, "offset": 3})
    frame = encode_event("event", data)
    assert frame == b'42["event",' + data + b"]"
    assert decode_frame(frame.decode()) == Event("event", (orjson.loads(data),))


def test_encode_event_escapes_the_name_and_allows_no_data() -> None:
    assert encode_event('a"b\\ü') == b'42["a\\"b\\\\\xc3\xbc"]'
    assert decode_frame(encode_event('a"b\\ü').decode()) == Event('a"b\\ü')
    assert encode_event("x", b"{}", nsp="/chat") == b'42/chat,["x",{}]'


def test_encode_ack_wraps_the_data_in_the_argument_array() -> None:
    assert encode_ack(12, b'{"a":1}') == b'4312[{"a":1}]'
    assert encode_ack(0) == b"430[]"
    assert encode_ack(3, b"1", nsp="/chat") == b"43/chat,3[1]"


@pytest.mark.parametrize(
    "event", ["room_joined", "room_left", "ack", "pong", "presence", "auth_success"]
)
def test_a_success_reply_with_an_ack_id_is_the_ack_callbacks_argument(event: str) -> None:
    data = orjson.dumps({"room": "service_1", "offset": 0})
    frame = encode_reply(7, event, data)
    assert frame == b"437[" + data + b"]"
    assert decode_frame(frame.decode()) == Ack(7, ({"room": "service_1", "offset": 0},))


@pytest.mark.parametrize("event", ["error", "auth_error"])
def test_a_failure_reply_with_an_ack_id_is_wrapped_in_error(event: str) -> None:
    data = orjson.dumps({"code": "forbidden", "message": "no", "field": "room"})
    frame = encode_reply(7, event, data)
    packet = decode_frame(frame.decode())
    assert packet == Ack(7, ({"error": {"code": "forbidden", "message": "no", "field": "room"}},))


@pytest.mark.parametrize("event", ["room_joined", "error", "auth_error", "rejoin"])
def test_a_reply_without_an_ack_id_is_an_event_of_the_same_name(event: str) -> None:
    data = orjson.dumps({"code": "x"})
    assert encode_reply(None, event, data) == encode_event(event, data)


def test_connect_disconnect_and_connect_error_frames() -> None:
    assert encode_connect("s1") == b'40{"sid":"s1"}'
    assert encode_connect("s1", "/admin") == b'40/admin,{"sid":"s1"}'
    assert encode_disconnect() == b"41"
    assert encode_disconnect("/admin") == b"41/admin,"
    assert encode_connect_error("Invalid namespace", "/admin") == (
        b'44/admin,{"message":"Invalid namespace"}'
    )
    assert encode_connect_error("full", data={"retry": True}) == (
        b'44{"message":"full","data":{"retry":true}}'
    )


# --- HTTP handshake ---------------------------------------------------------------------------


def _check(query: dict[str, str], method: str = "GET", upgrade: bool = True) -> Any:
    return classify_request(query, method=method, websocket_upgrade=upgrade)


@pytest.mark.parametrize(
    ("query", "method", "upgrade", "kind"),
    [
        ({"EIO": "4", "transport": "websocket"}, "GET", True, RequestKind.WS_OPEN),
        ({"EIO": "4", "transport": "websocket", "t": "x"}, "GET", True, RequestKind.WS_OPEN),
        ({"EIO": "4", "transport": "websocket", "sid": "s"}, "GET", True, RequestKind.WS_UPGRADE),
        ({"EIO": "4", "transport": "polling", "t": "P"}, "GET", False, RequestKind.POLL_OPEN),
        ({"EIO": "4", "transport": "polling", "sid": "s"}, "GET", False, RequestKind.POLL_GET),
        ({"EIO": "4", "transport": "polling", "sid": "s"}, "POST", False, RequestKind.POLL_POST),
    ],
)
def test_engine_io_4_requests_are_classified(
    query: dict[str, str], method: str, upgrade: bool, kind: RequestKind
) -> None:
    assert _check(query, method, upgrade) is kind


@pytest.mark.parametrize(
    ("query", "method", "upgrade", "code", "words"),
    [
        ({"EIO": "3", "transport": "polling"}, "GET", False, 5, ["EIO=3", "socket.io-client"]),
        ({"EIO": "3", "transport": "websocket"}, "GET", True, 5, ["EIO=3"]),
        ({"transport": "websocket"}, "GET", True, 5, ["no EIO parameter"]),
        ({"EIO": "4"}, "GET", True, 0, ["Transport unknown"]),
        ({"EIO": "4", "transport": "flashsocket"}, "GET", True, 0, ["Transport unknown"]),
        ({"EIO": "4", "transport": "polling"}, "POST", False, 2, ["method"]),
        ({"EIO": "4", "transport": "polling", "sid": "s"}, "DELETE", False, 2, ["method"]),
        ({"EIO": "4", "transport": "websocket"}, "POST", False, 2, ["method"]),
        ({"EIO": "4", "transport": "websocket"}, "GET", False, 3, ["WebSocket upgrade"]),
    ],
)
def test_handshake_errors(
    query: dict[str, str], method: str, upgrade: bool, code: int, words: list[str]
) -> None:
    error = _check(query, method, upgrade)
    assert not isinstance(error, RequestKind)
    assert (error.status, error.code) == (400, EngineErrorCode(code))
    body = orjson.loads(error.body())
    assert body["code"] == code
    for word in words:
        assert word in body["message"]


def test_long_polling_payloads_join_packets_with_the_record_separator() -> None:
    packets = [b"2", b'42["event",{"n":1}]', b"6"]
    assert encode_payload(packets) == b'2\x1e42["event",{"n":1}]\x1e6'
    assert decode_payload('40{"token":"t"}\x1e42["ping"]') == ['40{"token":"t"}', '42["ping"]']
    # a base64 binary packet of a long-polling body is refused as binary
    with pytest.raises(BinaryNotSupported):
        decode_frame("bAQID")


def test_the_polling_handshake_offers_the_websocket_upgrade_and_connect_carries_the_pid() -> None:
    frame = Handshake("s.dA", 25000, 20000, 65536, upgrades=("websocket",)).encode()
    assert orjson.loads(frame[1:])["upgrades"] == ["websocket"]
    assert encode_connect("abc", pid="p1") == b'40{"sid":"abc","pid":"p1"}'


# --- robustness -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
namespaces = st.just("/") | st.text(
    st.characters(blacklist_characters=",", blacklist_categories=("Cs",)), max_size=12
).map(lambda s: "/" + s)
ack_ids = st.integers(0, 10**15 - 1)
event_names = st.text(max_size=30).filter(lambda name: name not in RESERVED_EVENTS)
objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)

socket_packets = st.one_of(
    st.builds(Connect, namespaces, st.none() | objects),
    st.builds(Disconnect, namespaces),
    st.builds(
        Event,
        event_names,
        st.lists(json_values, max_size=3).map(tuple),
        st.none() | ack_ids,
        namespaces,
    ),
    st.builds(Ack, ack_ids, st.lists(json_values, max_size=3).map(tuple), namespaces),
    st.builds(ConnectError, st.text(max_size=30), json_values, namespaces),
)


@given(socket_packets)
def test_any_packet_survives_an_encode_decode_round_trip(packet: SocketPacket) -> None:
    assert decode_frame(packet.encode().decode()) == packet


# Text made of the protocol's own characters reaches deep into the parser.
protocol_text = st.text(st.sampled_from('0123456789/,-[]{}":ab\\ \x00é'), max_size=40)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=60), protocol_text, protocol_text.map(lambda s: "4" + s)))
def test_decoding_any_text_returns_a_packet_or_raises_packet_error(text: str) -> None:
    try:
        packet = decode_frame(text)
    except PacketError as exc:
        assert exc.message
        assert exc.ack_id is None or exc.ack_id >= 0
        return
    assert isinstance(packet, EnginePacket | Connect | Disconnect | Event | Ack | ConnectError)


@settings(max_examples=50)
@given(socket_packets, st.integers(0, 200))
def test_a_truncated_packet_never_raises_anything_but_packet_error(
    packet: SocketPacket, cut: int
) -> None:
    text = packet.encode().decode()
    try:
        decode_frame(text[: max(0, len(text) - cut)])
    except PacketError:
        pass


@given(st.binary(max_size=64))
def test_any_binary_frame_is_refused_as_binary(frame: bytes) -> None:
    with pytest.raises(BinaryNotSupported):
        decode_frame(frame)


# --- against the real socket.io-parser ---------------------------------------------------------

_PARSER_SCRIPT = r"""
import { Decoder, Encoder } from "socket.io-parser";
import { readFileSync } from "node:fs";
const input = JSON.parse(readFileSync(0, "utf8"));
const decoded = input.decode.map((text) => {
  const decoder = new Decoder();
  let out = null;
  decoder.on("decoded", (p) => { out = p; });
  try { decoder.add(text); } catch (e) { return { error: e.message }; }
  return out;
});
const encoded = input.encode.map((p) => new Encoder().encode(p));
process.stdout.write(JSON.stringify({ decoded, encoded }));
"""


def _run_reference_parser(decode: list[str], encode: list[dict[str, Any]]) -> Any:
    ensure_node_modules()
    result = subprocess.run(
        [node_executable(), "--input-type=module", "-e", _PARSER_SCRIPT],
        cwd=JS_DIR,
        input=json.dumps({"decode": decode, "encode": encode}),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(result.stdout)


@pytest.mark.node
def test_the_reference_parser_reads_our_server_frames_and_we_read_its_client_frames() -> None:
    data = orjson.dumps({"room": "service_1", "payload": {"amount": "25.00"}, "offset": 3})
    ours = [  # the Socket.IO packet, without the Engine.IO "4"
        encode_connect("sid-1"),
        encode_connect_error("Invalid namespace", "/admin"),
        encode_disconnect(),
        encode_event("event", data),
        encode_event('na"me', None),
        encode_reply(5, "room_joined", b'{"room":"r","offset":0}'),
        encode_reply(6, "error", b'{"code":"forbidden","message":"no"}'),
        encode_ack(0),
    ]
    client_packets = [  # what socket.io-client sends
        {"type": 0, "nsp": "/"},
        {"type": 0, "nsp": "/", "data": {"token": "abc"}},
        {"type": 1, "nsp": "/"},
        {"type": 2, "nsp": "/", "data": ["join_room", {"room": "service_1"}]},
        {"type": 2, "nsp": "/", "id": 42, "data": ["ping"]},
        {"type": 2, "nsp": "/chat", "id": 1, "data": ["x", {"a": [1, 2]}, "y"]},
        {"type": 3, "nsp": "/", "id": 3, "data": [{"ok": True}]},
    ]
    result = _run_reference_parser([frame[1:].decode() for frame in ours], client_packets)
    decoded = result["decoded"]
    assert decoded[0] == {"type": 0, "nsp": "/", "data": {"sid": "sid-1"}}
    assert decoded[1] == {"type": 4, "nsp": "/admin", "data": {"message": "Invalid namespace"}}
    assert decoded[2] == {"type": 1, "nsp": "/"}
    assert decoded[3] == {"type": 2, "nsp": "/", "data": ["event", orjson.loads(data)]}
    assert decoded[4] == {"type": 2, "nsp": "/", "data": ['na"me']}
    assert decoded[5] == {"type": 3, "nsp": "/", "id": 5, "data": [{"room": "r", "offset": 0}]}
    assert decoded[6] == {
        "type": 3,
        "nsp": "/",
        "id": 6,
        "data": [{"error": {"code": "forbidden", "message": "no"}}],
    }
    assert decoded[7] == {"type": 3, "nsp": "/", "id": 0, "data": []}

    # the reference Encoder yields one string per packet (no binary here); prefix the "4"
    frames = ["4" + parts[0] for parts in result["encoded"]]
    assert [decode_frame(frame) for frame in frames] == [
        Connect(),
        Connect("/", {"token": "abc"}),
        Disconnect(),
        Event("join_room", ({"room": "service_1"},)),
        Event("ping", (), 42),
        Event("x", ({"a": [1, 2]}, "y"), 1, "/chat"),
        Ack(3, ({"ok": True},)),
    ]
