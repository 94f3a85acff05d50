"""The node's side of delivery receipts (contract §8): what each connection was sent, and its
``received`` frames.

For every event that asks for receipts (its body ends with ``"receipts":true``), the node
remembers, per connection, ``(room, offset, epoch) -> eventId`` when it sends the event: live, in
a join's ``missed``, or released after a join. A ``received`` frame ``{room, offset, epoch}`` is
accepted only when it names such an entry of that very connection — so a receipt for a room the
connection is not in, for an offset it was not sent (yet), or for another user's event changes
nothing — and the entry is then removed, so a repeated receipt changes nothing either. Accepted
receipts go to the cluster-wide ``ReceiptStore``.

``received`` frames do not count toward the rate limit; one that is not accepted does (a flood of
bogus receipts is throttled like any other frames). What a connection remembers is bounded
(``MAX_PENDING``, oldest forgotten first), and only events with receipts cost anything: other
deliveries pass one ``bytes.endswith``. A connection that acknowledges keeps nothing; one that
never does keeps at most ``GATEWAY_RECEIPTS_PENDING`` entries (about 100 bytes each: the key and
the event id are shared by every connection that was sent the event).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import orjson

from gateway.backend.base import Publication, PublishResult
from gateway.backend.receipts import ReceiptStore
from gateway.events import now_ms, wants_receipts

log = logging.getLogger("gateway.receipts")

Key = tuple[str, int, str]


def receipts_from_answer(body: Any) -> tuple[bool, Any]:
    """A business event asks for receipts when Django's 2xx body has ``"receipts": true``; the
    flag itself is not delivered (as ``"rooms"`` is not)."""
    if isinstance(body, dict) and body.get("receipts") is True:
        return True, {k: v for k, v in body.items() if k != "receipts"}
    return False, body


def looks_like_received(raw: str | bytes) -> bool:
    """A first look before the rate limit: only frames that may be ``received`` are parsed."""
    if isinstance(raw, bytes):
        return b'"received"' in raw
    return '"received"' in raw


def _event_id(pub: Publication) -> str:
    return str(orjson.loads(pub.body)["id"])


class Receipts:
    def __init__(
        self,
        store: ReceiptStore,
        metrics: Any = None,
        errors: tuple[Any, ...] = (),
        max_pending: int = 256,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.metrics = metrics
        self.errors: tuple[type[BaseException], ...] = errors
        self._sent: dict[str, dict[Key, str]] = {}  # by connection id, oldest first

    # --- what was sent ------------------------------------------------------------------------
    def sent(self, session: Any, pubs: Iterable[Publication]) -> None:
        """``pubs`` were sent to ``session`` (a join's ``missed``, or released after it)."""
        for pub in pubs:
            if wants_receipts(pub.body):
                self._remember(session.id, (pub.room, pub.offset, pub.epoch), _event_id(pub))

    def sent_live(self, pub: Publication, members: Iterable[Any]) -> None:
        """The hub fanned ``pub`` out: members whose join gate held it back were not sent it
        (it reaches them when the gate is released, or it was in their join's answer)."""
        event_id = _event_id(pub)
        key = (pub.room, pub.offset, pub.epoch)
        for session in members:
            pending = session.pending
            if pending is not None and pub.room in pending:
                continue
            self._remember(session.id, key, event_id)

    def _remember(self, connection_id: str, key: Key, event_id: str) -> None:
        sent = self._sent.get(connection_id)
        if sent is None:
            sent = self._sent[connection_id] = {}
        sent[key] = event_id
        if len(sent) > self.max_pending:
            del sent[next(iter(sent))]  # the oldest

    def forget(self, connection_id: str) -> None:
        self._sent.pop(connection_id, None)

    # --- what the client says -----------------------------------------------------------------
    async def handle(self, session: Any, raw: str | bytes) -> bool | None:
        """None: not a ``received`` frame of an authenticated connection (the caller handles
        it as any frame). True: accepted. False: ignored (not sent, repeated or malformed)."""
        if session.identity is None:
            return None
        try:
            frame = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(frame, dict) or frame.get("event") != "received":
            return None
        key = _key(frame.get("data"))
        sent = self._sent.get(session.id)
        event_id = sent.pop(key, None) if sent is not None and key is not None else None
        if event_id is None or sent is None or key is None:
            self._count("ignored")
            return False
        if not sent:
            del self._sent[session.id]  # nothing owed: the connection keeps nothing
        try:
            recorded = await self.store.record(key[0], event_id, session.identity.user_id, now_ms())
        except self.errors as exc:
            self._count("failed")
            log.debug("receipt of %s not recorded: %s", event_id, exc)
            return True
        self._count("accepted" if recorded else "expired")
        return True

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.receipts.labels(outcome).inc()

    # --- publishing with receipts -------------------------------------------------------------
    async def published(self, result: PublishResult, members: dict[str, int]) -> None:
        """Index the event's rooms, so ``receipts(eventId)`` finds them (a failure is logged:
        the event was delivered; its receipts cannot be looked up by id)."""
        try:
            await self.store.opened(result.event_id, result.offsets, members)
        except self.errors as exc:
            log.warning("receipts of %s cannot be looked up: %s", result.event_id, exc)


def _key(data: Any) -> Key | None:
    if not isinstance(data, dict):
        return None
    room, offset, epoch = data.get("room"), data.get("offset"), data.get("epoch")
    if not isinstance(room, str) or not isinstance(epoch, str):
        return None
    if not isinstance(offset, int) or isinstance(offset, bool):
        return None
    return room, offset, epoch
