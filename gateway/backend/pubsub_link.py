"""One pub/sub connection to one Redis server, owned outright.

We speak RESP on our own asyncio stream (parsed by hiredis) instead of redis-py's PubSub because
we must *know* when a connection was lost: redis-py resubscribes silently, hiding the window in
which publications were missed. Here every loss is reported (``on_lost``) so the node can tell
its clients to ``rejoin`` and recover from history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis

from gateway.backend.batch import pack_command

log = logging.getLogger("gateway.pubsub")

MessageHandler = Callable[[str, bytes], None]
LostHandler = Callable[[set[str]], None]


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    use_ssl: bool = False
    unix_path: str | None = None

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parsed = urlparse(url)
        password = unquote(parsed.password) if parsed.password else None
        username = unquote(parsed.username) if parsed.username else None
        if parsed.scheme == "unix":
            return cls("", 0, username, password, unix_path=parsed.path)
        return cls(
            parsed.hostname or "localhost",
            parsed.port or 6379,
            username,
            password,
            use_ssl=parsed.scheme.startswith("rediss"),
        )

    def with_address(self, host: str, port: int) -> Endpoint:
        return Endpoint(host, port, self.username, self.password, self.use_ssl)

    @property
    def name(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


class PubSubLink:
    def __init__(
        self,
        endpoint: Endpoint,
        *,
        sharded: bool,
        on_message: MessageHandler,
        on_lost: LostHandler,
        probe_s: float = 5.0,
        subscribe_timeout_s: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self._sharded = sharded
        self._on_message = on_message
        self._on_lost = on_lost
        self._probe_s = probe_s
        self._subscribe_timeout_s = subscribe_timeout_s
        self._sub_cmd = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsub_cmd = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self.channels: set[str] = set()  # wanted
        self._active: set[str] = set()  # confirmed by the server on this connection
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._pending_sub: set[str] = set()
        self._writer: asyncio.StreamWriter | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_rx = time.monotonic()
        self._closing = False
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pubsub {self.endpoint.name}")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop_connection()
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe and wait until the server confirms each channel."""
        futures = []
        for channel in channels:
            self.channels.add(channel)
            if channel in self._active:
                continue  # the common case: no waiting, and no loop lookup (a system call)
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.setdefault(channel, []).append(fut)
            futures.append(fut)
            if self.connected and channel not in self._pending_sub:
                if not self._pending_sub:
                    loop.call_soon(self._flush_subscribes)
                self._pending_sub.add(channel)
        if futures:
            async with asyncio.timeout(self._subscribe_timeout_s):
                await asyncio.gather(*futures)

    def unsubscribe(self, channels: Iterable[str]) -> None:
        gone = [c for c in channels if c in self.channels]
        for channel in gone:
            self.channels.discard(channel)
            self._active.discard(channel)
            self._pending_sub.discard(channel)
        if gone and self._writer is not None and self.connected:
            self._send(self._unsub_cmd, *gone)

    def restart(self, reason: str) -> None:
        """Drop the connection; the run loop reconnects and resubscribes (liveness probe)."""
        log.warning("restarting pub/sub connection to %s: %s", self.endpoint.name, reason)
        self._drop_connection()

    # --- internals -----------------------------------------------------------------------------
    def _flush_subscribes(self) -> None:
        channels = sorted(self._pending_sub)
        self._pending_sub.clear()
        if channels and self.connected:
            self._send(self._sub_cmd, *channels)

    def _send(self, *parts: str | bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(pack_command(parts))

    def _drop_connection(self) -> None:
        self._connected.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ep = self.endpoint
        if ep.unix_path:
            reader, writer = await asyncio.open_unix_connection(ep.unix_path)
        else:
            ctx = ssl.create_default_context() if ep.use_ssl else None
            reader, writer = await asyncio.open_connection(ep.host, ep.port, ssl=ctx)
        if ep.password is not None:
            auth = ("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password)
            writer.write(pack_command(auth))
            parser = hiredis.Reader()
            while (reply := parser.gets()) is False:
                chunk = await reader.read(4096)
                if not chunk:
                    raise ConnectionError("connection closed during AUTH")
                parser.feed(chunk)
            if isinstance(reply, hiredis.ReplyError):
                raise ConnectionError(f"AUTH failed: {reply}")
        return reader, writer

    async def _run(self) -> None:
        delay = 0.1
        first = True
        while not self._closing:
            try:
                reader, writer = await asyncio.wait_for(self._open(), timeout=5)
            except (OSError, TimeoutError, ConnectionError) as exc:
                log.warning("pub/sub connect to %s failed: %s", self.endpoint.name, exc)
                await asyncio.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 5.0)
                continue
            self._writer = writer
            self._active.clear()
            self._pending_sub.clear()
            if self.channels:
                self._send(self._sub_cmd, *sorted(self.channels))
            self._connected.set()
            self._last_rx = time.monotonic()
            if not first:
                self.reconnects += 1
                log.info("pub/sub connection to %s restored", self.endpoint.name)
            first = False
            delay = 0.1
            probe = asyncio.create_task(self._probe_loop())
            try:
                await self._read_loop(reader)
            except (OSError, ConnectionError, hiredis.ProtocolError) as exc:
                log.warning("pub/sub connection to %s lost: %s", self.endpoint.name, exc)
            finally:
                probe.cancel()
                self._drop_connection()
            if self._closing:
                return
            lost = set(self.channels)
            self._active.clear()
            if lost:
                self._on_lost(lost)
            await asyncio.sleep(delay * random.random())

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader()
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("connection closed by server")
            self._last_rx = time.monotonic()
            parser.feed(chunk)
            while (reply := parser.gets()) is not False:
                self._dispatch(reply)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or not reply:
            return
        kind = reply[0]
        if kind in (b"message", b"smessage"):
            self._on_message(reply[1].decode(), reply[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            channel = reply[1].decode()
            if channel in self.channels:
                self._active.add(channel)
                for fut in self._waiters.pop(channel, []):
                    if not fut.done():
                        fut.set_result(None)
        elif kind == b"sunsubscribe":
            channel = reply[1].decode()
            if channel in self.channels and channel in self._active:
                # The server moved the slot away (resharding): recover through a reconnect.
                self._active.discard(channel)
                self._on_lost({channel})

    async def _probe_loop(self) -> None:
        """PING through the subscribed connection; a silent connection is restarted."""
        while True:
            await asyncio.sleep(self._probe_s)
            self._send("PING")
            await asyncio.sleep(self._probe_s)
            if time.monotonic() - self._last_rx > 2 * self._probe_s:
                self.restart("no answer to PING")
                return
