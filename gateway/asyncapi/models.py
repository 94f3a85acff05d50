"""Models of what the gateway sends, and of its Redis and Django messages, for the AsyncAPI
document. What clients send is validated by ``gateway.protocol``'s models, which the document
uses as they are; the node builds its replies as plain dicts (they are serialized once per
frame on the hot path), so the replies are described here, and a test checks every frame a
real node sends against these models (tests/protocol_doc/test_frames_match.py).

Optional fields are left out of a frame rather than sent as ``null`` (``OMITTED_NOT_NULL``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gateway.closecodes import AuthErrorCode, ErrorCode
from gateway.protocol import Role


class _Out(BaseModel):
    # New fields may be added to a reply: clients must ignore what they do not know.
    model_config = ConfigDict(extra="allow")


# --- server -> client -------------------------------------------------------------------------


class AuthSuccess(_Out):
    """The token was verified; the connection is in its automatic rooms."""

    userId: str
    role: Role
    rooms: list[str] = Field(description="automatic rooms joined")
    connectionId: str
    node: str = Field(description="GATEWAY_NODE_ID of the node serving this connection")


class AuthErrorData(_Out):
    """Authentication failed; the connection is closed next (invalid_token and
    identity_mismatch: 4401, do not retry with this token; auth_unavailable: 1013, retry later;
    too_many_connections: 4429)."""

    code: AuthErrorCode
    message: str


class Delivery(_Out):
    """One event delivered to one room."""

    room: str
    type: str = Field(description="the event type, e.g. reservation_created")
    payload: Any = Field(description="Django's answer, or what the publisher sent")
    id: str = Field(description="the event id (one per publish, the same in every room)")
    offset: int = Field(ge=1, description="grows by exactly 1 per event in the room")
    epoch: str = Field(description="changes only when the room's history was lost")
    ts: int = Field(description="epoch milliseconds of the publish")
    source: Literal["client", "publisher", "api", "ingest"]
    receipts: bool | None = Field(
        None, description="true when the publisher asked for receipts: answer with `received`"
    )


class RoomJoined(_Out):
    room: str
    epoch: str
    offset: int = Field(ge=0, description="the room's latest offset (0 when it has none)")
    recovered: bool | None = Field(None, description="only when the join had `since`")
    missed: list[Delivery] | None = Field(
        None, description="when recovered: exactly the events after `since`, in order"
    )


class RoomLeft(_Out):
    room: str


class PresenceMember(_Out):
    userId: str
    role: Role
    connections: int = Field(ge=1)


class PresenceData(_Out):
    """Cluster-wide members of a room; broadcast rooms (all_clientes, all_proveedores) answer
    a count instead of a member list."""

    room: str
    members: list[PresenceMember] | None = None
    count: int | None = Field(None, ge=0)


class Ack(_Out):
    """Django accepted the business event; its deliveries carry `eventId` as their `id`."""

    event: str
    eventId: str


class Rejoin(_Out):
    """The node may have missed events of the room: join it again with `since`."""

    room: str
    reason: str


class Pong(_Out):
    pass


class ErrorData(_Out):
    """A request failed. `rejected` carries Django's message and, for DRF field errors,
    `fields` (field name -> list of messages)."""

    code: ErrorCode
    message: str
    field: str | None = Field(None, description="the payload field a validation_error is about")
    fields: dict[str, Any] | None = Field(None, description="Django's per-field errors")


SERVER_EVENTS: dict[str, type[BaseModel]] = {
    "auth_success": AuthSuccess,
    "auth_error": AuthErrorData,
    "room_joined": RoomJoined,
    "room_left": RoomLeft,
    "presence": PresenceData,
    "event": Delivery,
    "rejoin": Rejoin,
    "ack": Ack,
    "pong": Pong,
    "error": ErrorData,
}

# --- delivery receipts (client -> server) ---------------------------------------------------


class ReceivedPayload(BaseModel):
    """Acknowledges one delivered event of a publish that asked for receipts. The shipped
    clients send it by themselves. Not rate limited; one beyond what the connection was sent
    is ignored."""

    model_config = ConfigDict(extra="ignore")
    room: str = Field(min_length=1, max_length=200)
    offset: int = Field(ge=1)
    epoch: str = Field(max_length=64)


# --- Socket.IO --------------------------------------------------------------------------------


class ConnectErrorData(_Out):
    """Socket.IO CONNECT_ERROR: the CONNECT's `auth` was refused (`connect_error` fires with
    `err.message` = code and `err.data` = this object; `connect` never fires)."""

    code: Literal["invalid_token", "identity_mismatch", "too_many_connections"]
    message: str


class SocketIOAuth(BaseModel):
    """The `auth` object of a Socket.IO CONNECT (io(url, {auth: {...}}))."""

    model_config = ConfigDict(extra="ignore")
    token: str
    userId: str | None = None
    role: Role | None = None


# --- Redis streams and the Django presence webhook ------------------------------------------


class IngestEntry(BaseModel):
    """Fields of one entry of the Redis stream `gateway:ingest` (all values are strings):
    `XADD gateway:ingest * room <room> type <type> payload <json>`. A malformed entry goes to
    `gateway:ingest:dead` with its fields and a field `reason`."""

    model_config = ConfigDict(extra="forbid")
    room: str | None = Field(None, description="one room; or `rooms`")
    rooms: str | None = Field(None, description="a JSON list of rooms, instead of `room`")
    type: str
    payload: str = Field(description="the event's payload as JSON text")
    idempotency_key: str | None = None
    event_id: str | None = None
    receipts: Literal["1"] | None = Field(None, description="`1`: ask for delivery receipts")


class PresenceChange(BaseModel):
    """One entry of the Redis stream `gateway:presence` (values are strings; the entry id is
    the change's `changeId`): a user's first connection opened or last one closed, after
    GATEWAY_PRESENCE_GRACE_S."""

    model_config = ConfigDict(extra="allow")
    userId: str
    role: Role
    online: Literal["1", "0"]
    ts: str = Field(description="epoch milliseconds, as a string")


class PresenceWebhookChange(BaseModel):
    model_config = ConfigDict(extra="allow")
    changeId: str
    userId: str
    role: Role
    online: bool
    ts: int


class PresenceWebhook(BaseModel):
    """What the worker POSTs to {GATEWAY_DJANGO_BASE_URL}{GATEWAY_DJANGO_PRESENCE_PATH} with
    `Authorization: Bearer <GATEWAY_PUBLISH_API_KEY>`; retried until Django answers 2xx, in
    order per user."""

    changes: list[PresenceWebhookChange]
