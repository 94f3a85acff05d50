"""An ingest entry's idempotency key outlives its longest reclaim (issue 16, item 8).

A worker that published an entry and died before acknowledging it leaves the entry pending;
another worker claims it ``GATEWAY_INGEST_CLAIM_IDLE_S`` later (up to ``MAX_DELIVERIES`` times
for an entry that keeps failing in one of its rooms) and publishes it again. The key must still
be there then, or the event is delivered twice."""

from __future__ import annotations

from typing import Any

from gateway.backend.base import IDEMPOTENCY_TTL_S
from tests.support import RedisServer
from tests.support.ports import eventually
from tests.worker.conftest import StartWorker
from tests.worker.helpers import KEYS, room_offset
from worker.ingest import MAX_DELIVERIES, idempotency_window_s


def test_the_window_covers_every_claim_of_an_entry() -> None:
    assert idempotency_window_s(30) == IDEMPOTENCY_TTL_S  # defaults: the contract's 5 minutes
    for idle_s in (0.5, 30, 120, 600, 3600):
        window = idempotency_window_s(idle_s)
        assert window >= IDEMPOTENCY_TTL_S
        assert window > MAX_DELIVERIES * idle_s + 5  # every claim, each a round late


async def test_a_slow_claim_setting_lengthens_the_keys_the_worker_writes(
    redis_server: RedisServer, start_worker: StartWorker, aredis: Any
) -> None:
    await start_worker(redis_server.url, ingest_claim_idle_s=120)
    own = await aredis.xadd(KEYS.ingest, {"room": "service_1", "type": "t", "payload": "1"})
    keyed = {"room": "service_2", "type": "t", "payload": "2", "idempotency_key": "order-7"}
    await aredis.xadd(KEYS.ingest, keyed)

    async def published() -> bool:
        return await room_offset(aredis, "service_1") == 1 == await room_offset(aredis, "service_2")

    await eventually(published, 10, "both entries published")
    expected_ms = idempotency_window_s(120) * 1000
    assert expected_ms > 5 * 120 * 1000
    for key in (
        KEYS.room_idempotency("service_1", f"ingest:{own.decode()}"),
        KEYS.room_idempotency("service_2", "order-7"),
    ):
        ttl_ms = await aredis.pttl(key)
        assert expected_ms - 10_000 < ttl_ms <= expected_ms, (key, ttl_ms)
