"""What ``WsTransport`` writes, on a recording transport: held bytes and due pings ride on the
next frame instead of costing a send of their own."""

from __future__ import annotations

from typing import Any

from gateway.ws import PING_FRAME, WsTransport


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


def make() -> tuple[WsTransport, Recording]:
    raw = Recording()
    transport: Any = raw
    return WsTransport(transport), raw


def test_a_due_ping_rides_on_the_next_frame() -> None:
    ws, raw = make()
    ws.ping()
    assert raw.writes == [] and ws.pinged
    ws.write(b"event")
    assert raw.writes == [b"event" + PING_FRAME]
    ws.send_due_ping()  # already sent: nothing more
    ws.write(b"next")
    assert raw.writes == [b"event" + PING_FRAME, b"next"]


def test_a_due_ping_goes_alone_when_nothing_else_is_written() -> None:
    ws, raw = make()
    ws.ping()
    ws.send_due_ping()
    assert raw.writes == [PING_FRAME]


def test_held_bytes_go_first_with_the_first_frame() -> None:
    ws, raw = make()
    ws.hold(b"HTTP/1.1 101 ...\r\n\r\n")
    ws.write(b"auth_success")
    assert raw.writes == [b"HTTP/1.1 101 ...\r\n\r\nauth_success"]


def test_nothing_is_written_to_a_closing_transport() -> None:
    ws, raw = make()
    raw.closing = True
    ws.ping()
    ws.write(b"late")
    ws.send_due_ping()
    assert raw.writes == []
