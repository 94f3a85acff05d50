"""Every byte a client sends is bounded (CONTRACT section 2, "Limits and close codes"): raw
frames against both WebSocket paths, ``/ws`` and Socket.IO's, which one frame reader serves
(gateway.wsprotocol). Fragments per message, pongs a client does not read, half-closed clients,
prompt TCP close after a violation (Autobahn|Testsuite 7.3.2, 7.3.6, 7.5.1, 7.9.x), reserved
opcodes. The memory attacks run against a real ``python -m gateway`` process and sample its RSS
(psutil) while they run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import psutil
import pytest

from gateway.wsframes import CLOSE_TIMEOUT_S
from tests.security.helpers import RawWebSocket
from tests.support import DjangoSite
from tests.unit.test_frame_reader import client_frame

PATHS = {"ws": "/ws", "sio": "/socket.io/?EIO=4&transport=websocket"}
TRANSPORTS = pytest.mark.parametrize("transport", sorted(PATHS))
CONTINUATION, TEXT, CLOSE, PING, PONG = 0x0, 0x1, 0x8, 0x9, 0xA
PROMPT_S = CLOSE_TIMEOUT_S / 2  # well before the 5 s a closing handshake may wait
MIB = 1 << 20


async def connect(port: int, transport: str, rcvbuf: int = 65536) -> RawWebSocket:
    """A raw client on ``transport``'s path (Socket.IO's OPEN packet already read)."""
    client: RawWebSocket = await RawWebSocket.connect(
        "127.0.0.1", port, PATHS[transport], rcvbuf=rcvbuf
    )
    if transport == "sio":
        opcode, payload = await asyncio.wait_for(client.read_frame(), 5)
        assert opcode == TEXT and payload.startswith(b"0{"), payload  # Engine.IO OPEN
    return client


def port_of(node: Any) -> int:
    return int(node.http_url.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def rss_growth(pid: int) -> AsyncIterator[list[int]]:
    """Samples the RSS of ``pid`` every 10 ms while the block runs; yields a list whose one
    element is, afterwards, the peak growth in bytes over the RSS at the start."""
    process = psutil.Process(pid)
    base = process.memory_info().rss
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], process.memory_info().rss - base)
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        peak[0] = max(peak[0], process.memory_info().rss - base)


# --- 1. fragments per message -------------------------------------------------------------
@TRANSPORTS
async def test_two_million_empty_fragments_close_1009_at_the_1001st_and_memory_stays_flat(
    gateway_process: Any, transport: str
) -> None:
    """Issue 18 item 1: 2,000,000 empty continuation frames grew RSS by 15.7 MB and the message
    was accepted. Now the 1,001st frame of a message closes 1009 and the rest is skipped."""
    gw = await gateway_process.astart()
    client = await connect(gw.port, transport)
    closing = asyncio.create_task(client.read_close())
    burst = client_frame(b"", CONTINUATION, fin=False) * 10_000
    async with rss_growth(gw.pid) as growth:
        await client.send_frame(client_frame(b'{"event":"pi', fin=False))
        for _ in range(200):
            await client.send_frame(burst)
    code, reason, before = await closing
    assert (code, reason) == (1009, b"message in more than 1000 fragments")
    assert [op for op, _ in before] == []  # no message was ever delivered
    client.half_close()
    assert await client.read_eof() == b""
    assert growth[0] < 4 * MIB, growth[0]


@TRANSPORTS
async def test_a_message_of_1000_fragments_is_served_and_1001_close_1009(
    make_node: Any, transport: str
) -> None:
    node = await make_node()
    text = b'{"event":"ping","id":1}' if transport == "ws" else b"2probe"
    for fragments, served in [(1000, True), (1001, False)]:
        client = await connect(port_of(node), transport)
        frames = [client_frame(text[:1], fin=False)]
        frames += [client_frame(b"", CONTINUATION, fin=False)] * (fragments - 2)
        frames += [client_frame(text[1:], CONTINUATION)]
        await client.send_frame(b"".join(frames))
        if served:
            opcode, payload = await asyncio.wait_for(client.read_frame(), 5)
            pong = b'{"event":"pong","data":{},"id":1}' if transport == "ws" else b"3probe"
            assert (opcode, payload) == (TEXT, pong)
        else:
            assert (await client.read_close())[0] == 1009
        client.close()


# --- 2. pongs a client does not read ---------------------------------------------------------
@TRANSPORTS
async def test_a_ping_flood_from_a_client_that_does_not_read_is_closed_1008_memory_flat(
    gateway_process: Any, transport: str
) -> None:
    """Issue 18 item 2: pings from a client that never reads grew RSS by 11.3 MB and reading
    never paused. Now the gateway stops reading while a pong cannot be written, and closes
    with 1008 once one has waited half the heartbeat interval (here 2 s)."""
    gw = await gateway_process.astart(
        {"GATEWAY_WS_HEARTBEAT_S": "4", "GATEWAY_SOCKETIO_PING_TIMEOUT_S": "4"}
    )
    client = await connect(gw.port, transport, rcvbuf=4096)
    pings = client_frame(b"p" * 125, PING) * 500  # 65 KB of pings per write
    loop = asyncio.get_running_loop()
    sent = 0
    async with rss_growth(gw.pid) as growth:
        deadline = loop.time() + 3.0  # past the 2 s a pong may wait
        while loop.time() < deadline:
            client.writer.write(pings)
            sent += len(pings)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.writer.drain(), 0.05)
    # the gateway stopped reading: what we wrote waits on our side, not in the gateway
    assert client.writer.transport.get_write_buffer_size() > 0, sent
    code, reason, before = await client.read_close()
    assert (code, reason) == (1008, b"pings sent faster than the pongs are read")
    assert before and {op for op, _ in before} == {PONG}
    assert growth[0] < 8 * MIB, (growth[0], sent)
    client.close()


@TRANSPORTS
async def test_pings_of_a_client_that_reads_are_all_answered(
    make_node: Any, transport: str
) -> None:
    node = await make_node()
    client = await connect(port_of(node), transport)
    await client.send_frame(b"".join(client_frame(b"%d" % i, PING) for i in range(2000)))
    for i in range(2000):
        assert await asyncio.wait_for(client.read_frame(), 5) == (PONG, b"%d" % i)
    client.close()


# --- 4. half-closed clients get their replies --------------------------------------------------
async def test_a_ping_then_a_half_close_gets_its_pongs_every_time(make_node: Any) -> None:
    """Issue 18 item 4: a client that sent a ping and half-closed got no pong in 11 of 12
    tries. The write side stays open until the replies are out, then the gateway ends TCP."""
    node = await make_node()
    for _ in range(12):
        client = await connect(port_of(node), "ws")
        await client.send_frame(
            client_frame(b'{"event":"ping","id":1}') + client_frame(b"hb", PING)
        )
        client.half_close()
        rest = await client.read_eof()
        assert b'{"event":"pong","data":{},"id":1}' in rest
        assert bytes((0x80 | PONG, 2)) + b"hb" in rest
    await asyncio.sleep(0.1)
    assert node.node.sessions == {}


async def test_a_business_event_then_a_half_close_gets_its_ack(
    make_node: Any, django_site: DjangoSite
) -> None:
    node = await make_node()
    client = await connect(port_of(node), "ws")
    await client.send_json({"event": "authenticate", "data": {"token": "cliente-7"}})
    assert (await client.read_json())["event"] == "auth_success"
    await django_site.acontrol(events_mode="slow", slow_seconds=0.5)
    comment = {"servicioId": "3", "text": "half-closed"}
    await client.send_json({"event": "comment_created", "data": comment, "id": 9})
    client.half_close()
    frames = [orjson.loads(line) for line in _text_frames(await client.read_eof())]
    assert [(f["event"], f.get("id")) for f in frames] == [("ack", 9)]
    assert len((await django_site.acalls())["events"]) == 1


async def test_socketio_event_then_half_close_gets_its_ack(
    make_node: Any, django_site: DjangoSite
) -> None:
    node = await make_node()
    client = await connect(port_of(node), "sio")
    await client.send_frame(client_frame(b'40{"token":"cliente-7"}'))
    assert (await client.read_frame())[1].startswith(b"40{")  # CONNECT acknowledged
    assert b'"auth_success"' in (await client.read_frame())[1]
    await django_site.acontrol(events_mode="slow", slow_seconds=0.5)
    await client.send_frame(
        client_frame(b'425["comment_created",{"servicioId":"3","text":"half-closed"}]')
    )
    client.half_close()
    packets = _text_frames(await client.read_eof())
    assert len(packets) == 1 and packets[0].startswith(b'435[{"event":"comment_created"')


def _text_frames(data: bytes) -> list[bytes]:
    """The payloads of the unmasked, unfragmented text frames in ``data``."""
    out, pos = [], 0
    while pos < len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        head = 2
        if n == 126:
            n, head = int.from_bytes(data[pos + 2 : pos + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[pos + 2 : pos + 10], "big"), 10
        if opcode == TEXT:
            out.append(data[pos + head : pos + head + n])
        pos += head + n
    return out


# --- 5. prompt TCP close after a protocol violation -----------------------------------------------
INVALID_CLOSES = {
    "7.3.2 close payload of 1 byte": (client_frame(b"a", CLOSE), 1002),
    "7.3.6 close reason of 124 bytes": (client_frame(b"\x03\xe8" + b"*" * 124, CLOSE), 1002),
    "7.5.1 close reason not UTF-8": (
        client_frame(
            b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", CLOSE
        ),
        1007,
    ),
    **{
        f"7.9.x close code {code}": (client_frame(code.to_bytes(2, "big"), CLOSE), 1002)
        for code in (0, 999, 1004, 1005, 1006, 1016, 1100, 2000, 2999, 5000, 65535)
    },
    "unmasked text frame": (client_frame(b'{"event":"ping"}', mask=False), 1002),
    "reserved bits": (client_frame(b'{"event":"ping"}', rsv=4), 1002),
}


@TRANSPORTS
async def test_after_a_violation_the_close_frame_comes_and_tcp_ends_promptly(
    make_node: Any, transport: str
) -> None:
    """Issue 18 item 5: after an invalid close frame the gateway held TCP for 5 s (Autobahn
    expects the server to drop it within 1 s). Now our close frame is followed by FIN at once;
    the client does nothing more, as Autobahn's does."""
    node = await make_node()
    for case, (frame, expected) in INVALID_CLOSES.items():
        client = await connect(port_of(node), transport)
        started = time.monotonic()
        await client.send_frame(frame)
        code, _, before = await client.read_close()
        assert (code, before) == (expected, []), case
        assert await client.read_eof(PROMPT_S) == b"", case
        assert time.monotonic() - started < PROMPT_S, case
        client.close()
    await asyncio.sleep(0.1)
    assert node.node.sessions == {}


