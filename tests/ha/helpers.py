"""Tools for the topology tests: clients that follow the protocol to the letter and record what
they are given, a publisher that keeps publishing through failures, and the exactly-once check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from tests.support.nodes import API_KEY


@dataclass
class Delivery:
    epoch: str
    offset: int
    seq: int
    how: str  # "live" or "missed"


@dataclass
class RoomLog:
    deliveries: list[Delivery] = field(default_factory=list)
    resets: list[int] = field(default_factory=list)  # len(deliveries) at each recovered: false
    rejoins: int = 0
    position: dict[str, Any] | None = None


class Follower:
    """One WebSocket client on one node that does what the protocol asks: it answers ``rejoin``
    by joining the room again with ``since`` (its position: the last event it processed), and
    records every event it is given, live or in ``missed``. It dedupes nothing: the checks see
    exactly what the gateway sent. Like any client, it has one join of a room in flight at a
    time: a ``rejoin`` that arrives meanwhile is answered once that join's reply came, from the
    position the reply gave (joining twice from one position would ask for the same events
    twice)."""

    def __init__(self, session: aiohttp.ClientSession, ws_url: str, token: str) -> None:
        self.session = session
        self.ws_url = ws_url
        self.token = token
        self.rooms: dict[str, RoomLog] = defaultdict(RoomLog)
        self.errors: list[dict[str, Any]] = []
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._joining: set[str] = set()
        self._rejoin_after: set[str] = set()
        self.closed_with: int | None = None

    async def start(self, rooms: Sequence[str]) -> None:
        """Connect, authenticate, and join ``rooms`` in one burst (all frames, then all
        replies), as a client subscribing to several rooms at once does."""
        self._ws = await self.session.ws_connect(self.ws_url, autoping=True)
        self._reader = asyncio.create_task(self._read())
        self._writer = asyncio.create_task(self._write())
        reply = await self.request("authenticate", {"token": self.token})
        assert reply["event"] == "auth_success", reply
        pending = [self._send_join(room) for room in rooms]
        for room, fut in zip(rooms, pending, strict=True):
            reply = await asyncio.wait_for(fut, 15)
            assert reply["event"] == "room_joined", (room, reply)

    async def request(self, event: str, data: Any) -> dict[str, Any]:
        return await asyncio.wait_for(self._send(event, data), 15)

    def _send(self, event: str, data: Any) -> asyncio.Future[dict[str, Any]]:
        assert self._ws is not None
        self._next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[self._next_id] = fut
        frame = {"event": event, "data": data, "id": self._next_id}
        self._outbox.put_nowait(orjson.dumps(frame).decode())  # sent in order by _write
        return fut

    def _send_join(self, room: str) -> asyncio.Future[dict[str, Any]]:
        self._joining.add(room)
        data: dict[str, Any] = {"room": room}
        position = self.rooms[room].position
        if position is not None:
            data["since"] = position
        fut = self._send("join_room", data)
        fut.add_done_callback(lambda f, r=room: self._joined(r, f))  # type: ignore[misc]
        return fut

    def _joined(self, room: str, fut: asyncio.Future[dict[str, Any]]) -> None:
        self._joining.discard(room)
        if fut.cancelled() or fut.exception() is not None:
            return
        reply = fut.result()
        again = room in self._rejoin_after  # a rejoin came while this join was in flight
        self._rejoin_after.discard(room)
        log = self.rooms[room]
        if reply["event"] != "room_joined":
            self.errors.append(reply)
            if reply["data"].get("code") == "unavailable":  # "retry", says the gateway
                asyncio.get_running_loop().call_later(0.2, self._send_join, room)
            elif again:
                self._send_join(room)
            return
        data = reply["data"]
        for event in data.get("missed", []):
            self._record(room, event, "missed")
        if data.get("recovered") is False:
            log.resets.append(len(log.deliveries))
        if data.get("recovered") is False or log.position is None:
            log.position = {"epoch": data["epoch"], "offset": data["offset"]}
        if again:
            self._send_join(room)

    async def _write(self) -> None:
        assert self._ws is not None
        while True:
            await self._ws.send_str(await self._outbox.get())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            frame = orjson.loads(msg.data)
            fut = self._replies.pop(frame.get("id"), None) if "id" in frame else None
            if fut is not None and not fut.done():
                fut.set_result(frame)  # join replies are recorded by their callback, in order
            elif frame.get("event") == "event":
                self._record(frame["data"]["room"], frame["data"], "live")
            elif frame.get("event") == "rejoin":
                room = frame["data"]["room"]
                self.rooms[room].rejoins += 1
                if room in self._joining:
                    self._rejoin_after.add(room)
                else:
                    self._send_join(room)
        self.closed_with = self._ws.close_code

    def _record(self, room: str, event: dict[str, Any], how: str) -> None:
        log = self.rooms[room]
        seq = int(event["payload"]["seq"])
        log.deliveries.append(Delivery(event["epoch"], int(event["offset"]), seq, how))
        log.position = {"epoch": event["epoch"], "offset": int(event["offset"])}

    def describe(self, room: str) -> str:
        """What the client got, compressed: ``live 1-10 | missed 11-12 | live 13-40``."""
        log = self.rooms[room]
        runs: list[list[Any]] = []
        for d in log.deliveries:
            last = runs[-1] if runs else None
            if last and last[0] == d.how and last[1] == d.epoch and last[3] + 1 == d.offset:
                last[3] = d.offset
            else:
                runs.append([d.how, d.epoch, d.offset, d.offset])
        text = " | ".join(f"{how} {e[:4]}:{a}-{b}" for how, e, a, b in runs)
        errors = [e["data"].get("code") for e in self.errors]
        return f"{self.ws_url} {room}: {text}; rejoins {log.rejoins}, resets {log.resets}, {errors}"

    @property
    def joining(self) -> bool:
        """A join (a rejoin's answer) is still waiting for its reply."""
        return bool(self._replies)

    def seqs(self, room: str) -> list[int]:
        return [d.seq for d in self.rooms[room].deliveries]

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        for task in (self._reader, self._writer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class SteadyPublisher:
    """Publishes ``seq`` 0, 1, 2… to each room through the nodes' ``/api/publish`` (round
    robin), every ``interval_s``. A failed publish (Redis failing over) is retried with the
    same idempotency key until it succeeds, so each ``seq`` is one event. ``published[room]``
    maps seq -> (epoch-less) offset as the API answered; ``failures`` counts failed tries."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_urls: Sequence[str],
        rooms: Sequence[str],
        interval_s: float = 0.05,
    ) -> None:
        self.session = session
        self.base_urls = list(base_urls)
        self.rooms = list(rooms)
        self.interval_s = interval_s
        self.published: dict[str, dict[int, int]] = {room: {} for room in rooms}
        self.failures = 0
        self.last_failure_at = 0.0
        self.first_failure_at = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tries = 0
        self.tag = f"{time.monotonic_ns()}"

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, 60)

    def count(self, room: str) -> int:
        return len(self.published[room])

    async def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            for room in self.rooms:
                await self._publish(room, seq)
            seq += 1
            await asyncio.sleep(self.interval_s)

    async def _publish(self, room: str, seq: int) -> None:
        body = {
            "room": room,
            "type": "tick",
            "payload": {"seq": seq},
            "idempotencyKey": f"{self.tag}-{room}-{seq}",
        }
        while True:
            url = self.base_urls[self._tries % len(self.base_urls)]
            self._tries += 1
            try:
                async with self.session.post(
                    f"{url}/api/publish",
                    json=body,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                    timeout=aiohttp.ClientTimeout(total=10),
                ) as response:
                    if response.status == 200:
                        answer = await response.json()
                        self.published[room][seq] = int(answer["offsets"][room])
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            now = time.monotonic()
            if not self.failures:
                self.first_failure_at = now
            self.failures += 1
            self.last_failure_at = now
            await asyncio.sleep(0.1)


async def wait_delivered(
    followers: Sequence[Follower], publisher: SteadyPublisher, timeout_s: float = 30
) -> None:
    """Until every follower holds the last published seq of every room (directly or after a
    reset), or the timeout passes (the checks then say what is missing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(
            publisher.count(room) == 0 or publisher.count(room) - 1 in set(f.seqs(room))
            for f in followers
            for room in publisher.rooms
        ):
            return
        await asyncio.sleep(0.1)


def check_exactly_once(
    follower: Follower, room: str, published: dict[int, int], *, new_epoch_allowed: bool
) -> list[str]:
    """What is wrong with what ``follower`` got for ``room`` (empty: nothing). Within an epoch
    offsets go up by exactly 1, no (epoch, offset) and no seq comes twice, and every published
    seq arrived — unless the room moved to a new epoch (allowed only where Redis lost writes),
    in which case the client was told so and only the seqs after that point are owed."""
    log = follower.rooms[room]
    problems: list[str] = []
    seen_pairs: set[tuple[str, int]] = set()
    seen_seqs: set[int] = set()
    epochs = []
    previous: Delivery | None = None
    for d in log.deliveries:
        if (d.epoch, d.offset) in seen_pairs:
            problems.append(f"({d.epoch}, {d.offset}) delivered twice")
        if d.seq in seen_seqs:
            problems.append(f"seq {d.seq} delivered twice")
        seen_pairs.add((d.epoch, d.offset))
        seen_seqs.add(d.seq)
        if previous is not None and previous.epoch == d.epoch and d.offset != previous.offset + 1:
            problems.append(f"offset {previous.offset} then {d.offset} ({d.how})")
        if not epochs or epochs[-1] != d.epoch:
            epochs.append(d.epoch)
        previous = d
    if len(epochs) > 1 and not new_epoch_allowed:
        problems.append(f"new epoch(s) {epochs}")
    if log.resets and not new_epoch_allowed:
        problems.append(f"recovered: false {len(log.resets)} time(s)")
    # Told to refetch (new epoch, recovered: false): owed every seq from the first event after
    # the last such moment; otherwise every seq from the first one received.
    restart = max([*log.resets, _last_epoch_start(log.deliveries)])
    owed_from = log.deliveries[restart].seq if restart < len(log.deliveries) else None
    if owed_from is None and published:
        problems.append("nothing delivered")
    if owed_from is not None:
        missing = sorted(s for s in published if s >= owed_from and s not in seen_seqs)
        if missing:
            problems.append(f"missing seqs {missing[:20]} ({len(missing)})")
    return [f"{follower.ws_url} {room}: {p}" for p in problems]


def _last_epoch_start(deliveries: list[Delivery]) -> int:
    for i in range(len(deliveries) - 1, 0, -1):
        if deliveries[i].epoch != deliveries[i - 1].epoch:
            return i
    return 0


async def readyz(session: aiohttp.ClientSession, base_url: str) -> int:
    try:
        async with session.get(f"{base_url}/readyz", timeout=aiohttp.ClientTimeout(3)) as r:
            return r.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def all_ready(session: aiohttp.ClientSession, base_urls: Sequence[str]) -> bool:
    statuses = await asyncio.gather(*(readyz(session, url) for url in base_urls))
    return all(status == 200 for status in statuses)
