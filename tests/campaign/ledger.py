"""What was published, and whether it arrived: the ledger and the end-of-run check.

Every publish of a run is a ``Published`` in the ``Ledger`` (its tag is in the payload, so any
client can tell which publish an event is). ``check_final`` holds the acknowledged publishes
against what every client delivered (``RoomLog``, the oracles) once the run is over.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from tests.campaign.oracle import ClientOracle, Position, RoomLog, Violation, short


@dataclass
class Published:
    """One publish as the publisher saw it. ``acked``: the publisher got a success answer
    (the API's offsets, the Publisher's offset, ``XADD``'s id, a business event's ``ack``)."""

    tag: str
    source: str  # api, publisher, ingest, client
    rooms: tuple[str, ...]
    acked: bool = False
    event_id: str = ""
    offsets: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    at_s: float = 0.0
    error: str = ""


class Ledger:
    """Every publish of the run, in order; tags are unique."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.records: list[Published] = []
        self._seq = 0

    def new(self, source: str, rooms: Sequence[str]) -> Published:
        self._seq += 1
        pub = Published(f"{source[:3]}-{self._seq:07d}", source, tuple(rooms), at_s=self.clock())
        self.records.append(pub)
        return pub

    def counts(self) -> tuple[Counter[str], Counter[str]]:
        """(publishes by source, acknowledged publishes by source)."""
        sent = Counter(p.source for p in self.records)
        acked = Counter(p.source for p in self.records if p.acked)
        return sent, acked


def check_final(
    ledger: Iterable[Published],
    clients: Sequence[ClientOracle],
    log: RoomLog,
    fences: dict[str, Position],
    clock: Callable[[], float],
) -> list[Violation]:
    """Every client reached every room's fence; every acknowledged publish is in its rooms once
    and was delivered to every client of the room; no publish got two offsets.

    A missing fence is flagged on the client's oracle (it joins that client's violations); the
    ledger's violations are returned."""
    found: list[Violation] = []
    now = clock()
    for oracle in clients:
        for room, track in oracle.rooms.items():
            fence = fences.get(room)
            if fence is None:
                continue
            if track.epoch != fence[0] or track.offset < fence[1] or track.joining:
                oracle.flag(
                    "fence_missing",
                    room,
                    f"fence {short(fence[0])}:{fence[1]} not delivered; the client stands "
                    f"at {short(track.epoch)}:{track.offset} joining={track.joining}",
                )
    members: dict[str, list[ClientOracle]] = {}
    for oracle in clients:
        for room in oracle.rooms:
            members.setdefault(room, []).append(oracle)
    for pub in ledger:
        for room in pub.rooms:
            found += _check_publish(pub, room, log, members.get(room, []), now)
    return found


def _check_publish(
    pub: Published, room: str, log: RoomLog, members: list[ClientOracle], now: float
) -> list[Violation]:
    """The publish's violations, dated when it was published (their traces are its faults)."""
    now = pub.at_s
    positions = log.positions(room, event_id=pub.event_id, tag=pub.tag)
    what = f"{pub.source} publish {pub.tag} (id {pub.event_id[:12] or '?'})"
    if len(positions) > 1:
        where = ", ".join(f"{short(e)}:{o}" for e, o in sorted(positions))
        return [Violation("double_offset", "-", room, now, f"{what} at {where}")]
    if not pub.acked or not members:
        return []
    if not positions:
        known = pub.offsets.get(room)
        if known is not None and all(_skipped(o, room, known) for o in members):
            return []  # every member's gap already counts it
        return [Violation("lost", "-", room, now, f"acknowledged {what} delivered to nobody")]
    [(epoch, offset)] = positions
    if room in pub.offsets and pub.offsets[room] != offset:
        detail = f"{what} acknowledged at offset {pub.offsets[room]} but delivered at {offset}"
        return [Violation("wrong_offset", "-", room, now, detail)]
    missing = [
        o.name
        for o in members
        if not o.delivered(room, epoch, offset) and not o.accounted(room, epoch, offset)
    ]
    if missing:
        detail = f"acknowledged {what} at {short(epoch)}:{offset} not delivered to {missing}"
        return [Violation("not_delivered", ",".join(missing), room, now, detail)]
    return []


def _skipped(oracle: ClientOracle, room: str, offset: int) -> bool:
    track = oracle.rooms.get(room)
    return track is not None and any(o == offset for _e, o in track.skipped)
