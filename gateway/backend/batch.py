"""Group commit for Redis: commands queued by many coroutines in one event-loop turn share one
round trip, so a connect storm costs a few round trips, not one per connection.

Two implementations with one API (``await batcher.run(queue)``; ``queue(buffer)`` adds commands
with redis-py's method names: ``evalsha``, ``sadd``, ``srem``, ``zadd``, ``zrem``):

- ``RespBatcher``: our own connection, commands packed as RESP by hand and replies parsed by
  hiredis. redis-py's pipeline costs 150-300 µs of Python per round trip (command objects,
  encoder, per-reply timeouts), which was ~15 % of a connect's CPU (docs/benchmarks.md). Used
  for plain TCP and Unix-socket Redis.
- ``PipelineBatcher``: redis-py's pipeline, for TLS (its certificate options are redis-py's).

``make_batcher(client)`` picks one from the redis-py client's own connection settings.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
from redis._parsers import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.backend import scripts

log = logging.getLogger("gateway.redis")

Waiters = list[tuple[int, int, "asyncio.Future[list[Any]]"]]


class _GroupCommit:
    """What both share: the commands queued in one loop turn go out together, and each caller
    gets its own commands' results."""

    def __init__(self) -> None:
        self._buffer: Any = None
        self._waiters: Waiters = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.flushes = 0

    async def run(self, queue: Callable[[Any], object]) -> list[Any]:
        """``queue(buffer)`` adds commands; returns their results once the shared round trip
        ran. An error in one's own commands is raised; others' errors are theirs."""
        loop = self._loop
        if loop is None:  # looked up once: on Python 3.11 each lookup is a system call
            loop = self._loop = asyncio.get_running_loop()
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = self._new_buffer()
            self._waiters = []
            loop.call_soon(self._flush_soon)
        start = self._size(buffer)
        queue(buffer)
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._waiters.append((start, self._size(buffer), fut))
        return await fut

    def _flush_soon(self) -> None:
        buffer, waiters = self._buffer, self._waiters
        if buffer is None or self._hold_back():
            return
        self._buffer, self._waiters = None, []
        if not self._send_now(buffer, waiters):
            self.flushes += 1
            asyncio.get_running_loop().create_task(self._flush(buffer, waiters))

    def _hold_back(self) -> bool:
        """Keep collecting instead of sending now (a round trip is in flight)."""
        return False

    def _send_now(self, buffer: Any, waiters: Waiters) -> bool:
        """Send without a task when the connection is up; False: ``_flush`` does it."""
        return False

    async def _flush(self, buffer: Any, waiters: Waiters) -> None:
        try:
            results = await self._execute(buffer)
        except BaseException as exc:
            _fail(waiters, exc)
            if not isinstance(exc, Exception):
                raise
            return
        _deliver(waiters, results)

    def _new_buffer(self) -> Any:
        raise NotImplementedError

    def _size(self, buffer: Any) -> int:
        raise NotImplementedError

    async def _execute(self, buffer: Any) -> list[Any]:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class PipelineBatcher(_GroupCommit):
    def __init__(self, client: Any) -> None:
        super().__init__()
        self.client = client

    def _new_buffer(self) -> Any:
        return self.client.pipeline(transaction=False)

    def _size(self, buffer: Any) -> int:
        return len(buffer.command_stack)

    async def _execute(self, buffer: Any) -> list[Any]:
        return await scripts.execute(buffer, self.client, raise_on_error=False)


def _fail(waiters: Waiters, exc: BaseException) -> None:
    """The whole round trip failed: everyone hears of it."""
    for _, _, fut in waiters:
        if not fut.done():
            fut.set_exception(exc)


def _deliver(waiters: Waiters, results: Sequence[Any]) -> None:
    for start, end, fut in waiters:
        if fut.done():
            continue
        part = list(results[start:end])
        error = next((r for r in part if isinstance(r, Exception)), None)
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(part)


# --- our own connection ---------------------------------------------------------------------


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def pack_command(args: Sequence[Any]) -> bytes:
    """One command as a RESP array of bulk strings."""
    return pack_commands((args,))


def pack_commands(commands: Sequence[Sequence[Any]]) -> bytes:
    """Commands as RESP arrays of bulk strings, in one buffer (the hot path of a group commit):
    hiredis packs each in C (``hiredis.pack_command``), about 3x faster than in Python."""
    try:
        return b"".join([hiredis.pack_command(tuple(args)) for args in commands])
    except TypeError:  # e.g. None: the Python packer's error names the value's type
        return b"".join(_pack_py(args) for args in commands)


