"""Room names, access rules and business-event routing (``gateway/rooms.py``): pure logic."""

from __future__ import annotations

import re
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.closecodes import ErrorCode
from gateway.protocol import ProtocolError
from gateway.rooms import (
    Identity,
    automatic_rooms,
    check_access,
    check_sender,
    default_rooms,
    is_valid_room,
    rooms_from_answer,
)

CLIENTE = Identity("5", "cliente")
PROVEEDOR = Identity("7", "proveedor")
ADMIN = Identity("1", "admin")

# The contract's room names, written independently of the implementation.
VALID_ROOM = re.compile(
    r"(?:(?:cliente|proveedor|service|location)_[A-Za-z0-9_-]{1,64}"
    r"|all_clientes|all_proveedores|admin_dashboard)"
)
ID = st.text(st.sampled_from(string.ascii_letters + string.digits + "_-"), min_size=1, max_size=64)
QUICK = settings(max_examples=100, database=None, deadline=None)


def access(identity: Identity, room: str) -> str | None:
    """None when allowed, else the error code."""
    try:
        check_access(identity, room)
    except ProtocolError as exc:
        assert exc.field == "room"
        return str(exc.code)
    return None


def test_automatic_rooms_per_role() -> None:
    assert automatic_rooms(CLIENTE) == ["cliente_5", "all_clientes"]
    assert automatic_rooms(PROVEEDOR) == ["proveedor_7", "all_proveedores"]
    assert automatic_rooms(ADMIN) == ["admin_dashboard"]


@pytest.mark.parametrize(
    ("room", "cliente", "proveedor", "admin"),
    [
        ("service_1", None, None, None),
        ("location_x-Y_2", None, None, None),
        ("cliente_5", None, "forbidden", None),
        ("cliente_6", "forbidden", "forbidden", None),
        ("proveedor_7", "forbidden", None, None),
        ("proveedor_5", "forbidden", "forbidden", None),  # the cliente's id, another role
        ("all_clientes", None, "forbidden", None),
        ("all_proveedores", "forbidden", None, None),
        ("admin_dashboard", "forbidden", "forbidden", None),
        ("lobby", "invalid_room", "invalid_room", "invalid_room"),
        ("service_", "invalid_room", "invalid_room", "invalid_room"),
        ("service_" + "a" * 65, "invalid_room", "invalid_room", "invalid_room"),
        ("service_1\n", "invalid_room", "invalid_room", "invalid_room"),
        ("cliente_5 ", "invalid_room", "invalid_room", "invalid_room"),
        ("CLIENTE_5", "invalid_room", "invalid_room", "invalid_room"),
        ("all_admins", "invalid_room", "invalid_room", "invalid_room"),
        ("", "invalid_room", "invalid_room", "invalid_room"),
    ],
)
def test_access_rules(
    room: str, cliente: str | None, proveedor: str | None, admin: str | None
) -> None:
    assert access(CLIENTE, room) == cliente
    assert access(PROVEEDOR, room) == proveedor
    assert access(ADMIN, room) == admin


def test_invalid_room_message_is_bounded() -> None:
    with pytest.raises(ProtocolError) as caught:
        check_access(CLIENTE, "x" * 10_000)
    assert caught.value.code is ErrorCode.INVALID_ROOM
    assert len(caught.value.message) < 200


@QUICK
@given(room=st.text(max_size=80), role=st.sampled_from(["cliente", "proveedor", "admin"]))
def test_random_names_never_crash_and_only_valid_patterns_pass(room: str, role: Any) -> None:
    identity = Identity("5", role)
    outcome = access(identity, room)  # only ProtocolError may escape check_access
    valid = VALID_ROOM.fullmatch(room) is not None
    assert is_valid_room(room) is valid
    if not valid:
        assert outcome == "invalid_room"
    else:
        assert outcome in (None, "forbidden")
    if role == "admin":
        assert outcome == (None if valid else "invalid_room")


@QUICK
@given(
    prefix=st.sampled_from(["cliente", "proveedor", "service", "location"]),
    room_id=ID,
    user_id=ID,
)
def test_generated_valid_names_follow_the_rules(prefix: str, room_id: str, user_id: str) -> None:
    room = f"{prefix}_{room_id}"
    assert is_valid_room(room)
    for role in ("cliente", "proveedor"):
        outcome = access(Identity(user_id, role), room)  # type: ignore[arg-type]
        allowed = prefix in ("service", "location") or (prefix == role and room_id == user_id)
        assert outcome == (None if allowed else "forbidden")
    assert access(Identity(user_id, "admin"), room) is None
    assert access(Identity(user_id, "cliente"), room + "!") == "invalid_room"


