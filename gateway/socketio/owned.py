"""The owner's side of forwarding (``forwarding``): requests of this node's Socket.IO
sessions that reached another node, and the WebSockets other nodes relay for them.

A long-poll from another node waits here like a local one (``RemotePoll``: its answer goes back
through the other node's channel); a relayed WebSocket is the session's carrier here
(``RelayCarrier``: what the session sends goes to the relaying node, in order, numbered).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.socketio.codec import UNKNOWN_SID, EngineErrorCode, HandshakeError, encode_payload
from gateway.socketio.engine import ABNORMAL_CLOSURE, EngineSession, RequestRefused, SessionGone

if TYPE_CHECKING:
    from gateway.socketio.sessions import Registry

log = logging.getLogger("gateway.socketio")

SERVICE_RESTART = 1012
INTERNAL_ERROR = 1011
JSON = "application/json"
Counted = Callable[[int], None]
# (node, header, body, counted): publish to a node's channel, in order
Send = Callable[[str, dict[str, Any], bytes, Counted | None], None]


def _error(error: HandshakeError) -> tuple[int, str, bytes]:
    return error.status, JSON, error.body()


def _refused(exc: Exception) -> tuple[int, str, bytes]:
    return _error(HandshakeError(400, EngineErrorCode.BAD_REQUEST, str(exc)))


class OwnedSessions:
    """Messages about this node's sessions from the nodes that received their requests."""

    def __init__(self, send: Send, registry: Registry) -> None:
        self.send = send
        self.registry = registry
        self.polls: dict[tuple[str, int], tuple[EngineSession, RemotePoll]] = {}
        self.carriers: dict[tuple[str, str], RelayCarrier] = {}
        self._background: set[asyncio.Task[None]] = set()

    def answer(self, header: dict[str, Any], status: int, content_type: str, body: bytes) -> None:
        reply = {"o": "reply", "r": header["r"], "st": status, "t": content_type}
        self.send(str(header["f"]), reply, body, None)

    def lost(self) -> None:
        """Messages to this node may have been missed: end what depended on them."""
        for carrier in list(self.carriers.values()):
            carrier.lost()
        for engine, _ in list(self.polls.values()):
            engine.abort(ABNORMAL_CLOSURE, "forwarding interrupted")
        self.polls.clear()

    def local(self, header: dict[str, Any]) -> EngineSession | None:
        return self.registry.get(str(header["s"]))

    def on_get(self, header: dict[str, Any], body: bytes) -> None:
        engine = self.local(header)
        if engine is None:
            self.answer(header, *_error(UNKNOWN_SID))
            return
        poll = RemotePoll(self, header, engine)
        key = (str(header["f"]), int(header["r"]))
        self.polls[key] = (engine, poll)
        try:
            engine.poll(poll, str(header.get("p") or ""))
        except SessionGone:
            self.polls.pop(key, None)
            self.answer(header, *_error(UNKNOWN_SID))
        except RequestRefused as exc:
            self.polls.pop(key, None)
            self.answer(header, *_refused(exc))

    def on_post(self, header: dict[str, Any], body: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._post(header, body))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _post(self, header: dict[str, Any], body: bytes) -> None:
        engine = self.local(header)
        if engine is None:
            self.answer(header, *_error(UNKNOWN_SID))
            return
        try:
            await engine.post(body.decode())
        except UnicodeDecodeError:
            error = HandshakeError(400, EngineErrorCode.BAD_REQUEST, "the body is not UTF-8 text")
            self.answer(header, *_error(error))
        except SessionGone:
            self.answer(header, *_error(UNKNOWN_SID))
        except RequestRefused as exc:
            self.answer(header, *_refused(exc))
        else:
            self.answer(header, 200, "text/html", b"ok")

    def on_cancel(self, header: dict[str, Any], body: bytes) -> None:
        """A long-poll the other node no longer holds (it shuts down): forgotten, unanswered,
        and the session goes on (the client's retry comes through another node)."""
        entry = self.polls.pop((str(header["f"]), int(header["r"])), None)
        if entry is not None:
            entry[0].poll_cancelled(entry[1])

    def on_abort(self, header: dict[str, Any], body: bytes) -> None:
        if "r" in header:
            entry = self.polls.pop((str(header["f"]), int(header["r"])), None)
            if entry is not None:
                entry[0].poll_lost(entry[1])
            return
        engine = self.local(header)
        if engine is not None:
            engine.close(int(header.get("k") or ABNORMAL_CLOSURE), "forwarded request refused")

    def on_attach(self, header: dict[str, Any], body: bytes) -> None:
        engine = self.local(header)
        if engine is None:
            self.answer(header, *_error(UNKNOWN_SID))
            return
        node, cid = str(header["f"]), str(header["c"])
        carrier = RelayCarrier(self, node, cid, engine)
        try:
            engine.attach(carrier)
        except RequestRefused as exc:
            self.answer(header, *_refused(exc))
            return
        self.carriers[(node, cid)] = carrier
        self.answer(header, 200, JSON, b"{}")

    def on_in(self, header: dict[str, Any], body: bytes) -> None:
        node, cid = str(header["f"]), str(header["c"])
        carrier = self.carriers.get((node, cid))
        if carrier is None:
            self.send(
                node, {"o": "end", "c": cid, "k": INTERNAL_ERROR, "m": "no such session"}, b"", None
            )
            return
        carrier.received(int(header["q"]), body if header.get("b") else body.decode())

    def on_detach(self, header: dict[str, Any], body: bytes) -> None:
        carrier = self.carriers.pop((str(header["f"]), str(header["c"])), None)
        if carrier is not None:
            carrier.engine.carrier_ended(carrier, int(header.get("k") or ABNORMAL_CLOSURE))


