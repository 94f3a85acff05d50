"""Validation of ingest entries (no I/O): what is published and why the rest is refused."""

from __future__ import annotations

import orjson
import pytest

from worker.entries import MAX_PAYLOAD_BYTES, InvalidEntry, parse_entry

STREAM = "gateway:ingest"


def entry(**fields: str | bytes) -> dict[bytes, bytes]:
    return {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}


def test_one_room_entry() -> None:
    event = parse_entry(STREAM, "5-0", entry(room="service_1", type="a.b", payload='{"x": [1, 2]}'))
    assert event.rooms == ["service_1"]
    assert event.type == "a.b"
    assert orjson.loads(event.payload_json) == {"x": [1, 2]}
    assert event.payload_json == b'{"x":[1,2]}'  # one compact JSON value, spliced as is
    assert event.idempotency_key == "ingest:5-0"


def test_rooms_list_is_deduplicated_and_keeps_its_order() -> None:
    rooms = '["location_2", "service_1", "location_2"]'
    event = parse_entry(STREAM, "5-0", entry(rooms=rooms, type="t", payload="null"))
    assert event.rooms == ["location_2", "service_1"]
    assert event.payload_json == b"null"


def test_own_idempotency_key_wins_over_the_entry_id() -> None:
    fields = entry(room="service_1", type="t", payload="1", idempotency_key="order-7")
    assert parse_entry(STREAM, "5-0", fields).idempotency_key == "order-7"


def test_event_id_depends_on_the_entry_only() -> None:
    fields = entry(room="service_1", type="t", payload="1")
    first = parse_entry(STREAM, "5-0", fields).event_id
    assert parse_entry(STREAM, "5-0", fields).event_id == first  # a re-claim: the same id
    assert parse_entry(STREAM, "5-1", fields).event_id != first
    assert len(first) == 32


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (entry(type="t", payload="1"), "exactly one of the fields 'room' or 'rooms'"),
        (
            entry(room="service_1", rooms='["service_1"]', type="t", payload="1"),
            "exactly one of the fields 'room' or 'rooms'",
        ),
        (entry(room="nope", type="t", payload="1"), "'nope' is not a valid room"),
        (entry(room="service_a b", type="t", payload="1"), "is not a valid room"),
        (entry(rooms="service_1", type="t", payload="1"), "'rooms' is not a JSON list"),
        (entry(rooms='{"a": 1}', type="t", payload="1"), "'rooms' is not a JSON list"),
        (entry(rooms="[1, 2]", type="t", payload="1"), "'rooms' is not a JSON list"),
        (entry(rooms="[]", type="t", payload="1"), "must list 1..100 rooms"),
        (
            entry(rooms=orjson.dumps([f"service_{i}" for i in range(101)]), type="t", payload="1"),
            "must list 1..100 rooms",
        ),
        (entry(rooms='["service_1", "x"]', type="t", payload="1"), "'x' is not a valid room"),
        (entry(room="service_1", payload="1"), "missing field 'type'"),
        (entry(room="service_1", type="has space", payload="1"), "field 'type' must match"),
        (entry(room="service_1", type="x" * 65, payload="1"), "field 'type' must match"),
        (entry(room="service_1", type="t"), "missing field 'payload'"),
        (entry(room="service_1", type="t", payload="{nope"), "'payload' is not valid JSON"),
        (entry(room="service_1", type="t", payload=""), "'payload' is not valid JSON"),
        (
            entry(room="service_1", type="t", payload='"' + "a" * MAX_PAYLOAD_BYTES + '"'),
            "larger than 1048576 bytes",
        ),
        (
            entry(room="service_1", type="t", payload="1", idempotency_key=""),
            "'idempotency_key' must be 1..200 characters",
        ),
        (
            entry(room="service_1", type="t", payload="1", idempotency_key="k" * 201),
            "'idempotency_key' must be 1..200 characters",
        ),
        (entry(room="service_1", type="t", payload="1", idempotencyKey="k"), "unknown field"),
        (entry(room="service_1", type=b"\xff\xfe", payload="1"), "'type' is not UTF-8"),
    ],
)
def test_malformed_entries_name_the_problem(fields: dict[bytes, bytes], reason: str) -> None:
    with pytest.raises(InvalidEntry) as caught:
        parse_entry(STREAM, "1-0", fields)
    assert reason in str(caught.value)
