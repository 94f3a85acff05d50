"""Engine.IO HTTP long-polling: the handshake, long-poll GETs and packet POSTs.

A request of a session this node owns is served from its ``EngineSession``; one of a session
owned by another node (its sid names the node, see ``sessions``) is forwarded there through
Redis (``forwarding``) and answered with what the owner says, so a balancer may send every
request to any node. Bodies are text: packets joined by 0x1e, binary packets refused.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from aiohttp import web

from gateway.socketio.codec import (
    UNKNOWN_SID,
    EngineErrorCode,
    Handshake,
    HandshakeError,
)
from gateway.socketio.engine import RequestRefused, SessionGone
from gateway.socketio.forwarding import ForwardError, OwnerGone, Reply
from gateway.socketio.sessions import Server, cors_headers, error_response, owner_of

log = logging.getLogger("gateway.socketio")

WATCH_S = 1.0  # how often a waiting long-poll looks whether its client is still there
MARGIN_S = 5.0  # a long-poll waits pingInterval + pingTimeout + this at most
TEXT = "text/plain"
PAYLOAD_TOO_LARGE = 413
PROTOCOL_ERROR = 1002
MESSAGE_TOO_BIG = 1009


class LocalPoll:
    """A long-poll GET of this node, waiting for its session's packets."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def answer(self, payload: bytes) -> None:
        if not self.future.done():
            self.future.set_result(payload)


def _bad_request(message: str) -> HandshakeError:
    return HandshakeError(400, EngineErrorCode.BAD_REQUEST, message)


def _text(body: bytes, headers: dict[str, str], content_type: str = TEXT) -> web.Response:
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


async def open_session(request: web.Request, server: Server, ip: str) -> web.StreamResponse:
    """``GET ?EIO=4&transport=polling``: a new session; the body is its OPEN packet."""
    headers = cors_headers(request, server.origins)
    refused = await server.refuse(request)  # admitted: the client's address is counted
    if refused is not None:
        refused.headers.update(headers)
        return refused
    engine = server.new_engine(request, ip)
    options = server.options
    handshake = Handshake(
        sid=engine.sid,
        ping_interval_ms=round(options.ping_interval_s * 1000),
        ping_timeout_ms=round(options.ping_timeout_s * 1000),
        max_payload=options.max_payload,
        upgrades=("websocket",),
    )
    return _text(handshake.encode(), headers)


async def long_poll(request: web.Request, server: Server, sid: str) -> web.StreamResponse:
    """``GET ?...&sid=``: the session's packets, as soon as there are some."""
    headers = cors_headers(request, server.origins)
    engine = server.registry.get(sid)
    if engine is None:
        return await _forward(request, server, sid, "get", b"", headers)
    poll = LocalPoll()
    try:
        engine.poll(poll, request.query.get("t", ""))
    except SessionGone:
        return error_response(UNKNOWN_SID, headers)
    except RequestRefused as exc:
        return error_response(_bad_request(str(exc)), headers)
    payload = await _until_answered(request, poll.future, _poll_timeout_s(server))
    if payload is None:
        engine.poll_lost(poll)
        return error_response(_bad_request("long-poll abandoned"), headers)
    return _text(payload, headers)


async def post(request: web.Request, server: Server, sid: str) -> web.StreamResponse:
    """``POST ?...&sid=``: packets from the client, handled in order before the answer."""
    headers = cors_headers(request, server.origins)
    limit = server.options.max_payload
    body = await read_body(request, limit)
    engine = server.registry.get(sid)
    if body is None:
        # the client's packets are lost: its session cannot go on (it reconnects)
        if engine is not None:
            engine.close(MESSAGE_TOO_BIG, "POST body too large")
        elif server.forwarder is not None and (owner := owner_of(sid)) is not None:
            await server.forwarder.abort(owner, sid, MESSAGE_TOO_BIG)
        error = HandshakeError(
            PAYLOAD_TOO_LARGE,
            EngineErrorCode.BAD_REQUEST,
            f"Payload too large: a POST body takes at most {limit} bytes (maxPayload)",
        )
        return error_response(error, headers)
    if engine is None and not server.registry.is_local(sid):
        return await _forward(request, server, sid, "post", body, headers)
    if engine is None:
        return error_response(UNKNOWN_SID, headers)
    if request.headers.get("Content-Type", "").startswith("application/octet-stream"):
        message = "binary payloads are not supported: send JSON text"
        return error_response(_bad_request(message), headers)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return error_response(_bad_request("the body is not UTF-8 text"), headers)
    try:
        await engine.post(text)
    except SessionGone:
        return error_response(UNKNOWN_SID, headers)
    except RequestRefused as exc:
        return error_response(_bad_request(str(exc)), headers)
    return _text(b"ok", headers, "text/html")


def preflight(request: web.Request, server: Server) -> web.Response:
    """CORS preflight of a long-polling request from a page of another origin."""
    headers = cors_headers(request, server.origins)
    if headers:
        headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        requested = request.headers.get("Access-Control-Request-Headers")
        headers["Access-Control-Allow-Headers"] = requested or "Content-Type"
        headers["Access-Control-Max-Age"] = "600"
    return web.Response(status=204, headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (read no further than that)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    data = bytearray()
    while chunk := await request.content.read(65536):
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


# --- sessions of other nodes ----------------------------------------------------------------------
async def _forward(
    request: web.Request,
    server: Server,
    sid: str,
    op: str,
    body: bytes,
    headers: dict[str, str],
) -> web.StreamResponse:
    owner = owner_of(sid)
    forwarder = server.forwarder
    if owner is None or forwarder is None or server.registry.is_local(sid):
        return error_response(UNKNOWN_SID, headers)
    timeout_s = _poll_timeout_s(server) if op == "get" else forwarder.timeout_s
    try:
        call = forwarder.call(owner, op, sid, body, p=request.query.get("t", ""))
        reply = await _until_answered(request, call.future, timeout_s)
    except OwnerGone:
        return error_response(UNKNOWN_SID, headers)
    except ForwardError as exc:
        log.info("socket.io %s of %s not forwarded: %s", op, sid, exc)
        return error_response(HandshakeError(503, EngineErrorCode.BAD_REQUEST, str(exc)), headers)
    if reply is None:  # the client left, or the owner did not answer in time
        await forwarder.abort(owner, sid, PROTOCOL_ERROR, call.rid)
        call.cancel()
        error = HandshakeError(
            500, EngineErrorCode.BAD_REQUEST, "the session's node did not answer"
        )
        return error_response(error, headers)
    return _reply(reply, headers)


def _reply(reply: Reply, headers: dict[str, str]) -> web.Response:
    if reply.status == 200:
        return _text(reply.body, headers, reply.content_type)
    return web.Response(
        status=reply.status, body=reply.body, content_type=reply.content_type, headers=headers
    )


T = TypeVar("T")


async def _until_answered(
    request: web.Request, future: asyncio.Future[T], timeout_s: float
) -> T | None:
    """``future``'s result, or None when the client went away or ``timeout_s`` passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        done, _ = await asyncio.wait({future}, timeout=min(WATCH_S, remaining))
        if done:
            return future.result()
        if request.transport is None or request.transport.is_closing():
            return None


def _poll_timeout_s(server: Server) -> float:
    options = server.options
    return options.ping_interval_s + options.ping_timeout_s + MARGIN_S
