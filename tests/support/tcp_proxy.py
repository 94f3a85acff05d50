"""A TCP proxy between gateway code and Redis that a test can make misbehave, on purpose.

It runs in the test's event loop. Each accepted connection is piped to the upstream; a
connection that sends ``SUBSCRIBE``/``SSUBSCRIBE`` is marked as a pub/sub connection, so a test
can stall just the node's live stream while its command connections keep working — exactly the
interleavings that recovery must survive (history read on one connection, live events late on
another). Faults:

* ``stall(pubsub_only=True)``: stop forwarding, both ways, keeping the sockets open (bytes wait
  in the proxy); ``resume()`` forwards what waited, in order.
* ``await refuse(True)``: the listening socket is closed, so new connections are refused (a
  Redis that cannot be reached); ``await refuse(False)`` listens again on the same port.
* ``accept_and_close(True)``: new connections are accepted and closed at once (a Redis at
  ``maxclients``).
* ``cut(pubsub_only=False)``: close connections now.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class _Pipe:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    pubsub: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            writer.close()
        for task in self.tasks:
            task.cancel()


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self._refusing = False
        self._flowing_all = asyncio.Event()
        self._flowing_all.set()
        self._flowing_pubsub = asyncio.Event()
        self._flowing_pubsub.set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for pipe in list(self._pipes):
            pipe.close()
        self._pipes.clear()

    # --- faults -----------------------------------------------------------------------------------
    def stall(self, *, pubsub_only: bool = True) -> None:
        (self._flowing_pubsub if pubsub_only else self._flowing_all).clear()

    def resume(self) -> None:
        self._flowing_pubsub.set()
        self._flowing_all.set()

    async def refuse(self, on: bool) -> None:
        if on and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif not on and self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def accept_and_close(self, on: bool) -> None:
        self._refusing = on

    def cut(self, *, pubsub_only: bool = False) -> int:
        victims = [p for p in self._pipes if p.pubsub or not pubsub_only]
        for pipe in victims:
            pipe.close()
            self._pipes.discard(pipe)
        return len(victims)

    @property
    def pubsub_connections(self) -> int:
        return sum(1 for p in self._pipes if p.pubsub)

    # --- piping -----------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        pipe = _Pipe(writer, up_writer)
        self._pipes.add(pipe)
        pipe.tasks = [
            asyncio.create_task(self._pump(pipe, reader, up_writer, sniff=True)),
            asyncio.create_task(self._pump(pipe, up_reader, writer, sniff=False)),
        ]

    async def _pump(
        self,
        pipe: _Pipe,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        sniff: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while True:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    break
                if sniff and not pipe.pubsub and b"SUBSCRIBE" in chunk.upper():
                    pipe.pubsub = True
                await self._flowing_all.wait()
                if pipe.pubsub:
                    await self._flowing_pubsub.wait()
                writer.write(chunk)
                await writer.drain()
        pipe.close()
        self._pipes.discard(pipe)
