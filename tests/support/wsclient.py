"""A small test client for the ``/ws`` protocol over aiohttp's real WebSocket client."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import orjson

_ids = itertools.count(1)


class WsClient:
    """Frames are read in order into ``inbox``; helpers wait for what a test expects."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inbox: list[dict[str, Any]] = []
        self._cond = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self.close_code: int | None = None

    @classmethod
    async def connect(
        cls, session: aiohttp.ClientSession, url: str, token: str | None = None, **kw: Any
    ) -> WsClient:
        if token is not None:
            url = f"{url}?token={token}"
        ws = await session.ws_connect(url, autoping=True, **kw)
        return cls(ws)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                async with self._cond:
                    self.inbox.append(orjson.loads(msg.data))
                    self._cond.notify_all()
        async with self._cond:
            self.close_code = self.ws.close_code
            self._cond.notify_all()

    async def send(self, event: str, data: Any = None, frame_id: Any = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data if data is not None else {}}
        if frame_id is not None:
            frame["id"] = frame_id
        await self.ws.send_str(orjson.dumps(frame).decode())

    async def send_raw(self, text: str) -> None:
        await self.ws.send_str(text)

    async def wait_for(self, pred: Any, timeout: float = 5.0) -> dict[str, Any]:
        """Remove and return the first frame matching ``pred``."""
        async with asyncio.timeout(timeout), self._cond:
            while True:
                for i, frame in enumerate(self.inbox):
                    if pred(frame):
                        return self.inbox.pop(i)
                if self.close_code is not None:
                    raise ConnectionError(f"closed with {self.close_code}; inbox {self.inbox}")
                await self._cond.wait()

    async def expect(self, event: str, timeout: float = 5.0) -> dict[str, Any]:
        return await self.wait_for(lambda f: f.get("event") == event, timeout)

    async def request(self, event: str, data: Any = None, timeout: float = 5.0) -> dict[str, Any]:
        """Send a frame with a fresh id and return the reply frame carrying that id."""
        frame_id = next(_ids)
        await self.send(event, data, frame_id)
        return await self.wait_for(lambda f: f.get("id") == frame_id, timeout)

    async def authenticate(self, token: str, **extra: Any) -> dict[str, Any]:
        reply = await self.request("authenticate", {"token": token, **extra})
        assert reply["event"] == "auth_success", reply
        return dict(reply["data"])

    async def join(self, room: str, since: dict[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"room": room}
        if since is not None:
            data["since"] = since
        reply = await self.request("join_room", data)
        assert reply["event"] == "room_joined", reply
        return dict(reply["data"])

    async def events(self, n: int, room: str | None = None, timeout: float = 5.0) -> list[Any]:
        """The data of the next ``n`` ``event`` frames (of ``room`` if given), in order."""
        out = []
        for _ in range(n):
            frame = await self.wait_for(
                lambda f: f.get("event") == "event" and (room is None or f["data"]["room"] == room),
                timeout,
            )
            out.append(frame["data"])
        return out

    def pending_events(self, room: str | None = None) -> list[Any]:
        return [
            f["data"]
            for f in self.inbox
            if f.get("event") == "event" and (room is None or f["data"]["room"] == room)
        ]

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        async with asyncio.timeout(timeout):
            await self._reader
        return self.close_code

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        try:
            await self._reader
        except (asyncio.CancelledError, Exception):
            pass
