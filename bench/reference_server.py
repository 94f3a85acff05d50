"""The reference: the least a room fan-out over aiohttp and Redis pub/sub can do.

One Redis SUBSCRIBE per room (made when the room's first local socket joins, dropped when the
last one leaves), each message decoded once, then ``send_str`` to every local socket. No auth,
history or limits, and never slowed down on purpose: the gateway is measured against this.

    python bench/reference_server.py --port 8001 --redis-url redis://127.0.0.1:6380/0

Clients connect to ``/ws?room=<room>`` or send ``{"event":"join_room","data":{"room":...}}``;
either way the answer ``room_joined`` comes once the subscription is live. A publisher sends
``PUBLISH room:<room> <frame>``; the frame goes to the room's sockets as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json

import redis.asyncio as aioredis
import uvloop
from aiohttp import WSMsgType, web

CHANNEL_PREFIX = "room:"


class Rooms:
    def __init__(self, redis_url: str) -> None:
        self.redis = aioredis.from_url(redis_url)
        self.pubsub = self.redis.pubsub()
        self.members: dict[str, set[web.WebSocketResponse]] = {}
        self.subscribed: dict[str, asyncio.Future[None]] = {}

    async def start(self) -> None:
        # A channel of our own keeps the pub/sub connection open and listen() running.
        await self.join_channel(f"reference:{id(self)}")
        self.reader = asyncio.create_task(self.read())

    async def join_channel(self, channel: str) -> asyncio.Future[None]:
        self.subscribed[channel] = asyncio.get_running_loop().create_future()
        await self.pubsub.subscribe(channel)
        return self.subscribed[channel]

    async def read(self) -> None:
        async for message in self.pubsub.listen():
            kind, channel = message["type"], message["channel"].decode()
            if kind == "message":
                text = message["data"].decode()  # decoded once, sent to every member
                for ws in self.members.get(channel[len(CHANNEL_PREFIX) :], ()):
                    await ws.send_str(text)
            elif kind == "subscribe":
                joined = self.subscribed.get(channel)
                if joined is not None and not joined.done():
                    joined.set_result(None)

    async def join(self, room: str, ws: web.WebSocketResponse) -> None:
        members = self.members.setdefault(room, set())
        members.add(ws)
        channel = CHANNEL_PREFIX + room
        if channel not in self.subscribed:
            await self.join_channel(channel)
        await self.subscribed[channel]
        await ws.send_str(json.dumps({"event": "room_joined", "data": {"room": room}}))

    async def leave_all(self, ws: web.WebSocketResponse, rooms: set[str]) -> None:
        for room in rooms:
            members = self.members.get(room, set())
            members.discard(ws)
            if not members:
                self.members.pop(room, None)
                self.subscribed.pop(CHANNEL_PREFIX + room, None)
                await self.pubsub.unsubscribe(CHANNEL_PREFIX + room)


ROOMS = web.AppKey("rooms", Rooms)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    rooms = request.app[ROOMS]
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    joined: set[str] = set()
    if room := request.query.get("room"):
        joined.add(room)
        await rooms.join(room, ws)
    async for msg in ws:
        if msg.type is not WSMsgType.TEXT:
            break
        frame = json.loads(msg.data)
        if frame.get("event") == "join_room":
            joined.add(frame["data"]["room"])
            await rooms.join(frame["data"]["room"], ws)
    await rooms.leave_all(ws, joined)
    return ws


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(redis_url: str) -> web.Application:
    app = web.Application()
    app[ROOMS] = Rooms(redis_url)

    async def lifecycle(app: web.Application) -> object:
        await app[ROOMS].start()
        yield
        app[ROOMS].reader.cancel()
        await app[ROOMS].pubsub.aclose()
        await app[ROOMS].redis.aclose()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/ws", websocket)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()
    web.run_app(
        create_app(args.redis_url),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
