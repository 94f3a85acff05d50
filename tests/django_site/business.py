"""How the site judges a business event, DRF style: field errors are 400 ``{field: [msg]}``,
permission errors are 403 ``{"detail": msg}``, and success is the canonical object.

Field errors are checked before permissions, as a DRF serializer runs before
``perform_create`` would check ownership.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime

EARLIEST_DATE = dt.date(2000, 1, 1)  # anything before counts as "in the past"

REQUIRED = {
    "reservation_created": ("clienteId", "proveedorId", "servicioId", "fecha"),
    "reservation_accepted": ("clienteId", "proveedorId"),
    "payment_created": ("clienteId", "proveedorId", "amount"),
    "comment_created": ("servicioId", "text"),
}
# Who may send it, and which payload field must be the sender's own id (admins may do all).
ACTOR = {
    "reservation_created": ("cliente", "clienteId"),
    "reservation_accepted": ("proveedor", "proveedorId"),
    "payment_created": ("cliente", "clienteId"),
}
ID_KIND = {
    "reservation_created": "reservation",
    "reservation_accepted": "reservation",
    "payment_created": "payment",
    "comment_created": "comment",
}


class Rejected(Exception):
    """The answer to a bad event: an HTTP status and its JSON body."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def judge(
    event_type: object, payload: object, user: dict[str, Any], new_id: Callable[[str], int]
) -> dict[str, Any]:
    """The canonical object for a valid event; raises ``Rejected`` otherwise."""
    if event_type not in REQUIRED:
        raise Rejected(400, {"type": [f'"{event_type}" is not a valid choice.']})
    assert isinstance(event_type, str)
    if not isinstance(payload, dict):
        raise Rejected(400, {"payload": ["Expected a dictionary of items."]})
    errors = {name: ["This field is required."] for name in REQUIRED[event_type]}
    for name in payload:
        errors.pop(name, None)
    errors.update(_field_errors(event_type, payload))
    if errors:
        raise Rejected(400, errors)
    _check_actor(event_type, payload, user)
    return _canonical(event_type, payload, user, new_id)


def _field_errors(event_type: str, payload: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if event_type == "reservation_created" and "fecha" in payload:
        day = _as_date(payload["fecha"])
        if day is None:
            errors["fecha"] = ["Enter a valid date/time."]
        elif day < EARLIEST_DATE:
            errors["fecha"] = ["La fecha no puede estar en el pasado."]
    if event_type == "payment_created" and "amount" in payload:
        try:
            amount = Decimal(str(payload["amount"]))
        except InvalidOperation:
            errors["amount"] = ["A valid number is required."]
        else:
            if not amount.is_finite() or amount <= 0:
                errors["amount"] = ["Ensure this value is greater than 0."]
    if event_type == "comment_created":
        if "text" in payload and not str(payload["text"]).strip():
            errors["text"] = ["This field may not be blank."]
        rating = payload.get("rating")
        if rating is not None and (not isinstance(rating, int) or not 1 <= rating <= 5):
            errors["rating"] = ["Ensure this value is between 1 and 5."]
    return errors


def _as_date(value: object) -> dt.date | None:
    if not isinstance(value, str):
        return None
    try:
        moment = parse_datetime(value)
        return moment.date() if moment else parse_date(value)
    except ValueError:
        return None


def _check_actor(event_type: str, payload: dict[str, Any], user: dict[str, Any]) -> None:
    if user["role"] == "admin" or event_type not in ACTOR:
        return
    role, id_field = ACTOR[event_type]
    if user["role"] != role:
        raise Rejected(403, {"detail": f"Only a {role} may send {event_type}."})
    if str(payload[id_field]) != str(user["id"]):
        raise Rejected(403, {"detail": f"{id_field} must be your own id."})


def _canonical(
    event_type: str, payload: dict[str, Any], user: dict[str, Any], new_id: Callable[[str], int]
) -> dict[str, Any]:
    obj = dict(payload)
    if event_type == "reservation_accepted" and payload.get("reservationId") is not None:
        obj["id"] = payload["reservationId"]
    else:
        obj["id"] = new_id(ID_KIND[event_type])
    if event_type == "reservation_created":
        obj["estado"] = "pendiente"  # Django decides, whatever the client sent
    elif event_type == "reservation_accepted":
        obj["estado"] = "aceptada"
    obj["createdBy"] = user["id"]
    return obj
