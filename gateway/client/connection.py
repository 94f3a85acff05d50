"""``GatewayClient``: one user's asyncio connection to the gateway.

It moves frames between the socket and the pure parts (``gateway.client.recovery``): connect and
authenticate, join rooms, hand ``event`` frames to handlers, send the business events; after an
unexpected close, reconnect with backoff to the next URL, authenticate again and rejoin every room
with ``since``. Close 4401 or 4403 ends it for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from gateway.client.errors import (
    TERMINAL_CLOSE_CODES,
    AuthError,
    ClientClosed,
    ConnectionLost,
    GatewayError,
    RequestTimeout,
    terminal_close_error,
)
from gateway.client.recovery import Backoff, RoomTracker, UrlRotation, Verdict
from gateway.closecodes import ErrorCode

log = logging.getLogger("gateway.client")

JsonObject = dict[str, Any]
Handler = Callable[[JsonObject], Awaitable[None] | None]

LIFECYCLE_EVENTS = frozenset(
    {"connected", "disconnected", "reconnected", "recovery_failed", "join_failed", "terminated"}
)
# A rejoin refused with one of these will not succeed by retrying: the room is dropped.
PERMANENT_JOIN_ERRORS = frozenset({ErrorCode.FORBIDDEN, ErrorCode.INVALID_ROOM})


class ClientState(enum.Enum):
    IDLE = "idle"  # not connected yet
    CONNECTING = "connecting"  # first connect()
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"  # the connection dropped; backing off and retrying
    CLOSED = "closed"  # close() was called
    FAILED = "failed"  # stopped retrying: see terminal_error


@dataclass
class ClientStats:
    connects: int = 0  # successful (re)connections
    reconnects: int = 0
    connect_failures: int = 0
    events_delivered: int = 0  # handed to handlers, including recovered ones
    missed_delivered: int = 0  # of which came from ``missed``
    duplicates_dropped: int = 0
    gaps_detected: int = 0
    recoveries: int = 0  # joins with ``since`` answered ``recovered: true``
    recovery_failures: int = 0
    rejoin_requests: int = 0  # ``rejoin`` frames from the server


@dataclass
class _Pending:
    future: asyncio.Future[JsonObject]
    event: str
    room: str | None = None  # set for join_room: the reply is merged in the read loop
    since: JsonObject | None = None
    keep_on_error: bool = False


@dataclass
class _Connection:
    ws: aiohttp.ClientWebSocketResponse
    reader: asyncio.Task[None]


class GatewayClient:
    """One user's connection to the gateway; see the module docstring and docs/clients.md.

    Handlers registered with ``on(type, handler)`` get the data of every ``event`` whose ``type``
    matches (``"*"``: all). ``on_lifecycle(name, handler)`` takes ``connected``,
    ``disconnected``, ``reconnected``, ``recovery_failed`` (``{"room"}``: refetch that room's
    state from Django), ``join_failed`` (``{"room", "code"}``) and ``terminated``
    (``{"code", "reason"}``). Handlers may be plain functions or coroutines; they run one at a
    time, in delivery order, in a task of their own, so they may themselves send requests.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        token: str,
        *,
        session: aiohttp.ClientSession | None = None,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 10.0,
        request_timeout_s: float = 10.0,
        heartbeat_s: float | None = 20.0,
        max_reconnect_attempts: int | None = None,
        connect_attempts: int | None = None,
        user_id: str | None = None,
        role: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not token:
            raise ValueError("a token is needed")
        self._urls = UrlRotation(urls)
        self._token = token
        self._claims = {k: v for k, v in (("userId", user_id), ("role", role)) if v is not None}
        self._session = session
        self._owns_session = session is None
        self._backoff = Backoff(backoff_base_s, backoff_max_s)
        self._timeout_s = request_timeout_s
        self._heartbeat_s = heartbeat_s
        self._max_attempts = max_reconnect_attempts
        self._connect_attempts = connect_attempts or len(self._urls.urls)
        self._rng = rng or random.Random()

        self.state = ClientState.IDLE
        self.stats = ClientStats()
        self.connected = asyncio.Event()
        self.node: str | None = None
        self.user_id: str | None = None
        self.role: str | None = None
        self.connection_id: str | None = None
        self.close_code: int | None = None  # of the last connection that closed
        self.terminal_error: GatewayError | None = None

        self._conn: _Connection | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._tracker = RoomTracker()
        self._handlers: dict[str, list[Handler]] = {}
        self._lifecycle: dict[str, list[Handler]] = {}
        self._queue: asyncio.Queue[tuple[str, str, JsonObject] | None] = asyncio.Queue()
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None

    # --- public API ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The URL of the current (or last) connection."""
        return self._urls.current

    @property
    def rooms(self) -> list[str]:
        """Rooms this client is in and will rejoin after a reconnect."""
        return self._tracker.rooms()

    def since(self, room: str) -> JsonObject | None:
        """The position this client would recover ``room`` from: ``{"offset", "epoch"}``."""
        return self._tracker.since(room)

    def on(self, event_type: str, handler: Handler) -> Callable[[], None]:
        """Call ``handler(event_data)`` for each event of ``event_type`` (``"*"``: all).

        Returns a function that removes the handler.
        """
        return self._register(self._handlers, event_type, handler)

    def on_lifecycle(self, name: str, handler: Handler) -> Callable[[], None]:
        if name not in LIFECYCLE_EVENTS:
            raise ValueError(f"unknown lifecycle event {name!r}; one of {sorted(LIFECYCLE_EVENTS)}")
        return self._register(self._lifecycle, name, handler)

    async def connect(self) -> JsonObject:
        """Connect and authenticate; returns the ``auth_success`` data.

        Makes ``connect_attempts`` tries (default: each URL once), with backoff between them and
        the next URL each time. Raises ``AuthError`` on ``auth_error`` (at once when the token is
        refused) and ``ConnectionLost``/``OSError``/``aiohttp.ClientError`` when no try worked.
        After a failure the client is ``FAILED``: make a new one to try again.
        """
        if self.state is not ClientState.IDLE:
            raise RuntimeError(f"connect() called in state {self.state.value}")
        self.state = ClientState.CONNECTING
        self._dispatcher = asyncio.create_task(self._dispatch_loop())
        attempts = self._connect_attempts
        for attempt in range(attempts):
            url = self._urls.current if attempt == 0 else self._urls.advance()
            try:
                auth = await self._open(url)
                await self._join_automatic_rooms(auth.get("rooms") or [])
                break
            except (OSError, aiohttp.ClientError, TimeoutError, GatewayError) as exc:
                log.info("gateway client: connecting to %s failed: %r", url, exc)
                await self._drop_current()
                if _is_terminal(exc) or attempt == attempts - 1:
                    await self._give_up(_as_gateway_error(exc))
                    raise
            await asyncio.sleep(self._backoff.delay(attempt, self._rng))
        self._set_connected(first=True)
        self._supervisor = asyncio.create_task(self._supervise())
        return auth

    async def join(self, room: str) -> JsonObject:
        """Join ``room``; returns the ``room_joined`` data. Raises ``GatewayError`` on ``error``.

        A connection lost before the answer is not an error: the join is tried again once the
        client has reconnected (joining twice is harmless).
        """

        async def attempt() -> JsonObject:
            async with asyncio.timeout(self._timeout_s):
                await self._wait_connected()
            return await self._join(room, keep_on_error=room in self._tracker)

        return _reply_data(await self._retry_lost(attempt))

    async def leave(self, room: str) -> JsonObject:
        """Leave ``room``; it is forgotten at once, so a reconnect does not rejoin it."""
        self._tracker.forget(room)
        try:
            return _reply_data(await self._request("leave_room", {"room": room}))
        except ConnectionLost:
            return {"room": room}  # the next connection is not in the room

    async def presence(self, room: str) -> JsonObject:
        return _reply_data(
            await self._retry_lost(lambda: self._request("presence", {"room": room}))
        )

    async def ping(self) -> JsonObject:
        return _reply_data(await self._request("ping", {}))

    async def create_reservation(self, **fields: Any) -> JsonObject:
        return await self.send_business("reservation_created", fields)

    async def accept_reservation(self, **fields: Any) -> JsonObject:
        return await self.send_business("reservation_accepted", fields)

    async def create_payment(self, **fields: Any) -> JsonObject:
        return await self.send_business("payment_created", fields)

    async def create_comment(self, **fields: Any) -> JsonObject:
        return await self.send_business("comment_created", fields)

    async def send_business(self, event: str, payload: JsonObject) -> JsonObject:
        """Send a business event; returns the ``ack`` data (``{"event", "eventId"}``)."""
        return _reply_data(await self._request(event, payload))

    async def close(self) -> None:
        """Close for good: no reconnect; pending requests fail with ``ClientClosed``."""
        if self.state is ClientState.CLOSED:
            return
        if self.state is ClientState.FAILED:  # already stopped (or stopping): keep the reason
            await self._stopped.wait()
            return
        self.state = ClientState.CLOSED
        await self._stop(ClientClosed())

    async def wait_stopped(self) -> None:
        """Wait until the client is closed or has given up (``terminal_error``)."""
        await self._stopped.wait()

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- connection lifecycle -----------------------------------------------------------------

    async def _open(self, url: str) -> JsonObject:
        """Open a WebSocket to ``url`` and authenticate on it; returns the ``auth_success`` data."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with asyncio.timeout(self._timeout_s):
            ws = await self._session.ws_connect(
                url, heartbeat=self._heartbeat_s, autoping=True, max_msg_size=0
            )
        conn = _Connection(ws, asyncio.create_task(self._read_loop(ws)))
        self._conn = conn
        try:
            frame = await self._request(
                "authenticate", {"token": self._token} | self._claims, wait=False
            )
        except ConnectionLost as exc:
            await self._drop(conn)
            if exc.close_code in TERMINAL_CLOSE_CODES:
                raise terminal_close_error(exc.close_code) from None
            raise
        except BaseException:
            await self._drop(conn)
            raise
        if frame.get("event") == "auth_error":
            await self._drop(conn)
            data = frame.get("data") or {}
            raise AuthError(str(data.get("code", "auth_error")), str(data.get("message", "")))
        auth = _reply_data(frame)
        self.node = auth.get("node")
        self.user_id = auth.get("userId")
        self.role = auth.get("role")
        self.connection_id = auth.get("connectionId")
        return auth

    async def _drop_current(self) -> None:
        if self._conn is not None:
            await self._drop(self._conn)

    async def _drop(self, conn: _Connection) -> None:
        await conn.ws.close()
        await conn.reader
        if self._conn is conn:
            self._conn = None

    async def _supervise(self) -> None:
        """Watch the connection; after an unexpected close, reconnect until it works or ends."""
        while self._conn is not None:
            conn = self._conn
            await conn.reader
            if self.state in (ClientState.CLOSED, ClientState.FAILED):
                return
            self._conn = None
            self.close_code = conn.ws.close_code
            self.connected.clear()
            self.state = ClientState.RECONNECTING
            self._emit("disconnected", {"code": self.close_code})
            if self.close_code in TERMINAL_CLOSE_CODES:
                await self._give_up(terminal_close_error(self.close_code))
                return
            if not await self._reconnect():
                return

    async def _reconnect(self) -> bool:
        attempt = 0
        while self.state is ClientState.RECONNECTING:
            if self._max_attempts is not None and attempt >= self._max_attempts:
                await self._give_up(ClientClosed(f"gave up after {attempt} reconnect attempts"))
                return False
            await asyncio.sleep(self._backoff.delay(attempt, self._rng))
            url = self._urls.advance()
            for room in self._tracker.rooms():
                self._tracker.begin_join(room)  # buffer automatic rooms' events until rejoined
            try:
                auth = await self._open(url)
                await self._rejoin_all(auth.get("rooms") or [])
            except (OSError, aiohttp.ClientError, TimeoutError, GatewayError) as exc:
                log.info("gateway client: reconnecting to %s failed: %r", url, exc)
                await self._drop_current()
                if _is_terminal(exc):
                    await self._give_up(_as_gateway_error(exc))
                    return False
            else:
                self.stats.reconnects += 1
                self._set_connected(first=False)
                return True
            self.stats.connect_failures += 1
            attempt += 1
        return False

    async def _join_automatic_rooms(self, rooms: Iterable[str]) -> None:
        """Join the automatic rooms once more, to learn their epoch and offset for recovery."""
        fresh = [r for r in rooms if isinstance(r, str) and r not in self._tracker]
        results = await asyncio.gather(
            *(self._join(room, keep_on_error=True) for room in fresh), return_exceptions=True
        )
        for room, result in zip(fresh, results, strict=True):
            if isinstance(result, ConnectionLost):
                raise result
            if isinstance(result, BaseException):
                log.warning("gateway client: no recovery position for %s: %s", room, result)

    async def _rejoin_all(self, automatic: Iterable[str]) -> None:
        rooms = self._tracker.rooms()
        results = await asyncio.gather(
            *(self._join(room, keep_on_error=True) for room in rooms), return_exceptions=True
        )
        for result in results:
            if isinstance(result, ConnectionLost | TimeoutError | RequestTimeout):
                raise result
        await self._join_automatic_rooms(automatic)

    async def _rejoin(self, room: str) -> None:
        """Join ``room`` again with ``since`` after a gap or a ``rejoin`` frame."""
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._wait_connected()
            conn = self._conn
            await self._join(room, keep_on_error=True)
        except RequestTimeout:
            # The room's events wait in the buffer for this answer: a node that cannot answer
            # a join is not worth waiting for. Reconnecting rejoins every room with ``since``.
            if conn is not None and conn is self._conn:
                log.info("gateway client: no answer to a rejoin of %s; reconnecting", room)
                await conn.ws.close()
        except (GatewayError, TimeoutError):
            pass  # lost or closed: the reconnect (if any) rejoins the room

    def _set_connected(self, *, first: bool) -> None:
        self.stats.connects += 1
        self.state = ClientState.CONNECTED
        self.connected.set()
        self._emit("connected" if first else "reconnected", {"node": self.node, "url": self.url})

    async def _give_up(self, error: GatewayError) -> None:
        self.state = ClientState.FAILED
        self.terminal_error = error
        self._emit("terminated", {"code": error.code, "reason": error.message})
        await self._stop(error)

    async def _stop(self, error: GatewayError) -> None:
        self.connected.clear()
        self._fail_pending(error)  # before the close, which would fail them as connection_lost
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.ws.close()
            await conn.reader
        self._fail_pending(error)
        current = asyncio.current_task()
        tasks = [t for t in (self._supervisor, *self._tasks) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._dispatcher is not None and self._dispatcher is not current:
            self._queue.put_nowait(None)  # deliver what is queued, then stop
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout_s):
                    await asyncio.shield(self._dispatcher)
            self._dispatcher.cancel()
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None
        self._stopped.set()

    # --- requests -----------------------------------------------------------------------------

    async def _join(self, room: str, *, keep_on_error: bool) -> JsonObject:
        since = self._tracker.begin_join(room)
        data: JsonObject = {"room": room}
        if since is not None:
            data["since"] = since
        try:
            return await self._request(
                "join_room", data, wait=False, room=room, since=since, keep_on_error=keep_on_error
            )
        except (ConnectionLost, RequestTimeout, ClientClosed, TimeoutError):
            # No answer: keep buffering; the next connection rejoins with the same ``since``.
            if not keep_on_error:
                self._tracker.forget(room)
            raise

    async def _retry_lost(self, call: Callable[[], Awaitable[JsonObject]]) -> JsonObject:
        """Run an idempotent request again (up to 3 times) when the connection drops under it."""
        tries = 3
        while True:
            try:
                return await call()
            except ConnectionLost:
                tries -= 1
                if tries == 0 or self.state in (ClientState.CLOSED, ClientState.FAILED):
                    raise

    async def _request(
        self,
        event: str,
        data: JsonObject,
        *,
        wait: bool = True,
        room: str | None = None,
        since: JsonObject | None = None,
        keep_on_error: bool = False,
    ) -> JsonObject:
        """Send one frame with a fresh id and wait for the frame that answers it.

        ``wait``: first wait for the client to be connected (requests made while it reconnects
        go out once it is back). The connection's own handshake and rejoins do not wait.
        """
        if self.state in (ClientState.CLOSED, ClientState.FAILED):
            raise self.terminal_error or ClientClosed()
        try:
            async with asyncio.timeout(self._timeout_s):
                if wait:
                    await self._wait_connected()
                conn = self._conn
                if conn is None:
                    raise ConnectionLost(self.close_code)
                request_id = next(self._ids)
                future: asyncio.Future[JsonObject] = asyncio.get_running_loop().create_future()
                self._pending[request_id] = _Pending(future, event, room, since, keep_on_error)
                try:
                    frame = {"event": event, "data": data, "id": request_id}
                    try:
                        await conn.ws.send_str(orjson.dumps(frame).decode())  # text frames
                    except (ConnectionError, aiohttp.ClientError) as exc:
                        raise ConnectionLost(conn.ws.close_code) from exc
                    return await future
                finally:
                    self._pending.pop(request_id, None)
        except TimeoutError:
            raise RequestTimeout(event, self._timeout_s) from None

    async def _wait_connected(self) -> None:
        if self.connected.is_set():
            return
        waiters = [
            asyncio.create_task(self.connected.wait()),
            asyncio.create_task(self._stopped.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if not self.connected.is_set():
            raise self.terminal_error or ClientClosed()

    def _fail_pending(self, error: GatewayError) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(error)

    # --- reading ------------------------------------------------------------------------------

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for message in ws:
                if (
                    message.type is aiohttp.WSMsgType.TEXT
                    or message.type is aiohttp.WSMsgType.BINARY
                ):
                    self._on_frame(message.data)
                elif message.type is aiohttp.WSMsgType.ERROR:
                    log.info("gateway client: connection error: %s", ws.exception())
                    break
        finally:
            if self._conn is not None and self._conn.ws is ws:
                # Before the failed requests wake up: a retry must wait for the next connection.
                self.connected.clear()
            if not ws.closed:
                await ws.close()
            self._fail_pending(ConnectionLost(ws.close_code))

    def _on_frame(self, raw: str | bytes) -> None:
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            log.warning("gateway client: a frame that is not JSON (%d bytes)", len(raw))
            return
        if not isinstance(frame, dict):
            return
        event, data = frame.get("event"), frame.get("data")
        if not isinstance(data, dict):
            data = {}
        pending = self._pending.pop(frame["id"], None) if isinstance(frame.get("id"), int) else None
        if pending is not None:
            if pending.room is not None:
                self._on_join_reply(pending, event, data)
            if not pending.future.done():
                pending.future.set_result(frame)
        elif event == "event":
            self._on_event(data)
        elif event == "rejoin":
            self._on_rejoin(data)
        else:
            log.debug("gateway client: unhandled frame %r", event)

    def _on_event(self, data: JsonObject) -> None:
        verdict = self._tracker.offer(data)
        if verdict is Verdict.DELIVER:
            self._deliver(data)
        elif verdict is Verdict.DUPLICATE:
            self.stats.duplicates_dropped += 1
        elif verdict is Verdict.RESYNC:
            self.stats.gaps_detected += 1
            self._spawn(self._rejoin(str(data.get("room"))))

    def _on_rejoin(self, data: JsonObject) -> None:
        room = data.get("room")
        self.stats.rejoin_requests += 1
        if isinstance(room, str) and room in self._tracker and not self._tracker.is_joining(room):
            self._spawn(self._rejoin(room))

    def _on_join_reply(self, pending: _Pending, event: object, data: JsonObject) -> None:
        """Merge a join's answer in the read loop, before any later frame is looked at."""
        assert pending.room is not None
        room = pending.room
        if event != "room_joined":
            code = str(data.get("code", event))
            forget = not pending.keep_on_error or code in PERMANENT_JOIN_ERRORS
            for buffered in self._tracker.abandon_join(room, forget=forget):
                self._deliver(buffered)
            if pending.keep_on_error:
                self._emit("join_failed", {"room": room, "code": code})
                if pending.since is not None and not forget:
                    self.stats.recovery_failures += 1  # what it missed is not coming
                    self._emit("recovery_failed", {"room": room})
            return
        outcome = self._tracker.apply_joined(room, data, pending.since)
        if outcome.recovered is True:
            self.stats.recoveries += 1
        elif outcome.recovered is False:
            self.stats.recovery_failures += 1
            self._emit("recovery_failed", {"room": room})
        self.stats.missed_delivered += outcome.missed
        for event_data in outcome.deliver:
            self._deliver(event_data)
        if outcome.resync:
            self.stats.gaps_detected += 1
            self._spawn(self._rejoin(room))

    # --- dispatching to handlers ----------------------------------------------------------------

    @staticmethod
    def _register(
        table: dict[str, list[Handler]], key: str, handler: Handler
    ) -> Callable[[], None]:
        table.setdefault(key, []).append(handler)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                table.get(key, []).remove(handler)

        return remove

    def _deliver(self, data: JsonObject) -> None:
        self.stats.events_delivered += 1
        if data.get("receipts") is True:
            self._acknowledge(data)
        self._queue.put_nowait(("event", str(data.get("type")), data))

    def _acknowledge(self, data: JsonObject) -> None:
        """An event that asks for receipts: tell the gateway it arrived (contract §8)."""
        conn = self._conn
        if conn is None:
            return  # the connection is gone; recovery hands the event over again, acked then
        receipt = {k: data.get(k) for k in ("room", "offset", "epoch")}
        frame = orjson.dumps({"event": "received", "data": receipt}).decode()
        self._spawn(self._send_receipt(conn.ws, frame))

    @staticmethod
    async def _send_receipt(ws: aiohttp.ClientWebSocketResponse, frame: str) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_str(frame)

    def _emit(self, name: str, info: JsonObject) -> None:
        self._queue.put_nowait(("lifecycle", name, info))

    async def _dispatch_loop(self) -> None:
        while (item := await self._queue.get()) is not None:
            kind, key, data = item
            if kind == "event":
                handlers = [*self._handlers.get(key, ()), *self._handlers.get("*", ())]
            else:
                handlers = list(self._lifecycle.get(key, ()))
            for handler in handlers:
                try:
                    result = handler(data)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("gateway client: handler for %s failed", key)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _is_terminal(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.terminal


def _as_gateway_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    return ClientClosed(f"no gateway URL could be reached: {exc!r}")


def _reply_data(frame: JsonObject) -> JsonObject:
    """The data of a reply frame; ``error``/``auth_error`` become exceptions."""
    data = frame.get("data")
    data = data if isinstance(data, dict) else {}
    if frame.get("event") == "error":
        raise GatewayError.from_data(data)
    if frame.get("event") == "auth_error":
        raise AuthError.from_data(data)
    return data
