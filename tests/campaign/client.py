"""A campaign client: follows the ``/ws`` protocol exactly and shows every frame to its oracle.

It authenticates, joins its rooms, answers ``rejoin`` by joining again with ``since`` (the last
position it received), and on close 1012/1013 or an abnormal close reconnects to another node and
joins every room again with ``since`` — automatic rooms included. It never repairs what it got
(no de-duplication, no gap filling of its own): that is the server's job, and the oracle judges it.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
import orjson

from tests.campaign.ledger import Published
from tests.campaign.oracle import ClientOracle

EXPECTED_CLOSES = frozenset({1012, 1013, 1006})  # drain, retry later, abnormal (node died)
JOIN_RETRY_CODES = frozenset({"unavailable", "rate_limited"})
CONNECT_TIMEOUT_S = 5.0
JOIN_DEADLINE_S = 30.0  # a join unanswered this long is a stuck room: counted, then reconnect
AUTH_DEADLINE_S = 30.0
BACKOFF_MAX_S = 2.0

_frame_ids = itertools.count(1)


class CampaignClient:
    def __init__(
        self,
        name: str,
        token: str,
        automatic: Sequence[str],
        rooms: Sequence[str],
        node_urls: dict[str, str],
        oracle: ClientOracle,
        rng: random.Random,
        session: aiohttp.ClientSession,
    ) -> None:
        self.name = name
        self.token = token
        self.automatic = list(automatic)  # joined by the node at auth (contract §2, Rooms)
        self.extra_rooms = list(rooms)  # joined on request
        self.node_urls = node_urls
        self.oracle = oracle
        self.rng = rng
        self.session = session
        self.closes: Counter[str] = Counter()
        self.close_log: list[tuple[float, str, str]] = []  # (t, node, code or "dropped")
        self.node: str | None = None  # the node we are authenticated on
        self.authenticated = False
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._rooms = self.automatic + self.extra_rooms
        self._joins: dict[int, tuple[str, dict[str, Any] | None, float]] = {}
        self._again: set[str] = set()  # a rejoin came while a join was in flight
        self._business: dict[int, tuple[Published, asyncio.Future[bool]]] = {}
        self._dropped = False  # we cut the connection ourselves (a storm)
        self._conn = 0
        self._auth_sent_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()  # delayed join retries

    # --- state for the runner ----------------------------------------------------------------
    @property
    def settled(self) -> bool:
        """Authenticated, every room joined, no join in flight."""
        return (
            self.authenticated
            and not self._joins
            and not any(self.oracle.joining(room) for room in self._rooms)
        )

    def drop(self) -> bool:
        """Cut the connection at once (no close frame), as a network blip does; the run loop
        reconnects without waiting. False when there was no connection."""
        ws = self._ws
        transport = getattr(getattr(ws, "_conn", None), "transport", None)
        if ws is None or transport is None:
            return False
        self._dropped = True
        transport.abort()
        return True

    async def send_business(self, pub: Published, servicio: str, timeout_s: float = 15.0) -> None:
        """Send ``comment_created`` (text = the tag) and mark ``pub`` acked on ``ack``."""
        ws = self._ws
        if ws is None or not self.authenticated:
            pub.error = "not connected"
            return
        frame_id = next(_frame_ids)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._business[frame_id] = (pub, future)
        pub.attempts += 1
        data = {"servicioId": servicio, "text": pub.tag}
        try:
            await self._send(ws, "comment_created", data, frame_id)
            async with asyncio.timeout(timeout_s):
                await future
        except (TimeoutError, ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            pub.error = pub.error or f"{type(exc).__name__}"
        finally:
            self._business.pop(frame_id, None)

    # --- the connection loop ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        avoid: str | None = None
        while not stop.is_set():
            name = self._pick(avoid)
            ws = await self._connect(name)
            if ws is None:
                attempt += 1
                avoid = name
                await self._backoff(attempt, stop)
                continue
            self._conn += 1
            self.oracle.count.connections += 1
            self.oracle.note(f"conn#{self._conn} open to {name}")
            try:
                code = await self._serve(ws, stop)
            finally:
                authenticated = self._lost()
            if stop.is_set():
                break
            self._judge_close(code, name)
            avoid = name
            if self._dropped:
                self._dropped, attempt = False, 0
                continue  # a storm: everyone back at once
            attempt = 0 if authenticated else attempt + 1
            await self._backoff(attempt, stop)

    async def _connect(self, name: str) -> aiohttp.ClientWebSocketResponse | None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await self.session.ws_connect(
                    self.node_urls[name], autoping=True, max_msg_size=0
                )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.oracle.note(f"connect to {name} failed: {type(exc).__name__}")
            return None

    def _pick(self, avoid: str | None) -> str:
        names = [n for n in self.node_urls if n != avoid] or list(self.node_urls)
        return self.rng.choice(names)

    async def _backoff(self, attempt: int, stop: asyncio.Event) -> None:
        delay = self.rng.uniform(0.0, min(BACKOFF_MAX_S, 0.05 * 2**attempt))
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
        except TimeoutError:
            pass

    async def _serve(self, ws: aiohttp.ClientWebSocketResponse, stop: asyncio.Event) -> int | None:
        self._ws = ws
        self.oracle.hold(self._rooms)
        loop = asyncio.get_running_loop()
        self._auth_sent_at = loop.time()
        await self._send(ws, "authenticate", {"token": self.token}, next(_frame_ids))
        while not stop.is_set():
            try:
                msg = await ws.receive(timeout=1.0)
            except TimeoutError:
                if self._stuck(loop.time()):
                    await ws.close()
                    return -1
                continue
            if msg.type is aiohttp.WSMsgType.TEXT:
                await self._on_frame(ws, orjson.loads(msg.data))
            elif msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.PING):
                continue
            else:
                break
        if stop.is_set():
            await ws.close()
        return ws.close_code

    def _stuck(self, now: float) -> bool:
        if not self.authenticated and now - self._auth_sent_at > AUTH_DEADLINE_S:
            self.oracle.flag("stuck_auth", "-", f"no answer to authenticate on {self.node}")
            return True
        for room, _since, sent_at in self._joins.values():
            if now - sent_at > JOIN_DEADLINE_S:
                self.oracle.flag("stuck_join", room, f"join unanswered for {JOIN_DEADLINE_S} s")
                return True
        return False

    def _lost(self) -> bool:
        """Forget the connection; returns whether it had authenticated."""
        authenticated, self.authenticated = self.authenticated, False
        self._ws = None
        self._joins.clear()
        self._again.clear()
        for _pub, future in self._business.values():
            if not future.done():
                future.set_exception(ConnectionError("connection lost"))
        return authenticated

    def _judge_close(self, code: int | None, name: str) -> None:
        label = "dropped" if self._dropped else str(code)
        self.closes[label] += 1
        self.close_log.append((self.oracle.clock(), name, label))
        self.oracle.note(f"conn#{self._conn} to {name} closed: {label}")
        if self._dropped or code in EXPECTED_CLOSES or code is None or code == -1:
            return
        self.oracle.flag("unexpected_close", "-", f"{name} closed the connection with {code}")

    # --- frames -------------------------------------------------------------------------------
    async def _send(
        self, ws: aiohttp.ClientWebSocketResponse, event: str, data: Any, frame_id: int
    ) -> None:
        frame = orjson.dumps({"event": event, "data": data, "id": frame_id}).decode()
        try:
            await ws.send_str(frame)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            pass  # the receive loop sees the close

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> None:
        event, data, frame_id = frame.get("event"), frame.get("data") or {}, frame.get("id")
        handler = _HANDLERS.get(str(event))
        if handler is not None:
            await handler(self, ws, data, frame_id)
        else:
            self.oracle.note(f"{event} {str(data)[:120]}")

    async def _on_event(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        if not self.authenticated:
            self.oracle.count.early_events += 1
        self.oracle.on_event(data, early=not self.authenticated)

    async def _on_auth_success(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        self.authenticated = True
        self.node = str(data.get("node"))
        self.oracle.note(f"auth_success on {self.node} rooms={data.get('rooms')}")
        automatic = [str(r) for r in data.get("rooms") or []]
        if sorted(automatic) != sorted(self.automatic):
            self.oracle.flag(
                "auth_rooms", "-", f"automatic rooms {automatic}, not {self.automatic}"
            )
        for room in self._rooms:
            await self._join(ws, room)

    async def _on_auth_error(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        self.oracle.note(f"auth_error {data}")
        if data.get("code") != "auth_unavailable":
            self.oracle.flag("auth_error", "-", f"auth_error {data.get('code')}: {data}")

    async def _on_room_joined(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        pending = self._joins.pop(frame_id, None) if isinstance(frame_id, int) else None
        if pending is None:
            self.oracle.flag("unexpected_frame", str(data.get("room")), f"room_joined {frame_id}")
            return
        room, since, _ = pending
        self.oracle.on_joined(room, data, since)
        if room in self._again:
            self._again.discard(room)
            await self._join(ws, room)

    async def _on_rejoin(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        room = str(data.get("room"))
        self.oracle.on_rejoin_frame(room, str(data.get("reason")))
        await self._join(ws, room)

    async def _on_error(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        if isinstance(frame_id, int) and frame_id in self._joins:
            room, _since, _ = self._joins.pop(frame_id)
            code = str(data.get("code"))
            self.oracle.note(f"join {room} failed: {code}", room)
            if code not in JOIN_RETRY_CODES:
                self.oracle.flag("join_error", room, f"join answered error {data}")
            asyncio.get_running_loop().call_later(
                self.rng.uniform(0.3, 1.0), self._retry_join, ws, room, self._conn
            )
        elif isinstance(frame_id, int) and frame_id in self._business:
            pub, future = self._business[frame_id]
            pub.error = str(data.get("code"))
            if not future.done():
                future.set_result(False)
        else:
            self.oracle.note(f"error {data}")

    async def _on_ack(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        entry = self._business.get(frame_id) if isinstance(frame_id, int) else None
        if entry is None:
            return
        pub, future = entry
        pub.acked, pub.event_id = True, str(data.get("eventId"))
        if not future.done():
            future.set_result(True)

    async def _on_quiet(self, ws: Any, data: dict[str, Any], frame_id: Any) -> None:
        pass

    def _retry_join(self, ws: aiohttp.ClientWebSocketResponse, room: str, conn: int) -> None:
        if conn == self._conn and self._ws is ws and not ws.closed:
            task = asyncio.create_task(self._join(ws, room))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _join(self, ws: aiohttp.ClientWebSocketResponse, room: str) -> None:
        """Send ``join_room`` with ``since`` unless one is in flight (then once more after)."""
        if any(pending[0] == room for pending in self._joins.values()):
            self._again.add(room)
            return
        since = self.oracle.begin_join(room)
        data: dict[str, Any] = {"room": room}
        if since is not None:
            data["since"] = since
        frame_id = next(_frame_ids)
        self._joins[frame_id] = (room, since, asyncio.get_running_loop().time())
        await self._send(ws, "join_room", data, frame_id)


_Handler = Callable[[CampaignClient, Any, dict[str, Any], Any], Any]
_HANDLERS: dict[str, _Handler] = {
    "event": CampaignClient._on_event,
    "auth_success": CampaignClient._on_auth_success,
    "auth_error": CampaignClient._on_auth_error,
    "room_joined": CampaignClient._on_room_joined,
    "rejoin": CampaignClient._on_rejoin,
    "error": CampaignClient._on_error,
    "ack": CampaignClient._on_ack,
    "pong": CampaignClient._on_quiet,
}
