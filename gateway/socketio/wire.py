"""What the gateway core writes to a Socket.IO session, before it reaches a socket.

The core hands a session's transport bytes (``encode``/``encode_publication``, then ``write``);
for Socket.IO those bytes are *records*, each an Engine.IO packet ended by 0x1e, so that one
encoding serves every Socket.IO member of a room whatever carries it (a WebSocket frame each, or
a long-poll body joined by 0x1e). A record may start with an annotation that the session reads
and strips before sending:

    \\x1fP<room>\\x1f<epoch>\\x1f<offset>\\x1f<packet>   a live publication of the room
    \\x1fM<room>\\x1f<epoch>\\x1f<offset>\\x1f<packet>   an event restored by connection recovery
    \\x1fJ<room>\\x1f<epoch>\\x1f<offset>\\x1f<packet>   joined there (the packet may be empty)
    \\x1fL<room>\\x1f<packet>                          left the room

JSON escapes every control character, and room names, epochs and offsets are plain ASCII, so
neither 0x1e nor 0x1f occurs inside a packet or a field.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from gateway.backend.base import Publication

END: Final = b"\x1e"
MARK: Final = 0x1F
PUBLICATION: Final = ord("P")
MISSED: Final = ord("M")
JOINED: Final = ord("J")
LEFT: Final = ord("L")
_FIELDS: Final = {PUBLICATION: 3, MISSED: 3, JOINED: 3, LEFT: 1}

Record = tuple[int, bytes, bytes, int, bytes]  # tag (0: none), room, epoch, offset, packet


def plain(packet: bytes) -> bytes:
    return packet + END


def publication(pub: Publication) -> bytes:
    """``42["event",<data>]`` annotated with its room and position: the same bytes for every
    Socket.IO member of the room (the hub encodes once per transport kind)."""
    return b'\x1fP%s\x1f%s\x1f%d\x1f42["event",%s]\x1e' % (
        pub.room.encode(),
        pub.epoch.encode(),
        pub.offset,
        pub.event_data(),
    )


def missed(room: str, epoch: str, offset: int, data_json: bytes) -> bytes:
    return b'\x1fM%s\x1f%s\x1f%d\x1f42["event",%s]\x1e' % (
        room.encode(),
        epoch.encode(),
        offset,
        data_json,
    )


def joined(room: str, epoch: str, offset: int, packet: bytes = b"") -> bytes:
    return b"\x1fJ%s\x1f%s\x1f%d\x1f%s\x1e" % (room.encode(), epoch.encode(), offset, packet)


def left(room: str, packet: bytes) -> bytes:
    return b"\x1fL%s\x1f%s\x1e" % (room.encode(), packet)


def records(data: bytes) -> Iterator[Record]:
    """The records of what the core wrote, in order."""
    for record in data.split(END):
        if not record:
            continue
        if record[0] != MARK:
            yield 0, b"", b"", 0, record
            continue
        tag = record[1]
        parts = record[2:].split(b"\x1f", _FIELDS[tag])
        if tag == LEFT:
            yield tag, parts[0], b"", 0, parts[1]
        else:
            yield tag, parts[0], parts[1], int(parts[2]), parts[3]


def packets(data: bytes) -> list[bytes]:
    """The packets alone (annotations dropped): for sessions that keep no positions."""
    out = []
    for record in data.split(END):
        if not record:
            continue
        if record[0] == MARK:
            record = record[2:].split(b"\x1f", _FIELDS[record[1]])[-1]
            if not record:
                continue
        out.append(record)
    return out
