"""The AsyncAPI 3.1 document of the gateway, built from the protocol's pydantic models.

Channels: ``/ws`` (JSON frames ``{"event", "data", "id"}``), ``/socket.io/`` (the same events
as Socket.IO events), the Redis streams ``gateway:ingest``, ``gateway:ingest:dead`` and
``gateway:presence``, and the presence webhook the worker POSTs to Django. Operations are
written from the gateway's side: it *receives* what clients send and *sends* the rest.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway.asyncapi import models as out
from gateway.protocol import BUSINESS_EVENTS, CONTROL_EVENTS

SCHEMAS = "#/components/schemas/"
Json = dict[str, Any]

# Replies to each client event (the node answers `error` to any of them too).
REPLIES: dict[str, list[str]] = {
    "authenticate": ["auth_success", "auth_error"],
    "join_room": ["room_joined"],
    "leave_room": ["room_left"],
    "presence": ["presence"],
    "ping": ["pong"],
    **{event: ["ack"] for event in BUSINESS_EVENTS},
}
PUSHES = ["event", "rejoin"]  # sent without a request
SUMMARIES = {
    "authenticate": "Authenticate with the user's Django token (first frame, or ?token= on "
    "the URL); a claimed userId/role must match Django's answer.",
    "join_room": "Join a room; with `since` the reply carries exactly the missed events.",
    "leave_room": "Leave a room.",
    "presence": "Ask who is in a room (cluster-wide).",
    "ping": "Application-level ping (browsers cannot see WebSocket pings).",
    "reservation_created": "A cliente books: Django confirms, the rooms get Django's answer.",
    "reservation_accepted": "A proveedor accepts a reservation (confirmed by Django).",
    "payment_created": "A cliente pays; `amount` is a decimal string (confirmed by Django).",
    "comment_created": "A comment on a service (confirmed by Django).",
    "room_joined": "The room's position; with `since`, whether history covered the gap.",
    "room_left": "The connection left the room.",
    "pong": "The answer to ping.",
}


def client_events() -> dict[str, type[BaseModel]]:
    """What clients send, as the node validates it; ``received`` (delivery receipts) is
    described by ``models.ReceivedPayload`` until the node validates it itself."""
    events: dict[str, type[BaseModel]] = {**CONTROL_EVENTS, **BUSINESS_EVENTS}
    events.setdefault("received", out.ReceivedPayload)
    return events


# --- schemas ------------------------------------------------------------------------------------


def _schemas() -> tuple[dict[type[BaseModel], str], Json]:
    """Every model's JSON Schema in components/schemas, references pointing there."""
    models = set(client_events().values()) | set(out.SERVER_EVENTS.values())
    models |= {
        out.ConnectErrorData,
        out.SocketIOAuth,
        out.IngestEntry,
        out.PresenceChange,
        out.PresenceWebhook,
    }
    ordered = sorted(models, key=lambda m: m.__name__)
    mode: Literal["validation"] = "validation"
    refs, top = models_json_schema([(m, mode) for m in ordered], ref_template=SCHEMAS + "{model}")
    schemas: Json = dict(top.get("$defs", {}))
    names: dict[type[BaseModel], str] = {}
    for model in ordered:
        ref = refs[(model, mode)]["$ref"].removeprefix(SCHEMAS)
        names[model] = ref
    if "_Payload" in schemas:  # the empty base model of `ping`: give it a readable name
        schemas["Empty"] = {**schemas.pop("_Payload"), "title": "Empty"}
        names = {m: ("Empty" if n == "_Payload" else n) for m, n in names.items()}
    for model, name in names.items():
        if model in out.SERVER_EVENTS.values() or model is out.ConnectErrorData:
            schemas[name] = _omitted_not_null(schemas[name])
    schemas["FrameId"] = {
        "description": "echoed in the direct reply; server pushes have none",
        "anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 128}],
    }
    return names, dict(sorted(schemas.items()))


def _omitted_not_null(schema: Json) -> Json:
    """The node leaves an optional field out of a frame instead of sending ``null``."""
    props = {}
    for name, prop in schema.get("properties", {}).items():
        options = prop.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            prop = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
            prop = {**(rest[0] if len(rest) == 1 else {"anyOf": rest}), **prop}
        props[name] = prop
    return {**schema, "properties": props}


# --- messages -----------------------------------------------------------------------------------


def _frame(event: str, data_ref: str, *, data_required: bool, with_id: bool) -> Json:
    properties: Json = {"event": {"type": "string", "const": event}, "data": {"$ref": data_ref}}
    if with_id:
        properties["id"] = {"$ref": SCHEMAS + "FrameId"}
    required = ["event", "data"] if data_required else ["event"]
    return {"type": "object", "required": required, "properties": properties}


def _summary(model: type[BaseModel]) -> str:
    """The model's docstring on one line ("" for pydantic's inherited default)."""
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(doc.split())