# --- business events ------------------------------------------------------------------------------
def sender_error(identity: Identity, event: str, payload: dict[str, Any]) -> tuple[str, Any]:
    with pytest.raises(ProtocolError) as caught:
        check_sender(identity, event, payload)
    return str(caught.value.code), caught.value.field


def test_sender_rules() -> None:
    own = {"clienteId": "5", "proveedorId": "7"}
    check_sender(CLIENTE, "reservation_created", own)
    check_sender(CLIENTE, "payment_created", own)
    check_sender(PROVEEDOR, "reservation_accepted", own)
    for identity in (CLIENTE, PROVEEDOR, ADMIN):
        check_sender(identity, "comment_created", {"servicioId": "3"})
    for event in ("reservation_created", "reservation_accepted", "payment_created"):
        check_sender(ADMIN, event, {"clienteId": "99", "proveedorId": "98"})
    other = {"clienteId": "6", "proveedorId": "8"}
    assert sender_error(CLIENTE, "reservation_created", other) == ("forbidden", "clienteId")
    assert sender_error(CLIENTE, "payment_created", other) == ("forbidden", "clienteId")
    assert sender_error(PROVEEDOR, "reservation_accepted", other) == ("forbidden", "proveedorId")
    assert sender_error(CLIENTE, "reservation_accepted", own)[0] == "forbidden"
    assert sender_error(PROVEEDOR, "reservation_created", own)[0] == "forbidden"
    assert sender_error(PROVEEDOR, "payment_created", own)[0] == "forbidden"


def test_author_fields_of_a_comment_name_the_sender_only() -> None:
    comment = {"servicioId": "3", "text": "x"}
    check_sender(CLIENTE, "comment_created", {**comment, "clienteId": CLIENTE.user_id})
    check_sender(PROVEEDOR, "comment_created", {**comment, "proveedorId": PROVEEDOR.user_id})
    check_sender(ADMIN, "comment_created", {**comment, "clienteId": "43", "proveedorId": "44"})
    for identity, fields, field in [
        (CLIENTE, {"clienteId": "43"}, "clienteId"),
        (PROVEEDOR, {"clienteId": "43"}, "clienteId"),
        (PROVEEDOR, {"clienteId": PROVEEDOR.user_id}, "clienteId"),  # not a cliente
        (CLIENTE, {"proveedorId": CLIENTE.user_id}, "proveedorId"),
        (PROVEEDOR, {"proveedorId": "44"}, "proveedorId"),
        (CLIENTE, {"clienteId": int(CLIENTE.user_id)}, "clienteId"),  # ids are strings
    ]:
        assert sender_error(identity, "comment_created", {**comment, **fields}) == (
            "forbidden",
            field,
        ), (identity, fields)


def test_default_rooms() -> None:
    payload = {"clienteId": "5", "proveedorId": "7", "servicioId": "3"}
    assert default_rooms("reservation_created", payload) == [
        "proveedor_7",
        "cliente_5",
        "admin_dashboard",
    ]
    assert default_rooms("reservation_accepted", payload) == [
        "cliente_5",
        "proveedor_7",
        "admin_dashboard",
    ]
    assert default_rooms("payment_created", payload) == [
        "proveedor_7",
        "cliente_5",
        "admin_dashboard",
    ]
    assert default_rooms("comment_created", payload) == ["service_3", "admin_dashboard"]


def test_rooms_from_django_answer() -> None:
    fallback = ["proveedor_7"]
    answer = {"id": 1, "estado": "pendiente", "rooms": ["service_9", "location_3", "service_9"]}
    rooms, body = rooms_from_answer(answer, fallback)
    assert rooms == ["service_9", "location_3"]  # duplicates delivered once
    assert body == {"id": 1, "estado": "pendiente"}  # the list itself is not delivered
    assert answer["rooms"]  # the answer is not mutated
    rooms, body = rooms_from_answer({"rooms": ["lobby", 5, "cliente_1"]}, fallback)
    assert (rooms, body) == (["cliente_1"], {})
    assert rooms_from_answer({"id": 1}, fallback) == (fallback, {"id": 1})
    assert rooms_from_answer({"rooms": "service_1"}, fallback) == (
        fallback,
        {"rooms": "service_1"},
    )
    assert rooms_from_answer(None, fallback) == (fallback, None)
    assert rooms_from_answer([1, 2], fallback) == (fallback, [1, 2])
