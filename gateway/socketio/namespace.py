"""Socket.IO on top of an Engine.IO session: the default namespace, events and their
acknowledgements, authentication in the CONNECT packet, and connection state recovery.

It talks to the gateway core through a ``SessionPort`` (one per session, see ``routes``):
client events go to ``handle_event`` exactly as ``/ws`` frames do, and the core's replies come
back through ``encode``. Packets are read as they come (so pongs are never late) and handed to
the core one at a time, in the client's order, by a worker that exists only while there is work.

The CONNECT packet's ``auth`` is verified *before* the CONNECT is acknowledged, so that a
refused token is a CONNECT_ERROR (``connect_error`` with ``err.message`` = the code,
``err.data`` = ``{code, message}``; ``connect`` never fires). Until the acknowledgement,
``Delivery`` holds back everything the core writes; the replies of this phase carry marker ids
(``CONNECT_AUTH``, ``RESTORE``, ``TRACK``) so that ``encode`` knows them.

With recovery, a room whose live stream has a gap (an event missing before the next: a lost
subscription, a publication lost between Redis and this node) is joined again from the
client's position, here, as the core's ``rejoin`` asks clients to: an unchanged Socket.IO client
knows nothing of ``rejoin``, and gets the missing events, in order, instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, Final, Protocol

import orjson

from gateway.backend.base import Position
from gateway.closecodes import CloseCode
from gateway.protocol import FrameId
from gateway.socketio import wire
from gateway.socketio.codec import (
    DEFAULT_NAMESPACE,
    BinaryNotSupported,
    Connect,
    ConnectError,
    Disconnect,
    Event,
    PacketError,
    SocketPacket,
    encode_connect,
    encode_connect_error,
    encode_disconnect,
    encode_reply,
)
from gateway.socketio.delivery import CONNECT, SAVING
from gateway.socketio.engine import PROTOCOL_ERROR, EngineSession
from gateway.socketio.recovery import Record, RecordStore, Tracker, new_pid

log = logging.getLogger("gateway.socketio")

# Marker ids of the core replies this layer asks for itself (a Socket.IO ack id is an int).
CONNECT_AUTH: Final = "sio:connect"
RESTORE: Final = "sio:restore"
REJOIN: Final = "sio:rejoin"  # a room whose live stream had a gap, joined again with since
TRACK: Final = "sio:track"

INBOX_PACKETS = 32  # packets read ahead of the core before reading pauses
INBOX_MAX = 512  # ... and where a sender that cannot be paused (another node) is cut off
POLICY_VIOLATION = 1008
DRAIN_TIMEOUT_S = 5.0

# /ws closes that a Socket.IO client gets as a DISCONNECT packet ("io server disconnect": it
# does not reconnect by itself); any other close is a transport close (it reconnects).
DISCONNECT_CLOSES: Final = frozenset(
    {CloseCode.AUTH_FAILED, CloseCode.DISCONNECTED_BY_SERVER, CloseCode.RATE_LIMITED}
)

Job = Callable[[], Awaitable[None]]


class SessionPort(Protocol):
    """What a Socket.IO session needs from the gateway core (``routes.NodePort``)."""

    @property
    def connection_id(self) -> str: ...

    @property
    def user_id(self) -> str | None: ...

    async def handle_event(self, name: str, data: Any, frame_id: FrameId | None) -> None: ...

    async def handle_invalid(self, message: str, ack_id: int | None) -> None: ...

    async def join(self, room: str, since: Position | None, marker: str) -> None: ...

    def flush(self) -> None:
        """Hand what the core queued for this session to its transport now."""

    async def closed(self, code: int) -> None: ...


class SocketLayer:
    def __init__(
        self,
        engine: EngineSession,
        port: SessionPort,
        store: RecordStore | None = None,
    ) -> None:
        self.engine = engine
        self.port = port
        self.store = store if engine.options.recovery else None
        self.connected = False  # the CONNECT was acknowledged
        self._connect_seen = False
        self._failure: dict[str, Any] | None = None  # the CONNECT's refused auth {code, message}
        self._auth: dict[str, Any] | None = None  # the CONNECT's auth_success data
        self._restored_all = False
        self._joining = ""  # the room of the restore join in progress
        self._joining_since: Position | None = None
        self._join_failed = False
        self._rejoins: set[str] = set()  # rooms with a rejoin queued
        self._binary_to_skip = 0
        self._left = False  # the client disconnected its socket itself
        self._inbox: deque[Job] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._saving: asyncio.Task[None] | None = None
        self._dirty = False
        self._saved = asyncio.Event()
        self._saved.set()
        engine.socket = self
        engine.delivery.on_record_change = self._record_changed
        engine.delivery.on_gap = self.rejoin

    @property
    def tracker(self) -> Tracker | None:
        return self.engine.delivery.tracker

    # --- packets from the client ----------------------------------------------------------------
    def on_packet(self, packet: SocketPacket) -> None:
        if isinstance(packet, Event):
            self._on_event(packet)
        elif isinstance(packet, Connect):
            self._on_connect(packet)
        elif isinstance(packet, Disconnect):
            if packet.nsp == DEFAULT_NAMESPACE:
                self._left = True  # socket.disconnect(): not to be recovered, as in Socket.IO
                self.engine.close(1000, "client disconnect")
        elif isinstance(packet, ConnectError):
            self.on_invalid(PacketError("clients do not send CONNECT_ERROR"))
        # Ack: the server never asks the client for an acknowledgement

    def on_invalid(self, exc: PacketError) -> None:
        if isinstance(exc, BinaryNotSupported):
            if not exc.attachments and self._binary_to_skip:
                self._binary_to_skip -= 1  # an attachment of a binary packet already refused
                return
            self._binary_to_skip += exc.attachments
        if self._connect_seen:
            self._queue(partial(self.port.handle_invalid, exc.message, exc.ack_id))
            return
        # Before CONNECT only a client that is not socket.io-client sends this: say why, then
        # close (socket.io-client would show the message as a connect_error).
        self.engine.emit([encode_connect_error(exc.message)])
        self.engine.close(PROTOCOL_ERROR, "protocol error")

    def _on_event(self, packet: Event) -> None:
        if not self._connect_seen:
            self.on_invalid(PacketError("send CONNECT (40) before any event"))
        elif packet.nsp != DEFAULT_NAMESPACE:
            message = f"namespace '{packet.nsp}' is not connected"
            self._queue(partial(self.port.handle_invalid, message, packet.ack_id))
        elif len(packet.args) > 1:
            message = f"an event takes one data argument (an object), got {len(packet.args)}"
            self._queue(partial(self.port.handle_invalid, message, packet.ack_id))
        else:
            data = packet.args[0] if packet.args else {}
            self._queue(partial(self.port.handle_event, packet.name, data, packet.ack_id))

    def _on_connect(self, packet: Connect) -> None:
        if packet.nsp != DEFAULT_NAMESPACE:
            message = f"Invalid namespace: this gateway serves only '{DEFAULT_NAMESPACE}'"
            self.engine.emit([encode_connect_error(message, packet.nsp)])
            return
        if self._connect_seen:
            return  # like Socket.IO: a second CONNECT of a connected namespace is ignored
        self._connect_seen = True
        auth = dict(packet.data or {})
        pid, offset = auth.pop("pid", None), auth.pop("offset", None)
        if "token" in auth:
            self._queue(partial(self._connect_with_auth, auth, pid, offset))
        else:
            self._acknowledge(None)

    # --- the worker -----------------------------------------------------------------------------
    def _queue(self, job: Job) -> None:
        if self.engine.closed:
            return
        if len(self._inbox) >= INBOX_MAX:
            self.engine.close(POLICY_VIOLATION, "too many packets waiting")
            return
        self._inbox.append(job)
        if len(self._inbox) >= INBOX_PACKETS:
            self._room.clear()
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())

    async def room(self) -> None:
        """Wait until the core has caught up enough to read more from this client."""
        await self._room.wait()

    async def drain(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Until every packet read so far was handled (at most ``timeout_s``), and one more
        loop turn, in which the core's replies are written."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while (worker := self._worker) is not None:
                    await asyncio.shield(worker)
        await asyncio.sleep(0)

    async def _work(self) -> None:
        try:
            while self._inbox:
                job = self._inbox.popleft()
                if len(self._inbox) < INBOX_PACKETS:
                    self._room.set()
                try:
                    await job()
                except Exception:
                    log.exception("socket.io session %s: packet handling failed", self.engine.sid)
                    self.engine.close(1011, "internal error")
        finally:
            self._worker = None
            self._room.set()

    def ended(self, code: int) -> None:
        """The Engine.IO session is over: drop what the core has not started (the call in
        progress finishes: a business event Django accepted is still delivered), then tell
        the core."""
        self._inbox.clear()
        self._room.set()
        tracker = self.tracker
        # Socket.IO recovers a session after a lost transport, a ping timeout or a server
        # restart; not after the client's socket.disconnect() or a server disconnect.
        final = self._left or code in DISCONNECT_CLOSES
        if tracker is not None and self.store is not None and final:
            _spawn(self._forget(tracker.pid))
        _spawn(self._closed(code))

    async def _closed(self, code: int) -> None:
        worker = self._worker
        if worker is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(worker)
        await self.port.closed(code)

    async def _forget(self, pid: str) -> None:
        assert self.store is not None
        try:
            await self.store.delete(pid)
        except Exception as exc:  # a record left behind expires with its TTL
            log.debug("recovery record of %s not deleted: %s", self.engine.sid, exc)

    # --- CONNECT --------------------------------------------------------------------------------
    async def _connect_with_auth(self, auth: dict[str, Any], pid: Any, offset: Any) -> None:
        # The record is read first: live events of its rooms, which start to flow as soon as
        # the authentication joins the automatic rooms, must wait for the restore's history.
        record = await self._load(pid if isinstance(pid, str) else None)
        if record is not None:
            self.engine.delivery.recovering = {room.encode() for room in record.rooms}
        await self.port.handle_event("authenticate", auth, CONNECT_AUTH)
        if self.engine.closed:
            return  # refused: the core closed the session, closing_packets() said why
        if self._auth is None:
            # refused without a close (a malformed auth object): a CONNECT_ERROR all the same
            if self._failure is None:
                self._failure = {"code": "bad_request", "message": "invalid auth"}
            self.engine.close(CloseCode.AUTH_FAILED, "authentication refused")
            return
        if self.store is None:
            self._acknowledge(None)
            return
        if record is not None and record.user_id != str(self._auth.get("userId")):
            record = None  # another user's session: start afresh
        await self._restore(pid if record is not None else None, record, offset)

    def _acknowledge(self, pid: str | None, *, restored: bool = True) -> None:
        if self.engine.closed:
            return
        self.connected = True
        self.engine.emit([encode_connect(self.port.connection_id, pid=pid)])
        self.engine.delivery.release(CONNECT, drop_missed=not restored)

    async def _restore(self, pid: str | None, record: Record | None, offset: Any) -> None:
        """Join the rooms of ``record`` (with ``since``), or learn the positions of the
        automatic rooms of a new session; save the record; acknowledge the CONNECT."""
        assert self._auth is not None
        since = record.positions(offset) if record is not None else {}
        log.debug("socket.io restore of %s (offset %r): %s", pid, offset, since)
        rooms = list(self._auth.get("rooms") or [])
        rooms += [room for room in since if room not in rooms]
        self._restored_all = record is not None
        delivery = self.engine.delivery
        delivery.recovering = {room.encode() for room in since}
        fresh = Record(str(self._auth.get("userId")))
        tracker = Tracker(pid or new_pid(), record.successor() if record is not None else fresh)
        delivery.tracker = tracker
        joined: set[str] = set()
        for room in rooms:
            if self.engine.closed:
                return
            self._joining, self._joining_since = room, since.get(room)
            marker = RESTORE if self._joining_since is not None else TRACK
            self._join_failed = False
            await self.port.join(room, self._joining_since, marker)
            if not self._join_failed:
                joined.add(room)
        tracker.record.keep(joined)  # the restored rooms keep their indexes; the others go
        if record is not None and not self._restored_all:
            tracker.pid = new_pid()  # not recovered: a new pid tells the client so
            self._record_changed()
        self.port.flush()  # the joins' answers reach Delivery, which saves the record
        await self._until_saved()
        self._acknowledge(tracker.pid, restored=self._restored_all)

    async def _load(self, pid: str | None) -> Record | None:
        if pid is None or self.store is None:
            return None
        try:
            return await self.store.load(pid)
        except Exception as exc:
            log.warning("socket.io recovery: record not read (%s); starting afresh", exc)
            return None

    # --- gaps -----------------------------------------------------------------------------------
    def rejoin(self, room: str) -> None:
        """Live events of ``room`` are missing: drop the live stream until the room is joined
        again from what the client has (the core's join with since: history, then live)."""
        if room in self._rejoins:
            return  # one is queued already, and will read from the position it finds
        self._rejoins.add(room)
        self.engine.delivery.recovering.add(room.encode())
        self._queue(partial(self._rejoin, room))

    async def _rejoin(self, room: str) -> None:
        self._rejoins.discard(room)
        delivery = self.engine.delivery
        position = delivery.positions.get(room.encode())
        since = Position(position[1], position[0].decode()) if position is not None else None
        self._joining, self._joining_since = room, since
        await self.port.join(room, since, REJOIN if since is not None else TRACK)

    # --- the record -----------------------------------------------------------------------------
    def _record_changed(self) -> None:
        self._dirty = True
        self._saved.clear()
        if self._saving is None:
            self._saving = asyncio.create_task(self._save())

    async def _save(self) -> None:
        tracker, store = self.tracker, self.store
        try:
            while self._dirty and tracker is not None and store is not None:
                self._dirty = False
                try:
                    await store.save(tracker.pid, tracker.record)
                    log.debug("socket.io record %s saved: %s", tracker.pid, tracker.record.rooms)
                except Exception as exc:
                    log.warning("socket.io recovery record of %s not saved: %s", tracker.pid, exc)
        finally:
            self._saving = None
            self._saved.set()
            self.engine.delivery.release(SAVING)

    async def _until_saved(self) -> None:
        await self._saved.wait()

    # --- the core's replies ---------------------------------------------------------------------
    def encode(self, event: str, data_json: bytes, frame_id: FrameId | None) -> bytes:
        """``wire`` records for one core reply: a Socket.IO event, or the acknowledgement
        of the client event whose ack id is ``frame_id``."""
        if isinstance(frame_id, str):
            if frame_id == CONNECT_AUTH:
                return self._connect_answer(event, data_json)
            if frame_id in (RESTORE, TRACK, REJOIN):
                return self._restore_answer(event, data_json, frame_id)
            frame_id = None
        if event == "rejoin" and self.tracker is not None:
            self.rejoin(orjson.loads(data_json)["room"])
            return b""
        packet = encode_reply(frame_id, event, data_json)
        if self.tracker is not None:
            if event == "room_joined":
                data = orjson.loads(data_json)
                return wire.joined(data["room"], data["epoch"], data["offset"], packet)
            if event == "room_left":
                return wire.left(orjson.loads(data_json)["room"], packet)
        return wire.plain(packet)

    def _connect_answer(self, event: str, data_json: bytes) -> bytes:
        if event == "auth_success":
            self._auth = orjson.loads(data_json)
            return wire.plain(encode_reply(None, event, data_json))  # the first event
        self._failure = orjson.loads(data_json)  # auth_error or error: the CONNECT_ERROR's data
        return b""

    def _restore_answer(self, event: str, data_json: bytes, marker: str) -> bytes:
        if event != "room_joined":  # the join failed (the room is no longer allowed...)
            self._join_failed = True
            self._restored_all = self._restored_all and marker != RESTORE
            self.engine.delivery.recovering.discard(self._joining.encode())
            return b""
        data = orjson.loads(data_json)
        room, epoch, offset = data["room"], data["epoch"], data["offset"]
        since = self._joining_since
        if marker == TRACK or since is None or not data.get("recovered"):
            if marker == RESTORE:
                self._restored_all = False
            elif marker == REJOIN:
                log.info("socket.io session %s: events of %s lost (history)", self.engine.sid, room)
            return wire.joined(room, epoch, offset)
        # the client is at `since`; each missed event moves it on, offset string and all
        parts = [wire.joined(room, since.epoch, since.offset)]
        for event_data in data.get("missed") or ():
            event_json = orjson.dumps(event_data)
            parts.append(wire.missed(room, event_data["epoch"], event_data["offset"], event_json))
        return b"".join(parts)

    def closing_packets(self, code: int) -> list[bytes]:
        """The Socket.IO packet that must precede a close with ``code``, if any."""
        if not self.connected:
            if self._failure is not None and code in (
                CloseCode.AUTH_FAILED,
                CloseCode.RATE_LIMITED,
            ):
                failure = {
                    "code": self._failure.get("code"),
                    "message": self._failure.get("message"),
                }
                return [encode_connect_error(str(failure["code"]), data=failure)]
            return []
        if code in DISCONNECT_CLOSES:
            return [encode_disconnect()]
        return []


_tasks: set[asyncio.Task[None]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
