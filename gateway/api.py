"""The server API for Django and other back ends: ``POST /api/publish``, ``POST /api/disconnect``,
``GET /api/online``, ``GET /api/receipts/<eventId>``.

Protected by ``GATEWAY_PUBLISH_API_KEY`` (Bearer); without a key configured both answer 404.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    model_validator,
)

from gateway.backend.base import ControlMessage
from gateway.backend.online import MAX_USERS_PER_QUERY, is_valid_user_id
from gateway.backend.receipts import answer
from gateway.events import MAX_ROOMS_PER_PUBLISH, TYPE_PATTERN, dumps_payload, now_ms
from gateway.httpauth import bearer, matches, unauthorized
from gateway.node import BACKEND_ERRORS, Node
from gateway.rooms import is_valid_room

log = logging.getLogger("gateway.api")


class PublishRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: StrictStr | None = None
    rooms: list[StrictStr] | None = Field(None, min_length=1, max_length=MAX_ROOMS_PER_PUBLISH)
    type: StrictStr = Field(pattern=TYPE_PATTERN)
    payload: Any = None
    idempotencyKey: StrictStr | None = Field(None, min_length=1, max_length=200)
    receipts: StrictBool = False
    # the caller's event id: delivered as the events' ``id``; a retry with it publishes nothing
    # again (one event, one offset)
    eventId: StrictStr | None = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$")

    @model_validator(mode="after")
    def _one_target(self) -> PublishRequest:
        if (self.room is None) == (self.rooms is None):
            raise ValueError("give exactly one of 'room' or 'rooms'")
        for room in self.targets:
            if not is_valid_room(room):
                raise ValueError(f"'{room[:80]}' is not a valid room")
        return self

    @property
    def targets(self) -> list[str]:
        return list(dict.fromkeys(self.rooms if self.rooms is not None else [self.room or ""]))


class DisconnectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    userId: StrictStr | int = Field(union_mode="left_to_right")


def bad_request(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "message": message}, status=400)


def _check_key(request: web.Request, node: Node) -> web.Response | None:
    key = node.settings.publish_api_key
    if key is None:
        raise web.HTTPNotFound()
    if not matches(bearer(request), key.get_secret_value()):
        return unauthorized("a valid Bearer API key is required")
    return None


async def _json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise web.HTTPBadRequest(
            text='{"error":"bad_request","message":"body is not valid JSON"}',
            content_type="application/json",
        ) from None


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


async def publish(request: web.Request, node: Node) -> web.Response:
    if (denied := _check_key(request, node)) is not None:
        return denied
    try:
        req = PublishRequest.model_validate(await _json_body(request))
    except ValidationError as exc:
        return bad_request(_validation_message(exc))
    try:
        payload_json = dumps_payload(req.payload)
    except TypeError as exc:
        return bad_request(f"payload: {exc}")
    try:
        result = await node.backend.publish(
            req.targets,
            req.type,
            payload_json,
            "api",
            event_id=req.eventId,
            idempotency_key=req.idempotencyKey,
            receipts=req.receipts,
        )
        if req.receipts:
            await node.receipts.published(result, node.local_members(req.targets))
    except BACKEND_ERRORS as exc:
        node.metrics.redis_errors.labels("publish").inc()
        log.warning("publish API: backend error %s", exc)
        return web.json_response(
            {"error": "unavailable", "message": "backend unavailable, retry"}, status=503
        )
    if not result.duplicate:
        node.metrics.publishes.labels("api").inc()
    return web.json_response(
        {"offsets": result.offsets, "eventId": result.event_id, "duplicate": result.duplicate},
        dumps=lambda o: orjson.dumps(o).decode(),
    )


async def disconnect(request: web.Request, node: Node) -> web.Response:
    if (denied := _check_key(request, node)) is not None:
        return denied
    try:
        req = DisconnectRequest.model_validate(await _json_body(request))
    except ValidationError as exc:
        return bad_request(_validation_message(exc))
    user_id = str(req.userId)
    try:
        # the nodes' connection counts (accounting), cluster-wide: one read
        count = (await node.accounting.store.online([user_id], now_ms()))[user_id].connections
        await node.auth.revoke(user_id)  # before the control message: nothing to re-cache
        await node.backend.control(ControlMessage("disconnect", {"userId": user_id}))
    except BACKEND_ERRORS as exc:
        log.warning("disconnect API: backend error %s", exc)
        return web.json_response(
            {"error": "unavailable", "message": "backend unavailable, retry"}, status=503
        )
    return web.json_response({"disconnected": count})


async def online(request: web.Request, node: Node) -> web.Response:
    """``GET /api/online?users=1,2,3`` -> ``{userId: {"online", "connections", "lastSeen"}}``."""
    if (denied := _check_key(request, node)) is not None:
        return denied
    raw = request.query.get("users", "")
    ids = list(dict.fromkeys(u.strip() for u in raw.split(",") if u.strip()))
    if not ids:
        return bad_request("users: give ?users=<id>,<id>,...")
    if len(ids) > MAX_USERS_PER_QUERY:
        return bad_request(f"users: at most {MAX_USERS_PER_QUERY} per request")
    bad = next((u for u in ids if not is_valid_user_id(u)), None)
    if bad is not None:
        return bad_request(f"users: '{bad[:80]}' is not a valid user id")
    try:
        statuses = await node.accounting.store.online(ids, now_ms())
    except BACKEND_ERRORS as exc:
        node.metrics.redis_errors.labels("online").inc()
        log.warning("online API: backend error %s", exc)
        return web.json_response(
            {"error": "unavailable", "message": "backend unavailable, retry"}, status=503
        )
    return web.json_response({u: s.as_dict() for u, s in statuses.items()})


async def receipts(request: web.Request, node: Node) -> web.Response:
    """``GET /api/receipts/<eventId>``: who received an event published with receipts."""
    if (denied := _check_key(request, node)) is not None:
        return denied
    event_id = request.match_info["event_id"]
    if not 0 < len(event_id) <= 200:
        return bad_request("eventId: 1..200 characters")
    try:
        rooms = await node.receipts.store.receipts(event_id)
    except BACKEND_ERRORS as exc:
        node.metrics.redis_errors.labels("receipts").inc()
        log.warning("receipts API: backend error %s", exc)
        return web.json_response(
            {"error": "unavailable", "message": "backend unavailable, retry"}, status=503
        )
    if rooms is None:
        message = "no receipts for this event (none asked for, or past the history TTL)"
        return web.json_response({"error": "not_found", "message": message}, status=404)
    return web.json_response(answer(event_id, rooms))
