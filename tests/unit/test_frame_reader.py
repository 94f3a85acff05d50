"""The client-frame reader of the /ws fast path (gateway.wsframes.FrameReader), as pure logic:
bytes in, events out."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.wsframes import (
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    FrameReader,
    unmask,
)


class Recorder(FrameReader):
    __slots__ = ("events",)

    def __init__(self, max_size: int = 1000) -> None:
        super().__init__(max_size)
        self.events: list[tuple[str, Any]] = []

    def on_text(self, text: str) -> None:
        self.events.append(("text", text))

    def on_binary(self, data: bytes) -> None:
        self.events.append(("binary", data))

    def on_ping(self, payload: bytes) -> None:
        self.events.append(("ping", payload))

    def on_close(self, code: int | None) -> None:
        self.events.append(("close", code))

    def on_violation(self, code: int, reason: str) -> None:
        self.events.append(("violation", code))


def client_frame(
    payload: bytes, opcode: int = OPCODE_TEXT, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A frame as a client sends it (masked unless told)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = bytes((b0, m | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((b0, m | 127)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def read(*frames: bytes, max_size: int = 1000) -> list[tuple[str, Any]]:
    reader = Recorder(max_size)
    reader.feed(b"".join(frames))
    return reader.events


def test_unmask_is_the_xor_with_the_repeated_key() -> None:
    key = b"\x01\x02\x03\x04"
    data = bytes(range(11))
    assert unmask(data, key) == bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert unmask(b"", key) == b""
    assert unmask(b"\x00\x00\x00", key) == b"\x01\x02\x03"  # leading zeros are kept


def test_messages_of_each_kind_and_length_class() -> None:
    medium, large = "é" * 100, "x" * 70_000
    assert read(
        client_frame(b"hi"),
        client_frame(medium.encode()),
        client_frame(large.encode()),
        client_frame(b"\x00\xff", OPCODE_BINARY),
        client_frame(b"p", OPCODE_PING),
        client_frame(b"", OPCODE_PONG),
        max_size=100_000,
    ) == [
        ("text", "hi"),
        ("text", medium),
        ("text", large),
        ("binary", b"\x00\xff"),
        ("ping", b"p"),
    ]


def test_fragments_are_joined_and_control_frames_may_come_between() -> None:
    assert read(
        client_frame(b"he", fin=False),
        client_frame(b"!", OPCODE_PING),
        client_frame(b"ll", OPCODE_CONTINUATION, fin=False),
        client_frame(b"o", OPCODE_CONTINUATION),
    ) == [("ping", b"!"), ("text", "hello")]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_split_of_the_stream_gives_the_same_events(cuts: list[int]) -> None:
    stream = b"".join(
        [
            client_frame(b'{"event":"ping"}'),
            client_frame(b"a" * 300, fin=False),
            client_frame(b"b" * 5, OPCODE_CONTINUATION),
            client_frame(b"x", OPCODE_PING),
            client_frame(b"\x03\xe8bye", OPCODE_CLOSE),
        ]
    )
    reader = Recorder()
    pos = 0
    for cut in cuts:
        reader.feed(stream[pos : pos + cut])
        pos += cut
    reader.feed(stream[pos:])
    assert reader.events == [
        ("text", '{"event":"ping"}'),
        ("text", "a" * 300 + "b" * 5),
        ("ping", b"x"),
        ("close", 1000),
    ]


def test_close_frames_report_their_code_and_end_the_stream() -> None:
    assert read(client_frame(b"", OPCODE_CLOSE)) == [("close", None)]
    assert read(client_frame(b"\x0f\xa0", OPCODE_CLOSE), client_frame(b"late")) == [("close", 4000)]


def test_violations_are_reported_once_with_their_close_code() -> None:
    cases = {
        "unmasked": (client_frame(b"x", mask=False), 1002),
        "reserved bits": (client_frame(b"x", rsv=4), 1002),
        "unknown opcode": (client_frame(b"x", 0x3), 1002),
        "unknown control opcode": (client_frame(b"x", 0xB), 1002),
        "fragmented control": (client_frame(b"x", OPCODE_PING, fin=False), 1002),
        "long control": (client_frame(b"x" * 126, OPCODE_PING), 1002),
        "lone continuation": (client_frame(b"x", OPCODE_CONTINUATION), 1002),
        "message in a message": (client_frame(b"a", fin=False) + client_frame(b"b"), 1002),
        "1-byte close": (client_frame(b"\x03", OPCODE_CLOSE), 1002),
        "reserved close code": (client_frame(b"\x03\xed", OPCODE_CLOSE), 1002),  # 1005
        "close code 5000": (client_frame(b"\x13\x88", OPCODE_CLOSE), 1002),
        "text not UTF-8": (client_frame(b"\xff\xfe"), 1007),
        "close reason not UTF-8": (client_frame(b"\x03\xe8\xff", OPCODE_CLOSE), 1007),
        "too big": (client_frame(b"x" * 1001), 1009),
    }
    for name, (frame, code) in cases.items():
        assert read(frame, client_frame(b"after")) == [("violation", code)], name


def test_after_a_violation_only_the_clients_close_frame_is_reported() -> None:
    events = read(
        client_frame(b"x", mask=False),
        client_frame(b"ignored"),
        client_frame(b"y", OPCODE_PING),
        client_frame(b"\x03\xea", OPCODE_CLOSE),
    )
    assert events == [("violation", 1002), ("close", 1002)]


def test_a_message_over_the_limit_is_refused_from_its_header_and_never_buffered() -> None:
    reader = Recorder(max_size=1000)
    big = client_frame(b"z" * 200_000)
    reader.feed(big[:10])  # the header alone decides
    assert reader.events == [("violation", 1009)]
    for i in range(10, len(big), 4096):
        reader.feed(big[i : i + 4096])
        assert reader._have == 0  # skipped as it arrives, not kept
    reader.feed(client_frame(b"\x03\xe8", OPCODE_CLOSE))
    assert reader.events == [("violation", 1009), ("close", 1000)]


def test_a_control_frame_declaring_a_long_payload_is_refused_from_its_header() -> None:
    for opcode in (OPCODE_PING, OPCODE_CLOSE):
        reader = Recorder()
        header = bytes((0x80 | opcode, 0x80 | 127)) + (1 << 30).to_bytes(8, "big") + b"mask"
        reader.feed(header)  # a 1 GiB ping (or close) announced: nothing of it is kept
        assert reader.events == [("violation", 1002)]
        reader.feed(b"\x00" * 65536)
        assert reader._have == 0 and not reader._chunks


def test_fragments_count_together_against_the_limit() -> None:
    events = read(
        client_frame(b"a" * 600, fin=False),
        client_frame(b"b" * 600, OPCODE_CONTINUATION),
        max_size=1000,
    )
    assert events == [("violation", 1009)]


def test_a_length_with_the_top_bit_set_stops_the_reader() -> None:
    frame = bytes((0x81, 0xFF)) + (1 << 63).to_bytes(8, "big") + b"\x00" * 8
    reader = Recorder()
    reader.feed(frame)
    reader.feed(client_frame(b"\x03\xe8", OPCODE_CLOSE))
    assert reader.events == [("violation", 1002)]


def test_a_message_may_have_1000_fragments_and_the_1001st_is_refused_from_its_header() -> None:
    empty = client_frame(b"", OPCODE_CONTINUATION, fin=False)
    served = read(
        client_frame(b"a", fin=False), empty * 998, client_frame(b"b", OPCODE_CONTINUATION)
    )
    assert served == [("text", "ab")]
    reader = Recorder()
    reader.feed(client_frame(b"a", fin=False) + empty * 999)
    assert reader.events == []
    reader.feed(bytes((OPCODE_CONTINUATION, 0x80 | 5)))  # the 1,001st frame's header alone
    assert reader.events == [("violation", 1009)]
    assert reader._parts == [] and reader._msg_frames == 0  # the fragments are dropped


def test_opcode_and_fragmentation_are_judged_before_the_size() -> None:
    """A frame too large for the limit but wrong in itself is a protocol error (1002), not a big
    message (1009), and its payload is never waited for."""
    huge = (1 << 20).to_bytes(8, "big") + b"mask"
    cases = {
        "reserved data opcode": bytes((0x83, 0xFF)) + huge,
        "reserved control opcode": bytes((0x8B, 0xFF)) + huge,
        "lone continuation": bytes((0x80, 0xFF)) + huge,
        "message in a message": client_frame(b"a", fin=False) + bytes((0x81, 0xFF)) + huge,
    }
    for name, frames in cases.items():
        reader = Recorder()
        reader.feed(frames)
        assert reader.events == [("violation", 1002)], name
        assert reader._skip > 0 and not reader._chunks, name