# --- 6. reserved opcodes are judged before sizes -------------------------------------------------
@TRANSPORTS
async def test_a_large_frame_with_a_reserved_opcode_is_1002_not_1009(
    make_node: Any, transport: str
) -> None:
    node = await make_node(max_message_bytes=1024)
    for opcode in (0x3, 0x7, 0xB, 0xF):
        client = await connect(port_of(node), transport)
        header = bytes((0x80 | opcode, 0x80 | 127)) + (1 << 20).to_bytes(8, "big") + b"mask"
        await client.send_frame(header + b"\x00" * 4096)  # the payload never needs to come
        assert (await client.read_close())[0] == 1002, opcode
        client.close()
    client = await connect(port_of(node), transport)
    await client.send_frame(client_frame(b"x" * 2048))  # a text frame that large: 1009
    assert (await client.read_close())[0] == 1009
    client.close()


async def test_a_client_whose_pongs_are_held_is_not_seen_by_the_heartbeat(make_node: Any) -> None:
    """What a flooder sends does not count as a sign of life while it does not read: once a
    pong is held, the heartbeat sees a silent connection (pinged, then dropped) however many
    pings wait in the socket behind it."""
    node = await make_node(ws_heartbeat_s=600)  # the rounds stay out of the way
    client = await connect(port_of(node), "ws", rcvbuf=4096)
    [session] = node.node.sessions.values()
    conn = session.transport._transport.get_protocol()
    pings = client_frame(b"p" * 125, PING) * 500
    async with asyncio.timeout(20):
        while not conn.pong_held:
            client.writer.write(pings)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.writer.drain(), 0.05)
    for _ in range(10):  # more pings queue up behind the paused reader
        client.writer.write(pings)
        await asyncio.sleep(0.02)
        assert session.transport.seen is False
    client.close()


