"""``FrameProtocol`` (gateway.wsprotocol) on a recording transport: pongs held while the write
buffer is full, reading paused meanwhile, 1008 when a pong waits too long, and the reasons to
pause reading kept apart."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.wsframes import OPCODE_PING
from gateway.wsprotocol import PAUSE_INBOX, PAUSE_PONG, WRITE_HIGH_WATER, FrameProtocol
from tests.unit.test_frame_reader import client_frame


class Transport:
    def __init__(self) -> None:
        self.reading = True
        self.limits: tuple[int, int] = (0, 0)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        self.limits = (high, low)

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        assert self.reading
        self.reading = False

    def resume_reading(self) -> None:
        assert not self.reading
        self.reading = True


class Recorder(FrameProtocol):
    __slots__ = ("pongs", "violations")

    def __init__(self, stall_s: float = 60.0) -> None:
        super().__init__(1000, stall_s)
        self.pongs: list[bytes] = []
        self.violations: list[int] = []

    def send_pong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    def on_violation(self, code: int, reason: str) -> None:
        self.violations.append(code)


def attached(stall_s: float = 60.0) -> tuple[Recorder, Transport]:
    protocol, transport = Recorder(stall_s), Transport()
    raw: Any = transport
    protocol.attach(raw)
    return protocol, transport


async def test_pings_are_answered_at_once_while_the_buffer_has_room() -> None:
    protocol, transport = attached()
    assert transport.limits[0] == WRITE_HIGH_WATER
    protocol.data_received(client_frame(b"1", OPCODE_PING) + client_frame(b"2", OPCODE_PING))
    assert protocol.pongs == [b"1", b"2"] and transport.reading


async def test_a_full_buffer_holds_the_latest_pong_and_pauses_reading_until_it_drains() -> None:
    protocol, transport = attached()
    protocol.pause_writing()  # the transport's buffer passed its high-water mark
    protocol.data_received(b"".join(client_frame(b"%d" % i, OPCODE_PING) for i in range(3)))
    assert protocol.pongs == [] and protocol.pong_held and not transport.reading
    protocol.resume_writing()
    assert protocol.pongs == [b"2"]  # only the latest ping is answered (RFC 6455 5.5.3)
    assert transport.reading and not protocol.pong_held
    assert protocol.violations == []


async def test_a_pong_held_too_long_is_a_policy_violation() -> None:
    protocol, _ = attached(stall_s=0.05)
    protocol.pause_writing()
    protocol.data_received(client_frame(b"x", OPCODE_PING))
    await asyncio.sleep(0.2)
    assert protocol.violations == [1008] and protocol.failed
    protocol.resume_writing()
    assert protocol.pongs == []  # nothing follows the close frame


async def test_reading_resumes_only_when_no_reason_to_pause_is_left() -> None:
    protocol, transport = attached()
    protocol.pause(PAUSE_INBOX)
    protocol.pause(PAUSE_PONG)
    protocol.resume(PAUSE_PONG)
    assert not transport.reading
    protocol.resume(PAUSE_PONG)  # twice: no effect
    protocol.resume(PAUSE_INBOX)
    assert transport.reading
