"""A TCP fault proxy: one listening port forwarding to one upstream (Redis), in asyncio.

Every gateway node, the worker and the publishers reach Redis through their own ``FaultProxy``,
so a fault can hit one process's connections and leave the others alone:

- ``set_delay(s)``: every chunk is delivered ``s`` seconds after it was read (latency, not a
  throughput cap: chunks overlap in flight, order is kept);
- ``stall(True)``: nothing is forwarded, both ways, while the sockets stay open; what arrives
  meanwhile waits in a bounded queue, then the kernel buffers fill (TCP backpressure);
- both take ``pubsub_only=True``: only connections that sent ``SUBSCRIBE``/``SSUBSCRIBE`` are
  hit, so a node's live stream lags behind its history reads (which travel on another
  connection) — the interleaving exact recovery must survive;
- ``cut(refuse_s)``: every open connection is aborted at once (both sides), and for ``refuse_s``
  new connections are accepted and closed at once (a partition that heals; also what a client
  sees of a Redis that is down, as behind HAProxy or Envoy); ``pubsub_only=True`` aborts only
  the pub/sub connections;
- ``unlisten()`` / ``listen()``: the listening socket is closed, so connecting is refused
  (``ECONNREFUSED``, as from a Redis that is not running), then opened again on the same port.

The proxy never interprets the bytes beyond spotting a subscribe. It runs in the caller's event
loop. The fault campaign (``tests/campaign``) and the recovery regression tests use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

CHUNK_BYTES = 65536
QUEUE_CHUNKS = 256  # per direction: past this the reader stops reading (backpressure)
CONNECT_TIMEOUT_S = 3.0


@dataclass
class ProxyStats:
    accepted: int = 0
    refused: int = 0  # accepted and closed during a partition, or upstream unreachable
    cut: int = 0  # connections aborted by cut()
    bytes_up: int = 0
    bytes_down: int = 0


class _Pipe:
    """One proxied connection: two directions, each a reader task and a writer task."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.pubsub = False  # the client sent (S)SUBSCRIBE: a pub/sub connection
        self.writers = (client[1], upstream[1])
        self.tasks: list[asyncio.Task[None]] = []
        for src, dst, up in ((client[0], upstream[1], True), (upstream[0], client[1], False)):
            queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
            self.tasks.append(asyncio.create_task(self._read(src, queue, up)))
            self.tasks.append(asyncio.create_task(self._write(queue, dst, up)))
        self.done = asyncio.Event()

    async def _read(
        self, src: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None], up: bool
    ) -> None:
        try:
            while True:
                data = await src.read(CHUNK_BYTES)
                if not data:
                    break
                if up and not self.pubsub and b"SUBSCRIBE" in data.upper():
                    self.pubsub = True
                await queue.put((time.monotonic() + self.proxy.delay_for(self), data))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
            if queue.full():  # the writer is stalled: end the pipe now
                self.abort()

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        dst: asyncio.StreamWriter,
        up: bool,
    ) -> None:
        try:
            while (item := await queue.get()) is not None:
                due, data = item
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                await self.proxy.flowing.wait()
                if self.pubsub:
                    await self.proxy.pubsub_flowing.wait()
                dst.write(data)
                await dst.drain()
                if up:
                    self.proxy.stats.bytes_up += len(data)
                else:
                    self.proxy.stats.bytes_down += len(data)
        except OSError:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Close both sockets at once (RST when data is pending) and stop the tasks."""
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.transport.abort()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.done.set()


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``; see the module doc."""

    def __init__(self, name: str, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.name = name
        self.upstream = (upstream_host, upstream_port)
        self.delay_s = 0.0
        self.pubsub_delay_s = 0.0
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.pubsub_flowing = asyncio.Event()
        self.pubsub_flowing.set()
        self.stats = ProxyStats()
        self._refuse_until = 0.0
        self._pipes: set[_Pipe] = set()
        self._server: asyncio.Server | None = None
        self._port = 0

    @property
    def port(self) -> int:
        assert self._port, "start() the proxy first"
        return self._port

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def open_connections(self) -> int:
        return len(self._pipes)

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def listen(self) -> None:
        """Listen again on the same port after ``unlisten()``."""
        if self._server is None:
            await self.start(self._port)

    async def unlisten(self) -> None:
        """Stop listening: new connections are refused; open ones are left alone."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    async def close(self) -> None:
        self.heal()
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for pipe in list(self._pipes):
            pipe.abort()
        await asyncio.sleep(0)
        if server is not None:
            await server.wait_closed()

    # --- faults -------------------------------------------------------------------------------
    def set_delay(self, seconds: float, *, pubsub_only: bool = False) -> None:
        if pubsub_only:
            self.pubsub_delay_s = max(0.0, seconds)
        else:
            self.delay_s = max(0.0, seconds)

    def delay_for(self, pipe: _Pipe) -> float:
        return self.delay_s + (self.pubsub_delay_s if pipe.pubsub else 0.0)

    def stall(self, stalled: bool, *, pubsub_only: bool = False) -> None:
        gate = self.pubsub_flowing if pubsub_only else self.flowing
        if stalled:
            gate.clear()
        else:
            gate.set()

    @property
    def pubsub_connections(self) -> int:
        return sum(pipe.pubsub for pipe in self._pipes)

    def cut(self, refuse_s: float = 0.0, *, pubsub_only: bool = False) -> int:
        """Abort every open connection (or only the pub/sub ones); refuse new ones for
        ``refuse_s``. Returns how many connections were cut."""
        self._refuse_until = time.monotonic() + refuse_s
        pipes = [pipe for pipe in self._pipes if pipe.pubsub or not pubsub_only]
        for pipe in pipes:
            pipe.abort()
        self.stats.cut += len(pipes)
        return len(pipes)

    def heal(self) -> None:
        """No delay, no stall, no partition."""
        for pubsub_only in (False, True):
            self.set_delay(0.0, pubsub_only=pubsub_only)
            self.stall(False, pubsub_only=pubsub_only)
        self._refuse_until = 0.0

    # --- plumbing -----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if time.monotonic() < self._refuse_until:
            self.stats.refused += 1
            writer.transport.abort()
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                upstream = await asyncio.open_connection(*self.upstream)
        except (OSError, TimeoutError):
            self.stats.refused += 1
            writer.transport.abort()
            return
        pipe = _Pipe(self, (reader, writer), upstream)
        self._pipes.add(pipe)
        try:
            await pipe.done.wait()
        finally:
            self._pipes.discard(pipe)
            for task in pipe.tasks:
                task.cancel()
            await asyncio.gather(*pipe.tasks, return_exceptions=True)

    def __repr__(self) -> str:
        return f"<FaultProxy {self.name} :{self._port or '-'} -> {self.upstream[1]}>"