def _ws_messages(names: dict[type[BaseModel], str]) -> Json:
    messages: Json = {}
    for event, model in client_events().items():
        ref = SCHEMAS + names[model]
        message = {
            "name": event,
            "title": f"{event} (client → gateway)",
            "payload": _frame(event, ref, data_required=False, with_id=True),
        }
        if summary := SUMMARIES.get(event) or _summary(model):
            message["summary"] = summary
        messages[event] = message
    for event, model in out.SERVER_EVENTS.items():
        key = f"{event}_reply" if event in messages else event
        message = {
            "name": event,
            "title": f"{event} (gateway → client)",
            "payload": _frame(
                event, SCHEMAS + names[model], data_required=True, with_id=event not in PUSHES
            ),
        }
        if summary := _summary(model) or SUMMARIES.get(event, ""):
            message["summary"] = summary
        messages[key] = message
    return messages


def _sio_messages(ws: Json) -> Json:
    """Socket.IO carries the same events: the event name is the Socket.IO event, `data` its
    argument, and the acknowledgement callback gets the reply."""
    messages: Json = {}
    for key, message in ws.items():
        data = message["payload"]["properties"]["data"]
        messages[key] = {
            "name": message["name"],
            "title": message["title"].replace("(", "(Socket.IO, ", 1),
            "payload": data,
        }
    messages["connect"] = {
        "name": "connect",
        "title": "CONNECT (client → gateway)",
        "summary": "The CONNECT packet's `auth`; success: the CONNECT is acknowledged and "
        "auth_success is the first event.",
        "payload": {"$ref": SCHEMAS + "SocketIOAuth"},
    }
    messages["connect_error"] = {
        "name": "connect_error",
        "title": "CONNECT_ERROR (gateway → client)",
        "summary": _summary(out.ConnectErrorData),
        "payload": {"$ref": SCHEMAS + "ConnectErrorData"},
    }
    messages["disconnect"] = {
        "name": "disconnect",
        "title": "DISCONNECT (gateway → client)",
        "summary": "Where /ws would close with 4401, 4403 or 4429: the client's `disconnect` "
        "fires with reason `io server disconnect` and it does not reconnect by itself. Where "
        "/ws would close with 1012, 1013, 4503, 4408, 1008 or 1009 the transport is closed "
        "instead (`transport close`: the client reconnects).",
        "payload": {"type": "null"},
    }
    return messages


def _stream_message(name: str, model: type[BaseModel], title: str) -> Json:
    return {
        "name": name,
        "title": title,
        "summary": _summary(model),
        "payload": {"$ref": SCHEMAS + model.__name__},
    }


# --- channels and operations --------------------------------------------------------------------


def _channels(ws: Json, sio: Json) -> Json:
    return {
        "ws": {
            "address": "/ws",
            "title": "The gateway's WebSocket endpoint",
            "description": "JSON text frames, one object each. The token may also be given "
            "as /ws?token=…; then auth_success or auth_error is the first frame.",
            "servers": [{"$ref": "#/servers/gateway"}],
            "messages": ws,
            "bindings": {
                "ws": {
                    "query": {
                        "type": "object",
                        "properties": {"token": {"type": "string"}},
                    },
                    "bindingVersion": "0.1.0",
                }
            },
        },
        "socketio": {
            "address": "/socket.io/",
            "title": "Socket.IO v5 (Engine.IO v4): polling and WebSocket, no sticky sessions",
            "servers": [{"$ref": "#/servers/gateway"}],
            "messages": sio,
        },
        "ingest": {
            "address": "gateway:ingest",
            "title": "Publish from any language: one XADD (the worker validates and routes it)",
            "servers": [{"$ref": "#/servers/redis"}],
            "messages": {
                "ingest_entry": _stream_message(
                    "ingest_entry", out.IngestEntry, "An ingest stream entry"
                )
            },
        },
        "ingestDead": {
            "address": "gateway:ingest:dead",
            "title": "Malformed ingest entries, with their fields and a field `reason`",
            "servers": [{"$ref": "#/servers/redis"}],
            "messages": {
                "ingest_dead_entry": {
                    "name": "ingest_dead_entry",
                    "title": "A refused ingest entry",
                    "payload": {"type": "object", "required": ["reason"]},
                }
            },
        },
        "presenceStream": {
            "address": "gateway:presence",
            "title": "Online status changes, cluster-wide (capped stream)",
            "servers": [{"$ref": "#/servers/redis"}],
            "messages": {
                "presence_change": _stream_message(
                    "presence_change", out.PresenceChange, "A user came online or went offline"
                )
            },
        },
        "djangoPresence": {
            "address": "presence/",
            "title": "GATEWAY_DJANGO_PRESENCE_PATH under GATEWAY_DJANGO_BASE_URL",
            "servers": [{"$ref": "#/servers/django"}],
            "messages": {
                "presence_webhook": _stream_message(
                    "presence_webhook", out.PresenceWebhook, "A batch of online status changes"
                )
            },
        },
    }


