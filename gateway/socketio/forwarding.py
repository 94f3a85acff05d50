"""Requests of a Socket.IO session that reached another node than its owner, forwarded
through Redis pub/sub: no sticky sessions.

Every node listens on its own channel (``Keys.sio_channel``). A node that receives a long-poll,
a POST or a WebSocket upgrade of a session it does not own publishes the request to the
owner's channel and waits for the answer on its own. For an upgraded WebSocket it stays a relay
for the life of the connection: the client's frames go to the owner (``in``), the owner's
packets come back (``out``), each direction in order (one publishing task per node, sequence
numbers checked). The session, its rooms and its Socket.IO state stay with the owner.

PUBLISH answers how many subscribers got a message: none means the other node is gone, and
what depended on it fails at once (the client sees an unknown session or a transport close,
reconnects, and recovers). A relay also probes its owners every ``probe_s``, so a WebSocket
whose owner died is closed even when nothing flows. When this node's own subscription was lost
(messages to it may have been missed) every forwarded request and relay ends the same way:
nothing is delivered twice or out of order, and what was lost is recovered from history.

A message is a JSON header, a newline, then the raw body (a POST's body, or packets joined by
0x1e). Header keys: ``o`` op, ``s`` sid, ``r`` request id, ``f`` sender node, ``c`` relay id,
``q`` sequence number, ``k`` close code, ``m`` message, ``st`` status, ``t`` content type, ``p``
the request's own ``t`` (a retried request is recognized by it: ``EngineSession.poll``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.socketio.engine import ABNORMAL_CLOSURE, Carrier, RequestRefused, SocketIOOptions
from gateway.socketio.owned import OwnedSessions

if TYPE_CHECKING:
    from gateway.socketio.sessions import Registry

log = logging.getLogger("gateway.socketio")

MAX_PENDING = 10_000  # forwarded requests waiting for an answer, per node
MAX_OUTBOX = 100_000  # messages waiting to be published, per node
SERVICE_RESTART = 1012
DRAIN_S = 5.0
QUIET_S = 0.2
Counted = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes


class ForwardError(Exception):
    """The request could not be forwarded (too many in flight, Redis unreachable)."""


class OwnerGone(ForwardError):
    """The node that owns the session is not listening: it died or left."""


class Call:
    """A forwarded request waiting for its answer."""

    __slots__ = ("_forwarder", "future", "op", "owner", "rid", "sid")

    def __init__(self, forwarder: Forwarder, rid: int, owner: str, op: str, sid: str) -> None:
        self._forwarder = forwarder
        self.rid = rid
        self.owner = owner
        self.op = op
        self.sid = sid
        self.future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

    def cancel(self) -> None:
        self._forwarder._pending.pop(self.rid, None)
        if not self.future.done():
            self.future.cancel()

    def fail(self, exc: Exception) -> None:
        self._forwarder._pending.pop(self.rid, None)
        if not self.future.done():
            self.future.set_exception(exc)
            self.future.exception()  # retrieved: a caller that left does not make it "unhandled"


class Forwarder:
    def __init__(
        self,
        backend: Any,
        node_id: str,
        registry: Registry,
        options: SocketIOOptions,
        *,
        probe_s: float = 1.0,
        timeout_s: float = 10.0,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.backend = backend
        self.keys = backend.keys
        self.node_id = node_id
        self.registry = registry
        self.options = options
        self.probe_s = probe_s
        self.timeout_s = timeout_s
        self.draining = draining
        self._channel = self.keys.sio_channel(node_id)
        self._rids = itertools.count(1)
        self._cids = itertools.count(1)
        self._pending: dict[int, Call] = {}
        self._relays: dict[str, Relay] = {}  # here: relay id -> the WebSocket we hold
        self.owned = OwnedSessions(self._send, registry)  # what other nodes ask of ours
        self._outbox: deque[tuple[str, bytes, Counted | None]] = deque()
        self._wake = asyncio.Event()
        self._publishing = False
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.backend.listen(self._channel, self._on_message, self._on_lost)
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="socket.io forwarding"),
            asyncio.create_task(self._probe_loop(), name="socket.io owner probes"),
        ]

    async def stop(self) -> None:
        """Shutting down: relayed WebSockets close (1001: their clients reconnect elsewhere);
        long-polls waiting here are given back to their owners (``cancel``) and answered 503,
        which a balancer retries on another node; then the outbox is flushed."""
        for relay in list(self._relays.values()):
            relay.end(1001, "server shutting down")
        for call in list(self._pending.values()):
            if call.op == "get":
                header = {"o": "cancel", "s": call.sid, "r": call.rid, "f": self.node_id}
                self._send(call.owner, header)
            call.fail(ForwardError("this node is shutting down"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                while self._outbox or self._publishing:  # noqa: ASYNC110 - bounded wait
                    await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the requesting side --------------------------------------------------------------------
    def call(self, owner: str, op: str, sid: str, body: bytes = b"", **extra: Any) -> Call:
        if len(self._pending) >= MAX_PENDING:
            raise ForwardError("too many forwarded requests in flight")
        rid = next(self._rids)
        call = Call(self, rid, owner, op, sid)
        self._pending[rid] = call
        header = {"o": op, "s": sid, "r": rid, "f": self.node_id, **extra}

        def counted(count: int) -> None:
            if not count:
                call.fail(OwnerGone(owner))

        self._send(owner, header, body, counted)
        return call

    async def abort(self, owner: str, sid: str, code: int, rid: int | None = None) -> None:
        """The client of a forwarded request is gone (or broke a rule): the owner ends the
        long-poll ``rid``, or, without one, the session."""
        header: dict[str, Any] = {"o": "abort", "s": sid, "f": self.node_id, "k": code}
        if rid is not None:
            header["r"] = rid
        self._send(owner, header)

    def relay(self, owner: str, sid: str, writer: Carrier) -> Relay:
        relay = Relay(self, owner, sid, str(next(self._cids)), writer)
        self._relays[relay.cid] = relay
        return relay

    # --- publishing, in order -------------------------------------------------------------------
    def _send(
        self, node: str, header: dict[str, Any], body: bytes = b"", counted: Counted | None = None
    ) -> None:
        if len(self._outbox) >= MAX_OUTBOX:
            log.warning("socket.io forwarding: outbox full, dropping a message to %s", node)
            if counted is not None:
                counted(0)
            return
        data = orjson.dumps(header) + b"\n" + body
        self._outbox.append((self.keys.sio_channel(node), data, counted))
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                batch = list(self._outbox)
                self._outbox.clear()
                self._publishing = True
                try:
                    counts = await self._publish(batch)
                except Exception as exc:
                    log.warning("socket.io forwarding: publish failed: %s", exc)
                    counts = [0] * len(batch)
                finally:
                    self._publishing = False
                for (_, _, counted), count in zip(batch, counts, strict=True):
                    if counted is not None:
                        try:
                            counted(int(count))
                        except Exception:
                            log.exception("socket.io forwarding: delivery callback failed")

    async def _publish(self, batch: list[tuple[str, bytes, Counted | None]]) -> list[Any]:
        client = self.backend.client
        if self.backend.cluster:  # one shard channel per node: one call each, in order
            return [await client.execute_command("SPUBLISH", ch, data) for ch, data, _ in batch]
        pipe = client.pipeline(transaction=False)
        for channel, data, _ in batch:
            pipe.execute_command("PUBLISH", channel, data)
        return list(await pipe.execute())

    # --- liveness -------------------------------------------------------------------------------
    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            if self.draining() and self._relays:
                # this node drains: the WebSockets it relays move too (their sessions, on other
                # nodes, end; the clients reconnect elsewhere and recover)
                for relay in list(self._relays.values()):
                    relay.end(SERVICE_RESTART, "node restarting; reconnect")
            owners = {relay.owner for relay in self._relays.values()}
            owners |= {call.owner for call in self._pending.values()}
            for owner in owners:
                self._send(owner, {"o": "alive"}, b"", self._alive_counter(owner))

    def _alive_counter(self, owner: str) -> Counted:
        def counted(count: int) -> None:
            if not count:
                self._owner_gone(owner)

        return counted

    def _owner_gone(self, owner: str) -> None:
        for call in [c for c in self._pending.values() if c.owner == owner]:
            call.fail(OwnerGone(owner))
        for relay in [r for r in self._relays.values() if r.owner == owner]:
            relay.end(SERVICE_RESTART, "the session's node is gone")

    def _on_lost(self) -> None:
        """Our subscription was lost and restored: messages to us may be missing. End all
        that depended on them; clients reconnect and recover from history."""
        log.warning("socket.io forwarding: subscription lost; ending forwarded sessions")
        for call in list(self._pending.values()):
            call.fail(ForwardError("the forwarding channel was lost"))
        for relay in list(self._relays.values()):
            relay.end(SERVICE_RESTART, "forwarding interrupted")
        self.owned.lost()

    # --- messages -------------------------------------------------------------------------------
    def _on_message(self, data: bytes) -> None:
        head, _, body = data.partition(b"\n")
        try:
            header = orjson.loads(head)
            handler = self._handler(str(header["o"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("socket.io forwarding: ignoring a malformed message")
            return
        try:
            handler(header, body)
        except Exception:
            log.exception("socket.io forwarding: %s failed", header.get("o"))

    def _on_reply(self, header: dict[str, Any], body: bytes) -> None:
        call = self._pending.pop(int(header["r"]), None)
        if call is not None and not call.future.done():
            call.future.set_result(Reply(int(header["st"]), str(header["t"]), body))

    def _on_alive(self, header: dict[str, Any], body: bytes) -> None:
        pass  # the answer is PUBLISH's count of receivers

    # the relaying side
    def _on_out(self, header: dict[str, Any], body: bytes) -> None:
        relay = self._relays.get(str(header["c"]))
        if relay is not None:
            relay.deliver(int(header["q"]), body)

    def _on_end(self, header: dict[str, Any], body: bytes) -> None:
        relay = self._relays.get(str(header["c"]))
        if relay is not None:
            relay.end(
                int(header.get("k") or 1000),
                str(header.get("m") or ""),
                abort=bool(header.get("a")),
            )

    def _handler(self, op: str) -> Callable[[dict[str, Any], bytes], None]:
        owned = self.owned
        handlers: dict[str, Callable[[dict[str, Any], bytes], None]] = {
            "reply": self._on_reply,
            "out": self._on_out,
            "end": self._on_end,
            "alive": self._on_alive,
            "get": owned.on_get,
            "post": owned.on_post,
            "abort": owned.on_abort,
            "cancel": owned.on_cancel,
            "attach": owned.on_attach,
            "in": owned.on_in,
            "detach": owned.on_detach,
        }
        return handlers[op]


class Relay:
    """The side of a WebSocket that this node holds for a session of another node: frames
    go to the owner, the owner's packets come back. The transport reads the socket into it
    as it would into a local session (``receive_from``, ``carrier_ended``, ``room``)."""

    __slots__ = ("_forwarder", "_seq_in", "_seq_out", "cid", "ended", "owner", "sid", "writer")

    def __init__(
        self, forwarder: Forwarder, owner: str, sid: str, cid: str, writer: Carrier
    ) -> None:
        self._forwarder = forwarder
        self.owner = owner
        self.sid = sid
        self.cid = cid
        self.writer = writer
        self._seq_in = 0  # of the owner's "out"
        self._seq_out = 0  # of our "in"
        self.ended = False

    async def attach(self) -> None:
        """Ask the owner to take this WebSocket as the session's upgrade. Raises
        ``RequestRefused`` (with Engine.IO's message) or ``ForwardError``."""
        try:
            call = self._forwarder.call(self.owner, "attach", self.sid, c=self.cid)
            try:
                reply = await asyncio.wait_for(call.future, self._forwarder.timeout_s)
            except TimeoutError:
                call.cancel()
                raise ForwardError("the session's node did not answer") from None
        except BaseException:
            self._forget()
            raise
        if reply.status != 200:
            self._forget()
            raise RequestRefused(orjson.loads(reply.body).get("message", "refused"))

    # --- the client's frames ----------------------------------------------------------------------
    def receive_from(self, carrier: Carrier, text: str | bytes) -> None:
        if self.ended:
            return
        self._seq_out += 1
        header: dict[str, Any] = {"o": "in", "s": self.sid, "c": self.cid, "q": self._seq_out}
        header["f"] = self._forwarder.node_id
        body = text.encode() if isinstance(text, str) else text
        if not isinstance(text, str):
            header["b"] = 1
        self._forwarder._send(self.owner, header, body, self._counted)

    def carrier_ended(self, carrier: Carrier, code: int | None) -> None:
        if self.ended:
            return
        self._forget()
        header: dict[str, Any] = {"o": "detach", "s": self.sid, "c": self.cid}
        header["f"] = self._forwarder.node_id
        header["k"] = code or ABNORMAL_CLOSURE
        self._forwarder._send(self.owner, header)

    async def room(self) -> None:
        return  # the owner bounds what waits for its core (INBOX_MAX)

    async def drain(self) -> None:
        """The client half-closed: give the owner's answers time to come (until none has come
        for ``QUIET_S``, at most ``DRAIN_S``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_S
        while not self.ended and loop.time() < deadline:
            seen = self._seq_in
            await asyncio.sleep(QUIET_S)
            if self._seq_in == seen:
                return

    # --- the owner's packets --------------------------------------------------------------------
    def deliver(self, seq: int, payload: bytes) -> None:
        if seq != self._seq_in + 1:
            log.warning(
                "socket.io relay %s: packets %d after %d; closing", self.cid, seq, self._seq_in
            )
            self.end(SERVICE_RESTART, "relay out of order")
            return
        self._seq_in = seq
        self.writer.send(payload.split(b"\x1e"))

    def end(self, code: int, reason: str, *, abort: bool = False) -> None:
        if self.ended:
            return
        self._forget()
        if abort:
            self.writer.abort(reason)
        else:
            self.writer.close(code, reason)

    def _counted(self, count: int) -> None:
        if not count:
            self.end(SERVICE_RESTART, "the session's node is gone")

    def _forget(self) -> None:
        self.ended = True
        self._forwarder._relays.pop(self.cid, None)
