"""Validation of ingest stream entries: what Django (or any program) wrote with ``XADD``.

An entry has ``room`` (one room) or ``rooms`` (a JSON list of rooms), ``type``, ``payload``
(JSON text) and optionally ``idempotency_key``. Anything else is malformed: ``InvalidEntry``
carries the ``reason`` written to the dead-letter stream. No I/O here.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import orjson

from gateway.backend.redis_publish import MAX_IDEMPOTENCY_KEY
from gateway.events import MAX_ROOMS_PER_PUBLISH, TYPE_PATTERN, dumps_payload
from gateway.rooms import is_valid_room

MAX_PAYLOAD_BYTES = 1024 * 1024  # the publish API's default request size limit
FIELDS = frozenset({"room", "rooms", "type", "payload", "idempotency_key", "event_id", "receipts"})
RECEIPTS_VALUES = {"1": True, "true": True, "0": False, "false": False}
_TYPE_RE = re.compile(TYPE_PATTERN)
# Event ids of ingest entries are derived from the stream entry id, so a retried or re-claimed
# entry carries the same event id in every room it reaches.
EVENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_EVENT_ID_NAMESPACE = uuid.UUID("6f1c2a52-8f0e-4b1e-9a57-2f0d1c3b7e41")


class InvalidEntry(ValueError):
    """The entry cannot be published; ``str()`` is the dead-letter ``reason``."""


@dataclass(frozen=True, slots=True)
class IngestEvent:
    entry_id: str
    rooms: list[str]
    type: str
    payload_json: bytes
    idempotency_key: str
    event_id: str
    receipts: bool = False  # field ``receipts 1``: receivers acknowledge it (contract §8)


def _text(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEntry(f"field '{name}' is not UTF-8 text") from None


def _clip(text: str) -> str:
    return text if len(text) <= 80 else text[:77] + "..."


def _rooms(fields: dict[str, str]) -> list[str]:
    if ("room" in fields) == ("rooms" in fields):
        raise InvalidEntry("give exactly one of the fields 'room' or 'rooms'")
    if "room" in fields:
        rooms = [fields["room"]]
    else:
        try:
            rooms = orjson.loads(fields["rooms"])
        except orjson.JSONDecodeError:
            raise InvalidEntry("field 'rooms' is not a JSON list of room names") from None
        if not isinstance(rooms, list) or not all(isinstance(r, str) for r in rooms):
            raise InvalidEntry("field 'rooms' is not a JSON list of room names")
        if not 0 < len(rooms) <= MAX_ROOMS_PER_PUBLISH:
            raise InvalidEntry(f"field 'rooms' must list 1..{MAX_ROOMS_PER_PUBLISH} rooms")
    for room in rooms:
        if not is_valid_room(room):
            raise InvalidEntry(f"'{_clip(room)}' is not a valid room")
    return list(dict.fromkeys(rooms))


def _payload(raw: str) -> bytes:
    try:
        # re-encoded once: the event body splices these bytes in verbatim, so they must be
        # exactly one compact JSON value
        return dumps_payload(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise InvalidEntry(f"field 'payload' is not valid JSON: {exc}") from None


def parse_entry(stream: str, entry_id: str, raw_fields: dict[bytes, bytes]) -> IngestEvent:
    """Validate one entry of ``stream``; raise ``InvalidEntry`` naming what is wrong."""
    fields: dict[str, str] = {}
    for raw_name, raw_value in raw_fields.items():
        name = _text("name", raw_name)
        if name not in FIELDS:
            allowed = ", ".join(sorted(FIELDS))
            raise InvalidEntry(f"unknown field '{_clip(name)}' (allowed: {allowed})")
        if name == "payload" and len(raw_value) > MAX_PAYLOAD_BYTES:
            raise InvalidEntry(f"field 'payload' is larger than {MAX_PAYLOAD_BYTES} bytes")
        fields[name] = _text(name, raw_value)
    rooms = _rooms(fields)
    type_ = fields.get("type")
    if type_ is None:
        raise InvalidEntry("missing field 'type'")
    if not _TYPE_RE.match(type_):
        raise InvalidEntry(f"field 'type' must match {TYPE_PATTERN}")
    if "payload" not in fields:
        raise InvalidEntry("missing field 'payload' (JSON text; 'null' for none)")
    payload_json = _payload(fields["payload"])
    key = fields.get("idempotency_key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidEntry(f"field 'idempotency_key' must be 1..{MAX_IDEMPOTENCY_KEY} characters")
    event_id = fields.get("event_id")
    if event_id is not None and not EVENT_ID.fullmatch(event_id):
        raise InvalidEntry("field 'event_id' must be 1..128 characters of A-Za-z0-9_.:-")
    receipts = RECEIPTS_VALUES.get(fields.get("receipts", "0").lower())
    if receipts is None:
        raise InvalidEntry("field 'receipts' must be 1 or 0")
    return IngestEvent(
        entry_id=entry_id,
        receipts=receipts,
        rooms=rooms,
        type=type_,
        payload_json=payload_json,
        # without a key of its own, the stream entry id is the key: a re-claimed entry that
        # was published before its worker died is then not delivered twice
        idempotency_key=key if key is not None else f"ingest:{entry_id}",
        event_id=event_id or uuid.uuid5(_EVENT_ID_NAMESPACE, f"{stream}/{entry_id}").hex,
    )