def _ref(channel: str, key: str) -> Json:
    return {"$ref": f"#/channels/{channel}/messages/{key}"}


def _operations(ws: Json) -> Json:
    reply_key = {m["name"]: k for k, m in ws.items() if "gateway → client" in m["title"]}
    ops: Json = {}
    for event in client_events():
        op: Json = {
            "action": "receive",
            "channel": {"$ref": "#/channels/ws"},
            "summary": f"A client sends {event}",
            "messages": [_ref("ws", event)],
        }
        replies = REPLIES.get(event)
        if replies:
            op["reply"] = {
                "channel": {"$ref": "#/channels/ws"},
                "messages": [_ref("ws", reply_key[r]) for r in [*replies, "error"]],
            }
        ops[f"receive_{event}"] = op
    for event in PUSHES:
        ops[f"send_{event}"] = {
            "action": "send",
            "channel": {"$ref": "#/channels/ws"},
            "summary": f"The gateway pushes {event}",
            "messages": [_ref("ws", event)],
        }
    ops.update(_socketio_and_stream_operations())
    return ops


def _socketio_and_stream_operations() -> Json:
    server_keys = [f"{e}_reply" if e in client_events() else e for e in out.SERVER_EVENTS]
    return {
        "socketio_receive": {
            "action": "receive",
            "channel": {"$ref": "#/channels/socketio"},
            "summary": "A Socket.IO client connects or emits an event",
            "messages": [_ref("socketio", k) for k in ["connect", *client_events()]],
        },
        "socketio_send": {
            "action": "send",
            "channel": {"$ref": "#/channels/socketio"},
            "summary": "The gateway emits an event, answers an acknowledgement or refuses "
            "a CONNECT",
            "messages": [
                _ref("socketio", k) for k in [*server_keys, "connect_error", "disconnect"]
            ],
        },
        "receive_ingest": {
            "action": "receive",
            "channel": {"$ref": "#/channels/ingest"},
            "summary": "The worker reads the ingest stream (consumer group)",
            "messages": [_ref("ingest", "ingest_entry")],
        },
        "send_ingest_dead": {
            "action": "send",
            "channel": {"$ref": "#/channels/ingestDead"},
            "summary": "A malformed ingest entry is set aside",
            "messages": [_ref("ingestDead", "ingest_dead_entry")],
        },
        "send_presence_change": {
            "action": "send",
            "channel": {"$ref": "#/channels/presenceStream"},
            "summary": "A node records that a user came online or went offline",
            "messages": [_ref("presenceStream", "presence_change")],
        },
        "send_presence_webhook": {
            "action": "send",
            "channel": {"$ref": "#/channels/djangoPresence"},
            "summary": "The worker tells Django about online status changes",
            "messages": [_ref("djangoPresence", "presence_webhook")],
        },
    }


INFO_DESCRIPTION = """\
A real-time WebSocket gateway for Django: browsers and apps connect to `/ws` (or Socket.IO at
`/socket.io/`), authenticate with their Django token, join rooms, send business events that
Django confirms, and receive every event published to their rooms, with per-room offsets and
epochs for exact recovery after a reconnect. Django publishes through Redis (`Publisher`, one
`XADD gateway:ingest`) or `POST /api/publish`.

Every frame on `/ws` is one JSON object `{"event", "data", "id"?}`; a direct reply carries the
request's `id`. Errors are judged in this order: bad_request, unauthenticated, unknown_event,
validation_error (naming the field). The HTTP endpoints (publish API, dashboard, health,
metrics) are described in the project's docs (docs/protocol.md, docs/operations.md)."""


def build_document() -> Json:
    names, schemas = _schemas()
    ws = _ws_messages(names)
    sio = _sio_messages(ws)
    return {
        "asyncapi": "3.1.0",
        "info": {
            "title": "django-ws-gateway",
            "version": __version__,
            "description": INFO_DESCRIPTION,
            "license": {"name": "MIT"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": "localhost:4000",
                "protocol": "ws",
                "description": "A gateway node (GATEWAY_HOST:GATEWAY_PORT); wss behind TLS",
            },
            "redis": {
                "host": "localhost:6379",
                "protocol": "redis",
                "description": "The Redis the nodes share (GATEWAY_REDIS_URL)",
            },
            "django": {
                "host": "localhost:8000",
                "pathname": "/api/v1",
                "protocol": "http",
                "description": "Django's REST API root (GATEWAY_DJANGO_BASE_URL)",
            },
        },
        "channels": _channels(ws, sio),
        "operations": _operations(ws),
        "components": {"schemas": schemas},
    }
