"""Event bodies: built once per publish, shared by every backend and the Django publisher.

Imports neither aiohttp nor redis, so ``gateway.publish`` stays light for Django processes.
"""

from __future__ import annotations

import random
import time
import uuid

import orjson

SOURCES = frozenset({"client", "publisher", "api", "ingest"})
TYPE_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # event types published by servers
MAX_ROOMS_PER_PUBLISH = 100


def new_event_id() -> str:
    return uuid.uuid4().hex


def new_epoch() -> str:
    """A room history's epoch, should the room have none: 32 random bits. An identifier, not a
    secret, so Python's own generator (seeded from the OS at start) serves, without a system
    call on every join and publish."""
    return f"{random.getrandbits(32):08x}"


# The epoch reported for a room nothing was published to (it has no meta key: joins create none).
# A client that joined it holds offset 0, which any epoch's history from offset 1 covers.
UNPUBLISHED_EPOCH = "0"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dumps_payload(payload: object) -> bytes:
    """Serialize a payload once; raises ``TypeError`` for what JSON cannot carry."""
    return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)


def build_body(
    room: str,
    type_: str,
    payload_json: bytes,
    event_id: str,
    ts: int,
    source: str,
    receipts: bool = False,
) -> bytes:
    """The event object minus offset/epoch; the payload bytes are spliced in, not re-encoded.
    An event that asks for receipts ends with ``"receipts":true`` (clients acknowledge it)."""
    body = {
        "room": room,
        "type": type_,
        "payload": orjson.Fragment(payload_json),
        "id": event_id,
        "ts": ts,
        "source": source,
    }
    if receipts:
        body["receipts"] = True  # last: ``wants_receipts`` looks at the end of the body
    return orjson.dumps(body)


RECEIPTS_MARK = b',"receipts":true}'


def wants_receipts(body: bytes) -> bool:
    """Whether an event body asks its receivers for receipts (one comparison, no parsing)."""
    return body.endswith(RECEIPTS_MARK)
