"""Fan-out across several nodes sharing one Redis: exactly once, in order, per-room
subscriptions, one pub/sub connection per node, idempotent publishing."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.publish import AsyncPublisher, Publisher
from tests.cluster.helpers import (
    KEYS,
    api_post,
    api_publish,
    assert_quiet,
    eventually,
    member,
    numsub,
    offsets,
    pubsub_connections,
    seqs,
)


async def test_three_nodes_each_member_gets_every_event_once_in_order(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a, b, c = [await make_node(redis_server.url) for _ in range(3)]
    room = "service_9"
    members = [
        await member(a, http, "cliente-1", room),  # the business event's sender
        await member(a, http, "proveedor-2", room),  # a second member on the same node
        await member(b, http, "cliente-3", room),
        await member(c, http, "admin-4", room),
    ]
    publisher = Publisher.from_url(redis_server.url)
    try:
        published = []
        for seq in range(200):
            if seq % 2:
                offset = await asyncio.to_thread(
                    publisher.publish, room, "tick", {"seq": seq, "via": "publisher"}
                )
            else:
                # alternate the node that receives the API call: every node publishes too
                node = (a, b, c)[seq % 3]
                offset = await api_publish(http, node.http_url, room, "tick", {"seq": seq})
            published.append(offset)
    finally:
        publisher.close()
    assert published == list(range(1, 201))

    # a client business event sent on node A reaches the members on B and C (and A)
    ack = await members[0].request("comment_created", {"servicioId": "9", "text": "hola"})
    assert ack["event"] == "ack", ack

    sequences = []
    for client in members:
        events = await client.events(201, room=room, timeout=10)
        assert offsets(events) == list(range(1, 202))
        assert seqs(events[:200]) == list(range(200))
        assert [e["source"] for e in events[:4]] == ["api", "publisher", "api", "publisher"]
        assert len({e["epoch"] for e in events}) == 1
        last = events[-1]
        assert last["type"] == "comment_created"
        assert last["source"] == "client"
        assert last["id"] == ack["data"]["eventId"]
        assert last["payload"]["text"] == "hola"
        sequences.append([e["id"] for e in events])
    # every member saw the very same sequence of events
    assert all(s == sequences[0] for s in sequences)
    assert len(set(sequences[0])) == 201
    await assert_quiet(members, room)


async def test_offsets_are_consecutive_under_concurrent_publishers(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    a, b = await make_node(redis_server.url), await make_node(redis_server.url)
    room = "location_3"
    watcher_a = await member(a, http, "cliente-1", room)
    watcher_b = await member(b, http, "cliente-2", room)
    sync_pub = Publisher.from_url(redis_server.url)
    async_pub = AsyncPublisher.from_url(redis_server.url)

    def sync_source() -> list[int]:
        return [sync_pub.publish(room, "s", {"src": "sync", "seq": i}) for i in range(50)]

    async def async_source() -> list[int]:
        return [await async_pub.publish(room, "s", {"src": "async", "seq": i}) for i in range(50)]

    async def api_source() -> list[int]:
        return [
            await api_publish(http, b.http_url, room, "s", {"src": "api", "seq": i})
            for i in range(50)
        ]

    try:
        results = await asyncio.gather(asyncio.to_thread(sync_source), async_source(), api_source())
    finally:
        sync_pub.close()
        await async_pub.aclose()
    returned = sorted(o for r in results for o in r)
    assert returned == list(range(1, 151)), "offsets handed out must be 1..150, each once"
    for result in results:
        assert result == sorted(result), "one source's publishes get increasing offsets"

    for watcher in (watcher_a, watcher_b):
        events = await watcher.events(150, room=room, timeout=10)
        assert offsets(events) == list(range(1, 151))
        for src in ("sync", "async", "api"):
            mine = [e["payload"]["seq"] for e in events if e["payload"]["src"] == src]
            assert mine == list(range(50)), f"{src} events out of order or missing"
    await assert_quiet([watcher_a, watcher_b], room)


async def test_room_subscription_follows_local_members(
    redis_server: Any, make_node: Any, http: Any
) -> None:
    redis = redis_server.client()
    a, b, c = [await make_node(redis_server.url) for _ in range(3)]
    # one pub/sub connection per node, whatever the number of rooms
    assert pubsub_connections(redis) == 3

    room = "service_77"
    channel = KEYS.room_channel(room)
    assert numsub(redis, channel) == 0
    on_a = await member(a, http, "cliente-1", room)
    on_a2 = await member(a, http, "cliente-2", room)
    on_b = await member(b, http, "cliente-3", room)
    idle_c = await member(c, http, "cliente-4", "service_78")  # C has no member of the room
    assert numsub(redis, channel) == 2  # A and B, once each
    assert numsub(redis, KEYS.room_channel("service_78")) == 1
    assert pubsub_connections(redis) == 3  # more rooms, not more connections

    # an event reaches A and B only; C never sees it
    await api_publish(http, c.http_url, room, "t", {"seq": 1})
    for client in (on_a, on_a2, on_b):
        [event] = await client.events(1, room=room)
        assert event["payload"] == {"seq": 1}
    await assert_quiet([idle_c], room)

    # B's last member leaves: B drops the channel after unsubscribe_delay_s (0.2 s here)
    left = await on_b.request("leave_room", {"room": room})
    assert left["event"] == "room_left"
    await eventually(lambda: numsub(redis, channel) == 1, 3, "B to unsubscribe")
    # one of A's two members leaves: A keeps the subscription
    await on_a2.close()
    await asyncio.sleep(0.5)  # well past the 0.2 s delay
    assert numsub(redis, channel) == 1
    await api_publish(http, a.http_url, room, "t", {"seq": 2})
    [event] = await on_a.events(1, room=room)
    assert event["payload"] == {"seq": 2} and event["offset"] == 2
    await assert_quiet([on_b], room)

    # A's last member disconnects: nobody subscribes any more
    await on_a.close()
    await eventually(lambda: numsub(redis, channel) == 0, 3, "A to unsubscribe")
    assert pubsub_connections(redis) == 3

    # a quick leave and rejoin inside the delay keeps the subscription and loses nothing
    await on_b.join(room)
    assert numsub(redis, channel) == 1
    await on_b.request("leave_room", {"room": room})
    await on_b.join(room)
    await asyncio.sleep(0.4)
    assert numsub(redis, channel) == 1
    await api_publish(http, c.http_url, room, "t", {"seq": 3})
    [event] = await on_b.events(1, room=room)
    assert event["payload"] == {"seq": 3}


async def test_idempotency_key_publishes_once(redis_server: Any, make_node: Any, http: Any) -> None:
    a, b = await make_node(redis_server.url), await make_node(redis_server.url)
    room = "service_5"
    watchers = [await member(a, http, "cliente-1", room), await member(b, http, "cliente-2", room)]
    publisher = Publisher.from_url(redis_server.url)
    try:
        first = await asyncio.to_thread(publisher.publish, room, "pay", {"n": 1}, "order-17")
        again = await asyncio.to_thread(publisher.publish, room, "pay", {"n": 1}, "order-17")
        # the same key through the HTTP API (another node) is the same event
        status, body = await api_post(
            http,
            b.http_url,
            "/api/publish",
            {"room": room, "type": "pay", "payload": {"n": 1}, "idempotencyKey": "order-17"},
        )
        assert status == 200, body
        assert first == again == body["offsets"][room] == 1
        assert body["duplicate"] is True

        # two API calls with a fresh key: one event, then the same answer
        req = {"room": room, "type": "pay", "payload": {"n": 2}, "idempotencyKey": "order-18"}
        _, one = await api_post(http, a.http_url, "/api/publish", req)
        _, two = await api_post(http, b.http_url, "/api/publish", req)
        assert one["offsets"] == two["offsets"] == {room: 2}
        assert one["eventId"] == two["eventId"]
        assert (one["duplicate"], two["duplicate"]) == (False, True)
        # a different key is a different event
        third = await asyncio.to_thread(publisher.publish, room, "pay", {"n": 3}, "order-19")
        assert third == 3
    finally:
        publisher.close()

    for watcher in watchers:
        events = await watcher.events(3, room=room)
        assert offsets(events) == [1, 2, 3]
        assert [e["payload"]["n"] for e in events] == [1, 2, 3]
        assert events[1]["id"] == one["eventId"]
    await assert_quiet(watchers, room, seconds=0.4)