def _pack_py(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for value in args:
        cls = value.__class__
        data = value.encode() if cls is str else value if cls is bytes else _arg(value)
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class CommandBuffer:
    """The commands of one group commit, in redis-py's spelling (what ``queue`` callbacks use)."""

    __slots__ = ("commands",)

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.commands.append(("EVALSHA", sha, numkeys, *keys_and_args))

    def sadd(self, key: str, *members: Any) -> None:
        self.commands.append(("SADD", key, *members))

    def srem(self, key: str, *members: Any) -> None:
        self.commands.append(("SREM", key, *members))

    def zadd(self, key: str, mapping: dict[Any, float]) -> None:
        pairs: list[Any] = []
        for member, score in mapping.items():
            pairs += (score, member)
        self.commands.append(("ZADD", key, *pairs))

    def zrem(self, key: str, *members: Any) -> None:
        self.commands.append(("ZREM", key, *members))


def _reply(value: Any) -> Any:
    """hiredis's error replies as redis-py's exceptions (NoScriptError, ReadOnlyError...)."""
    cls = value.__class__
    if cls is int or cls is bytes:
        return value
    if isinstance(value, hiredis.ReplyError):
        return BaseParser.parse_error(str(value))  # type: ignore[no-untyped-call]
    if isinstance(value, list):
        return [_reply(v) for v in value]
    return value


Answer = Callable[[Any], None]  # called with the round trip's replies, or its exception


class _Link:
    """One connection; replies are matched to round trips in order (Redis answers in order).

    A round trip not answered within ``timeout_s`` fails the connection and every round trip
    on it (``RedisTimeoutError``): one watchdog timer per connection, none per round trip."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout_s: float,
        answered: Callable[[], None] = lambda: None,
    ) -> None:
        self.writer = writer
        self.answered = answered  # after each round trip's answer (or failure)
        self.timeout_s = timeout_s
        self.inflight: collections.deque[tuple[int, list[Any], Answer, float]] = collections.deque()
        self._loop = asyncio.get_running_loop()
        self._watchdog: asyncio.TimerHandle | None = None
        self.task = self._loop.create_task(self._read(reader))
        self.error: BaseException | None = None

    @property
    def usable(self) -> bool:
        return self.error is None and not self.writer.is_closing()

    def send(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        fut: asyncio.Future[list[Any]] = self._loop.create_future()

        def answer(result: Any) -> None:
            if fut.done():
                return
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        self.send_then(commands, answer)
        return fut

    def send_then(self, commands: Sequence[Sequence[Any]], answer: Answer) -> None:
        """Write ``commands``; ``answer`` gets their replies (or the error) when they come."""
        now = self._loop.time()
        self.inflight.append((len(commands), [], answer, now))
        try:
            if self.writer.is_closing():
                raise RedisConnectionError("the connection to Redis is closing")
            self.writer.write(pack_commands(commands))
        except (RuntimeError, OSError, RedisConnectionError) as exc:
            # uvloop raises RuntimeError ("the handler is closed") on a transport that has just
            # closed: a lost connection like any other, failed as such (not a bug that escapes)
            error = (
                exc
                if isinstance(exc, RedisConnectionError)
                else RedisConnectionError(f"the connection to Redis closed: {exc}")
            )
            if self.error is None:
                self.error = error  # not usable from now on
            self._loop.call_soon(self.fail, error)
            return
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(now + self.timeout_s, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self.inflight:
            return
        deadline = self.inflight[0][3] + self.timeout_s
        if self._loop.time() >= deadline:
            self.fail(RedisTimeoutError("Redis did not answer in time"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._check)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    raise RedisConnectionError("connection closed by Redis")
                parser.feed(chunk)
                while (reply := parser.gets()) is not False:
                    if not self.inflight:
                        raise RedisConnectionError("reply without a request")
                    want, got, answer, _ = self.inflight[0]
                    got.append(_reply(reply))
                    if len(got) == want:
                        self.inflight.popleft()
                        answer(got)
                        self.answered()
        except (OSError, hiredis.ProtocolError, RedisConnectionError) as exc:
            self.fail(exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(exc))
        except asyncio.CancelledError:
            self.fail(RedisConnectionError("connection closed"))
            raise

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.writer.close()
        while self.inflight:
            _, _, answer, _ = self.inflight.popleft()
            answer(exc)
        self.answered()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class RespBatcher(_GroupCommit):
    """Group commit on our own Redis connection (see the module's docstring)."""

    def __init__(
        self,
        client: Any,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.client = client  # redis-py: loads scripts Redis has lost (NOSCRIPT)
        self._address = (host, port, path)
        self._hello = self._setup_commands(db, username, password)
        self._timeout_s = timeout_s
        self._link: _Link | None = None
        self._opening: asyncio.Task[_Link] | None = None
        self._reruns: set[asyncio.Task[None]] = set()
        self._parked = False  # a buffer waits for the round trip in flight (_hold_back)
        self._closed = False

    @staticmethod
    def _setup_commands(
        db: int, username: str | None, password: str | None
    ) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        if password is not None:
            commands.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            commands.append(("SELECT", db))
        return commands

    def _new_buffer(self) -> CommandBuffer:
        return CommandBuffer()

    def _size(self, buffer: Any) -> int:
        return len(buffer.commands)

    def _hold_back(self) -> bool:
        # Group commit proper: while one round trip is in flight, what is queued meanwhile waits
        # for its answer and then goes out as one. Idle, a command goes out in its own loop
        # turn; under load, round trips grow instead of multiplying (fewer sends and reads here
        # and in Redis), for at most one round trip of waiting.
        link = self._link
        if link is not None and link.usable and link.inflight:
            self._parked = True
            return True
        return False

    def _send_now(self, buffer: Any, waiters: Waiters) -> bool:
        link = self._link
        if link is None or not link.usable:
            return False  # (re)connecting takes a task: _flush
        self.flushes += 1
        commands = buffer.commands

        def answer(result: Any) -> None:
            if isinstance(result, BaseException):
                _fail(waiters, result)
            elif any(isinstance(r, NoScriptError) for r in result):
                task = asyncio.get_running_loop().create_task(
                    self._rerun_then_deliver(commands, result, waiters)
                )
                self._reruns.add(task)  # held until done (the loop keeps weak references)
                task.add_done_callback(self._reruns.discard)
            else:
                _deliver(waiters, result)

        link.send_then(commands, answer)
        return True

    def _unpark(self) -> None:
        """A round trip was answered (or failed): what waited for it goes out now."""
        if self._parked:
            self._parked = False
            self._flush_soon()

    async def _rerun_then_deliver(
        self, commands: Sequence[tuple[Any, ...]], results: list[Any], waiters: Waiters
    ) -> None:
        _deliver(waiters, await self._rerun_lost_scripts(commands, results))

    async def _execute(self, buffer: Any) -> list[Any]:
        commands = buffer.commands
        try:
            async with asyncio.timeout(self._timeout_s):
                link = await self._connected()
                results = await link.send(commands)
                return await self._rerun_lost_scripts(commands, results)
        except TimeoutError:
            error = RedisTimeoutError("Redis did not answer in time")
            self._drop(error)
            raise error from None

    async def _rerun_lost_scripts(
        self, commands: Sequence[tuple[Any, ...]], results: list[Any]
    ) -> list[Any]:
        """A script Redis no longer knows (it restarted) is run again with its source."""
        for i, result in enumerate(results):
            if isinstance(result, NoScriptError):
                _, sha, numkeys, *rest = commands[i]
                script = scripts.by_sha(str(sha))
                n = int(numkeys)
                try:
                    results[i] = await script.run(self.client, list(rest[:n]), list(rest[n:]))
                except Exception as exc:
                    results[i] = exc
        return results

    async def _connected(self) -> _Link:
        if self._link is not None and self._link.usable:
            return self._link
        if self._closed:
            raise RedisConnectionError("the Redis connection was closed (shutting down)")
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open())
        opening = self._opening
        try:
            link = await asyncio.shield(opening)
        finally:
            if self._opening is opening and opening.done():
                self._opening = None
        self._link = link
        return link

    async def _open(self) -> _Link:
        host, port, path = self._address
        try:
            if path:
                reader, writer = await asyncio.open_unix_connection(path)
            else:
                reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
        link = _Link(reader, writer, self._timeout_s, self._unpark)
        if self._hello:
            for reply in await link.send(self._hello):
                if isinstance(reply, Exception):
                    link.fail(RedisConnectionError(f"Redis refused the connection: {reply}"))
                    await link.close()
                    raise RedisConnectionError(f"Redis refused the connection: {reply}")
        return link

    def _drop(self, exc: BaseException) -> None:
        if self._link is not None:
            self._link.fail(exc)
            self._link.task.cancel()
            self._link = None

    async def aclose(self) -> None:
        self._closed = True  # what is still queued fails instead of opening a new connection
        if self._link is not None:
            link, self._link = self._link, None
            await link.close()


def make_batcher(client: Any, timeout_s: float = 5.0) -> PipelineBatcher | RespBatcher:
    """Our own connection where the client's is plain TCP or a Unix socket, else redis-py's."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        return PipelineBatcher(client)
    kind = pool.connection_class.__name__
    kw = pool.connection_kwargs
    common = {
        "db": int(kw.get("db") or 0),
        "username": kw.get("username"),
        "password": kw.get("password"),
        "timeout_s": timeout_s,
    }
    if kind == "Connection":
        return RespBatcher(
            client, host=kw.get("host", "localhost"), port=kw.get("port", 6379), **common
        )
    if kind == "UnixDomainSocketConnection":
        return RespBatcher(client, path=kw["path"], **common)
    return PipelineBatcher(client)
