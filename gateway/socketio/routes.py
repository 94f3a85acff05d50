"""Wiring of the Socket.IO transport to the node: ``add_routes(app, node)``.

``NodePort`` adapts a ``Node`` session to the transport's ``SessionPort``: client events go
through ``Node.handle`` exactly like ``/ws`` frames (same rate limit, validation, error order and
replies), so the two transports cannot drift apart.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson
from aiohttp import web

from gateway.closecodes import ErrorCode
from gateway.node import Node
from gateway.protocol import ProtocolError
from gateway.session import Session
from gateway.socketio.transport import SioTransport, SocketIOOptions, socketio_handler
from gateway.ws import admit_ip, client_ip, refuse

PATHS = ("/socket.io/", "/socket.io")  # socket.io-client asks for the first


class NodePort:
    __slots__ = ("node", "session")

    def __init__(self, node: Node, session: Session) -> None:
        self.node = node
        self.session = session

    @property
    def connection_id(self) -> str:
        return self.session.id

    async def handle_event(self, name: str, data: Any, ack_id: int | None) -> None:
        # Re-framed as a /ws frame: client frames are few and small (rate-limited), and this
        # keeps one code path for validation. The hot path, fan-out, never comes here.
        frame: dict[str, Any] = {"event": name, "data": data}
        if ack_id is not None:
            frame["id"] = ack_id
        await self.node.handle(self.session, orjson.dumps(frame))

    async def handle_invalid(self, message: str, ack_id: int | None) -> None:
        if not self.session.bucket.take():
            # like a /ws frame over the limit: a strike, `rate_limited`, 4429 if it goes on
            self.node.rate_limited(self.session)
            return
        self.node.reply_error(self.session, ProtocolError(ErrorCode.BAD_REQUEST, message), ack_id)

    async def closed(self, code: int) -> None:
        await self.node.close_session(self.session, code)


def _open(node: Node, request: web.Request, transport: SioTransport) -> NodePort:
    ip = client_ip(request, node.settings.trusted_proxies)
    return NodePort(node, node.open_session(transport, ip))


async def _refuse(node: Node, request: web.Request) -> web.StreamResponse | None:
    return refuse(node, request) or await admit_ip(node, request)


def add_routes(app: web.Application, node: Node) -> None:
    handler = socketio_handler(
        partial(_open, node),
        SocketIOOptions.from_settings(node.settings),
        refuse=partial(_refuse, node),
    )
    for path in PATHS:
        app.router.add_route("*", path, handler)
