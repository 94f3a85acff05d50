"""The consumer: join the room given as ``?room=`` (or by a ``join_room`` frame), answer
``room_joined``, then forward every group message's ready-made frame as it is."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.rooms: set[str] = set()
        await self.accept()
        query = parse_qs(self.scope.get("query_string", b"").decode())
        if room := query.get("room", [""])[0]:
            await self.join(room)

    async def join(self, room: str) -> None:
        await self.channel_layer.group_add(room, self.channel_name)
        self.rooms.add(room)
        await self.send(text_data=json.dumps({"event": "room_joined", "data": {"room": room}}))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = json.loads(text_data or "{}")
        if frame.get("event") == "join_room":
            await self.join(frame["data"]["room"])

    async def bench_event(self, message: dict[str, Any]) -> None:
        await self.send(text_data=message["text"])

    async def disconnect(self, code: int) -> None:
        for room in self.rooms:
            await self.channel_layer.group_discard(room, self.channel_name)
