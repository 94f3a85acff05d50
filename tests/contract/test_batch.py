"""Group commit (gateway.backend.batch) against a real redis-server: our own RESP connection
gives the same results and errors as redis-py's pipeline, one round trip per loop turn, and
survives what Redis does to it (scripts flushed, restarts, ACL users, other databases)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backend import scripts
from gateway.backend.batch import PipelineBatcher, RespBatcher, make_batcher, pack_command
from tests.support import RedisServer


def test_pack_command_is_resp() -> None:
    assert pack_command(("SADD", "k", b"\xff", 7, 1.5)) == (
        b"*5\r\n$4\r\nSADD\r\n$1\r\nk\r\n$1\r\n\xff\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    )
    with pytest.raises(TypeError):
        pack_command(("SET", "k", None))


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Any]:
    c = aioredis.Redis.from_url(redis_server.url)
    yield c
    await c.aclose()


@pytest.fixture(params=["resp", "pipeline"])
async def batcher(client: Any, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Both implementations, one API: our own connection (plain TCP) and redis-py's pipeline
    (what TLS clients get)."""
    b = make_batcher(client) if request.param == "resp" else PipelineBatcher(client)
    assert isinstance(b, RespBatcher if request.param == "resp" else PipelineBatcher)
    yield b
    await b.aclose()


async def test_commands_of_one_loop_turn_share_one_round_trip(batcher: Any, client: Any) -> None:
    async def add(i: int) -> list[Any]:
        def queue(buf: Any) -> None:
            buf.sadd("s", f"m{i}")
            buf.zadd("z", {f"m{i}": i})

        return await batcher.run(queue)

    results = await asyncio.gather(*(add(i) for i in range(50)))
    assert results == [[1, 1]] * 50
    assert batcher.flushes == 1
    assert await client.scard("s") == 50
    assert await client.zrange("z", 0, 2, withscores=True) == [(b"m0", 0), (b"m1", 1), (b"m2", 2)]
    assert await batcher.run(lambda buf: (buf.srem("s", "m0", "m1"), buf.zrem("z", "m0"))) == [
        2,
        1,
    ]


async def test_what_is_queued_while_a_round_trip_is_in_flight_goes_out_together(
    client: Any,
) -> None:
    """Our own connection holds back new commands while a round trip is in flight (group
    commit): ten callers over ten loop turns share a few round trips, not ten."""
    batcher = make_batcher(client)

    async def add(i: int) -> list[Any]:
        for _ in range(i):
            await asyncio.sleep(0)
        return await batcher.run(lambda buf: buf.sadd("s", f"m{i}"))

    try:
        assert await batcher.run(lambda buf: buf.sadd("warm", "a")) == [1]  # connected
        before = batcher.flushes
        assert await asyncio.gather(*(add(i) for i in range(10))) == [[1]] * 10
        assert batcher.flushes - before <= 5
        assert await client.scard("s") == 10
    finally:
        await batcher.aclose()


async def test_an_error_is_raised_to_its_own_caller_only(batcher: Any, client: Any) -> None:
    await client.set("str", "x")
    good = batcher.run(lambda buf: buf.sadd("set", "a"))
    bad = batcher.run(lambda buf: (buf.sadd("other", "a"), buf.sadd("str", "a")))
    results = await asyncio.gather(good, bad, return_exceptions=True)
    assert results[0] == [1]
    assert isinstance(results[1], ResponseError) and "WRONGTYPE" in str(results[1])
    assert await client.sismember("other", "a")  # the commands before it did run


@pytest.mark.parametrize("connected", [False, True], ids=["first-round-trip", "connected"])
async def test_a_script_redis_lost_is_run_again_with_its_source(
    batcher: Any, client: Any, connected: bool
) -> None:
    if connected:  # the round trip then goes out at once, with no task (RespBatcher)
        assert await batcher.run(lambda buf: buf.sadd("warm", "a")) == [1]
    script = scripts.load(scripts.ROOM_COUNT)
    await client.script_load(script.source)
    await client.script_flush()  # as after a restart
    [count], [added] = await asyncio.gather(
        batcher.run(lambda buf: buf.evalsha(script.sha, 1, "gateway:room:{r}:meta")),
        batcher.run(lambda buf: buf.sadd("other", "x")),  # same round trip, its own result
    )
    assert count is not None
    assert added == 1
    assert await client.script_exists(script.sha) == [True]


async def test_redis_that_stops_answering_fails_the_round_trip_in_time(
    redis_server: RedisServer, client: Any
) -> None:
    batcher = make_batcher(client, timeout_s=0.5)
    try:
        assert await batcher.run(lambda buf: buf.sadd("s", "a")) == [1]
        os.kill(redis_server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await batcher.run(lambda buf: buf.sadd("s", "b"))
            assert time.monotonic() - started < 2.0
        finally:
            os.kill(redis_server.pid, signal.SIGCONT)
        assert await batcher.run(lambda buf: buf.sadd("s", "c")) == [1]  # a new connection
    finally:
        await batcher.aclose()


async def test_a_lost_connection_fails_the_round_trip_then_reconnects(
    redis_server: RedisServer, batcher: Any
) -> None:
    assert await batcher.run(lambda buf: buf.sadd("s", "a")) == [1]
    redis_server.kill()
    with pytest.raises(RedisConnectionError):
        await batcher.run(lambda buf: buf.sadd("s", "b"))
    redis_server.start()
    assert await batcher.run(lambda buf: buf.sadd("s", "c")) == [1]


async def test_acl_user_and_database_from_the_client(redis_server: RedisServer) -> None:
    admin = redis_server.admin()
    admin.execute_command("ACL", "SETUSER", "gw", "on", ">s3cret", "~*", "+@all")
    url = redis_server.url.replace("redis://", "redis://gw:s3cret@") + "/3"
    c = aioredis.Redis.from_url(url)
    b = make_batcher(c)
    try:
        assert await b.run(lambda buf: buf.sadd("in-db-3", "a")) == [1]
        assert await c.sismember("in-db-3", "a")  # the client's database, not 0
        assert not admin.exists("in-db-3")
    finally:
        await b.aclose()
        await c.aclose()

    wrong = aioredis.Redis.from_url(url.replace("s3cret", "nope"))
    b = make_batcher(wrong)
    try:
        with pytest.raises(RedisConnectionError, match="refused"):
            await b.run(lambda buf: buf.sadd("x", "a"))
    finally:
        await b.aclose()
        await wrong.aclose()


def test_tls_clients_keep_redis_pys_pipeline() -> None:
    tls = aioredis.Redis.from_url("rediss://127.0.0.1:1")
    assert isinstance(make_batcher(tls), PipelineBatcher)
    unix = aioredis.Redis.from_url("unix:///tmp/redis.sock?db=2")
    assert isinstance(make_batcher(unix), RespBatcher)


async def test_commands_queued_around_close_fail_instead_of_reconnecting(client: Any) -> None:
    batcher = make_batcher(client)
    assert await batcher.run(lambda buf: buf.sadd("s", "a")) == [1]
    late = asyncio.ensure_future(batcher.run(lambda buf: buf.sadd("s", "b")))
    await batcher.aclose()
    with pytest.raises(RedisConnectionError):
        await late
    with pytest.raises(RedisConnectionError):
        await batcher.run(lambda buf: buf.sadd("s", "c"))
    assert batcher._link is None  # nothing was reopened
