"""Room names, who may join them, and where business events go. Pure logic, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from gateway.closecodes import ErrorCode
from gateway.protocol import ProtocolError

Role = Literal["cliente", "proveedor", "admin"]
ROLES: tuple[Role, ...] = ("cliente", "proveedor", "admin")

# \Z, not $: "$" would also match before a trailing newline ("service_1\n")
_PERSONAL = re.compile(r"^(cliente|proveedor)_([A-Za-z0-9_-]{1,64})\Z")
_PUBLIC = re.compile(r"^(service|location)_([A-Za-z0-9_-]{1,64})\Z")
_ROLE_WIDE = {"all_clientes": "cliente", "all_proveedores": "proveedor"}
ADMIN_ROOM = "admin_dashboard"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    role: Role


def automatic_rooms(identity: Identity) -> list[str]:
    if identity.role == "cliente":
        return [f"cliente_{identity.user_id}", "all_clientes"]
    if identity.role == "proveedor":
        return [f"proveedor_{identity.user_id}", "all_proveedores"]
    return [ADMIN_ROOM]


def is_valid_room(room: str) -> bool:
    return bool(
        room == ADMIN_ROOM or room in _ROLE_WIDE or _PERSONAL.match(room) or _PUBLIC.match(room)
    )


def is_broadcast_room(room: str) -> bool:
    """A role-wide room (``all_clientes``, ``all_proveedores``): presence is a count only."""
    return room in _ROLE_WIDE


def check_access(identity: Identity, room: str) -> None:
    """Raise ``invalid_room`` for an unknown name, ``forbidden`` for a room the user may not join.

    The same rules govern ``join_room`` and ``presence``.
    """
    if not is_valid_room(room):
        raise ProtocolError(ErrorCode.INVALID_ROOM, f"'{room[:80]}' is not a valid room", "room")
    if identity.role == "admin" or _PUBLIC.match(room):
        return
    personal = _PERSONAL.match(room)
    if personal:
        if personal.group(1) == identity.role and personal.group(2) == identity.user_id:
            return
    elif _ROLE_WIDE.get(room) == identity.role:
        return
    raise ProtocolError(ErrorCode.FORBIDDEN, f"you may not join '{room}'", "room")


# --- business events ---------------------------------------------------------------------------

# event -> (sender role allowed besides admin, payload field that must equal the sender's id)
SENDER_RULES: dict[str, tuple[Role | None, str | None]] = {
    "reservation_created": ("cliente", "clienteId"),
    "reservation_accepted": ("proveedor", "proveedorId"),
    "payment_created": ("cliente", "clienteId"),
    "comment_created": (None, None),  # any authenticated user
}


# Fields that name who acts, by role. In an event any role may send (a comment), such a field,
# when present, must be the sender's own id, and only the sender's role may name itself: a
# proveedor (or another cliente) cannot comment as cliente 43 (CONTRACT section 2).
AUTHOR_FIELDS: dict[Role, str] = {"cliente": "clienteId", "proveedor": "proveedorId"}


def check_sender(identity: Identity, event: str, payload: dict[str, Any]) -> None:
    role, own_field = SENDER_RULES[event]
    if identity.role == "admin":
        return
    if role is None:
        _check_authors(identity, payload)
        return
    if identity.role != role:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"only a {role} may send {event}")
    if own_field and payload.get(own_field) != identity.user_id:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"'{own_field}' must be your own id", own_field)


def _check_authors(identity: Identity, payload: dict[str, Any]) -> None:
    for role, field in AUTHOR_FIELDS.items():
        if field not in payload:
            continue
        if role != identity.role:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"only a {role} may name '{field}'", field)
        if payload[field] != identity.user_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"'{field}' must be your own id", field)


def default_rooms(event: str, payload: dict[str, Any]) -> list[str]:
    if event == "comment_created":
        return [f"service_{payload['servicioId']}", ADMIN_ROOM]
    first, second = (
        ("cliente", "proveedor") if event == "reservation_accepted" else ("proveedor", "cliente")
    )
    return [f"{first}_{payload[first + 'Id']}", f"{second}_{payload[second + 'Id']}", ADMIN_ROOM]


def rooms_from_answer(answer: Any, fallback: list[str]) -> tuple[list[str], Any]:
    """Django may route an event itself with a ``"rooms"`` list; that list is not delivered."""
    if isinstance(answer, dict) and isinstance(answer.get("rooms"), list):
        rooms = [r for r in answer["rooms"] if isinstance(r, str) and is_valid_room(r)]
        body = {k: v for k, v in answer.items() if k != "rooms"}
        return list(dict.fromkeys(rooms)), body
    return fallback, answer
