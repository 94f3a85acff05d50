"""The node: what the protocol does, independent of the transport that carries it.

Transports (``ws.py`` for ``/ws``, ``socketio/`` for Socket.IO) create sessions and hand their
frames to ``Node.handle``; the node answers through ``Session.send`` and never sees a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import Counter, defaultdict
from typing import Any

import orjson

from gateway.accounting import Accounting
from gateway.auth.authenticator import Authenticator
from gateway.backend.base import (
    Backend,
    ConnectionInfo,
    ControlMessage,
    NodeStats,
    Position,
    Publication,
    Recovery,
)
from gateway.backend.factory import make_online_store, make_receipt_store
from gateway.closecodes import AuthErrorCode, CloseCode, ErrorCode, close_code_label
from gateway.config import Settings
from gateway.djangoapi import AuthFailure, DjangoClient
from gateway.events import dumps_payload, new_event_id, now_ms, wants_receipts
from gateway.hub import Hub, Order, Outbox
from gateway.listen import redis_location
from gateway.metrics import Metrics
from gateway.protocol import (
    BUSINESS_EVENTS,
    KNOWN_EVENTS,
    MAX_TOKEN_CHARS,
    PRE_AUTH_EVENTS,
    AuthenticatePayload,
    Frame,
    FrameId,
    JoinRoomPayload,
    ProtocolError,
    RoomPayload,
    decode_frame,
    validate_payload,
)
from gateway.receipts import Receipts, looks_like_received, receipts_from_answer
from gateway.rooms import (
    automatic_rooms,
    check_access,
    check_sender,
    default_rooms,
    is_broadcast_room,
    rooms_from_answer,
)
from gateway.session import Session, Transport

log = logging.getLogger("gateway.node")

BACKEND_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)
try:  # redis is a dependency, but keep the node importable without it for the memory backend
    from redis.exceptions import RedisClusterException, RedisError

    BACKEND_ERRORS = (*BACKEND_ERRORS, RedisError, RedisClusterException)
except ImportError:  # pragma: no cover
    pass


# how long a node keeps trying to read rooms' positions after a lost subscription
VERIFY_POSITIONS_S = 60.0
# how long live events are held for a member told to rejoin, before it gets them live anyway
REJOIN_HOLD_S = 15.0
REJOIN_SWEEP_S = 1.0


def new_connection_id() -> str:
    """Time-ordered, so dashboard paging walks connections oldest first; 40 random bits make it
    unique (an identifier, not a secret: no system call per connection for it)."""
    return f"{time.time_ns() // 1_000_000:011x}{random.getrandbits(40):010x}"


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Node:
    def __init__(
        self, settings: Settings, backend: Backend, django: DjangoClient, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.backend = backend
        self.django = django
        self.metrics = metrics
        self.auth = Authenticator.for_backend(settings, backend, django, metrics)
        self.hub = Hub()
        self.outbox = Outbox(on_overflow=self._on_overflow)
        self.sessions: dict[str, Session] = {}
        self.handshakes = 0  # TCP connections whose request head is not complete (gateway.wsconn)
        self.by_user: dict[str, list[Session]] = defaultdict(list)
        self.by_ip: Counter[str] = Counter()
        self.draining = False
        self.backend_ok = True
        self.started_at = time.time()
        # connections by role and the sum of their start times (since ours, so the float stays
        # small and exact enough), kept as connections come and go
        self.by_role: Counter[str] = Counter()
        self._connected_at_sum = 0.0
        self.frames_in = 0
        self.frames_out = 0
        self._auth_timers: dict[Session, asyncio.TimerHandle] = {}
        self._registered = False
        self._tasks: list[asyncio.Task[None]] = []
        self._moving: set[str] = set()  # rooms whose new epoch is being written
        self._background: set[asyncio.Task[None]] = set()
        self._awaiting_rejoin: dict[tuple[Session, str], None] = {}
        # the sweep runs only while someone is awaited: an idle node schedules no timer for it
        self._rejoin_sweep_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.accounting = Accounting(
            make_online_store(settings, backend),
            self.node_id,
            max_per_user=settings.max_connections_per_user,
            max_per_ip=settings.max_connections_per_ip,
            cluster_wide=backend.name != "memory",
            trusted_proxies=settings.trusted_proxies,
            lease_s=settings.node_lease_s,
            timeout_s=settings.limits_timeout_s,
            metrics=metrics,
        )
        self.receipts = Receipts(
            make_receipt_store(settings, backend),
            metrics,
            BACKEND_ERRORS,
            max_pending=settings.receipts_pending,
        )

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self.django.start()
        await self.backend.start(self.node_id, self.on_publication, self.on_control, self.on_resync)
        try:
            await self._heartbeat_once()
            self.metrics.ready.set(1)  # the backend answered: ready without waiting for a /readyz
        except BACKEND_ERRORS as exc:  # not fatal: /readyz says 503, the heartbeat loop retries
            self.backend_ok = False
            self.metrics.ready.set(0)
            where = redis_location(self.settings.redis_url or "")
            log.warning(
                "Redis at %s (GATEWAY_REDIS_URL) is unreachable at startup: not ready, "
                "retrying (%s)",
                where,
                exc,
            )
        await self.accounting.start()  # never raises: registers once the backend answers
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._probe_loop(), name="django probe"),
            asyncio.create_task(self.accounting.run(self._accounting_tick()), name="accounting"),
            asyncio.create_task(self.auth.follow_revocations(), name="revocations"),
        ]
        if self.backend.name == "memory":
            # embedded mode has no worker: the node sweeps its own stale state
            self._tasks.append(asyncio.create_task(self._janitor_loop(), name="janitor"))

    async def stop(self) -> None:
        if self._rejoin_sweep_timer is not None:
            self._rejoin_sweep_timer.cancel()
            self._rejoin_sweep_timer = None
        for task in (*self._tasks, *self._background):
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close_all(CloseCode.GOING_AWAY, "server shutting down")
        await self.accounting.stop()
        with contextlib.suppress(*BACKEND_ERRORS):
            await self.backend.deregister()
        await self.backend.close()
        await self.django.close()

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions.values()):
            session.close(code, reason)

    async def drain(self, seconds: float) -> None:
        """Close every client with 1012, spread over ``seconds`` so they do not all reconnect
        at once; readiness already reports 503 so the balancer sends new clients elsewhere."""
        self.draining = True
        self.metrics.ready.set(0)
        sessions = list(self.sessions.values())
        log.info("draining %d connections over %.1fs", len(sessions), seconds)
        if sessions:
            step = seconds / len(sessions) if seconds > 0 else 0
            batch = max(1, int(0.05 / step)) if step > 0 else len(sessions)
            for i in range(0, len(sessions), batch):
                for session in sessions[i : i + batch]:
                    session.close(CloseCode.SERVICE_RESTART, "node restarting; reconnect")
                if step > 0:
                    await asyncio.sleep(step * batch)
        await self.wait_closed(3)

    async def wait_closed(self, seconds: float) -> None:
        """Until every session is gone, for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while self.sessions and time.monotonic() < deadline:  # noqa: ASYNC110 - bounded wait
            await asyncio.sleep(0.05)

    async def ready(self) -> bool:
        if self.draining:
            return False
        ok = await self.backend.ready()
        if ok != self.backend_ok:
            if ok:
                log.info("backend reachable again")
            else:
                log.warning("backend unreachable: reporting not ready")
        self.backend_ok = ok
        self.metrics.ready.set(1 if ok else 0)
        return ok

    # --- sessions -----------------------------------------------------------------------------
    def admit(self, ip: str) -> str | None:
        """Why a new connection from ``ip`` must be refused, or None."""
        if self.draining:
            return "draining"
        if len(self.sessions) + self.handshakes >= self.settings.max_connections:
            return "node_full"  # unfinished handshakes count (CONTRACT section 2)
        if self.by_ip[ip] >= self.settings.max_connections_per_ip:
            return "ip_limit"
        self.accounting.note_address(ip, self.by_ip[ip] + 1, len(self.sessions) + 1)
        return None

    def open_session(self, transport: Transport, ip: str) -> Session:
        session = Session(
            new_connection_id(),
            transport,
            self.outbox,
            ip=ip,
            max_queue_bytes=self.settings.send_queue_bytes,
            rate=self.settings.rate_limit,
            burst=self.settings.rate_burst,
        )
        self.sessions[session.id] = session
        self.by_role["anonymous"] += 1
        self._connected_at_sum += session.connected_at - self.started_at
        self.by_ip[ip] += 1
        self.metrics.connects.labels(transport.kind).inc()
        self.metrics.connections.labels("anonymous", transport.kind).inc()
        loop = self._loop
        if loop is None:  # looked up once: on Python 3.11 each lookup is a system call
            loop = self._loop = asyncio.get_running_loop()
        self._auth_timers[session] = loop.call_later(
            self.settings.auth_timeout_s, self._auth_deadline, session
        )
        log.debug("connection %s opened from %s", session.id, ip)
        return session

    def _cancel_auth_deadline(self, session: Session) -> None:
        timer = self._auth_timers.pop(session, None)
        if timer is not None:
            timer.cancel()

    def _auth_deadline(self, session: Session) -> None:
        self._auth_timers.pop(session, None)
        if session.identity is None and not session.closed:
            log.info("connection %s closed: no authentication in time", session.id)
            session.close(CloseCode.AUTH_TIMEOUT, "authentication timeout")

    async def close_session(self, session: Session, code: int | None) -> None:
        """The transport is gone: forget the session here and in the backend. Shielded: aiohttp
        cancels a handler whose socket the server closed, and a half-done removal would leave
        ghost connections in Redis."""
        await asyncio.shield(self._close_session(session, code))

    async def _close_session(self, session: Session, code: int | None) -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        # the code we closed with, not the one the peer answered (aiohttp's client says 1000)
        code = session.close_code or code
        timer = self._auth_timers.pop(session, None)
        if timer is not None:
            timer.cancel()
        session.closed = True
        self.by_ip[session.ip] -= 1
        if self.by_ip[session.ip] <= 0:
            del self.by_ip[session.ip]
        role = session.identity.role if session.identity else "anonymous"
        self.by_role[role] -= 1
        self._connected_at_sum -= session.connected_at - self.started_at
        self.metrics.connections.labels(role, session.transport.kind).dec()
        self.metrics.disconnects.labels(close_code_label(code or 1006)).inc()
        rooms = list(session.rooms)
        for room in rooms:
            if self.hub.remove(session, room):
                self.backend.unsubscribe(room)
        if session.identity is not None and session.info is not None:
            users = self.by_user.get(session.identity.user_id)
            if users is not None:
                if session in users:
                    users.remove(session)
                if not users:
                    del self.by_user[session.identity.user_id]
            try:
                await self.backend.remove_connection(session.info, rooms)
            except BACKEND_ERRORS as exc:
                self.metrics.redis_errors.labels("remove_connection").inc()
                log.warning("could not remove connection %s from the backend: %s", session.id, exc)
            log.info(
                "connection %s closed (user %s, code %s, %.0fs)",
                session.id,
                session.identity.user_id,
                code,
                time.time() - session.connected_at,
            )
        user_id = (
            session.identity.user_id if session.info is not None and session.identity else None
        )
        await self.accounting.closed(user_id, session.ip)
        self.receipts.forget(session.id)

    async def authenticate_with(self, session: Session, token: str) -> None:
        """Authentication from the connect URL (``?token=``) or Socket.IO's ``auth``."""
        if not 0 < len(token) <= MAX_TOKEN_CHARS:  # empty or longer than any token
            failure = AuthFailure(AuthErrorCode.INVALID_TOKEN, "invalid token")
            self._auth_failed(session, failure, None)
            return
        await self._authenticate(session, token, None, None, None)

    # --- frames -------------------------------------------------------------------------------
    async def handle(self, session: Session, raw: str | bytes) -> None:
        self.frames_in += 1
        if looks_like_received(raw):  # receipts: outside the rate limit, unless ignored
            accepted = await self.receipts.handle(session, raw)
            if accepted is not None:
                if not accepted and not session.bucket.take():
                    self.rate_limited(session)
                return
        if not session.bucket.take():
            self.rate_limited(session)
            return
        frame_id: FrameId | None = None
        try:
            frame = decode_frame(raw)
            frame_id = frame.id
            self.metrics.frames_in.labels(
                frame.event if frame.event in KNOWN_EVENTS else "unknown"
            ).inc()
            await self.dispatch(session, frame)
        except ProtocolError as exc:
            self.reply_error(session, exc, frame_id if frame_id is not None else exc.frame_id)

    async def dispatch(self, session: Session, frame: Frame) -> None:
        event = frame.event
        if session.identity is None and event not in PRE_AUTH_EVENTS:
            # judged before unknown_event, as the contract orders errors
            raise ProtocolError(ErrorCode.UNAUTHENTICATED, "authenticate first")
        if event == "ping":
            self.reply(session, "pong", {}, frame.id)
        elif event == "authenticate":
            payload = validate_payload(AuthenticatePayload, frame.data)
            await self._authenticate(session, payload.token, payload.userId, payload.role, frame.id)
        elif event == "join_room":
            await self._join(session, validate_payload(JoinRoomPayload, frame.data), frame.id)
        elif event == "leave_room":
            await self._leave(session, validate_payload(RoomPayload, frame.data), frame.id)
        elif event == "presence":
            await self._presence(session, validate_payload(RoomPayload, frame.data), frame.id)
        elif event in BUSINESS_EVENTS:
            await self._business(session, event, frame.data, frame.id)
        else:
            raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event '{event[:64]}'", "event")

    def reply(self, session: Session, event: str, data: Any, frame_id: FrameId | None) -> None:
        self.frames_out += 1
        self.metrics.frames_out.labels(event).inc()
        session.send(event, data, frame_id)

    def reply_error(self, session: Session, exc: ProtocolError, frame_id: FrameId | None) -> None:
        self.metrics.errors.labels(str(exc.code)).inc()
        self.reply(session, "error", exc.as_data(), frame_id)

    def rate_limited(self, session: Session) -> None:
        """Count a frame over the rate limit: a strike, `rate_limited`, 4429 if it goes on."""
        session.strikes += 1
        self.metrics.rate_limited.inc()
        if session.strikes >= self.settings.rate_limit_strikes:
            log.info("connection %s closed: rate limit exceeded", session.id)
            session.flush()  # replies and rate_limited errors already queued go out first
            session.close(CloseCode.RATE_LIMITED, "rate limit exceeded")
            return
        exc = ProtocolError(ErrorCode.RATE_LIMITED, "too many frames; slow down")
        self.reply_error(session, exc, None)

    # --- authentication -----------------------------------------------------------------------
    async def _authenticate(
        self,
        session: Session,
        token: str,
        user_id: str | None,
        role: str | None,
        frame_id: FrameId | None,
    ) -> None:
        """``user_id`` and ``role``: what the client claims (the ``authenticate`` frame), if
        anything; they must match the token's identity."""
        if session.identity is not None:
            raise ProtocolError(ErrorCode.ALREADY_AUTHENTICATED, "already authenticated")
        self._cancel_auth_deadline(session)  # the deadline is for sending it; Django's own
        # timeout bounds the verification
        try:
            identity = await self.auth.verify(token)
            if (user_id is not None and user_id != identity.user_id) or (
                role is not None and role != identity.role
            ):
                raise AuthFailure(
                    AuthErrorCode.IDENTITY_MISMATCH, "userId/role differ from the token's identity"
                )
            open_now = len(self.by_user.get(identity.user_id, ()))
            if open_now >= self.settings.max_connections_per_user or not (
                await self.accounting.admit_user(identity.user_id, identity.role)
            ):
                raise AuthFailure(
                    AuthErrorCode.TOO_MANY_CONNECTIONS, "too many connections for this user"
                )
        except AuthFailure as exc:
            self._auth_failed(session, exc, frame_id)
            return
        if session.closed:
            await self.accounting.release_user(identity.user_id)  # counted, never registered
            return
        rooms = automatic_rooms(identity)
        session.identity = identity
        session.token = token
        session.info = ConnectionInfo(
            connection_id=session.id,
            user_id=identity.user_id,
            role=identity.role,
            node=self.node_id,
            connected_at_ms=int(session.connected_at * 1000),
        )
        self.by_user[identity.user_id].append(session)
        kind = session.transport.kind
        self.by_role["anonymous"] -= 1
        self.by_role[identity.role] += 1
        self.metrics.connections.labels("anonymous", kind).dec()
        self.metrics.connections.labels(identity.role, kind).inc()
        try:
            for room in rooms:
                await self._enter(session, room)
            await self.backend.add_connection(session.info, rooms)
        except BACKEND_ERRORS as exc:
            self.metrics.redis_errors.labels("authenticate").inc()
            log.warning("authentication of %s failed: backend error %s", session.id, exc)
            failure = AuthFailure(AuthErrorCode.AUTH_UNAVAILABLE, "service unavailable, retry")
            self._auth_failed(session, failure, frame_id)
            return
        self.metrics.auth.labels("success").inc()
        log.info("connection %s authenticated: %s %s", session.id, identity.role, identity.user_id)
        data = {
            "userId": identity.user_id,
            "role": identity.role,
            "rooms": rooms,
            "connectionId": session.id,
            "node": self.node_id,
        }
        self.reply(session, "auth_success", data, frame_id)

    def _auth_failed(self, session: Session, exc: AuthFailure, frame_id: FrameId | None) -> None:
        self.metrics.auth.labels(str(exc.code)).inc()
        log.info("connection %s authentication failed: %s", session.id, exc.code)
        self.reply(session, "auth_error", {"code": str(exc.code), "message": exc.message}, frame_id)
        session.flush()  # close() drops queued frames: the auth_error must go out first
        session.close(exc.code.close_code, str(exc.code))

    # --- rooms --------------------------------------------------------------------------------
    async def _enter(self, session: Session, room: str) -> None:
        """Join the local hub and wait until the node's subscription to the room is live (the
        first member subscribes; later ones wait for a subscription still in flight)."""
        session.rooms.append(room)
        self.hub.add(session, room)
        try:
            await self.backend.subscribe(room)
        except BaseException:
            session.drop_room(room)
            if self.hub.remove(session, room):
                self.backend.unsubscribe(room)  # nobody left: do not keep a half-made subscription
            raise

    async def _join(
        self, session: Session, payload: JoinRoomPayload, frame_id: FrameId | None
    ) -> None:
        """Join (or, for a member answering ``rejoin``, re-read) a room with its history.

        Ordering (docs/cluster.md, "Why recovery is exact"): live publications are held from
        before the subscription is confirmed; history is read only after it is; the answer covers
        up to the room's offset at the read, and the held or later live publications at or
        below it are dropped for this session (its gate's floor).
        """
        assert session.identity is not None and session.info is not None
        room = payload.room
        check_access(session.identity, room)
        member = room in session.rooms
        if not member and len(session.rooms) >= self.settings.max_rooms_per_connection:
            raise ProtocolError(ErrorCode.TOO_MANY_ROOMS, "too many rooms on this connection")
        since = Position(payload.since.offset, payload.since.epoch) if payload.since else None
        gate = session.gate(room)
        generation = gate.begin_join()
        try:
            if member:
                await self.backend.subscribe(room)  # a rejoin waits for the resubscription
            else:
                await self._enter(session, room)
            seen = self.hub.high_water(room)  # what this node saw before the read was sent
            if member:
                recovery = await self._history(room, since)
            else:
                recovery = await self.backend.join_and_recover(
                    session.info, room, since, sorted(session.rooms)
                )
            if _went_back(seen, recovery.position):
                recovery = await self._new_epoch(room, recovery.position, since, skip=session)
        except BACKEND_ERRORS as exc:
            buffered = session.drop_gate(room)
            if member:  # still a member: what arrived meanwhile is still owed to the client
                for pub in buffered:
                    session.enqueue(session.transport.encode_publication(pub))
                self.receipts.sent(session, buffered)
            elif room in session.rooms:
                session.drop_room(room)
                if self.hub.remove(session, room):
                    self.backend.unsubscribe(room)
            self.metrics.redis_errors.labels("join").inc()
            log.warning("join of %s failed: backend error %s", room, exc)
            raise ProtocolError(ErrorCode.UNAVAILABLE, "rooms are unavailable, retry") from None
        position = recovery.position
        data = self._joined(room, position)
        if payload.since is not None:
            data["recovered"] = recovery.recovered
            data["missed"] = [orjson.Fragment(p.event_data()) for p in recovery.publications]
            self.receipts.sent(session, recovery.publications)
        self.reply(session, "room_joined", data, frame_id)
        # go live: what arrived while we read history, minus what the answer already had
        released = gate.release(generation, position.epoch, position.offset)
        if released is None:
            return  # a rejoin was sent meanwhile: the join that answers it goes live
        newer, lossy = released
        if newer:  # the stream is past the floor already
            session.drop_gate(room)
            for pub in newer:
                session.enqueue(session.transport.encode_publication(pub))
            self.receipts.sent(session, newer)
        if lossy:  # more arrived than a gate holds: history has it
            self._send_rejoin([room], "gap", only=session)

    async def _new_epoch(
        self, room: str, position: Position, since: Position | None, skip: Session | None = None
    ) -> Any:
        """Redis answered with a position below what this node already saw in the same epoch:
        it lost acknowledged writes (a lagging replica promoted, an older AOF). The room moves
        to a new epoch, so no (epoch, offset) pair is given to two events; its members are told."""
        moved = await self.backend.new_epoch(room, position.epoch)
        log.warning(
            "room %s went back in time in Redis (epoch %s at offset %d): new epoch %s",
            room,
            position.epoch,
            position.offset,
            moved.epoch,
        )
        self.hub.moved_to(room, position.epoch, moved.offset, moved.epoch)
        self._send_rejoin([room], "epoch", skip=skip)
        recovered = since is not None and (since.epoch, since.offset) == (moved.epoch, moved.offset)
        return Recovery(position=moved, recovered=recovered)

    async def _history(self, room: str, since: Position | None) -> Any:
        return await self.backend.history_since(room, since)

    @staticmethod
    def _joined(room: str, position: Position) -> dict[str, Any]:
        return {"room": room, "epoch": position.epoch, "offset": position.offset}

    async def _leave(
        self, session: Session, payload: RoomPayload, frame_id: FrameId | None
    ) -> None:
        assert session.identity is not None and session.info is not None
        room = payload.room
        check_access(session.identity, room)
        if room in session.rooms:
            session.drop_room(room)
            if self.hub.remove(session, room):
                self.backend.unsubscribe(room)
            try:
                await self.backend.leave(session.info, [room], sorted(session.rooms))
            except BACKEND_ERRORS as exc:
                self.metrics.redis_errors.labels("leave").inc()
                log.warning("leave of %s not recorded: backend error %s", room, exc)
        self.reply(session, "room_left", {"room": room}, frame_id)

    async def _presence(
        self, session: Session, payload: RoomPayload, frame_id: FrameId | None
    ) -> None:
        assert session.identity is not None
        check_access(session.identity, payload.room)
        if is_broadcast_room(payload.room):  # a count only: privacy, and size
            await self._presence_count(session, payload.room, frame_id)
            return
        try:
            members = await self.backend.presence(payload.room)
        except BACKEND_ERRORS:
            self.metrics.redis_errors.labels("presence").inc()
            raise ProtocolError(ErrorCode.UNAVAILABLE, "presence is unavailable, retry") from None
        data = {
            "room": payload.room,
            "members": [
                {"userId": m.user_id, "role": m.role, "connections": m.connections} for m in members
            ],
        }
        self.reply(session, "presence", data, frame_id)

    async def _presence_count(self, session: Session, room: str, frame_id: FrameId | None) -> None:
        try:
            count = await self.backend.room_count(room)
        except BACKEND_ERRORS:
            self.metrics.redis_errors.labels("presence").inc()
            raise ProtocolError(ErrorCode.UNAVAILABLE, "presence is unavailable, retry") from None
        self.reply(session, "presence", {"room": room, "count": count}, frame_id)

    # --- business events ----------------------------------------------------------------------
    async def _business(
        self, session: Session, event: str, data: dict[str, Any], frame_id: FrameId | None
    ) -> None:
        assert session.identity is not None and session.token is not None
        model = validate_payload(BUSINESS_EVENTS[event], data)
        try:  # extra fields go to Django: they must encode (pydantic and orjson stop at ~255)
            payload = model.model_dump(mode="json", exclude_none=True)
            orjson.dumps({"payload": payload})  # nested as send_event nests it
        except (TypeError, ValueError):
            raise ProtocolError(
                ErrorCode.VALIDATION_ERROR, "payload is nested too deeply", "data"
            ) from None
        check_sender(session.identity, event, payload)
        event_id = new_event_id()
        outcome = await self.django.send_event(session.token, event_id, event, payload)
        if outcome.status != "ok":
            self.metrics.business_events.labels(event, outcome.status).inc()
            if outcome.status == "rejected":
                err = {"code": "rejected", "message": outcome.message}
                if outcome.fields:
                    err["fields"] = outcome.fields  # type: ignore[assignment]
                self.metrics.errors.labels("rejected").inc()
                self.reply(session, "error", err, frame_id)
                return
            raise ProtocolError(ErrorCode.DJANGO_UNAVAILABLE, "Django is unavailable, retry later")
        body = outcome.body if outcome.body is not None else payload
        rooms, body = rooms_from_answer(body, default_rooms(event, payload))
        receipts, body = receipts_from_answer(body)
        try:
            result = await self.backend.publish(
                rooms, event, dumps_payload(body), "client", event_id=event_id, receipts=receipts
            )
        except BACKEND_ERRORS as exc:
            self.metrics.redis_errors.labels("publish").inc()
            log.error("event %s confirmed by Django but not delivered: %s", event_id, exc)
            raise ProtocolError(
                ErrorCode.UNAVAILABLE, "confirmed by Django but delivery failed; refetch state"
            ) from None
        if receipts:
            await self.receipts.published(result, self.local_members(rooms))
        self.metrics.business_events.labels(event, "confirmed").inc()
        self.metrics.publishes.labels("client").inc()
        self.reply(session, "ack", {"event": event, "eventId": event_id}, frame_id)

    # --- backend callbacks --------------------------------------------------------------------
    def on_publication(self, pub: Publication) -> None:
        order = self.hub.deliver(pub)
        if order is Order.IN_ORDER and wants_receipts(pub.body):
            self.receipts.sent_live(pub, self.hub.members(pub.room))
        if order is Order.IN_ORDER:
            members = self.hub.rooms.get(pub.room)
            if members:
                self.metrics.deliveries.inc(len(members))
                ts = _ts_of(pub.body)
                if ts:
                    self.metrics.delivery_latency.observe(max(0.0, (now_ms() - ts) / 1000))
        elif order is Order.GAP:
            self._send_rejoin([pub.room], "gap", held=pub)
        elif order is Order.REUSED:
            self._on_reused(pub)

    def _on_reused(self, pub: Publication) -> None:
        """A live offset at or below one already seen in its epoch: start a new epoch (once)."""
        if pub.room in self._moving:
            return
        self._moving.add(pub.room)
        task = asyncio.create_task(self._move_room(pub), name=f"new epoch {pub.room}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _move_room(self, pub: Publication) -> None:
        try:
            await self._new_epoch(pub.room, Position(pub.offset, pub.epoch), None)
        except BACKEND_ERRORS as exc:
            self.metrics.redis_errors.labels("new_epoch").inc()
            log.warning("could not start a new epoch for %s: %s", pub.room, exc)
        finally:
            self._moving.discard(pub.room)

    def on_resync(self, rooms: Any) -> None:
        """Subscriptions were lost (and, when the backend can, restored): members rejoin with
        ``since``. The rooms' high-water marks are kept, so the next live event shows a gap, and
        are checked against Redis: one that went back in time (restarted from an older copy, a
        lagging replica promoted) moves the room to a new epoch before events reuse offsets."""
        rooms = [r for r in rooms if r in self.hub.rooms]
        self._send_rejoin(rooms, "subscription_lost")
        marks = {r: mark for r in rooms if (mark := self.hub.high_water(r)) is not None}
        if marks:
            task = asyncio.create_task(self._verify_positions(marks), name="verify positions")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _verify_positions(self, marks: dict[str, tuple[int, str]]) -> None:
        delay = 0.2
        deadline = time.monotonic() + VERIFY_POSITIONS_S
        while True:
            try:
                found = await self.backend.positions(sorted(marks))
                break
            except BACKEND_ERRORS as exc:
                if time.monotonic() > deadline:
                    log.warning("could not check %d rooms' positions: %s", len(marks), exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        for room, position in found.items():
            if _went_back(marks[room], position) and room not in self._moving:
                self._moving.add(room)
                try:
                    await self._new_epoch(room, position, None)
                except BACKEND_ERRORS as exc:
                    self.metrics.redis_errors.labels("new_epoch").inc()
                    log.warning("could not start a new epoch for %s: %s", room, exc)
                finally:
                    self._moving.discard(room)

    def _send_rejoin(
        self,
        rooms: list[str],
        reason: str,
        *,
        held: Publication | None = None,
        skip: Session | None = None,
        only: Session | None = None,
    ) -> None:
        """Tell members to join again with ``since``, and hold the room's live events for each
        until it does (``held``: the event that showed the gap, first in line). A member that
        does not rejoin within ``REJOIN_HOLD_S`` gets what was held, live."""
        deadline = time.monotonic() + REJOIN_HOLD_S
        for room in rooms:
            members = (only,) if only is not None else self.hub.members(room)
            for session in members:
                if session is skip or session.closed:
                    continue
                pending = session.pending
                gate = pending.get(room) if pending is not None else None
                # Already told to rejoin (its answer will cover this), or joining now with a live
                # subscription (its answer is still exact: a gap in the node's view is not one for
                # a history read made after the subscription): hold, tell nothing new.
                told = (
                    gate is not None
                    and gate.holding
                    and (gate.deadline is not None or reason == "gap")
                )
                if gate is None:
                    gate = session.gate(room)
                if not told:
                    gate.await_rejoin(deadline)
                if held is not None:
                    gate.hold(held)
                if told:
                    continue
                self._awaiting_rejoin[(session, room)] = None
                self._schedule_rejoin_sweep()
                self.metrics.rejoins.labels(reason).inc()
                self.reply(session, "rejoin", {"room": room, "reason": reason}, None)

    def _schedule_rejoin_sweep(self) -> None:
        if self._rejoin_sweep_timer is None and self._awaiting_rejoin:
            loop = asyncio.get_running_loop()
            self._rejoin_sweep_timer = loop.call_later(REJOIN_SWEEP_S, self._sweep_rejoins)

    def _sweep_rejoins(self) -> None:
        """Members that were told to rejoin and did not in time get what was held for them."""
        self._rejoin_sweep_timer = None
        now = time.monotonic()
        for key in list(self._awaiting_rejoin):
            session, room = key
            gate = session.pending.get(room) if session.pending is not None else None
            if session.closed or gate is None or gate.deadline is None:
                del self._awaiting_rejoin[key]
            elif now >= gate.deadline:
                del self._awaiting_rejoin[key]
                held = session.drop_gate(room)
                for pub in held:
                    session.enqueue(session.transport.encode_publication(pub))
                self.receipts.sent(session, held)
        self._schedule_rejoin_sweep()

    def on_control(self, message: ControlMessage) -> None:
        if message.action == "disconnect":
            user_id = str(message.args.get("userId", ""))
            self.auth.forget_user(user_id)
            for session in list(self.by_user.get(user_id, ())):
                session.close(CloseCode.DISCONNECTED_BY_SERVER, "disconnected by the server")
            if user_id in self.by_user:
                log.info("disconnected user %s by server request", user_id)

    def _on_overflow(self, session: Session) -> None:
        self.metrics.slow_consumers.inc()
        log.info("connection %s closed: send queue overflow (slow consumer)", session.id)

    # --- periodic work ------------------------------------------------------------------------
    def stats(self) -> NodeStats:
        """O(1): counts are kept as connections come and go (this runs every heartbeat)."""
        now = time.time()
        connections = len(self.sessions)
        return NodeStats(
            node=self.node_id,
            connections=connections,
            by_role={role: n for role, n in self.by_role.items() if n > 0},
            rooms=len(self.hub.rooms),
            rss_bytes=rss_bytes(),
            uptime_s=now - self.started_at,
            started_at_ms=int(self.started_at * 1000),
            frames_in=self.frames_in,
            frames_out=self.frames_out + self.hub.deliveries,
            connection_seconds_sum=max(
                0.0, connections * (now - self.started_at) - self._connected_at_sum
            ),
            django=self.django.probe.as_dict(),
            ready=not self.draining and self.backend_ok,
        )

    async def _heartbeat_once(self) -> None:
        self.metrics.rooms.set(len(self.hub.rooms))
        known = await self.backend.heartbeat(self.stats())
        if not known and self._registered:
            await self._register_again()
        self._registered = True

    async def _register_again(self) -> None:
        """Redis lost our registration (restart without data, or we were swept after a
        partition): write our connections and memberships back so cluster state is right."""
        sessions = [s for s in self.sessions.values() if s.info is not None and not s.closed]
        log.warning("registration lost in the backend: registering %d connections", len(sessions))
        for session in sessions:
            assert session.info is not None
            await self.backend.add_connection(session.info, sorted(session.rooms))

    async def _heartbeat_loop(self) -> None:
        task = asyncio.current_task()
        # redis-py can swallow a cancel() inside a command: stop() would then wait forever
        while task is None or not task.cancelling():
            await asyncio.sleep(self.settings.node_heartbeat_s)
            try:
                await self._heartbeat_once()
                if not self.backend_ok:
                    await self.ready()
            except BACKEND_ERRORS as exc:
                self.metrics.redis_errors.labels("heartbeat").inc()
                if self.backend_ok:
                    log.warning("heartbeat failed: %s", exc)
                self.backend_ok = False
                self.metrics.ready.set(0)

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.janitor_interval_s)
            removed = await self.backend.cleanup()
            if any(removed.values()):
                log.debug("janitor removed %s", removed)

    def local_members(self, rooms: list[str]) -> dict[str, int]:
        """This node's members of ``rooms`` (embedded mode: everyone's)."""
        return {room: len(self.hub.rooms.get(room, ())) for room in rooms}

    def _accounting_tick(self) -> float:
        """Grace periods end within a quarter of their length (at most 1 s late)."""
        return min(1.0, max(0.05, self.settings.presence_grace_s / 4))

    async def _probe_loop(self) -> None:
        while True:
            await self.django.probe_once()
            await asyncio.sleep(self.settings.django_probe_s)


def _went_back(seen: tuple[int, str] | None, position: Position) -> bool:
    """Redis answered below what the node already saw live in the same epoch."""
    return seen is not None and seen[1] == position.epoch and position.offset < seen[0]


def _ts_of(body: bytes) -> int:
    i = body.rfind(b'"ts":')
    if i < 0:
        return 0
    j = body.find(b",", i)
    try:
        return int(body[i + 5 : j])
    except ValueError:
        return 0
