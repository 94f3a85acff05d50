"""Wire protocol: frame decoding and validation, payload models, frame encoding. No I/O.

A client frame is ``{"event": str, "data": {...}, "id": int | str}``. Errors are judged in the
contract's order: shape (``bad_request``), authentication (``unauthenticated``), the event name
(``unknown_event``), then the payload (``validation_error`` naming the field).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
)

from gateway.closecodes import ErrorCode

ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)

FrameId = int | str
M = TypeVar("M", bound=BaseModel)


class ProtocolError(Exception):
    """A client frame the gateway answers with ``error``; the connection stays open."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        field: str | None = None,
        frame_id: FrameId | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.frame_id = frame_id  # known when the frame's shape was bad but its id was not

    def as_data(self) -> dict[str, str]:
        data = {"code": str(self.code), "message": self.message}
        if self.field is not None:
            data["field"] = self.field
        return data


@dataclass(slots=True)
class Frame:
    event: str
    data: dict[str, Any]
    id: FrameId | None


def decode_frame(raw: str | bytes) -> Frame:
    """Parse one client frame; raises ``ProtocolError(bad_request)`` on any shape problem."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame must be a JSON object")
    frame_id = obj.get("id")
    if frame_id is not None and (isinstance(frame_id, bool) or not isinstance(frame_id, int | str)):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'id' must be an integer or a string", "id")
    if isinstance(frame_id, str) and len(frame_id) > 128:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'id' is longer than 128 characters", "id")
    # from here on the id is usable: the error reply echoes it, like any direct reply
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "frame needs a string 'event'", "event", frame_id
        )
    data = obj.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "'data' must be an object", "data", frame_id)
    return Frame(event=event, data=data, id=frame_id)


# --- payload models ---------------------------------------------------------------------------


def _check_id(value: str) -> str:
    if not _ID_RE.fullmatch(value):  # match() would accept a trailing newline
        raise ValueError("must match [A-Za-z0-9_-]{1,64}")
    return value


def _check_iso_date(value: str) -> str:
    text = value.replace("Z", "+00:00")
    try:
        datetime.fromisoformat(text)
    except ValueError:
        try:
            date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date or date-time") from None
    return value


def _check_amount(value: str) -> str:
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise ValueError("must be a decimal string such as '25.00'") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a non-negative decimal string")
    if len(value) > 32:
        raise ValueError("is too long")
    return value


# WithJsonSchema: what the checks accept, for the AsyncAPI document (gateway.asyncapi)
IdStr = Annotated[
    StrictStr,
    AfterValidator(_check_id),
    WithJsonSchema({"type": "string", "pattern": ID_PATTERN}),
]
IsoDate = Annotated[
    StrictStr,
    AfterValidator(_check_iso_date),
    WithJsonSchema({"type": "string", "description": "an ISO 8601 date or date-time"}),
]
Amount = Annotated[
    StrictStr,
    AfterValidator(_check_amount),
    WithJsonSchema({"type": "string", "description": "a non-negative decimal string: '25.00'"}),
]
Role = Literal["cliente", "proveedor", "admin"]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _BusinessPayload(BaseModel):
    # Extra fields go to Django untouched: Django is the authority on the business object.
    model_config = ConfigDict(extra="allow", frozen=True)


MAX_TOKEN_CHARS = 4096


class AuthenticatePayload(_Payload):
    token: StrictStr = Field(min_length=1, max_length=MAX_TOKEN_CHARS)
    userId: IdStr | None = None
    role: Role | None = None


class SincePosition(_Payload):
    offset: StrictInt = Field(ge=0)
    epoch: StrictStr = Field(max_length=64)


class JoinRoomPayload(_Payload):
    room: StrictStr = Field(min_length=1, max_length=200)
    since: SincePosition | None = None


class RoomPayload(_Payload):
    room: StrictStr = Field(min_length=1, max_length=200)


class ReservationCreated(_BusinessPayload):
    clienteId: IdStr
    proveedorId: IdStr
    servicioId: IdStr
    fecha: IsoDate
    estado: StrictStr | None = Field(None, max_length=64)


class ReservationAccepted(_BusinessPayload):
    reservationId: IdStr | None = None
    clienteId: IdStr
    proveedorId: IdStr
    servicioId: IdStr | None = None


class PaymentCreated(_BusinessPayload):
    paymentId: IdStr | None = None
    reservationId: IdStr | None = None
    clienteId: IdStr
    proveedorId: IdStr
    amount: Amount
    currency: StrictStr | None = Field(None, pattern=r"^[A-Z]{3}$")


class CommentCreated(_BusinessPayload):
    servicioId: IdStr
    text: StrictStr = Field(min_length=1, max_length=5000)
    clienteId: IdStr | None = None
    rating: StrictInt | None = Field(None, ge=1, le=5)


BUSINESS_EVENTS: dict[str, type[_BusinessPayload]] = {
    "reservation_created": ReservationCreated,
    "reservation_accepted": ReservationAccepted,
    "payment_created": PaymentCreated,
    "comment_created": CommentCreated,
}
CONTROL_EVENTS: dict[str, type[_Payload]] = {
    "authenticate": AuthenticatePayload,
    "join_room": JoinRoomPayload,
    "leave_room": RoomPayload,
    "presence": RoomPayload,
    "ping": _Payload,
}
KNOWN_EVENTS = frozenset(BUSINESS_EVENTS) | frozenset(CONTROL_EVENTS)
PRE_AUTH_EVENTS = frozenset({"authenticate", "ping"})


def validate_payload(model: type[M], data: dict[str, Any]) -> M:
    """Validate ``data``; raise ``validation_error`` naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(part) for part in err["loc"]) or None
        kind = err["type"]
        if kind == "missing":
            message = f"'{field}' is required"
        elif kind in {"string_type", "int_type", "model_type", "dict_type"}:
            message = f"'{field}' has the wrong type: {err['msg'].lower()}"
        else:
            message = f"'{field}' {err['msg'].removeprefix('Value error, ')}"
        raise ProtocolError(ErrorCode.VALIDATION_ERROR, message, field) from None


# --- encoding ---------------------------------------------------------------------------------


def encode(event: str, data: Any, frame_id: FrameId | None = None) -> bytes:
    if frame_id is None:
        return orjson.dumps({"event": event, "data": data})
    return orjson.dumps({"event": event, "data": data, "id": frame_id})


def encode_error(error: ProtocolError, frame_id: FrameId | None = None) -> bytes:
    return encode("error", error.as_data(), frame_id)
