"""Server frames and the closing handshake (gateway.wsframes) on a real TCP connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gateway.wsframes import ServerClose, close_frame, ws_frame


def test_frame_headers_for_each_length_class() -> None:
    assert ws_frame(b"hi") == b"\x81\x02hi"
    assert ws_frame(b"x" * 126)[:4] == b"\x81\x7e\x00\x7e"
    assert ws_frame(b"x" * 65536)[:10] == b"\x81\x7f" + (65536).to_bytes(8, "big")


def test_close_frame_carries_the_code_and_a_reason_cut_on_a_character() -> None:
    assert close_frame(4429, "rate limit exceeded") == b"\x88\x15\x11\x4drate limit exceeded"
    frame = close_frame(1000, "é" * 100)  # 200 bytes: cut to 122, not 123 (half a character)
    assert frame[1] == 2 + 122
    assert frame[4:].decode() == "é" * 61


@dataclass
class Pair:
    server: asyncio.Transport
    server_reader: asyncio.StreamReader
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    """A connected TCP pair: the server side's raw transport, the client side's streams."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[tuple[asyncio.StreamReader, asyncio.Transport]] = loop.create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result((reader, writer.transport))  # type: ignore[arg-type]

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    server_reader, transport = await asyncio.wait_for(accepted, 5)
    yield Pair(transport, server_reader, reader, writer)
    writer.close()
    transport.abort()
    server.close()
    await server.wait_closed()


async def test_our_close_follows_what_was_written_and_waits_for_the_answer(pair: Pair) -> None:
    closer = ServerClose(pair.server, timeout_s=5)
    pair.server.write(ws_frame(b"last words"))
    assert closer.start(4429, "rate limit exceeded")
    assert not closer.start(1000, "again")  # one close frame only
    expected = ws_frame(b"last words") + close_frame(4429, "rate limit exceeded")
    assert await pair.reader.readexactly(len(expected)) == expected
    with pytest.raises(TimeoutError):  # the connection stays open for the client's answer
        await asyncio.wait_for(pair.reader.read(1), 0.2)
    pair.writer.write(b"frames, then the client's close frame")  # read and dropped: no reset
    await pair.server_reader.readexactly(37)
    closer.peer_closed(4429)
    assert await asyncio.wait_for(pair.reader.read(), 5) == b""  # then a clean end (FIN)
    assert (closer.code, closer.peer_code) == (4429, 4429)


async def test_a_client_that_never_answers_is_cut_off_after_the_timeout(pair: Pair) -> None:
    closer = ServerClose(pair.server, timeout_s=0.2)
    closer.start(1012, "restarting")
    await pair.reader.readexactly(len(close_frame(1012, "restarting")))
    async with asyncio.timeout(5):
        try:
            assert await pair.reader.read() == b""
        except ConnectionResetError:
            pass  # abort() resets: either way the connection is gone
    assert pair.server.is_closing()


@pytest.mark.parametrize(
    ("sent", "echoed"), [(1001, 1001), (4000, 4000), (1005, 1000), (None, 1000)]
)
async def test_a_close_the_client_starts_is_answered_with_its_code(
    pair: Pair, sent: int | None, echoed: int
) -> None:
    closer = ServerClose(pair.server)
    closer.peer_closed(sent)
    assert await asyncio.wait_for(pair.reader.read(), 5) == close_frame(echoed)
    assert not closer.start(1000, "too late")