# --- frames read ahead of the node ---------------------------------------------------------------
@TRANSPORTS
async def test_frames_sent_while_the_node_is_busy_are_read_ahead_only_so_far(
    gateway_process: Any, django_site: DjangoSite, transport: str
) -> None:
    """While a business event waits on Django, the client's next frames wait in a bounded queue
    (64 KiB, each frame counted with an overhead: empty frames too), then in the socket: 2,000,000
    empty text frames do not grow the node. Afterwards they are handled, and the rate limit
    closes the connection (4429)."""
    gw = await gateway_process.astart({"GATEWAY_RATE_LIMIT_STRIKES": "3"})
    client = await connect(gw.port, transport)
    if transport == "ws":
        await client.send_json({"event": "authenticate", "data": {"token": "cliente-7"}})
        assert (await client.read_json())["event"] == "auth_success"
        comment = {"event": "comment_created", "data": {"servicioId": "3", "text": "x"}, "id": 1}
        busy = client_frame(orjson.dumps(comment))
    else:
        await client.send_frame(client_frame(b'40{"token":"cliente-7"}'))
        for _ in range(2):  # CONNECT acknowledged, then auth_success
            await asyncio.wait_for(client.read_frame(), 5)
        busy = client_frame(b'421["comment_created",{"servicioId":"3","text":"x"}]')
    await django_site.acontrol(events_mode="slow", slow_seconds=3.0)
    closing = asyncio.create_task(client.read_close(30))
    burst = client_frame(b"") * 10_000
    async with rss_growth(gw.pid) as growth:
        await client.send_frame(busy)
        for _ in range(200):
            client.writer.write(burst)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.writer.drain(), 0.05)
            if closing.done():
                break
    code, _, _ = await closing
    assert code == 4429
    assert growth[0] < 4 * MIB, growth[0]
    client.close()
