"""Frame decoding, payload validation and encoding (``gateway/protocol.py``): pure logic."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.closecodes import ErrorCode
from gateway.protocol import (
    BUSINESS_EVENTS,
    CONTROL_EVENTS,
    KNOWN_EVENTS,
    PRE_AUTH_EVENTS,
    AuthenticatePayload,
    CommentCreated,
    JoinRoomPayload,
    PaymentCreated,
    ProtocolError,
    ReservationAccepted,
    ReservationCreated,
    decode_frame,
    encode,
    encode_error,
    validate_payload,
)

RESERVATION = {"clienteId": "5", "proveedorId": "7", "servicioId": "3", "fecha": "2031-05-04"}


def bad_request(raw: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        decode_frame(raw)
    assert caught.value.code is ErrorCode.BAD_REQUEST
    return caught.value


def invalid(model: Any, data: dict[str, Any]) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        validate_payload(model, data)
    assert caught.value.code is ErrorCode.VALIDATION_ERROR
    return caught.value


# --- decode_frame -------------------------------------------------------------------------------
def test_decodes_a_well_formed_frame() -> None:
    frame = decode_frame('{"event": "join_room", "data": {"room": "service_1"}, "id": 3}')
    assert (frame.event, frame.data, frame.id) == ("join_room", {"room": "service_1"}, 3)
    frame = decode_frame(b'{"event": "ping", "id": "abc"}')
    assert (frame.event, frame.data, frame.id) == ("ping", {}, "abc")
    assert decode_frame('{"event": "ping", "data": null}').data == {}
    assert decode_frame('{"event": "ping"}').id is None
    # an unknown event is well formed: judging it is the node's job, after authentication
    assert decode_frame('{"event": "whatever", "data": {"x": [1]}}').event == "whatever"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "not valid JSON"),
        ("", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('"ping"', "JSON object"),
        ("null", "JSON object"),
        ("7", "JSON object"),
    ],
)
def test_frames_that_are_not_json_objects(raw: str | bytes, message: str) -> None:
    error = bad_request(raw)
    assert message in error.message
    assert error.field is None


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"data": {}}', "event"),
        ('{"event": ""}', "event"),
        ('{"event": 1}', "event"),
        ('{"event": ["ping"]}', "event"),
        ('{"event": "ping", "data": []}', "data"),
        ('{"event": "ping", "data": "x"}', "data"),
        ('{"event": "ping", "data": 0}', "data"),
        ('{"event": "ping", "id": 1.5}', "id"),
        ('{"event": "ping", "id": true}', "id"),
        ('{"event": "ping", "id": false}', "id"),
        ('{"event": "ping", "id": [1]}', "id"),
        ('{"event": "ping", "id": {}}', "id"),
        ('{"event": "ping", "id": "' + "x" * 129 + '"}', "id"),
    ],
)
def test_shape_errors_name_the_field(raw: str, field: str) -> None:
    error = bad_request(raw)
    assert error.field == field
    assert f"'{field}'" in error.message


def test_shape_is_judged_field_by_field_in_order() -> None:
    # id before event before data: once the id is known to be usable, the error can echo it
    assert bad_request('{"event": 1, "data": [], "id": 1.5}').field == "id"
    assert bad_request('{"event": 1, "data": [], "id": 1}').field == "event"
    assert bad_request('{"event": "ping", "data": [], "id": 1}').field == "data"


def test_a_usable_id_is_kept_for_the_error_reply() -> None:
    assert bad_request('{"event": "ping", "data": [], "id": 7}').frame_id == 7
    assert bad_request('{"event": 3, "id": "req-1"}').frame_id == "req-1"
    assert bad_request('{"event": "ping", "id": 1.5}').frame_id is None


def test_ids_up_to_128_characters_and_any_int() -> None:
    assert decode_frame('{"event": "ping", "id": "' + "x" * 128 + '"}').id == "x" * 128
    assert decode_frame('{"event": "ping", "id": -5}').id == -5
    assert decode_frame('{"event": "ping", "id": 0}').id == 0


# --- validate_payload -----------------------------------------------------------------------------
def test_valid_business_payloads_keep_extra_fields() -> None:
    model = validate_payload(ReservationCreated, {**RESERVATION, "nota": "x"})
    assert model.model_dump(exclude_none=True) == {**RESERVATION, "nota": "x"}
    assert validate_payload(
        ReservationCreated, {**RESERVATION, "fecha": "2031-05-04T10:00:00Z"}
    ).fecha.endswith("Z")
    payment = {"clienteId": "5", "proveedorId": "7", "amount": "25.00", "currency": "EUR"}
    assert validate_payload(PaymentCreated, payment).amount == "25.00"
    assert validate_payload(ReservationAccepted, {"clienteId": "5", "proveedorId": "7"})
    comment = validate_payload(CommentCreated, {"servicioId": "3", "text": "ok", "rating": 5})
    assert comment.rating == 5


@pytest.mark.parametrize(
    ("model", "data", "field", "message"),
    [
        (ReservationCreated, {"clienteId": "5"}, "proveedorId", "'proveedorId' is required"),
        (ReservationCreated, {**RESERVATION, "clienteId": 5}, "clienteId", "wrong type"),
        (ReservationCreated, {**RESERVATION, "clienteId": "a b"}, "clienteId", "[A-Za-z0-9_-]"),
        (ReservationCreated, {**RESERVATION, "clienteId": "x" * 65}, "clienteId", "{1,64}"),
        (ReservationCreated, {**RESERVATION, "clienteId": "5\n"}, "clienteId", "{1,64}"),
        (ReservationCreated, {**RESERVATION, "fecha": "mañana"}, "fecha", "ISO 8601"),
        (ReservationCreated, {**RESERVATION, "fecha": 20310504}, "fecha", "wrong type"),
        (ReservationCreated, {**RESERVATION, "estado": 1}, "estado", "wrong type"),
        (PaymentCreated, {"clienteId": "5", "proveedorId": "7", "amount": 25.0}, "amount", ""),
        (PaymentCreated, {"clienteId": "5", "proveedorId": "7", "amount": 25}, "amount", ""),
        (PaymentCreated, {"clienteId": "5", "proveedorId": "7", "amount": "x"}, "amount", ""),
        (PaymentCreated, {"clienteId": "5", "proveedorId": "7", "amount": "-1"}, "amount", ""),
        (PaymentCreated, {"clienteId": "5", "proveedorId": "7", "amount": "NaN"}, "amount", ""),
        (
            PaymentCreated,
            {"clienteId": "5", "proveedorId": "7", "amount": "1", "currency": "eur"},
            "currency",
            "",
        ),
        (CommentCreated, {"servicioId": "3"}, "text", "'text' is required"),
        (CommentCreated, {"servicioId": "3", "text": ""}, "text", ""),
        (CommentCreated, {"servicioId": "3", "text": "x", "rating": 6}, "rating", ""),
        (CommentCreated, {"servicioId": "3", "text": "x", "rating": "5"}, "rating", "wrong type"),
        (AuthenticatePayload, {}, "token", "'token' is required"),
        (AuthenticatePayload, {"token": 5}, "token", "wrong type"),
        (AuthenticatePayload, {"token": "t", "role": "root"}, "role", ""),
        (JoinRoomPayload, {"room": 1}, "room", "wrong type"),
        (JoinRoomPayload, {"room": "r", "since": {"epoch": "e"}}, "since.offset", "required"),
        (JoinRoomPayload, {"room": "r", "since": {"offset": -1, "epoch": "e"}}, "since.offset", ""),
        (JoinRoomPayload, {"room": "r", "since": 5}, "since", "wrong type"),
    ],
)
def test_validation_errors_name_the_field(
    model: Any, data: dict[str, Any], field: str, message: str
) -> None:
    error = invalid(model, data)
    assert error.field == field
    assert f"'{field}'" in error.message
    assert message in error.message


def test_the_amount_is_never_a_json_number() -> None:
    """Money is a decimal string: a float would lose cents, so it is refused, not coerced."""
    for amount in (25.0, 25, 0.1):
        error = invalid(PaymentCreated, {"clienteId": "5", "proveedorId": "7", "amount": amount})
        assert error.field == "amount"


# --- event tables ---------------------------------------------------------------------------------
def test_event_tables() -> None:
    assert set(BUSINESS_EVENTS) == {
        "reservation_created",
        "reservation_accepted",
        "payment_created",
        "comment_created",
    }
    assert set(CONTROL_EVENTS) == {"authenticate", "join_room", "leave_room", "presence", "ping"}
    assert set(KNOWN_EVENTS) == set(BUSINESS_EVENTS) | set(CONTROL_EVENTS)
    assert set(PRE_AUTH_EVENTS) == {"authenticate", "ping"}


# --- encoding -------------------------------------------------------------------------------------
def test_encode_and_encode_error() -> None:
    assert orjson.loads(encode("pong", {})) == {"event": "pong", "data": {}}
    assert orjson.loads(encode("pong", {}, 4)) == {"event": "pong", "data": {}, "id": 4}
    assert orjson.loads(encode("pong", {}, "a")) == {"event": "pong", "data": {}, "id": "a"}
    error = ProtocolError(ErrorCode.FORBIDDEN, "no", "room")
    assert orjson.loads(encode_error(error, 9)) == {
        "event": "error",
        "data": {"code": "forbidden", "message": "no", "field": "room"},
        "id": 9,
    }
    plain = ProtocolError(ErrorCode.BAD_REQUEST, "bad")
    assert plain.as_data() == {"code": "bad_request", "message": "bad"}
