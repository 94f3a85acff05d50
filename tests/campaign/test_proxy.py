"""The fault proxy against a real redis-server: it forwards, delays, stalls and cuts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.fault_proxy import FaultProxy


@pytest.fixture
async def proxy(redis_server: Any) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy("test", redis_server.port)
    await proxy.start()
    yield proxy
    await proxy.close()


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def ping(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bytes:
    reader, writer = stream
    writer.write(b"PING\r\n")
    await writer.drain()
    return await reader.readline()


async def test_forwards_both_ways(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    assert await ping(stream) == b"+PONG\r\n"
    assert proxy.open_connections == 1
    assert proxy.stats.bytes_up > 0 and proxy.stats.bytes_down > 0
    stream[1].close()


async def test_delay_holds_every_chunk_each_way(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    proxy.set_delay(0.25)
    started = time.monotonic()
    assert await ping(stream) == b"+PONG\r\n"
    assert time.monotonic() - started >= 0.5  # 0.25 s up, 0.25 s down
    proxy.set_delay(0.0)
    stream[1].close()


async def test_stall_keeps_the_socket_open_and_forwards_afterwards(proxy: FaultProxy) -> None:
    stream = await connect(proxy)
    assert await ping(stream) == b"+PONG\r\n"
    proxy.stall(True)
    pending = asyncio.create_task(ping(stream))
    await asyncio.sleep(0.5)
    assert not pending.done()  # nothing came back while stalled...
    assert proxy.open_connections == 1  # ...and nothing was closed
    proxy.stall(False)
    async with asyncio.timeout(10):
        assert await pending == b"+PONG\r\n"  # the same connection goes on
    stream[1].close()


async def test_cut_closes_open_connections_and_refuses_for_a_while(proxy: FaultProxy) -> None:
    reader, writer = await connect(proxy)
    assert await ping((reader, writer)) == b"+PONG\r\n"
    assert proxy.cut(refuse_s=30) == 1
    async with asyncio.timeout(10):
        assert await reader.read() == b""  # closed under us
    refused = await connect(proxy)
    async with asyncio.timeout(10):
        assert await refused[0].read() == b""  # accepted and closed: partitioned
    proxy.heal()
    healed = await connect(proxy)
    assert await ping(healed) == b"+PONG\r\n"
    for stream_writer in (writer, refused[1], healed[1]):
        stream_writer.close()


async def test_a_pubsub_only_stall_holds_the_live_stream_and_not_the_commands(
    proxy: FaultProxy,
) -> None:
    subscriber = await connect(proxy)
    subscriber[1].write(b"SUBSCRIBE ch\r\n")
    confirmed = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    assert await subscriber[0].readexactly(len(confirmed)) == confirmed
    commands = await connect(proxy)
    assert await ping(commands) == b"+PONG\r\n"
    assert proxy.pubsub_connections == 1
    proxy.stall(True, pubsub_only=True)
    commands[1].write(b"PUBLISH ch hello\r\n")
    assert await commands[0].readline() == b":1\r\n"  # commands flow: it was published
    message = asyncio.create_task(subscriber[0].readuntil(b"hello\r\n"))
    await asyncio.sleep(0.5)
    assert not message.done()  # the live stream waits...
    proxy.stall(False, pubsub_only=True)
    async with asyncio.timeout(10):
        assert (await message).endswith(b"hello\r\n")  # ...and resumes, nothing lost
    for _reader, writer in (subscriber, commands):
        writer.close()


async def test_unlisten_refuses_connections_until_listen(proxy: FaultProxy) -> None:
    port = proxy.port
    await proxy.unlisten()
    with pytest.raises(ConnectionRefusedError):
        await connect(proxy)
    await proxy.listen()
    assert proxy.port == port
    stream = await connect(proxy)
    assert await ping(stream) == b"+PONG\r\n"
    stream[1].close()