class RemotePoll:
    """The owner's side of a long-poll that another node holds."""

    __slots__ = ("_engine", "_header", "_owned")

    def __init__(self, owned: OwnedSessions, header: dict[str, Any], engine: EngineSession) -> None:
        self._owned = owned
        self._header = header
        self._engine = engine

    def answer(self, payload: bytes) -> None:
        owned, header = self._owned, self._header
        owned.polls.pop((str(header["f"]), int(header["r"])), None)
        reply = {"o": "reply", "r": header["r"], "st": 200, "t": "text/plain"}
        owned.send(str(header["f"]), reply, payload, self._counted)

    def _counted(self, count: int) -> None:
        if not count:  # the node holding the request is gone, and these packets with it
            self._engine.abort(ABNORMAL_CLOSURE, "long-poll lost with its node")


class RelayCarrier:
    """The owner's side of a WebSocket another node holds: what the session sends goes there."""

    __slots__ = ("_owned", "_seq_in", "_seq_out", "cid", "engine", "node")

    def __init__(self, owned: OwnedSessions, node: str, cid: str, engine: EngineSession) -> None:
        self._owned = owned
        self.node = node
        self.cid = cid
        self.engine = engine
        self._seq_in = 0
        self._seq_out = 0

    def send(self, packets: list[bytes]) -> None:
        self._seq_out += 1
        header = {"o": "out", "c": self.cid, "q": self._seq_out}
        self._owned.send(self.node, header, encode_payload(packets), self._counted)

    def buffer_size(self) -> int:
        return 0  # the relaying node bounds its socket's buffer itself (4503)

    def close(self, code: int, reason: str) -> None:
        self._forget()
        self._owned.send(self.node, {"o": "end", "c": self.cid, "k": code, "m": reason}, b"", None)

    def abort(self, reason: str) -> None:
        self._forget()
        header = {"o": "end", "c": self.cid, "k": ABNORMAL_CLOSURE, "m": reason, "a": 1}
        self._owned.send(self.node, header, b"", None)

    def received(self, seq: int, packet: str | bytes) -> None:
        if seq != self._seq_in + 1:
            log.warning(
                "socket.io relay %s: frame %d after %d; closing", self.cid, seq, self._seq_in
            )
            self.lost()
            return
        self._seq_in = seq
        self.engine.receive_from(self, packet)

    def lost(self) -> None:
        self._forget()
        self.engine.carrier_ended(self, ABNORMAL_CLOSURE)
        self._owned.send(
            self.node, {"o": "end", "c": self.cid, "k": SERVICE_RESTART, "a": 1}, b"", None
        )

    def _counted(self, count: int) -> None:
        if not count:
            self._forget()
            self.engine.carrier_ended(self, ABNORMAL_CLOSURE)

    def _forget(self) -> None:
        self._owned.carriers.pop((self.node, self.cid), None)
