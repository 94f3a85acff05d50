"""The Backend contract (``gateway/backend/base.py``), one suite for every implementation.

Each test runs against ``MemoryBackend`` and ``RedisBackend`` (``backend_kind``); the tests are
written against the documented guarantees, not against either implementation.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.backend import event_log
from gateway.backend.base import ControlMessage, Position, PresenceMember
from gateway.events import UNPUBLISHED_EPOCH, now_ms
from tests.contract.harness import UNSUBSCRIBE_DELAY_S, Harness, node_stats
from tests.support.ports import eventually


def body(pub: Any) -> dict[str, Any]:
    return dict(orjson.loads(pub.body))


# --- publish: offsets, event ids, idempotency -----------------------------------------------------
async def test_publish_assigns_offsets_one_by_one_per_room(backend: Harness) -> None:
    b = backend.backend
    offsets = []
    for room in ["room_a", "room_a", "room_b", "room_a", "room_b"]:
        result = await b.publish([room], "test", b"{}", "api")
        assert result.duplicate is False
        assert list(result.offsets) == [room]
        offsets.append((room, result.offsets[room]))
    assert offsets == [
        ("room_a", 1),
        ("room_a", 2),
        ("room_b", 1),
        ("room_a", 3),
        ("room_b", 2),
    ]
    for room, latest in (("room_a", 3), ("room_b", 2)):
        recovery = await b.history_since(room, None)
        assert recovery.position.offset == latest


async def test_each_publish_gets_its_own_event_id_unless_given(backend: Harness) -> None:
    b = backend.backend
    first = await b.publish(["room_a"], "test", b"{}", "api")
    second = await b.publish(["room_a"], "test", b"{}", "api")
    assert first.event_id and second.event_id and first.event_id != second.event_id
    given = await b.publish(["room_a"], "test", b"{}", "api", event_id="my-event-1")
    assert given.event_id == "my-event-1"
    epoch = (await b.history_since("room_a", None)).position.epoch
    [pub] = (await b.history_since("room_a", Position(2, epoch))).publications
    assert body(pub)["id"] == "my-event-1"


async def test_multi_room_publish_shares_one_event_id(backend: Harness) -> None:
    b = backend.backend
    rooms = ["room_a", "room_b", "room_c"]
    for room in rooms:
        await b.subscribe(room)
    await b.publish(["room_b"], "test", b"{}", "api")  # room_b is one ahead
    result = await b.publish(rooms, "reservation_created", b'{"x":1}', "publisher")
    assert result.offsets == {"room_a": 1, "room_b": 2, "room_c": 1}
    await backend.eventually(lambda: len(backend.publications) == 4)
    shared = [p for p in backend.publications if body(p)["id"] == result.event_id]
    assert sorted(p.room for p in shared) == rooms
    for pub in shared:
        data = body(pub)
        assert data["room"] == pub.room
        assert (data["type"], data["payload"], data["source"]) == (
            "reservation_created",
            {"x": 1},
            "publisher",
        )
        assert pub.offset == result.offsets[pub.room]
    # and each room's history holds it at that offset
    for room in rooms:
        recovery = await b.history_since(room, None)
        since = Position(result.offsets[room] - 1, recovery.position.epoch)
        [pub] = (await b.history_since(room, since)).publications
        assert body(pub)["id"] == result.event_id


async def test_idempotency_key_returns_the_first_result_and_delivers_nothing_again(
    backend: Harness,
) -> None:
    b = backend.backend
    for room in ("room_a", "room_b"):
        await b.subscribe(room)
    first = await b.publish(["room_a", "room_b"], "test", b'{"v":1}', "api", idempotency_key="k1")
    again = await b.publish(["room_a", "room_b"], "test", b'{"v":2}', "api", idempotency_key="k1")
    assert first.duplicate is False
    assert again.duplicate is True
    assert again.event_id == first.event_id
    assert again.offsets == first.offsets == {"room_a": 1, "room_b": 1}
    other = await b.publish(["room_a"], "test", b'{"v":3}', "api", idempotency_key="k2")
    assert (other.duplicate, other.offsets) == (False, {"room_a": 2})
    await backend.barrier()
    assert [(p.room, p.offset) for p in backend.publications if p.room != "barrier_room"] == [
        ("room_a", 1),
        ("room_b", 1),
        ("room_a", 2),
    ]
    epoch = (await b.history_since("room_a", None)).position.epoch
    history = (await b.history_since("room_a", Position(0, epoch))).publications
    assert [body(p)["payload"] for p in history] == [{"v": 1}, {"v": 3}]


# --- fan-out --------------------------------------------------------------------------------------
async def test_publish_after_subscribe_returns_is_delivered(backend: Harness) -> None:
    b = backend.backend
    await b.subscribe("room_a")
    result = await b.publish(["room_a"], "greeting", b'{"hola":"mundo"}', "client")
    await backend.eventually(lambda: len(backend.received("room_a")) == 1)
    [pub] = backend.received("room_a")
    epoch = (await b.history_since("room_a", None)).position.epoch
    assert (pub.room, pub.offset, pub.epoch) == ("room_a", 1, epoch)
    data = body(pub)
    assert set(data) == {"room", "type", "payload", "id", "ts", "source"}
    assert data["id"] == result.event_id
    assert data["payload"] == {"hola": "mundo"}
    assert abs(data["ts"] - now_ms()) < 10_000
    event = orjson.loads(pub.event_data())
    assert event == {**data, "offset": 1, "epoch": epoch}
    assert orjson.loads(pub.frame()) == {"event": "event", "data": event}


async def test_rooms_not_subscribed_are_not_delivered(backend: Harness) -> None:
    b = backend.backend
    await b.subscribe("room_a")
    await backend.publish("room_z", 2)
    await backend.publish("room_a")
    await backend.barrier()
    assert [p.room for p in backend.publications] == ["room_a", "barrier_room"]


async def test_live_delivery_is_in_offset_order(backend: Harness) -> None:
    b = backend.backend
    await b.subscribe("room_a")
    await b.subscribe("room_b")
    for _ in range(20):
        await backend.publish(["room_a", "room_b"])
    await backend.eventually(lambda: len(backend.publications) == 40)
    for room in ("room_a", "room_b"):
        assert [p.offset for p in backend.received(room)] == list(range(1, 21))


async def test_unsubscribe_stops_delivery(backend: Harness) -> None:
    b = backend.backend
    for room in ("room_a", "room_b"):
        await b.subscribe(room)
    await backend.publish("room_a")
    await backend.eventually(lambda: len(backend.received("room_a")) == 1)
    b.unsubscribe("room_a")
    # a subscribe right after an unsubscribe wins over the deferred unsubscribe
    b.unsubscribe("room_b")
    await b.subscribe("room_b")
    await asyncio.sleep(UNSUBSCRIBE_DELAY_S + 0.3)
    await backend.publish("room_a")
    await backend.publish("room_b")
    await backend.barrier()
    assert [p.offset for p in backend.received("room_a")] == [1]
    assert [p.offset for p in backend.received("room_b")] == [1]
    # subscribing again resumes delivery
    await b.subscribe("room_a")
    await backend.publish("room_a")
    await backend.eventually(lambda: len(backend.received("room_a")) == 2)
    assert [p.offset for p in backend.received("room_a")] == [1, 3]


async def test_control_reaches_on_control(backend: Harness) -> None:
    message = ControlMessage(action="disconnect", args={"userId": "42"})
    await backend.backend.control(message)
    await backend.eventually(lambda: len(backend.controls) == 1)
    assert backend.controls == [message]


# --- history and recovery -------------------------------------------------------------------------
async def test_history_since(backend: Harness) -> None:
    b = backend.backend
    fresh = await b.history_since("room_a", None)
    assert fresh.recovered is False and fresh.publications == []
    # nothing published: offset 0 of the placeholder epoch, and reading it created nothing
    assert fresh.position == Position(0, UNPUBLISHED_EPOCH)
    assert (await b.history_since("room_a", fresh.position)).recovered is True
    results = await backend.publish("room_a", 4)
    ids = [r.event_id for r in results]
    epoch = (await b.history_since("room_a", None)).position.epoch
    assert isinstance(epoch, str) and epoch and epoch != UNPUBLISHED_EPOCH

    async def since(offset: int, of_epoch: str = epoch) -> Any:
        recovery = await b.history_since("room_a", Position(offset, of_epoch))
        assert recovery.position == Position(4, epoch)  # the epoch did not change
        return recovery

    for offset in range(0, 5):
        recovery = await since(offset)
        assert recovery.recovered is True, offset
        assert [p.offset for p in recovery.publications] == list(range(offset + 1, 5))
        assert [body(p)["id"] for p in recovery.publications] == ids[offset:]
        assert all(p.epoch == epoch and p.room == "room_a" for p in recovery.publications)
    # a client that joined before the first publish (offset 0, placeholder epoch) gets it all
    joined_early = await since(0, UNPUBLISHED_EPOCH)
    assert [p.offset for p in joined_early.publications] == [1, 2, 3, 4]
    for refused in (await since(2, "other-epoch"), await since(5), await since(99)):
        assert (refused.recovered, refused.publications) == (False, [])
    assert (await b.history_since("room_a", None)).recovered is False


async def test_an_event_id_publishes_once(backend: Harness) -> None:
    """A retried publish with the same event id (a caller's retry, or redis-py's after a
    timeout) returns the first result: one event, one offset."""
    b = backend.backend
    await b.subscribe("room_a")
    first = await b.publish(["room_a"], "test", b'{"v":1}', "api", event_id="ev-1")
    again = await b.publish(["room_a"], "test", b'{"v":1}', "api", event_id="ev-1")
    other = await b.publish(["room_a"], "test", b'{"v":2}', "api", event_id="ev-2")
    assert (first.duplicate, again.duplicate, other.duplicate) == (False, True, False)
    assert first.offsets == again.offsets == {"room_a": 1}
    assert other.offsets == {"room_a": 2}
    await backend.barrier()
    assert [p.offset for p in backend.publications if p.room == "room_a"] == [1, 2]


async def test_new_epoch_moves_the_room_once(backend: Harness) -> None:
    b = backend.backend
    assert await b.new_epoch("room_a", "anything") == Position(0, UNPUBLISHED_EPOCH)
    await backend.publish("room_a", 3)
    old = (await b.history_since("room_a", None)).position
    moved = await b.new_epoch("room_a", old.epoch)
    assert moved.offset == 3 and moved.epoch not in (old.epoch, UNPUBLISHED_EPOCH)
    # a second node noticing the same thing does not move it again
    assert await b.new_epoch("room_a", old.epoch) == moved
    # the old epoch's history is gone: nobody recovers across the move
    gone = await b.history_since("room_a", Position(1, old.epoch))
    assert (gone.recovered, gone.position) == (False, moved)
    assert (await b.history_since("room_a", Position(0, UNPUBLISHED_EPOCH))).recovered is False
    [result] = await backend.publish("room_a")
    assert result.offsets == {"room_a": 4}  # offsets keep counting in the new epoch
    after = await b.history_since("room_a", moved)
    assert [(p.offset, p.epoch) for p in after.publications] == [(4, moved.epoch)]


async def test_history_keeps_only_the_latest_n_events(make_backend: Any) -> None:
    harness: Harness = await make_backend(history_size=3)
    b = harness.backend
    await harness.publish("room_a", 5)
    epoch = (await b.history_since("room_a", None)).position.epoch
    covered = await b.history_since("room_a", Position(2, epoch))
    assert covered.recovered is True
    assert [p.offset for p in covered.publications] == [3, 4, 5]
    too_old = await b.history_since("room_a", Position(1, epoch))
    assert (too_old.recovered, too_old.publications) == (False, [])
    assert too_old.position == Position(5, epoch)


async def test_no_history_kept_with_size_zero(make_backend: Any) -> None:
    harness: Harness = await make_backend(history_size=0)
    b = harness.backend
    results = await harness.publish("room_a", 2)
    assert [r.offsets["room_a"] for r in results] == [1, 2]  # offsets still count
    epoch = (await b.history_since("room_a", None)).position.epoch
    assert (await b.history_since("room_a", Position(1, epoch))).recovered is False
    current = await b.history_since("room_a", Position(2, epoch))
    assert (current.recovered, current.publications) == (True, [])


async def test_history_lives_ttl_after_the_last_publish_then_the_epoch_changes(
    make_backend: Any,
) -> None:
    harness: Harness = await make_backend(history_ttl_s=1, meta_ttl_s=2)
    b = harness.backend
    await harness.publish("room_a")
    epoch = (await b.history_since("room_a", None)).position.epoch
    await asyncio.sleep(0.6)
    await harness.publish("room_a")  # refreshes the TTL of the whole history
    await asyncio.sleep(0.6)  # 1.2 s after the first publish, 0.6 s after the last
    kept = await b.history_since("room_a", Position(0, epoch))
    assert kept.recovered is True
    assert [p.offset for p in kept.publications] == [1, 2]
    await asyncio.sleep(0.6)
    # events are gone, the position is kept: a client is told it cannot recover
    expired = await b.history_since("room_a", Position(0, epoch))
    assert (expired.recovered, expired.publications) == (False, [])
    assert expired.position == Position(2, epoch)
    await asyncio.sleep(1.0)
    # the room's position is gone too: a new epoch, offsets restart at 1
    lost = await b.history_since("room_a", Position(2, epoch))
    assert lost.recovered is False
    assert lost.position.offset == 0
    assert lost.position.epoch != epoch
    [result] = await harness.publish("room_a")
    assert result.offsets == {"room_a": 1}
    assert lost.position.epoch == UNPUBLISHED_EPOCH
    after = await b.history_since("room_a", Position(0, lost.position.epoch))
    assert after.recovered is True
    [pub] = after.publications
    assert pub.offset == 1 and pub.epoch not in (epoch, UNPUBLISHED_EPOCH)


# --- membership and presence ----------------------------------------------------------------------
async def test_presence_aggregates_connections_per_user(backend: Harness) -> None:
    b = backend.backend
    c1, c2 = backend.conn("u1"), backend.conn("u1")
    c3 = backend.conn("u2", role="proveedor")
    for conn in (c1, c2, c3):
        await b.add_connection(conn)
        await b.join(conn, ["room_a"], ["room_a"])
    await b.join(c1, ["room_a"], ["room_a"])  # joining twice counts once
    assert await b.presence("room_a") == [
        PresenceMember("u1", "cliente", 2),
        PresenceMember("u2", "proveedor", 1),
    ]
    assert await b.presence("room_empty") == []
    await b.leave(c2, ["room_a"], [])
    assert await b.presence("room_a") == [
        PresenceMember("u1", "cliente", 1),
        PresenceMember("u2", "proveedor", 1),
    ]
    await b.remove_connection(c3, ["room_a"])
    assert await b.presence("room_a") == [PresenceMember("u1", "cliente", 1)]
    await b.remove_connection(c1, ["room_a"])
    assert await b.presence("room_a") == []


async def test_room_count_counts_connections_of_broadcast_and_other_rooms(
    backend: Harness,
) -> None:
    """``presence`` of ``all_clientes`` / ``all_proveedores`` answers this count (contract v3
    section 2); every room has one."""
    b = backend.backend
    c1, c2, c3 = backend.conn("u1"), backend.conn("u1"), backend.conn("u2")
    await b.add_connection(c1, ["cliente_u1", "all_clientes"])
    await b.add_connection(c2, ["cliente_u1", "all_clientes"])
    await b.add_connection(c3)
    await b.join(c3, ["all_clientes", "service_1"], ["all_clientes", "service_1"])
    await b.join(c1, ["all_clientes"], ["cliente_u1", "all_clientes"])  # again: counts once
    assert await b.room_count("all_clientes") == 3
    assert await b.room_count("cliente_u1") == 2
    assert await b.room_count("service_1") == 1
    assert await b.room_count("all_proveedores") == 0
    page = await b.list_rooms(100, None)
    assert {i["room"]: i["members"] for i in page.items}["all_clientes"] == 3
    await b.leave(c3, ["all_clientes"], ["service_1"])
    await b.leave(c3, ["all_clientes"], ["service_1"])  # again: counts once
    assert await b.room_count("all_clientes") == 2
    await b.remove_connection(c2, ["cliente_u1", "all_clientes"])
    assert await b.room_count("all_clientes") == 1
    assert await b.room_count("cliente_u1") == 1
    await b.deregister()
    assert await b.room_count("all_clientes") == 0
    assert (await b.list_rooms(100, None)).total == 0


async def test_join_leave_remove_update_rooms_and_clients(backend: Harness) -> None:
    b = backend.backend
    c1 = backend.conn("u1", connection_id="conn-a")
    c2 = backend.conn("u2", role="admin", connection_id="conn-b")
    for conn in (c1, c2):
        await b.add_connection(conn)
    await b.join(c1, ["room_a", "room_b"], ["room_a", "room_b"])
    await b.join(c2, ["room_a"], ["room_a"])

    async def rooms() -> dict[str, int]:
        page = await b.list_rooms(100, None)
        assert page.total == len(page.items)
        return {item["room"]: item["members"] for item in page.items}

    async def clients() -> dict[str, dict[str, Any]]:
        page = await b.list_clients(100, None)
        assert page.total == len(page.items)
        return {item["connectionId"]: item for item in page.items}

    assert await rooms() == {"room_a": 2, "room_b": 1}
    listed = await clients()
    assert listed["conn-a"] == {
        "connectionId": "conn-a",
        "userId": "u1",
        "role": "cliente",
        "node": backend.node_id,
        "rooms": ["room_a", "room_b"],
        "connectedAt": c1.connected_at_ms,
    }
    assert listed["conn-b"]["rooms"] == ["room_a"]
    assert listed["conn-b"]["role"] == "admin"
    await b.leave(c1, ["room_b"], ["room_a"])
    assert await rooms() == {"room_a": 2}
    assert (await clients())["conn-a"]["rooms"] == ["room_a"]
    await b.remove_connection(c2, ["room_a"])
    assert await rooms() == {"room_a": 1}
    assert set(await clients()) == {"conn-a"}
    await b.remove_connection(c1, ["room_a"])
    assert await rooms() == {}
    assert await clients() == {}


async def test_deregister_removes_the_nodes_connections_and_presence(backend: Harness) -> None:
    b = backend.backend
    conn = backend.conn("u1")
    await b.add_connection(conn)
    await b.join(conn, ["room_a"], ["room_a"])
    await b.deregister()
    assert await b.presence("room_a") == []
    assert (await b.list_clients(100, None)).total == 0
    assert (await b.list_rooms(100, None)).total == 0


async def test_cleanup_keeps_the_state_of_a_live_node(backend: Harness) -> None:
    b = backend.backend
    conn = backend.conn("u1")
    await b.add_connection(conn)
    await b.join(conn, ["room_a"], ["room_a"])
    removed = await b.cleanup()
    assert all(isinstance(n, int) for n in removed.values())
    assert removed.get("connections", 0) == 0
    assert await b.presence("room_a") == [PresenceMember("u1", "cliente", 1)]


# --- paging ---------------------------------------------------------------------------------------
async def walk(list_page: Any, limit: int) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        page = await list_page(limit, cursor)
        pages += 1
        assert len(page.items) <= limit
        assert page.total == 23
        items += page.items
        if page.next_cursor is None:
            return items, pages
        cursor = page.next_cursor
        assert pages < 50, "the cursor does not advance"


async def test_paging_never_repeats_and_covers_everything(backend: Harness) -> None:
    b = backend.backend
    conns = [backend.conn(f"u{i}") for i in range(23)]
    for conn in conns:
        await b.add_connection(conn)
    hub = conns[0]
    rooms = [f"room_{i:02d}" for i in range(23)]
    await b.join(hub, rooms, rooms)
    clients, pages = await walk(b.list_clients, 10)
    assert pages == 3
    assert sorted(c["connectionId"] for c in clients) == sorted(c.connection_id for c in conns)
    listed_rooms, pages = await walk(b.list_rooms, 7)
    assert pages == 4
    assert sorted(r["room"] for r in listed_rooms) == rooms
    assert all(r["members"] == 1 for r in listed_rooms)


async def summarised(backend: Harness, events: int) -> float:
    """Wait until the dashboard's summaries hold ``events`` events (the Redis backend writes them
    once per ``event_log.FLUSH_S``; the embedded one at once). Returns the seconds it took."""

    async def counted() -> bool:
        page = await backend.backend.recent_events(1, None)
        return (
            page.total >= events
            and sum(await backend.backend.events_per_minute(now_ms())) >= events
        )

    return await eventually(counted, event_log.FLUSH_S + 3.0, f"{events} events summarised")


async def test_recent_events_newest_first_with_paging(backend: Harness) -> None:
    ids = []
    for i in range(23):
        [result] = await backend.publish(f"room_{i % 3}")
        ids.append(result.event_id)
    await summarised(backend, 23)
    events, pages = await walk(backend.backend.recent_events, 5)
    assert pages == 5
    assert [e["id"] for e in events] == ids[::-1]
    newest = events[0]
    assert (newest["room"], newest["type"], newest["source"]) == ("room_1", "test", "api")
    assert isinstance(newest["ts"], int)


async def test_events_per_minute_counts_publishes(backend: Harness) -> None:
    b = backend.backend
    empty = await b.events_per_minute(now_ms())
    assert empty == [0] * 60
    await backend.publish(["room_a", "room_b"])  # one delivery to each of two rooms
    await backend.publish("room_a", 2)
    await summarised(backend, 4)
    series = await b.events_per_minute(now_ms())
    assert len(series) == 60
    assert sum(series) == 4
    assert series[-1] >= 1  # the current minute is last


# --- node registry --------------------------------------------------------------------------------
async def test_heartbeat_and_nodes_snapshot(backend: Harness) -> None:
    b = backend.backend
    assert await b.heartbeat(node_stats(backend.node_id, connections=3)) is True
    nodes = {n["node"]: n for n in await b.nodes()}
    mine = nodes[backend.node_id]
    assert mine["alive"] is True
    assert mine["connections"] == 3
    assert mine["byRole"] == {"cliente": 3}
    assert mine["rssBytes"] == 1000
    assert isinstance(mine["lastSeenMs"], int) and abs(mine["lastSeenMs"] - now_ms()) < 10_000
    assert await b.ready() is True


async def test_positions_reads_rooms_without_creating_them(backend: Harness) -> None:
    b = backend.backend
    await backend.publish("room_a", 2)
    found = await b.positions(["room_a", "room_never"])
    epoch = (await b.history_since("room_a", None)).position.epoch
    assert found == {"room_a": Position(2, epoch), "room_never": Position(0, UNPUBLISHED_EPOCH)}
    assert (await b.history_since("room_never", None)).position == Position(0, UNPUBLISHED_EPOCH)
